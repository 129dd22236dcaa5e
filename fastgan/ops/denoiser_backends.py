"""The fused DFM denoiser's kernels, one table per backend, without autograd, and how they are launched
(the layers and whole network built on them: denoiser_net.py; the public API: denoiser.py).

Every backend runs the GEMMs on torch (MKL / cuBLAS) and fuses everything around them into its kernels. The
"triton" backend can instead run the whole-network loss and forward as one tl.dot GEMM kernel per matrix product
with the same steps fused into its prologue / epilogue (kernels/denoiser_gemm.py), selected by
FASTGAN_DENOISER_TRITON_GEMM=tl.dot (triton_gemm()); either way the fused steps are:
  * after each hidden GEMM y = x W^T: bias, batch statistics, running-statistics update, normalise, ReLU
    (one kernel; the Linear bias cancels in training mode and is folded into the shift in eval mode);
  * its backward: ReLU mask, BatchNorm backward, gamma/beta/bias gradients (one kernel);
  * the corruption h + sigma * eps, and after the output GEMM the bias, the loss and, in the backward,
    its gradient and the output bias gradient.
Also the names the ops are resolved and counted under in _dispatch (OP_*, re-exported by denoiser.py).
"""
from __future__ import annotations

import os

import torch

from .. import _ext
from . import _dispatch

OP_LAYER = "bn_relu"
OP_RECON = "recon_loss"
OP_LOSS = "denoiser_loss"
OP_FORWARD = "denoiser_forward"

Tensor = torch.Tensor


# ---------------------------------------------------------------- backend kernels (no autograd)
# bn_fwd(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, training, track, momentum, eps, relu,
#        count=None): count, an int64 tensor the launch adds 1 to (a BatchNorm's num_batches_tracked)
# bn_bwd(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, training, relu)
# recon_fwd(y, bias, target, out); recon_bwd(go, y, bias, target, dy, dbias, go_div=0): go_div 0, a gradient per
#   row in go; > 0, every row's is go[0] / go_div (the backward of a mean over the batch, go_div = B, or a sum, 1)
# corrupt(h, noise, sigma, out)
# Optional tensors are None. Every 2-D tensor is contiguous (B, N).

def per_row_go(go: Tensor, go_div: int, B: int) -> Tensor:
    """The (B,) per-row gradient that recon_bwd's go_div stands for (0: go is it; > 0: go / go_div in every row,
    autograd's MeanBackward for go_div = B, bit for bit), in one differentiable launch."""
    return go.expand(B) / go_div if go_div else go


class _Reference:
    @staticmethod
    def bn_fwd(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, training, track, momentum, eps,
               relu, count=None):
        if count is not None:
            count.add_(1)
        if training:
            B = y.shape[0]
            # torch's var_mean, as nn.BatchNorm1d: (y - y.mean(0))^2 centred on the float32-rounded mean, which
            # gains B (mean error)^2: invstd 3e4-4e4x BatchNorm's float32 error for features 1e6 std off zero
            var, mean = torch.var_mean(y, 0, unbiased=False)
            shift.copy_(mean)
            invstd.copy_(torch.rsqrt(var + eps))
            if track:
                b = bias if bias is not None else 0.0
                rm_out.copy_((1 - momentum) * rm + momentum * (mean + b))
                rv_out.copy_((1 - momentum) * rv + momentum * (var * (B / max(B - 1, 1))))
        else:
            shift.copy_(rm - bias if bias is not None else rm)
            invstd.copy_(torch.rsqrt(rv + eps))
        z = (y - shift) * (gamma * invstd) + beta
        out.copy_(torch.relu(z) if relu else z)

    @staticmethod
    def bn_bwd(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, training, relu):
        # torch's ReLU backward: zero where out <= 0 only (a NaN pre-activation passes its gradient on)
        dz = dout.masked_fill(out <= 0, 0) if relu else dout
        xhat = (y - shift) * invstd
        scale = gamma * invstd
        dbeta.copy_(dz.sum(0))
        dgamma.copy_((dz * xhat).sum(0))
        if training:
            B = y.shape[0]
            dy.copy_(scale * (dz - dbeta / B - xhat * (dgamma / B)))
            dbias.zero_()
        else:
            dy.copy_(scale * dz)
            dbias.copy_(scale * dbeta)

    @staticmethod
    def recon_fwd(y, bias, target, out):
        d = y - target if bias is None else y + bias - target
        out.copy_(d.pow(2).sum(1))

    @staticmethod
    def recon_bwd(go, y, bias, target, dy, dbias, go_div=0):
        d = y - target if bias is None else y + bias - target
        go = per_row_go(go, go_div, y.shape[0])
        dy.copy_(2 * go[:, None] * d)
        if dbias is not None:
            dbias.copy_(dy.sum(0))

    @staticmethod
    def corrupt(h, noise, sigma, out):
        torch.add(h, noise, alpha=sigma, out=out)


def _ptrs(*ts) -> list:
    """Raw pointers (0 for None); one call per kernel launch, the eager path is overhead-bound at small sizes."""
    return [0 if t is None else t.data_ptr() for t in ts]


def _code(t: Tensor) -> int:
    return _ext.DTYPE_CODES[t.dtype]


class _Cpu:
    @staticmethod
    def bn_fwd(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, training, track, momentum, eps,
               relu, count=None):
        B, N = y.shape
        ptrs = _ptrs(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, count)
        _ext.C().bn_relu_forward_cpu(*ptrs, _code(y), B, N, training, track, momentum, eps, relu)

    @staticmethod
    def bn_bwd(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, training, relu):
        B, N = y.shape
        ptrs = _ptrs(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias)
        _ext.C().bn_relu_backward_cpu(*ptrs, _code(y), B, N, training, relu)

    @staticmethod
    def recon_fwd(y, bias, target, out):
        B, N = y.shape
        _ext.C().recon_loss_forward_cpu(*_ptrs(y, bias, target, out), _code(y), B, N)

    @staticmethod
    def recon_bwd(go, y, bias, target, dy, dbias, go_div=0):
        B, N = y.shape
        _ext.C().recon_loss_backward_cpu(*_ptrs(go, y, bias, target, dy, dbias), _code(y), B, N, go_div)

    @staticmethod
    def corrupt(h, noise, sigma, out):
        _ext.C().corrupt_cpu(*_ptrs(h, noise, out), sigma, _code(h), h.numel())


class _CudaOn:
    """CUDA C++ launches on one stream, under the device guard its creator holds (_launch): a whole-network call
    enters the guard and reads the stream once for its 2·depth + 2 launches (each costs a few µs of host time)."""
    __slots__ = ("stream",)

    def __init__(self, stream: int):
        self.stream = stream

    def bn_fwd(self, y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, training, track, momentum,
               eps, relu, count=None):
        B, N = y.shape
        ptrs = _ptrs(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, count)
        _ext.C().bn_relu_forward_cuda(*ptrs, _code(y), B, N, training, track, momentum, eps, relu, self.stream)

    def bn_bwd(self, dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, training, relu):
        B, N = y.shape
        ptrs = _ptrs(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias)
        _ext.C().bn_relu_backward_cuda(*ptrs, _code(y), B, N, training, relu, self.stream)

    def recon_fwd(self, y, bias, target, out):
        B, N = y.shape
        _ext.C().recon_loss_forward_cuda(*_ptrs(y, bias, target, out), _code(y), B, N, self.stream)

    def recon_bwd(self, go, y, bias, target, dy, dbias, go_div=0):
        B, N = y.shape
        _ext.C().recon_loss_backward_cuda(*_ptrs(go, y, bias, target, dy, dbias), _code(y), B, N, go_div,
                                          self.stream)

    def corrupt(self, h, noise, sigma, out):
        _ext.C().corrupt_cuda(*_ptrs(h, noise, out), sigma, _code(h), h.numel(), self.stream)


def _guarded(name: str):
    def launch(*args):
        with _launch("cuda", args[0]) as kern:
            getattr(kern, name)(*args)

    return staticmethod(launch)


class _Cuda:
    """Single launches (the per-layer custom ops, the generator's loss): a device guard and a stream each."""
    bn_fwd, bn_bwd = _guarded("bn_fwd"), _guarded("bn_bwd")
    recon_fwd, recon_bwd, corrupt = _guarded("recon_fwd"), _guarded("recon_bwd"), _guarded("corrupt")


class _launch:
    """``with _launch(backend, t) as kern``: the kernels for one call on t's device; for "cuda", t's device made
    current (the C++ launches run on the current device) and its current stream read, once for all launches."""
    __slots__ = ("backend", "device", "guard")

    def __init__(self, backend: str, t: Tensor):
        self.backend, self.device, self.guard = backend, t.device, None

    def __enter__(self):
        if self.backend != "cuda":
            return _KERNELS[self.backend]
        guard = torch.cuda.device(self.device)
        guard.__enter__()
        try:
            stream = _ext.stream_handle(self.device)
        except BaseException:  # __exit__ is not called when __enter__ raises: the caller's device must come back
            guard.__exit__(None, None, None)
            raise
        self.guard = guard
        return _CudaOn(stream)

    def __exit__(self, *exc):
        if self.guard is not None:
            self.guard.__exit__(*exc)


def _triton_kernel(name: str):
    """A launcher of kernels/denoiser.py's `name` on its first tensor's device (Triton launches on the current one)."""
    def launch(*args):
        from ..kernels import denoiser as k

        with _dispatch.on_device(args[0]):
            getattr(k, name)(*args)

    return staticmethod(launch)


class _Triton:
    bn_fwd = _triton_kernel("bn_forward")
    bn_bwd = _triton_kernel("bn_backward")
    recon_fwd = _triton_kernel("recon_forward")
    recon_bwd = _triton_kernel("recon_backward")
    corrupt = _triton_kernel("corrupt")


_KERNELS = {"reference": _Reference, "cpu": _Cpu, "cuda": _Cuda, "triton": _Triton}
# Kernels whose bn_fwd may be given out=y. The CUDA kernel declares y and out __restrict__, and no GPU was at
# hand to measure whether aliasing them would pay there.
_IN_PLACE = (_Cpu,)


# The Triton backend's GEMMs in the whole-network paths (the loss, its backward, r(h) of the generator's term):
# torch's, with the Triton layer kernels between them, unless the environment asks for kernels/denoiser_gemm.py's.
# The issue keeps torch's GEMMs unless one's own measures faster, and an H200 measured the tl.dot step at
# 0.28-0.75x the nn.Sequential reference with its current tiles (graphed, fp32), where cuBLAS with the CUDA layer
# kernels ran 1.17-1.69x. "tl.dot-tf32x3" and "tl.dot-bf16x6" run the same kernels with each float32 product
# emulated on tensor cores (three TF32 or six bf16 products per pair of operands: near float32 per product, bf16x6
# the nearer, summed in the tensor cores' float32 accumulator; sm_80 and newer, NVIDIA): with allow_tf32 off, torch's
# default, cuBLAS's float32 GEMMs run on the FMA units, so only such a GEMM of one's own can outrun them where the
# step is GEMM-bound. Written without a GPU: neither their speed nor their accuracy against the 2x rule is measured.
TRITON_GEMM_ENV = "FASTGAN_DENOISER_TRITON_GEMM"
TRITON_GEMMS = ("torch", "tl.dot", "tl.dot-tf32x3", "tl.dot-bf16x6")


def triton_gemm() -> str:
    """One of TRITON_GEMMS, read at each call (a forward and its backward may differ: their saved tensors match)."""
    value = os.environ.get(TRITON_GEMM_ENV) or "torch"
    if value not in TRITON_GEMMS:
        raise ValueError(f"{TRITON_GEMM_ENV}={value!r} in the environment: expected one of "
                         f"{', '.join(map(repr, TRITON_GEMMS))} (the Triton denoiser's GEMMs)")
    return value


def fused_gemms(backend: str) -> bool:
    """Whether `backend`'s whole-network paths run kernels/denoiser_gemm.py (tl.dot GEMMs, layers fused in)."""
    return backend == "triton" and triton_gemm() != "torch"


def _triton_dot_precisions() -> tuple:
    from triton.backends.nvidia.compiler import CUDAOptions

    return tuple(getattr(CUDAOptions, "allowed_dot_input_precisions", ()))


def dot_precision(t: Tensor) -> str | None:
    """The tl.dot input precision the variable asks of the fused GEMMs on t, or None for the kernels' own rule (IEEE,
    or TF32 where torch.backends.cuda.matmul.allow_tf32 allows it, as cuBLAS does). An emulation applies to float32
    on a GPU, allow_tf32 or not (asked for by name, and nearer float32 than TF32), and is refused where it cannot
    run: before sm_80, on ROCm, or with a triton without it."""
    mode = triton_gemm()
    emulation = mode.partition("-")[2]
    if not emulation or t.dtype != torch.float32 or t.device.type != "cuda":
        return None
    if torch.version.hip:
        raise _dispatch.BackendUnavailable(
            f"{TRITON_GEMM_ENV}={mode!r}: {emulation} is an NVIDIA tensor-core emulation; on ROCm use "
            f"{TRITON_GEMM_ENV}=tl.dot or unset it")
    major, minor = torch.cuda.get_device_capability(t.device)
    if major < 8:
        raise _dispatch.BackendUnavailable(
            f"{TRITON_GEMM_ENV}={mode!r}: {emulation} products run on the tensor cores of sm_80 and newer, this GPU "
            f"is sm_{major}{minor}; use {TRITON_GEMM_ENV}=tl.dot (IEEE float32) or unset it")
    offered = _triton_dot_precisions()
    if emulation not in offered:
        raise _dispatch.BackendUnavailable(
            f"{TRITON_GEMM_ENV}={mode!r}: this triton's tl.dot offers no {emulation} (it offers "
            f"{', '.join(offered) or 'none'}); use {TRITON_GEMM_ENV}=tl.dot or a newer triton")
    return emulation


# tl.dot takes float64 operands from triton 3.5 on (3.4, which torch 2.8 pins, asserts "Unsupported lhs dtype fp64")
TRITON_FLOAT64_DOT = (3, 5)


def _gemm(dtype: torch.dtype):
    """The Triton backend's whole-network paths: GEMMs in tl.dot with the layers fused around them."""
    version = _dispatch.triton_version()
    if dtype == torch.float64 and version is not None and version < TRITON_FLOAT64_DOT:
        raise _dispatch.BackendUnavailable(
            f"backend='triton': the denoiser's float64 GEMMs need triton >= "
            f"{'.'.join(map(str, TRITON_FLOAT64_DOT))} (tl.dot takes no float64 before), found triton "
            f"{'.'.join(map(str, version))}; use float32, backend='cpu' or 'cuda', or a newer triton")
    from ..kernels import denoiser_gemm

    return denoiser_gemm
