"""Importing fastgan is lean, the extension loads on a CPU-only machine, and `fastgan info` tells the truth."""
import json
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch

import fastgan

_NEUTRAL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(fastgan.__file__)))  # where the package is installed


def _run(code: str, **env):
    e = dict(os.environ, **env)
    # cwd outside the checkout: `python -c` puts the cwd first on sys.path, and the source tree has no _C
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120,
                          cwd=_NEUTRAL_DIR)


def test_import_does_not_import_triton_or_initialise_cuda():
    # every function that asks the driver about a device raises: an import that reads one fails on a CPU machine
    # too, where is_initialized() alone could not tell
    r = _run("import sys, torch\n"
             "def asked(*a, **k): raise AssertionError('a device was asked about at import')\n"
             "for n in ('is_available', 'device_count', 'current_device', 'init', '_lazy_init', 'current_stream',\n"
             "          'get_device_properties', 'get_device_capability', 'get_device_name', 'mem_get_info'):\n"
             "    setattr(torch.cuda, n, asked)\n"
             "import fastgan, fastgan.ops, fastgan.graph, fastgan.graph_check, fastgan.train, fastgan.checkpoint\n"
             "import fastgan.methods.step, fastgan.ops.penalty_jvp, fastgan.ops.mlp_penalty, fastgan.cli\n"
             "assert 'triton' not in sys.modules, 'triton imported'\n"
             "assert 'fastgan.kernels' not in sys.modules\n"
             "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
             "print('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("version,ok", [("2.3.1", False), ("1.13.1+cu117", False), ("2.4.0", True),
                                        ("2.4.0a0+git1234", True), ("2.13.0+cpu", True), ("2.11.0+cu130", True),
                                        ("3.0.0", True), ("10.1", True)])
def test_torch_older_than_2_4_is_refused_by_name(version, ok):
    from fastgan import _torch_version

    if ok:
        _torch_version.check(version)
    else:
        with pytest.raises(ImportError, match=rf"fastgan needs torch >= 2\.4 .*found torch {re.escape(version)}"):
            _torch_version.check(version)


def test_import_names_an_old_or_missing_torch():
    """A --no-deps install skips pip's torch>=2.4: the import says so instead of an AttributeError from deep inside
    (torch.library.custom_op); without torch it says to install torch first."""
    old = _run("import torch; torch.__version__ = '2.3.1'; import fastgan")
    assert old.returncode != 0 and "ImportError: fastgan needs torch >= 2.4" in old.stderr, old.stderr
    assert "found torch 2.3.1" in old.stderr and "AttributeError" not in old.stderr
    missing = _run("import sys; sys.modules['torch'] = None; import fastgan")
    assert missing.returncode != 0 and "fastgan needs torch >= 2.4, which is not installed" in missing.stderr, \
        missing.stderr


def test_extension_loads_and_reports_build():
    import fastgan._C as C

    assert isinstance(C.cuda_compiled, bool)
    assert hasattr(C, "penalty_forward_cpu") and hasattr(C, "penalty_backward_cpu")
    if C.cuda_compiled:
        assert C.cuda_archs  # e.g. "80,90"
        n, err, code = C.cuda_device_count()  # statically linked cudart: an error string and code, never a crash
        assert isinstance(n, int) and isinstance(err, str) and (code == 0) == (err == "")
        assert hasattr(C, "penalty_forward_cuda")


@pytest.mark.skipif(os.environ.get("FASTGAN_CUDA") == "0", reason="CUDA build disabled with FASTGAN_CUDA=0")
def test_cuda_sources_were_compiled_when_nvcc_is_present():
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        pytest.skip("no nvcc on this machine: the CUDA kernels are not built here")
    import fastgan._C as C

    assert C.cuda_compiled, "nvcc is present but fastgan._C was built without CUDA kernels"


def test_info_reports_backends_and_reasons():
    r = fastgan.info()
    assert r["extension"]["loaded"] is True
    cpu = r["backends"]["cpu"]
    assert cpu["cpu"]["usable"] and cpu["reference"]["usable"]
    assert not cpu["cuda"]["usable"] and "CUDA tensors" in cpu["cuda"]["reason"]
    for name, st in r["backends"]["cuda"].items():
        assert st["usable"] or st["reason"], name


def test_cli_info_text_and_json(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastgan", "info"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fastgan._C: loaded" in r.stdout and "backends for cpu tensors" in r.stdout
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert f"CUDA devices: {n_gpus or 'none'}" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fastgan", "info", "--json"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["extension"]["loaded"] is True


def test_triton_backend_reason_without_interpreter():
    r = _run("import torch, fastgan\n"
             "from fastgan.ops import _dispatch\n"
             "ok, why = _dispatch.status('triton', torch.device('cpu'))\n"
             "print(ok, why)", TRITON_INTERPRET="0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("False") and "TRITON_INTERPRET=1" in r.stdout


@pytest.mark.parametrize("value,on", [("1", True), ("true", True), ("Yes", True), ("ON", True), ("y", True),
                                      ("0", False), ("false", False), ("2", False), (" 1", False), ("t", False)])
def test_triton_interpret_is_read_as_triton_reads_it(monkeypatch, value, on):
    """triton 3.6's getenv_bool takes 1/y/yes/on/true in any case; fastgan took only "1" and called the triton
    backend unusable on CPU tensors under TRITON_INTERPRET=true, where triton interprets (an audit)."""
    from fastgan.ops import _dispatch

    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert _dispatch.triton_interpret() is on
    try:
        from triton import knobs
    except ImportError:
        return
    assert knobs.runtime.interpret is on  # the premise, where this triton has knobs


def test_triton_backend_refused_where_fastgan_kernels_cannot_be_found(monkeypatch):
    """fastgan imported from a source checkout without an editable install: kernels/ is not fastgan/kernels there,
    and `fastgan info` called the Triton backend usable."""
    from fastgan.ops import _dispatch

    assert _dispatch.kernels_installed.__wrapped__() is True  # this install has them
    monkeypatch.setattr(_dispatch, "kernels_installed", lambda: False)
    monkeypatch.setattr(_dispatch, "triton_installed", lambda: True)
    ok, why = _dispatch.status("triton", torch.device("cuda"))
    assert not ok and why.startswith("fastgan.kernels is not importable")
    with pytest.raises(_dispatch.BackendUnavailable, match="fastgan.kernels is not importable"):
        _dispatch.resolve("op", torch.device("cuda"), "triton")


@pytest.mark.parametrize("built", [False, True])
def test_extension_import_error_says_whether_the_source_tree_holds_a_build(tmp_path, monkeypatch, built):
    """Imported from a source tree (setup.py and csrc/ beside the package), a _C that fails to import is named
    as a broken build when a _C*.so is there, as an unbuilt tree when none is (it said "no built extension" of
    a tree whose build was broken)."""
    from fastgan import _ext

    (tmp_path / "csrc").mkdir()
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "fastgan").mkdir()
    if built:
        (tmp_path / "fastgan" / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"not an ELF file")

    def fail(name):
        raise ImportError(f"cannot import {name}")

    monkeypatch.setattr(_ext, "__file__", str(tmp_path / "fastgan" / "_ext.py"))
    monkeypatch.setattr(_ext.importlib, "import_module", fail)
    _ext._load.cache_clear()
    try:
        ok, why = _ext.available()
    finally:
        monkeypatch.undo()
        _ext._load.cache_clear()
    assert not ok and "cannot import fastgan._C" in why
    if built:
        assert "whose build _C.cpython-311-x86_64-linux-gnu.so does not import" in why and "no built" not in why
    else:
        assert "which holds no built extension" in why
    assert _ext.available()[0], "the real extension loads again"


# ------------------------------------------------------------------ what info() reports, field by field


def test_info_report_fields_match_the_build_and_print_nothing(capsys, monkeypatch):
    import fastgan._C as C
    info_mod = sys.modules["fastgan.info"]  # fastgan.info is the function

    # the imported package's version, not the installed metadata's (an editable install of another checkout
    # reported that one's: an audit, 2026-12-07)
    monkeypatch.setattr(info_mod, "__version__", "9.9.9.dev0")
    assert fastgan.info()["fastgan"] == "9.9.9.dev0"
    monkeypatch.undo()
    r = fastgan.info()
    assert r["fastgan"] == fastgan.__version__
    assert capsys.readouterr().out == ""  # print_report defaults to False
    ext = r["extension"]
    assert ext["cuda_compiled"] is bool(C.cuda_compiled) and ext["openmp"] is bool(C.openmp)
    assert ext["cuda_archs"] == ([a for a in C.cuda_archs.split(",")] if C.cuda_archs else [])
    assert r["torch_cuda"] == torch.version.cuda and r["torch"] == torch.__version__
    for st in r["backends"]["cpu"].values():
        assert (st["reason"] is None) == st["usable"], st  # a reason exactly when unusable, never ""
    if not torch.cuda.is_available():
        assert r["backends"]["cuda"] == {b: {"usable": False, "reason": "no CUDA device visible to torch"}
                                         for b in ("cuda", "triton")}
    assert r["metrics_classifier"] == {"ok": True, "reason": None}


@pytest.mark.skipif(platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"),
                    reason="reads the x86 CPU's flags from /proc/cpuinfo")
def test_info_names_the_cpu_kernels_simd_paths_this_cpu_has():
    """The CPU kernels' clone (avx2 or the baseline build) and the noise draw's path (AVX-512, AVX2 or portable)
    are the best this CPU's flags allow, so a slow CPU run can be told apart from a machine without the vectors."""
    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    simd = fastgan.info()["extension"]["cpu_simd"]
    assert simd == {"kernels": "avx2" if "avx2" in flags else "default",
                    "noise_draw": "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "portable"}


def test_info_names_a_damaged_classifier(monkeypatch):
    from fastgan.metrics import classifier

    monkeypatch.setattr(classifier, "shipped_weights_problem", lambda: "damaged")
    mc = fastgan.info()["metrics_classifier"]
    assert mc["ok"] is False and mc["reason"] == f"{classifier.WEIGHTS} is damaged (SHA-256 differs; reinstall fastgan)"


def test_format_report_lines():
    from fastgan.info import format_report

    r = fastgan.info()
    text = format_report(r)
    for dev, backends in r["backends"].items():
        for name, st in backends.items():
            want = "usable" if st["usable"] else f"unusable: {st['reason']}"
            assert f"\n  {name:<10} {want}" in text, (dev, name)
    if r["extension"]["cuda_compiled"]:
        assert f"CUDA kernels: sm_{', sm_'.join(r['extension']['cuda_archs'])}" in text
    assert f"; OpenMP: {'yes' if r['extension']['openmp'] else 'no'}" in text
    simd = r["extension"]["cpu_simd"]
    assert f"\n  CPU kernels: {simd['kernels']} clones; noise draw: {simd['noise_draw']}\n" in text
    assert "[TRITON_INTERPRET=1]" in format_report({**r, "triton_interpret": True})
    assert "[TRITON_INTERPRET=1]" not in format_report({**r, "triton_interpret": False})
    bad = {**r, "metrics_classifier": {"ok": False, "reason": "x.pt is damaged"}}
    assert "Fashion-MNIST classifier (run.fd, fastgan eval): x.pt is damaged" in format_report(bad)
    assert "CUDA devices: none" in format_report({**r, "cuda_devices": []})


def test_info_says_whether_compiled_code_inside_d_runs_under_the_penalty(monkeypatch):
    from fastgan.info import format_report

    r = fastgan.info()
    want = hasattr(torch.compiler, "set_stance")  # torch >= 2.6 (tests/ops/test_penalty_compiled_d.py runs it)
    assert r["compiled_d"] == {"ok": want, "reason": None if want else r["compiled_d"]["reason"]}
    assert ("torch.compile'd code inside a penalty's D: run eagerly by every mode" in format_report(r)) is want
    monkeypatch.delattr(torch.compiler, "set_stance", raising=False)
    r = fastgan.info()
    assert r["compiled_d"]["ok"] is False and "torch < 2.6 has no torch.compile stances" in r["compiled_d"]["reason"]
    assert "inside a penalty's D: torch < 2.6 has no torch.compile stances" in format_report(r)


def test_info_says_whether_torch_compile_traces_the_closed_form(monkeypatch):
    from fastgan.info import format_report
    from fastgan.ops import penalty_jvp

    r = fastgan.info()
    assert r["closed_form_traced"] is penalty_jvp.CLOSED_FORM_TRACED
    traced = "the closed-form penalty (mode 'mlp', or 'auto' taking it) inside torch.compile: traced, fullgraph"
    assert (traced in format_report(r)) is penalty_jvp.CLOSED_FORM_TRACED
    monkeypatch.setattr(penalty_jvp, "CLOSED_FORM_TRACED", False)
    r = fastgan.info()
    assert r["closed_form_traced"] is False
    assert f"inside torch.compile: run eagerly, a graph break (torch {torch.__version__}: traced on torch >= 2.7" \
        in format_report(r)
    assert "closed-form penalty" not in format_report({k: v for k, v in r.items() if k != "closed_form_traced"})


@pytest.mark.parametrize("value,gemm,line", [
    (None, "torch", "Triton denoiser's GEMMs: torch's, Triton kernels around them"),
    ("tl.dot", "tl.dot", "Triton denoiser's GEMMs: its own fused tl.dot GEMMs (FASTGAN_DENOISER_TRITON_GEMM=tl.dot)"),
    ("cublas", None, "Triton denoiser's GEMMs: FASTGAN_DENOISER_TRITON_GEMM='cublas' in the environment: expected"),
])
def test_info_says_which_gemms_the_triton_denoiser_runs(monkeypatch, value, gemm, line):
    from fastgan.info import format_report

    if value is None:
        monkeypatch.delenv("FASTGAN_DENOISER_TRITON_GEMM", raising=False)
    else:
        monkeypatch.setenv("FASTGAN_DENOISER_TRITON_GEMM", value)
    r = fastgan.info()
    assert r["denoiser_triton_gemm"]["gemm"] == gemm and (r["denoiser_triton_gemm"]["error"] is None) == bool(gemm)
    assert line in format_report(r)


def test_info_says_which_backend_ops_run_on_and_what_forces_it(monkeypatch):
    from fastgan.info import format_report
    from fastgan.ops import _dispatch

    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    r = fastgan.info()
    assert r["forced_backend"] == {"backend": None, "by": None, "error": None}
    assert r["chosen"]["cpu"] == (_dispatch.best_fused(torch.device("cpu"))[0] or "reference")
    assert f"\n  {r['chosen']['cpu']:<10} usable (ops run here)" in format_report(r)
    assert "forced backend" not in format_report(r)
    monkeypatch.setenv("FASTGAN_BACKEND", "cuda")
    r = fastgan.info()
    assert r["chosen"]["cpu"] is None and "(ops run here)" not in format_report(r)
    assert "forced backend: FASTGAN_BACKEND='cuda' (every op called without backend=)" in format_report(r)
    assert "  ops given no backend= raise BackendUnavailable: the forced backend cannot run here" in format_report(r)
    with fastgan.ops.use_backend("reference"):  # wins over the environment, as in the ops
        r = fastgan.info()
    assert r["chosen"]["cpu"] == "reference" and r["forced_backend"]["by"] == "use_backend('reference')"
    monkeypatch.setenv("FASTGAN_BACKEND", "foo")
    r = fastgan.info()  # reported, not raised
    assert r["chosen"] == {d: None for d in r["chosen"]} and "FASTGAN_BACKEND: must be one of" in \
        r["forced_backend"]["error"]
    assert "forced backend: FASTGAN_BACKEND: must be one of" in format_report(r)
    # what the ops raise then (an audit found the report naming BackendUnavailable, which the ops do not raise)
    assert "  ops given no backend= raise ValueError: FASTGAN_BACKEND names no backend" in format_report(r)
    assert "raise BackendUnavailable" not in format_report(r)
    with pytest.raises(ValueError, match="FASTGAN_BACKEND: must be one of"):
        fastgan.ops.grad_norm_penalty(torch.ones(2, 3), torch.zeros(2))


def test_info_names_triton_installed_as_pytorch_triton(monkeypatch):
    """torch's nightly builds install triton as the `pytorch-triton` distribution: `fastgan info` said "triton not
    installed" above a Triton backend it called usable (an audit of info and packaging, 2026-12-07)."""
    from fastgan.info import format_report
    from fastgan.ops import _dispatch

    info_mod = sys.modules["fastgan.info"]
    monkeypatch.setattr(_dispatch, "triton_installed", lambda: True)
    monkeypatch.setattr(info_mod, "_version", {"pytorch-triton": "3.6.0+git1234"}.get)
    r = fastgan.info()
    assert r["triton"] == "3.6.0+git1234"
    assert "\ntriton 3.6.0+git1234" in format_report(r) and "triton not installed" not in format_report(r)
    monkeypatch.setattr(info_mod, "_version", {}.get)
    assert fastgan.info()["triton"] == "(version unknown)"
    monkeypatch.setattr(_dispatch, "triton_installed", lambda: False)
    assert fastgan.info()["triton"] is None


def test_a_triton_that_does_not_import_is_unusable_and_named():
    """A triton that is installed but fails to import (a build for another torch, a missing library): `fastgan
    info` called the Triton backend usable, and ops on it failed with the ImportError from deep inside fastgan's
    kernels instead of BackendUnavailable (an audit of info and packaging, 2026-12-07). In a fresh process, whose
    triton is broken by a finder that fails its import."""
    from fastgan.ops import _dispatch

    version = _dispatch.triton_version()
    if version is not None and version < _dispatch.TRITON_MIN:  # that reason comes first (torch 2.4's triton 3.0)
        pytest.skip(f"triton {'.'.join(map(str, version))} is older than fastgan's minimum: named as such first")
    r = _run("import sys, importlib.abc, importlib.machinery\n"
             "class Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        return (importlib.machinery.ModuleSpec(name, self, is_package=True)\n"
             "                if name == 'triton' else None)\n"
             "    def create_module(self, spec): raise ImportError('libtriton.so: planted')\n"
             "    def exec_module(self, m): pass\n"
             "sys.meta_path.insert(0, Broken())\n"
             "import torch, fastgan\n"
             "from fastgan.ops import _dispatch\n"
             "from fastgan.info import format_report\n"
             "ok, why = _dispatch.status('triton', torch.device('cpu'))\n"
             "assert not ok, why\n"
             "assert why == 'triton is installed but does not import (ImportError: libtriton.so: planted)', why\n"
             "try:\n"
             "    fastgan.ops.nt_losses(torch.randn(4), torch.randn(4), 0.5, backend='triton')\n"
             "except _dispatch.BackendUnavailable as e:\n"
             "    assert 'does not import (ImportError: libtriton.so: planted)' in str(e), e\n"
             "else:\n"
             "    raise AssertionError('nt_losses ran on a triton that does not import')\n"
             "r = fastgan.info()\n"
             "assert r['triton_error'] == 'ImportError: libtriton.so: planted'\n"
             "assert not r['backends']['cpu']['triton']['usable']\n"
             "assert ': does not import (ImportError: libtriton.so: planted)' in format_report(r).splitlines()[2]\n"
             "print('ok')", TRITON_INTERPRET="1")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    from fastgan.ops import _dispatch

    if _dispatch.triton_installed():
        assert _dispatch.triton_import_error() == ""  # the premise: this machine's triton imports


def test_info_warns_of_an_extension_and_kernels_from_another_checkout(monkeypatch):
    """fastgan imported from one checkout (PYTHONPATH) beside an editable install of another: that install's finder
    resolved fastgan._C and fastgan.kernels, missing from this checkout, to the other one's, and `fastgan info` said
    "loaded" of a build this checkout never made (an audit of info and packaging, 2026-12-07)."""
    import fastgan._C as C
    from fastgan.info import format_report
    from fastgan.ops import _dispatch

    info_mod = sys.modules["fastgan.info"]
    assert fastgan.info()["extension"]["elsewhere"] is None  # this fastgan's own build
    monkeypatch.setattr(info_mod, "_PACKAGE", os.path.join(os.sep, "elsewhere", "fastgan"))
    r = fastgan.info()
    assert r["extension"]["elsewhere"] == os.path.dirname(os.path.abspath(C.__file__))
    text = format_report(r)
    assert f"\n  WARNING: it comes from {r['extension']['elsewhere']}, not from this fastgan (/elsewhere/fastgan): " \
        "another checkout's or install's; build this checkout's (pip install -e .)" in text
    if _dispatch.kernels_installed():
        assert r["kernels_elsewhere"] and f"\n  WARNING: fastgan.kernels comes from {r['kernels_elsewhere']}" in text
