"""Lazy access to the compiled extension ``fastgan._C``; never touches CUDA on import."""
from __future__ import annotations

import functools
import importlib
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
            msg += (f" (fastgan was imported from the source tree {src_root}, which holds no built extension: "
                    "run `pip install -e .` there, or run from another directory so the installed package is used)")
        return None, msg


def C():
    """The extension module, or raise RuntimeError saying why it is unavailable."""
    mod, err = _load()
    if mod is None:
        raise RuntimeError(err)
    return mod


def available() -> tuple[bool, str]:
    mod, err = _load()
    return mod is not None, err or ""


def cuda_status() -> tuple[bool, str]:
    """Whether the extension's CUDA kernels can run here, and why not when they can't."""
    mod, err = _load()
    if mod is None:
        return False, err
    if not mod.cuda_compiled:
        return False, "fastgan._C was built without CUDA (no nvcc at build time, or FASTGAN_CUDA=0)"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    return True, ""


def stream_handle(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream
