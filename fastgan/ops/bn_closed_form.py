"""The BatchNorm (batch statistics) passes of the penalty's closed form (mode="mlp", fastgan/ops/mlp_penalty_bn.py),
each one fused kernel: a per-channel reduction and an element-wise pass with per-channel coefficients, where
torch ops took 6 (stats), 8 (centered) and ~35 (vjp) kernels and as many passes over the activations.

  stats(h, eps)                                -> (xhat, rstd)           batch statistics
  centered(xhat, t, rstd, gamma)               -> (out, mt, q)           gamma * BatchNorm's derivative along t
                                                                          (or its backward map on a gradient t)
  vjp(rho, lam, xhat, t, rstd, gamma, mt, q)   -> (d_h, d_gamma, d_beta) adjoints for the penalty's gradient

Formulas: fastgan/reference/bn_closed_form.py (the oracle) and csrc/include/fastgan/bn_closed_form_math.h (the CPU
and CUDA kernels' shared math). Big tensors are contiguous (B, C, *spatial), per-channel vectors (C,), all of one
dtype and device; float16/bfloat16 run the float32 kernels on upcast copies. Backends: "reference", "cpu", "cuda",
"triton" (see _dispatch); the one that ran is counted under ("bn_closed_form", backend).

These are kernels inside the closed form's forward and first-order backward, which run without autograd; a
backward with create_graph=True recomputes through plain torch (penalty_create_graph), so these ops have no
autograd formula of their own: their gradients are the penalty's, gradchecked in tests/ops/test_penalty_*.py.
Eagerly they are plain calls; under torch.compile (which traces the closed form), dispatch modes and functorch
(fastgan/ops/_eager.py decides) they are the custom ops fastgan::bn_cf_stats / bn_cf_centered / bn_cf_vjp with fake
kernels.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _ext
from ..reference import bn_closed_form as ref
from . import _checks, _dispatch, _eager, _library

OP = "bn_closed_form"
KERNEL_DTYPES = (torch.float32, torch.float64)
Tensor = torch.Tensor


def _layout(x: Tensor) -> tuple[int, int, int]:
    return x.shape[0], x.shape[1], math.prod(x.shape[2:])


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _code(t: Tensor) -> int:
    return _ext.DTYPE_CODES[t.dtype]


# ---------------------------------------------------------------- backends, no autograd
# The kernel backends write into outputs allocated here (_OUTPUTS), one function per op taking (*inputs, *outputs);
# the reference returns new tensors.

def _vector(x: Tensor) -> Tensor:
    return x.new_empty(x.shape[1])


_OUTPUTS = {
    "stats": lambda h, eps: (torch.empty_like(h), _vector(h)),
    "centered": lambda xhat, t, rstd, gamma: (torch.empty_like(t), _vector(t), _vector(t)),
    "vjp": lambda rho, lam, xhat, t, rstd, gamma, mt, q: (
        torch.empty_like(xhat), None if gamma is None else _vector(xhat), _vector(xhat)),
}


_CUDA_LIMIT = 2**31


class _Native:
    """The _C kernels: suffix "cpu" or "cuda"; tensors go as raw pointers (0 for None), then dtype and (B, C, S)."""

    def __init__(self, suffix: str):
        self.suffix = suffix

    def _call(self, name: str, like: Tensor, tensors, *rest):
        B, C, S = _layout(like)
        if self.suffix == "cuda" and (B * S >= _CUDA_LIMIT or C >= _CUDA_LIMIT):
            # the CUDA kernels index a channel's values in 32 bits (they refused with cudaErrorInvalidValue)
            raise ValueError(f"the CUDA closed-form BatchNorm kernels take fewer than 2**31 values per channel and "
                             f"channels; got {B * S} values in each of {C} channels (batch {B} x {S} positions): use "
                             "mode='jvp' or 'double_backward' for a batch this large")
        fn = getattr(_ext.C(), f"bn_cf_{name}_{self.suffix}")
        args = (*(_ptr(t) for t in tensors), _code(like), B, C, S, *rest)
        if self.suffix == "cuda":
            with torch.cuda.device(like.device):
                fn(*args, _ext.stream_handle(like.device))
        else:
            fn(*args)

    def stats(self, h, eps, xhat, rstd):
        self._call("stats", h, (h, xhat, rstd), float(eps))

    def centered(self, xhat, t, rstd, gamma, out, mt, q):
        self._call("centered", t, (xhat, t, rstd, gamma, out, mt, q))

    def vjp(self, rho, lam, xhat, t, rstd, gamma, mt, q, dh, dgamma, dbeta):
        self._call("vjp", xhat, (rho, lam, xhat, t, rstd, gamma, mt, q, dh, dgamma, dbeta))


class _Triton:
    @staticmethod
    def _launch(name: str, like: Tensor, *args):
        from ..kernels import bn_closed_form as k

        with _dispatch.on_device(like):
            getattr(k, name)(*args)

    def stats(self, h, eps, xhat, rstd):
        self._launch("stats", h, h, xhat, rstd, *_layout(h), eps)

    def centered(self, xhat, t, rstd, gamma, out, mt, q):
        self._launch("centered", t, xhat, t, rstd, gamma, out, mt, q, *_layout(t))

    def vjp(self, rho, lam, xhat, t, rstd, gamma, mt, q, dh, dgamma, dbeta):
        self._launch("vjp", xhat, rho, lam, xhat, t, rstd, gamma, mt, q, dh, dgamma, dbeta, *_layout(xhat))


_KERNELS = {"cpu": _Native("cpu"), "cuda": _Native("cuda"), "triton": _Triton()}


def _run(name: str, backend: str, args: tuple, outs_dtype: torch.dtype):
    """The op on `backend`: float32/float64 tensors as they are, half tensors by the float32 kernel on upcast
    copies (the reference runs in their own dtype)."""
    _dispatch.record(OP, backend)  # here, not in the entry points: under torch.compile this runs inside the op
    if backend == "reference":
        return getattr(ref, name)(*args)
    half = outs_dtype not in KERNEL_DTYPES
    if half:
        args = tuple(a.float() if isinstance(a, Tensor) else a for a in args)
    outs = _OUTPUTS[name](*args)
    getattr(_KERNELS[backend], name)(*args, *outs)
    if half:
        return tuple(None if o is None else o.to(outs_dtype) for o in outs)
    return outs


# ---------------------------------------------------------------- custom ops (torch.compile); eager calls skip them

def _op_args(op, base, like_base=(), per_channel=()):
    """Arguments sized against base = (name, tensor (B, C, ...)), of its dtype: the kernels take raw pointers (see
    _checks.op_shapes)."""
    name, x = base
    if x.dim() < 2:
        raise ValueError(f"fastgan::{op}: {name} must have shape (B, C, ...), got {tuple(x.shape)}")
    _checks.op_shapes(op, *((k, v, tuple(x.shape)) for k, v in like_base),
                      *((k, v, (x.shape[1],)) for k, v in per_channel))
    _checks.op_dtypes(op, base, *like_base, *per_channel)  # the kernels read every pointer as base's type


@_library.custom_op("fastgan::bn_cf_stats", mutates_args=())
def _stats_op(h: Tensor, eps: float, backend: str) -> tuple[Tensor, Tensor]:
    _op_args("bn_cf_stats", ("h", h))
    return _run("stats", backend, (h, eps), h.dtype)


@_stats_op.register_fake
def _(h, eps, backend):
    return torch.empty_like(h), h.new_empty(h.shape[1])


@_library.custom_op("fastgan::bn_cf_centered", mutates_args=())
def _centered_op(xhat: Tensor, t: Tensor, rstd: Tensor, gamma: Optional[Tensor], backend: str
                 ) -> tuple[Tensor, Tensor, Tensor]:
    _op_args("bn_cf_centered", ("xhat", xhat), [("t", t)], [("rstd", rstd), ("gamma", gamma)])
    return _run("centered", backend, (xhat, t, rstd, gamma), t.dtype)


@_centered_op.register_fake
def _(xhat, t, rstd, gamma, backend):
    return torch.empty_like(t), t.new_empty(t.shape[1]), t.new_empty(t.shape[1])


@_library.custom_op("fastgan::bn_cf_vjp", mutates_args=())
def _vjp_op(rho: Tensor, lam: Tensor, xhat: Tensor, t: Tensor, rstd: Tensor, gamma: Optional[Tensor], mt: Tensor,
            q: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    _op_args("bn_cf_vjp", ("xhat", xhat), [("rho", rho), ("lam", lam), ("t", t)],
               [("rstd", rstd), ("gamma", gamma), ("mt", mt), ("q", q)])
    dh, dgamma, dbeta = _run("vjp", backend, (rho, lam, xhat, t, rstd, gamma, mt, q), xhat.dtype)
    # a custom op returns tensors only: no gamma, an empty d_gamma (vjp() maps it back to None)
    return dh, xhat.new_empty(0) if dgamma is None else dgamma, dbeta


@_vjp_op.register_fake
def _(rho, lam, xhat, t, rstd, gamma, mt, q, backend):
    C = xhat.shape[1]
    return torch.empty_like(xhat), xhat.new_empty(0 if gamma is None else C), xhat.new_empty(C)


# ---------------------------------------------------------------- entry points

def _check(big: dict, vectors: dict) -> Tensor:
    """One clear error naming the argument: same shape (B, C, *spatial), dtype and device, contiguous. Of the
    per-channel vectors only gamma may be None."""
    (name0, x0), *rest = big.items()
    if not isinstance(x0, Tensor):
        raise TypeError(f"{name0} must be a torch.Tensor, got {type(x0).__name__}")
    if x0.dim() < 2 or x0.shape[0] < 1:
        raise ValueError(f"{name0} must be (B, C, *spatial) with B >= 1, got shape {tuple(x0.shape)}")
    if not x0.is_floating_point():
        raise TypeError(f"{name0} must be a floating tensor, got {x0.dtype}")
    C = x0.shape[1]
    items = [(n, t, tuple(x0.shape)) for n, t in rest]
    items += [(n, t, (C,)) for n, t in vectors.items() if not (n == "gamma" and t is None)]
    for name, t, shape in items:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (as {name0}'s), got {tuple(t.shape)}")
        if t.dtype != x0.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, {name0} {x0.dtype}: they must match")
        if t.device != x0.device:
            raise ValueError(f"{name} is on {t.device} but {name0} is on {x0.device}")
    for name, t, _ in [(name0, x0, None)] + items:
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    return x0


def stats(h: Tensor, eps: float, backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """(xhat, rstd): BatchNorm's batch statistics of h (B, C, *spatial), rstd (C,)."""
    _check({"h": h}, {})
    b = _dispatch.resolve(OP, h.device, backend)
    if not _eager.ok(h):
        return torch.ops.fastgan.bn_cf_stats(h, float(eps), b)
    return _run("stats", b, (h, eps), h.dtype)


def centered(xhat: Tensor, t: Tensor, rstd: Tensor, gamma: Optional[Tensor], backend: Optional[str] = None
             ) -> tuple[Tensor, Tensor, Tensor]:
    """(gamma rstd (t - mean t - xhat mean(xhat t)), mean t, mean(xhat t)); gamma may be None (1)."""
    _check({"t": t, "xhat": xhat}, {"rstd": rstd, "gamma": gamma})
    b = _dispatch.resolve(OP, t.device, backend)
    if not _eager.ok(xhat, t, rstd, gamma):
        return torch.ops.fastgan.bn_cf_centered(xhat, t, rstd, gamma, b)
    return _run("centered", b, (xhat, t, rstd, gamma), t.dtype)


def vjp(rho: Tensor, lam: Tensor, xhat: Tensor, t: Tensor, rstd: Tensor, gamma: Optional[Tensor], mt: Tensor,
        q: Tensor, backend: Optional[str] = None) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """(d_h, d_gamma (None without gamma), d_beta) for cotangents rho of gamma xhat + beta and lam of the
    tangent gamma dxhat(t); mt, q: centered()'s of t."""
    _check({"xhat": xhat, "rho": rho, "lam": lam, "t": t}, {"rstd": rstd, "gamma": gamma, "mt": mt, "q": q})
    b = _dispatch.resolve(OP, xhat.device, backend)
    if not _eager.ok(rho, lam, xhat, t, rstd, gamma, mt, q):
        dh, dgamma, dbeta = torch.ops.fastgan.bn_cf_vjp(rho, lam, xhat, t, rstd, gamma, mt, q, b)
        return dh, (None if gamma is None else dgamma), dbeta
    return _run("vjp", b, (rho, lam, xhat, t, rstd, gamma, mt, q), xhat.dtype)
