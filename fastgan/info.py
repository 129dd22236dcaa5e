"""`fastgan.info()` / `python -m fastgan info`: what is built, what can run here, and why not."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os

import torch

from . import _ext
from ._version import __version__
from .ops import _dispatch


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _triton_version() -> str | None:
    """The installed triton's version: the `triton` distribution's, or `pytorch-triton`'s (torch's nightly builds
    install triton under that name); None when triton is not installed."""
    if not _dispatch.triton_installed():
        return None
    return _version("triton") or _version("pytorch-triton") or "(version unknown)"


_PACKAGE = os.path.dirname(os.path.abspath(__file__))  # this fastgan's folder (not resolved: a link tree is one)


def _elsewhere(origin: str | None, *homes: str) -> str | None:
    """origin's folder where it lies in none of `homes`: a module that another checkout's editable install resolved
    (its finder maps fastgan._C and fastgan.kernels to that checkout where this fastgan's folder lacks them)."""
    if not origin:
        return None
    folder = os.path.dirname(os.path.abspath(origin))
    return None if folder in homes else folder


def _kernels_elsewhere() -> str | None:
    """The folder fastgan.kernels comes from where it is not this fastgan's (fastgan/kernels installed, kernels/
    beside fastgan/ in a checkout); found without importing it (it imports triton)."""
    spec = importlib.util.find_spec("fastgan.kernels") if _dispatch.kernels_installed() else None
    return _elsewhere(spec and spec.origin, os.path.join(_PACKAGE, "kernels"),
                      os.path.join(os.path.dirname(_PACKAGE), "kernels"))


def _cuda_devices(C) -> list[dict]:
    """Each visible GPU, its architecture, and how fastgan's CUDA kernels run on it: from their machine code
    ("sass"), JIT-compiled from PTX at the first launch ("ptx"), or not at all (None)."""
    if not torch.cuda.is_available():
        return []
    archs = [a for a in (C.cuda_archs.split(",") if C is not None and C.cuda_compiled else []) if a]
    out = []
    for i in range(torch.cuda.device_count()):
        cc = tuple(torch.cuda.get_device_capability(i))
        out.append({"index": i, "name": torch.cuda.get_device_name(i), "capability": f"{cc[0]}.{cc[1]}",
                    "fastgan_code": _ext.build_runs_on(archs, cc)})
    return out


def info(print_report: bool = False) -> dict:
    """A dict describing versions, the extension and, per device type, which backends are usable.

    Checking CUDA availability here is deliberate (the user asked); importing fastgan never does.
    """
    loaded, why = _ext.available()
    C = _ext.C() if loaded else None
    report = {
        # the imported package's version, as run_info.json records it (the installed metadata's may be another
        # checkout's: an editable install, or PYTHONPATH pointing elsewhere)
        "fastgan": __version__,
        "package": _PACKAGE,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        # set where triton is installed but does not import (the Triton backend is unusable then)
        "triton_error": (_dispatch.triton_import_error() or None) if _dispatch.triton_installed() else None,
        "triton_interpret": _dispatch.triton_interpret(),
        # the folder fastgan.kernels comes from where it is another checkout's, not this fastgan's
        "kernels_elsewhere": _kernels_elsewhere(),
        "extension": {"loaded": loaded, "error": why or None,
                      # its folder where it is not this fastgan's (another checkout's editable install resolved it)
                      "elsewhere": _elsewhere(getattr(C, "__file__", None), _PACKAGE) if C else None,
                      "cuda_compiled": bool(C and C.cuda_compiled),
                      "cuda_archs": (C.cuda_archs.split(",") if C and C.cuda_archs else []),
                      "openmp": bool(C and C.openmp),
                      # the CPU kernels' multi-versioned clone and the noise draw's SIMD path on this machine
                      "cpu_simd": ({"kernels": C.cpu_clones(), "noise_draw": C.noise_draw_simd()} if C else None)},
        "cuda_devices": _cuda_devices(C),
        "metrics_classifier": _classifier_status(),
        "compiled_d": _compiled_d_status(),
        "closed_form_traced": _closed_form_traced(),
        "denoiser_triton_gemm": _denoiser_triton_gemm(),
        "backends": {},
    }
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        report["backends"][dev.type] = {
            b: {"usable": ok, "reason": reason or None}
            for b in _dispatch.BACKENDS for ok, reason in [_dispatch.status(b, dev)]
        }
    if not torch.cuda.is_available():
        report["backends"]["cuda"] = {b: {"usable": False, "reason": "no CUDA device visible to torch"}
                                      for b in ("cuda", "triton")}
    try:
        forced, named = _dispatch.requested_backend()
        report["forced_backend"] = {"backend": forced, "by": named if forced else None, "error": None}
    except ValueError as e:
        report["forced_backend"] = {"backend": None, "by": None, "error": str(e)}
    # the backend an op given no backend= runs on, per device type (None: it raises BackendUnavailable, or
    # ValueError for an unknown FASTGAN_BACKEND)
    report["chosen"] = {}
    for dev in (d.type for d in devices):
        backends = report["backends"][dev]
        if report["forced_backend"]["error"]:
            report["chosen"][dev] = None
        elif forced is not None:
            report["chosen"][dev] = forced if backends.get(forced, {}).get("usable") else None
        else:
            report["chosen"][dev] = _dispatch.best_fused(torch.device(dev))[0] or "reference"
    if print_report:
        print(format_report(report))
    return report


def _compiled_d_status() -> dict:
    from .ops import compiled_d

    ok, why = compiled_d.support()
    return {"ok": ok, "reason": why or None}


def _closed_form_traced() -> bool:
    from .ops import penalty_jvp

    return penalty_jvp.CLOSED_FORM_TRACED


def _denoiser_triton_gemm() -> dict:
    from .ops import denoiser_backends

    try:
        return {"gemm": denoiser_backends.triton_gemm(), "error": None}
    except ValueError as e:
        return {"gemm": None, "error": str(e)}


def _classifier_status() -> dict:
    """Whether the Fashion-MNIST classifier behind run.fd and `fastgan eval` is installed intact (file and
    SHA-256 only: the network itself is not built here)."""
    from .metrics import classifier

    reason = {None: None, "missing": "not found (reinstall fastgan)",
              "damaged": "is damaged (SHA-256 differs; reinstall fastgan)"}[classifier.shipped_weights_problem()]
    return {"ok": reason is None, "reason": reason and f"{classifier.WEIGHTS} {reason}"}


def format_report(r: dict) -> str:
    ext = r["extension"]
    lines = [
        f"fastgan {r['fastgan']}",
        f"torch {r['torch']} (CUDA {r['torch_cuda'] or 'none'})",
        f"triton {r['triton'] or 'not installed'}" + (" [TRITON_INTERPRET=1]" if r["triton_interpret"] else "")
        + (f": does not import ({r['triton_error']})" if r.get("triton_error") else ""),
    ]
    # a module of another checkout (an editable install of it, this fastgan lacking its own): ops run its code
    elsewhere = "  WARNING: {} comes from {}, not from this fastgan ({}): another checkout's or install's; {}"
    if r.get("kernels_elsewhere"):
        lines.append(elsewhere.format("fastgan.kernels", r["kernels_elsewhere"], r["package"],
                                      "install this checkout (pip install -e .)"))
    lines.append("fastgan._C: " + ("loaded" if ext["loaded"] else f"NOT loaded: {ext['error']}"))
    if ext.get("elsewhere"):
        lines.append(elsewhere.format("it", ext["elsewhere"], r["package"], "build this checkout's (pip install -e .)"))
    if ext["loaded"]:
        lines.append(f"  CUDA kernels: {'sm_' + ', sm_'.join(ext['cuda_archs']) if ext['cuda_compiled'] else 'not built'}"
                     f"; OpenMP: {'yes' if ext['openmp'] else 'no'}")
        simd = ext.get("cpu_simd")  # absent from reports made by older versions
        if simd:
            lines.append(f"  CPU kernels: {simd['kernels']} clones; noise draw: {simd['noise_draw']}")
    lines.append(f"CUDA devices: {len(r['cuda_devices']) or 'none'}")
    code = {"sass": "machine code for it", "ptx": "JIT-compiled from PTX at the first launch",
            None: "cannot run there (no code for this architecture; see FASTGAN_CUDA_ARCH)"}
    for d in r["cuda_devices"]:
        where = code[d["fastgan_code"]] if ext["cuda_compiled"] else "not built"
        lines.append(f"  cuda:{d['index']} {d['name']} (sm_{d['capability'].replace('.', '')}): fastgan's CUDA "
                     f"kernels: {where}")
    mc = r.get("metrics_classifier")  # absent from reports made by older versions
    if mc is not None:
        lines.append("Fashion-MNIST classifier (run.fd, fastgan eval): " + ("ok" if mc["ok"] else mc["reason"]))
    cd = r.get("compiled_d")
    if cd is not None:
        lines.append("torch.compile'd code inside a penalty's D: " + ("run eagerly by every mode" if cd["ok"]
                                                                        else cd["reason"]))
    traced = r.get("closed_form_traced")
    if traced is not None:
        lines.append("the closed-form penalty (mode 'mlp', or 'auto' taking it) inside torch.compile: " + (
            "traced, fullgraph=True included" if traced else
            f"run eagerly, a graph break (torch {r['torch']}: traced on torch >= 2.7, whose Dynamo gives it the "
            "eager gradients)"))
    dg = r.get("denoiser_triton_gemm")
    if dg is not None:
        lines.append("Triton denoiser's GEMMs: " + (
            dg["error"] if dg["error"] else "torch's, Triton kernels around them (FASTGAN_DENOISER_TRITON_GEMM=tl.dot: "
            "its own fused tl.dot GEMMs)" if dg["gemm"] == "torch" else "its own fused tl.dot GEMMs "
            f"(FASTGAN_DENOISER_TRITON_GEMM={dg['gemm']})"))
    fb = r.get("forced_backend") or {}
    if fb.get("error"):
        lines.append(f"forced backend: {fb['error']} (every op called without backend= raises)")
    elif fb.get("backend"):
        lines.append(f"forced backend: {fb['by']} (every op called without backend=)")
    chosen = r.get("chosen", {})
    for dev, backends in r["backends"].items():
        lines.append(f"backends for {dev} tensors:")
        for name, st in backends.items():
            mark = " (ops run here)" if chosen.get(dev) == name else ""
            lines.append(f"  {name:<10} {'usable' if st['usable'] else 'unusable: ' + st['reason']}{mark}")
        if dev in chosen and chosen[dev] is None:
            lines.append("  ops given no backend= raise ValueError: FASTGAN_BACKEND names no backend" if fb.get("error")
                         else "  ops given no backend= raise BackendUnavailable: the forced backend cannot run here")
    return "\n".join(lines)
