"""Lazy access to the compiled extension ``fastgan._C``; never touches CUDA on import."""
from __future__ import annotations

import functools
import importlib
import re
import threading
from pathlib import Path

import torch

# Same table as csrc/include/fastgan/common.h
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


@functools.lru_cache(maxsize=None)
def _load():
    try:
        return importlib.import_module("fastgan._C"), None
    except ImportError as e:  # not built (source checkout without `pip install -e .`) or broken build
        msg = f"fastgan._C failed to import: {e}"
        src_root = Path(__file__).resolve().parent.parent
        if (src_root / "setup.py").exists() and (src_root / "csrc").is_dir():
            built = sorted(p.name for p in (src_root / "fastgan").glob("_C*.so")) + \
                sorted(p.name for p in (src_root / "fastgan").glob("_C*.pyd"))
            held = f"whose build {', '.join(built)} does not import" if built else "which holds no built extension"
            msg += (f" (fastgan was imported from the source tree {src_root}, {held}: "
                    "run `pip install -e .` there, or run from another directory so the installed package is used)")
        return None, msg


# OpenMP keeps its thread count per OS thread: a thread's first team takes OMP_NUM_THREADS or every logical core,
# whatever torch.set_num_threads said, until torch itself runs a parallel op there (ATen sets the count then,
# lazily, per thread). The kernels' parallel loops run on the caller's thread, so a training loop in a fresh
# thread whose first parallel op was one of ours oversubscribed the CPU. torch.get_num_threads() runs ATen's lazy
# setup in the calling thread: once a thread, before its first kernel.
_thread = threading.local()


def C():
    """The extension module, or raise RuntimeError saying why it is unavailable."""
    mod, err = _load()
    if mod is None:
        raise RuntimeError(err)
    try:
        _thread.omp_set
    except AttributeError:
        torch.get_num_threads()
        _thread.omp_set = True
    return mod


def available() -> tuple[bool, str]:
    mod, err = _load()
    return mod is not None, err or ""


def arch_runs_on(arch: str, capability: tuple[int, int]) -> str | None:
    """How one entry of the build's CMake CUDA_ARCHITECTURES ("80", "90-real", "90a", "100f-virtual", ...) runs on a
    GPU of compute `capability`: "sass" (binary code for it), "ptx" (the driver JIT-compiles the PTX at first
    launch), or None. A plain entry embeds both, "-real" only SASS, "-virtual" only PTX. SASS runs on the same
    major version at an equal or higher minor; PTX on any equal or higher capability; "a" (arch-specific) code only
    on that exact capability, "f" (family) code on the same major version."""
    m = re.fullmatch(r"(\d+?)(\d)([af]?)(?:-(real|virtual))?", arch.strip())
    if m is None:
        raise ValueError(f"cannot parse CUDA architecture {arch!r}")
    built = (int(m.group(1)), int(m.group(2)))
    suffix, kind = m.group(3), m.group(4)
    if suffix == "a":
        fits_sass = fits_ptx = capability == built
    elif suffix == "f":
        fits_sass = fits_ptx = capability[0] == built[0] and capability[1] >= built[1]
    else:
        fits_sass = capability[0] == built[0] and capability[1] >= built[1]
        fits_ptx = capability >= built
    if kind != "virtual" and fits_sass:
        return "sass"
    if kind != "real" and fits_ptx:
        return "ptx"
    return None


def build_runs_on(archs: list[str], capability: tuple[int, int]) -> str | None:
    """How a build for `archs` runs on a GPU of `capability`: "sass" if some entry has machine code for it, else
    "ptx" if some entry's PTX can be JIT-compiled for it, else None."""
    ways = {arch_runs_on(a, capability) for a in archs}
    return "sass" if "sass" in ways else "ptx" if "ptx" in ways else None


def archs_status(archs: list[str], capability: tuple[int, int], name: str = "this GPU") -> tuple[bool, str]:
    """Whether kernels built for `archs` run on a GPU of `capability`, and why not when they cannot."""
    if build_runs_on(archs, capability) is not None:
        return True, ""
    have = ", ".join(f"sm_{a}" for a in archs) or "no architecture"
    cc = f"{capability[0]}{capability[1]}"
    return False, (f"fastgan._C's CUDA kernels were built for {have}, which cannot run on {name} (sm_{cc}): "
                   f"rebuild with FASTGAN_CUDA_ARCH={cc} pip install . (CUDA 13's nvcc builds sm_75 and newer)")


_capabilities: dict = {}


def _device_capability(device: torch.device) -> tuple[tuple[int, int], str]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _capabilities:  # queried once per device: backend resolution runs on every op call
        _capabilities[index] = (tuple(torch.cuda.get_device_capability(index)), torch.cuda.get_device_name(index))
    return _capabilities[index]


_runtime: list = []  # (device count, error, code) of _C's own CUDA runtime: a count, or a too old driver, is kept
_INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver


def runtime_status(mod) -> tuple[bool, str]:
    """Whether the CUDA runtime linked statically into _C reaches a GPU. torch's runtime may while it does not: a
    driver older than the CUDA version _C was built with (torch built for CUDA 12 runs there, _C built by nvcc 13
    does not). Asked where torch has found a device (its own query has initialised the driver by then); a count or
    a too old driver is kept for the process, any other error asked again at the next call."""
    result = _runtime[0] if _runtime else mod.cuda_device_count()
    n, err, code = result
    found = not err and n >= 1
    if found or code == _INSUFFICIENT_DRIVER:
        _runtime[:] = [result]
    if found:
        return True, ""
    built = getattr(mod, "cuda_runtime", "") or "?"
    where = (f"fastgan._C's CUDA runtime (CUDA {built}, linked into it) finds no GPU where torch (CUDA "
             f"{torch.version.cuda}) does: {err or 'no device'}")
    if code == _INSUFFICIENT_DRIVER:
        return False, (f"{where}; update the NVIDIA driver to one that supports CUDA {built}, or rebuild fastgan with "
                       f"the CUDA toolkit torch uses (CUDA_HOME=<that toolkit> pip install .)")
    return False, where


def cuda_status(device: torch.device | None = None) -> tuple[bool, str]:
    """Whether the extension's CUDA kernels can run here (on `device`'s GPU when given, checking that the build
    holds code for its architecture), and why not when they can't."""
    mod, err = _load()
    if mod is None:
        return False, err
    if not mod.cuda_compiled:
        return False, "fastgan._C was built without CUDA (no nvcc at build time, or FASTGAN_CUDA=0)"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    ok, why = runtime_status(mod)
    if not ok:
        return False, why
    if device is None:
        return True, ""
    capability, name = _device_capability(device)
    return archs_status([a for a in mod.cuda_archs.split(",") if a], capability, name)


def stream_handle(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream
