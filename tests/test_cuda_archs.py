"""Which GPUs the built CUDA kernels run on: the arch rules, the dispatcher's use of them on a GPU the build has no
code for (the cuda backend is refused with the reason; "auto" moves on), `fastgan info`, and the binary itself
(each architecture the build reports holds the code the rules assume)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import types
import warnings
from pathlib import Path

import pytest
import torch

import fastgan
from fastgan import _ext
from fastgan.ops import _dispatch

ROOT = Path(__file__).resolve().parents[1]
info = importlib.import_module("fastgan.info")  # the module: fastgan.info is also the function


@pytest.mark.parametrize("arch, capability, way", [
    ("80", (8, 0), "sass"), ("80", (8, 6), "sass"), ("80", (8, 9), "sass"),  # A100; RTX 30xx, L4/RTX 40xx
    ("80", (7, 5), None), ("80", (9, 0), "ptx"),
    ("75", (7, 5), "sass"), ("75", (8, 0), "ptx"),
    ("90", (9, 0), "sass"), ("90", (10, 0), "ptx"), ("90", (12, 0), "ptx"),  # Blackwell JITs Hopper's PTX
    ("90-real", (10, 0), None), ("90-real", (9, 0), "sass"), ("80-virtual", (8, 6), "ptx"),
    ("90a", (9, 0), "sass"), ("90a", (10, 0), None), ("100f", (10, 3), "sass"), ("100f", (12, 0), None),
    ("120", (12, 0), "sass"),
])
def test_arch_rules(arch, capability, way):
    assert _ext.arch_runs_on(arch, capability) == way


def test_unparsable_arch_is_named():
    with pytest.raises(ValueError, match="'sm80'"):
        _ext.arch_runs_on("sm80", (8, 0))


def test_status_names_the_build_and_the_gpu():
    assert _ext.archs_status(["75", "80", "90"], (8, 6), "RTX 3090") == (True, "")
    ok, why = _ext.archs_status(["80", "90"], (7, 5), "Tesla T4")
    assert not ok
    assert "sm_80, sm_90" in why and "Tesla T4 (sm_75)" in why and "FASTGAN_CUDA_ARCH=75" in why


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA build for `archs` and one visible GPU of `capability`, without touching CUDA."""
    def make(archs: str, capability: tuple[int, int], name: str):
        module = types.SimpleNamespace(cuda_compiled=True, cuda_archs=archs, cuda_runtime="13.0",
                                       cuda_device_count=lambda: (1, "", 0))
        monkeypatch.setattr(_ext, "_load", lambda: (module, None))
        monkeypatch.setattr(_ext, "_runtime", [])
        monkeypatch.setattr(_ext, "_capabilities", {})
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: name)
        monkeypatch.setattr(_dispatch, "_warned", set())
        return module
    return make


def test_cuda_backend_refused_on_a_gpu_without_code(fake_gpu, monkeypatch):
    fake_gpu("80,90", (7, 5), "Tesla T4")
    gpu = torch.device("cuda")
    ok, why = _dispatch.status("cuda", gpu)
    assert not ok and "Tesla T4 (sm_75)" in why
    with pytest.raises(_dispatch.BackendUnavailable, match=r"backend 'cuda' cannot run here: .*sm_75"):
        _dispatch.resolve("grad_norm_penalty", gpu, "cuda")
    # "auto" moves on to Triton, or, without it, says why it runs the reference
    monkeypatch.setattr(_dispatch, "triton_status", lambda device: (True, ""))
    assert _dispatch.resolve("grad_norm_penalty", gpu, None) == "triton"
    monkeypatch.setattr(_dispatch, "triton_status", lambda device: (False, "triton is not installed"))
    with pytest.warns(_dispatch.FallbackWarning, match=r"cuda: fastgan._C's CUDA kernels were built for sm_80"):
        assert _dispatch.resolve("grad_norm_penalty", gpu, None) == "reference"


@pytest.mark.parametrize("capability", [(8, 6), (9, 0), (10, 0)])
def test_cuda_backend_taken_where_the_build_runs(fake_gpu, capability):
    fake_gpu("75,80,90", capability, "GPU")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve("grad_norm_penalty", torch.device("cuda"), None) == "cuda"


def test_cuda_backend_refused_where_the_extensions_own_runtime_finds_no_gpu(fake_gpu, monkeypatch):
    """_C links nvcc 13's runtime statically: on a driver too old for it torch (built for CUDA 12) sees the GPU and
    fastgan's kernels cannot run, so the backend is unusable, with the reason and its remedy, asked once a process;
    another error is quoted as it is, without that remedy, and asked again at the next call (it may pass)."""
    module = fake_gpu("80,90", (9, 0), "H100")
    calls = []
    module.cuda_device_count = lambda: calls.append(1) or (0, "CUDA driver version is insufficient for CUDA "
                                                              "runtime version", 35)
    gpu = torch.device("cuda")
    ok, why = _dispatch.status("cuda", gpu)
    assert not ok and "fastgan._C's CUDA runtime (CUDA 13.0" in why and "driver version is insufficient" in why
    assert "update the NVIDIA driver" in why and "CUDA_HOME" in why
    with pytest.raises(_dispatch.BackendUnavailable, match=r"backend 'cuda' cannot run here: .*insufficient"):
        _dispatch.resolve("grad_norm_penalty", gpu, "cuda")
    monkeypatch.setattr(_dispatch, "triton_status", lambda device: (True, ""))
    assert _dispatch.resolve("grad_norm_penalty", gpu, None) == "triton"
    assert _ext.cuda_status() == (False, why)
    assert calls == [1]

    monkeypatch.setattr(_ext, "_runtime", [])
    answers = [(0, "initialization error", 3), (1, "", 0)]
    module.cuda_device_count = lambda: calls.append(2) or answers.pop(0)
    ok, why = _ext.cuda_status(gpu)
    assert not ok and why.endswith("does: initialization error") and "driver" not in why
    assert _ext.cuda_status(gpu) == (True, "") and _ext.cuda_status(gpu) == (True, "")
    assert calls == [1, 2, 2]


def test_capability_is_read_once_per_device(fake_gpu, monkeypatch):
    fake_gpu("80,90", (8, 0), "A100")
    calls = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: calls.append(i) or (8, 0))
    for _ in range(3):
        assert _ext.cuda_status(torch.device("cuda", 0)) == (True, "")
    assert calls == [0]


def test_info_lists_each_gpu_and_how_the_kernels_run_there(fake_gpu):
    fake_gpu("80-real,90", (8, 0), "A100")
    assert info._cuda_devices(_ext.C()) == [{"index": 0, "name": "A100", "capability": "8.0",
                                             "fastgan_code": "sass"}]
    fake_gpu("80-real,90", (10, 0), "B200")
    assert info._cuda_devices(_ext.C())[0]["fastgan_code"] == "ptx"
    fake_gpu("80-real,90", (7, 5), "Tesla T4")
    devices = info._cuda_devices(_ext.C())
    assert devices[0]["fastgan_code"] is None
    report = {"fastgan": "x", "torch": "x", "torch_cuda": "13.0", "triton": None, "triton_interpret": False,
              "extension": {"loaded": True, "error": None, "cuda_compiled": True, "cuda_archs": ["80-real", "90"],
                            "openmp": True},
              "cuda_device": "Tesla T4", "cuda_devices": devices, "backends": {}}
    assert "cuda:0 Tesla T4 (sm_75): fastgan's CUDA kernels: cannot run there" in info.format_report(report)


def test_default_architectures_agree():
    setup_default = re.search(r'DEFAULT_CUDA_ARCH = "([^"]+)"', (ROOT / "setup.py").read_text()).group(1)
    cmake_default = re.search(r'set\(FASTGAN_CUDA_ARCH "([^"]+)"', (ROOT / "CMakeLists.txt").read_text()).group(1)
    assert setup_default == cmake_default == "75;80;90"


def _cuobjdump() -> str | None:
    spec = importlib.util.find_spec("triton")  # triton's wheel bundles the CUDA binary utilities
    for root in ([*spec.submodule_search_locations] if spec else []):
        tool = Path(root) / "backends" / "nvidia" / "bin" / "cuobjdump"
        if tool.exists():
            return str(tool)
    return None


def test_binary_holds_the_code_the_rules_assume():
    import fastgan._C as C

    if not C.cuda_compiled:
        pytest.skip("fastgan._C was built without CUDA here")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (it comes with triton's wheel)")
    lib = C.__file__
    listed = {kind: subprocess.run([tool, f"--list-{kind}", lib], capture_output=True, text=True, check=True).stdout
              for kind in ("elf", "ptx")}
    archs = C.cuda_archs.split(",")
    for arch in archs:
        m = re.fullmatch(r"(\d+[af]?)(?:-(real|virtual))?", arch)
        sass = re.search(rf"\.sm_{m.group(1)}\.cubin", listed["elf"]) is not None
        ptx = re.search(rf"\.sm_{m.group(1)}\.ptx", listed["ptx"]) is not None
        assert sass == (m.group(2) != "virtual") and ptx == (m.group(2) != "real"), (arch, listed)
    if os.environ.get("CI") and not (os.environ.get("FASTGAN_CUDA_ARCH") or os.environ.get("TORCH_CUDA_ARCH_LIST")):
        assert archs == ["75", "80", "90"]  # CI builds the default: Turing's code compiles too
    assert fastgan.info()["extension"]["cuda_archs"] == archs


def _setup_module(monkeypatch):
    """setup.py as a module, its setup() call a no-op."""
    import importlib.util

    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)
    spec = importlib.util.spec_from_file_location("fastgan_setup", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_torch_arch_list_with_architectures_nvcc_13_cannot_build(monkeypatch, capsys):
    """A TORCH_CUDA_ARCH_LIST made for torch (Docker images list 7.0) failed the whole install under nvcc 13
    ("Unsupported gpu architecture 'compute_70'", deep in CMake's compiler test): those are skipped, named."""
    setup = _setup_module(monkeypatch)
    monkeypatch.delenv("FASTGAN_CUDA_ARCH", raising=False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.0 7.5 8.0 8.6 9.0+PTX")
    assert setup.cuda_archs(13) == "75;80;86;90"
    assert "skipping sm_70 (nvcc 13 builds sm_75 and newer)" in capsys.readouterr().out
    assert setup.cuda_archs(12) == "70;75;80;86;90"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "6.1;7.0")
    with pytest.raises(RuntimeError, match=r"nvcc 13 builds none of these architectures"):
        setup.cuda_archs(13)
    monkeypatch.setenv("FASTGAN_CUDA_ARCH", "90")  # fastgan's own list wins, as before
    assert setup.cuda_archs(13) == "90"
    nvcc = setup.find_nvcc()
    if nvcc is not None:
        assert isinstance(setup.nvcc_major(nvcc), int)


def test_fastgan_cuda_arch_entries_are_what_the_run_time_check_reads(monkeypatch):
    """FASTGAN_CUDA_ARCH=all-major built, then every CUDA op failed to parse the reported list; set empty it built
    nvcc's default and reported no architecture (the cuda backend refused everywhere)."""
    setup = _setup_module(monkeypatch)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    for value in ("all", "all-major", "native", "sm_90", "9.0", ";"):
        monkeypatch.setenv("FASTGAN_CUDA_ARCH", value)
        with pytest.raises(RuntimeError, match=r"FASTGAN_CUDA_ARCH"):
            setup.cuda_archs(13)
    monkeypatch.setenv("FASTGAN_CUDA_ARCH", "")
    assert setup.cuda_archs(13) == setup.DEFAULT_CUDA_ARCH
    monkeypatch.setenv("FASTGAN_CUDA_ARCH", "80;90a;100f-virtual;90-real;")
    assert setup.cuda_archs(13) == "80;90a;100f-virtual;90-real"
    # the build's grammar is the run-time check's
    for entry in ("80", "90a", "100f-virtual", "90-real", "120", "all-major", "9.0", "sm_90", "90b", "90-fake"):
        try:
            _ext.arch_runs_on(entry, (9, 0))
            parses = True
        except ValueError:
            parses = False
        assert bool(setup.CUDA_ARCH_ENTRY.fullmatch(entry)) == parses, entry


def test_torch_arch_list_names_native_and_empty_items(monkeypatch, capsys):
    setup = _setup_module(monkeypatch)
    monkeypatch.delenv("FASTGAN_CUDA_ARCH", raising=False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "Ampere;Hopper;")
    assert setup.cuda_archs(13) == "80;86;90"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "Turing 8.0 7.5")
    assert setup.cuda_archs(13) == "75;80"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "native")
    assert setup.cuda_archs(13) == setup.DEFAULT_CUDA_ARCH
    assert "TORCH_CUDA_ARCH_LIST=native" in capsys.readouterr().out


def test_cuda_home_comes_before_an_nvcc_on_path(monkeypatch, tmp_path):
    """docs/install.md: CUDACXX, then CUDA_HOME, then nvcc on PATH (an nvcc on PATH was taken over CUDA_HOME, so a
    CUDA 12 toolkit named for a V100 build lost to CUDA 13 on PATH)."""
    setup = _setup_module(monkeypatch)
    home, path_dir = tmp_path / "cuda12", tmp_path / "bin"
    for nvcc in (home / "bin" / "nvcc", path_dir / "nvcc"):
        nvcc.parent.mkdir(parents=True)
        nvcc.write_text("#!/bin/sh\n")
        nvcc.chmod(0o755)
    monkeypatch.delenv("CUDACXX", raising=False)
    monkeypatch.setenv("PATH", str(path_dir))
    monkeypatch.setenv("CUDA_HOME", str(home))
    assert setup.find_nvcc() == str(home / "bin" / "nvcc")
    monkeypatch.delenv("CUDA_HOME")
    assert setup.find_nvcc() == str(path_dir / "nvcc")
    monkeypatch.setenv("CUDACXX", str(path_dir / "nvcc"))
    monkeypatch.setenv("CUDA_HOME", str(home))
    assert setup.find_nvcc() == str(path_dir / "nvcc")


@pytest.mark.parametrize("var", ["CUDACXX", "CUDA_HOME"])
def test_a_cuda_variable_naming_no_nvcc_is_said(monkeypatch, capsys, tmp_path, var):
    """CUDACXX / CUDA_HOME name the toolkit on purpose: one that names no nvcc (a typo) fails a build that needs
    CUDA and is noted in any other, where it was skipped in silence (another toolkit built, or none)."""
    setup = _setup_module(monkeypatch)
    for other in ("CUDACXX", "CUDA_HOME"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(var, str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match=rf"FASTGAN_CUDA=1 but {var}=.*nope names no nvcc"):
        setup.find_nvcc(required=True)
    found = setup.find_nvcc()
    assert f"{var}={tmp_path / 'nope'} names no nvcc" in capsys.readouterr().out
    assert found is None or Path(found).exists()
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("")
    monkeypatch.setenv(var, str(nvcc if var == "CUDACXX" else tmp_path / "cuda"))
    assert setup.find_nvcc(required=True) == str(nvcc) and capsys.readouterr().out == ""
    if var == "CUDACXX":  # a command name, as CMake takes it: found on PATH
        nvcc.chmod(0o755)
        monkeypatch.setenv("PATH", f"{nvcc.parent}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("CUDACXX", "nvcc")
        assert setup.find_nvcc(required=True) == str(nvcc) and capsys.readouterr().out == ""
