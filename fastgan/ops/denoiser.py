"""Fused DFM denoiser (Warde-Farley & Bengio 2017): (Linear -> BatchNorm1d -> ReLU) x depth -> Linear,
its training loss on Gaussian-corrupted features, and the generator's denoising-feature-matching term.

The "cpu" and "cuda" backends run the GEMMs on torch (MKL / cuBLAS) and fuse everything around them into
their kernels; the "triton" backend runs the whole-network loss and forward as one tl.dot GEMM kernel per
matrix product with the same steps fused into its prologue / epilogue (kernels/denoiser_gemm.py):
  * after each hidden GEMM y = x W^T: bias, batch statistics, running-statistics update, normalise, ReLU
    (one kernel; the Linear bias cancels in training mode and is folded into the shift in eval mode);
  * its backward: ReLU mask, BatchNorm backward, gamma/beta/bias gradients (one kernel);
  * the corruption h + sigma * eps, and after the output GEMM the bias, the loss and, in the backward,
    its gradient and the output bias gradient.

Custom ops (``torch.ops.fastgan.*``, each with a fake kernel; used under torch.compile / export, and eagerly
for the single-layer op):
  * ``bn_relu``: one fused layer, with autograd (the public ``bn_relu``; ``Denoiser.forward`` with gradients under
    torch.compile);
  * ``recon_loss``: l_n = sum_f (y + b - t)^2, with autograd;
  * ``denoiser_loss``: the whole training loss in one op, with a hand-written backward
    (``denoiser_loss_backward``) that walks the layers once;
  * ``denoiser_forward``: r(h) without autograd (targets, inference).
Eagerly, the whole-network loss, the forward (with or without gradients) and the public bn_relu run the same
implementations through plain autograd.Functions (torch.library's wrapper costs ~0.5 ms a call with list
arguments, and more than the whole torch layer for bn_relu; see "eager path").
First-order backwards run the fused kernels; a backward taken with ``create_graph=True`` (second order)
recomputes through plain torch formulas, so every op is differentiable twice and more.
Running statistics are returned by the ops (custom ops must be functional) and copied into the buffers.
Compute dtype: the parameters' (float32 or float64); under autocast the denoiser still runs in it.

Backends: "reference" (torch), "cpu" (C++), "cuda" (CUDA C++), "triton"; see fastgan/ops/_dispatch.py.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import _ext
from ..reference import denoiser as ref
from . import _checks, _dispatch, _library
from ..reference._reduce import reduce_batch as _reduce

OP_LAYER = "bn_relu"
OP_RECON = "recon_loss"
OP_LOSS = "denoiser_loss"
OP_FORWARD = "denoiser_forward"
REDUCTIONS = ("mean", "sum", "none")
PARAM_DTYPES = (torch.float32, torch.float64)

Tensor = torch.Tensor


# ---------------------------------------------------------------- backend kernels (no autograd)
# bn_fwd(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, training, track, momentum, eps, relu)
# bn_bwd(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, training, relu)
# recon_fwd(y, bias, target, out); recon_bwd(go, y, bias, target, dy, dbias); corrupt(h, noise, sigma, out)
# Optional tensors are None. Every 2-D tensor is contiguous (B, N).

class _Reference:
    @staticmethod
    def bn_fwd(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, training, track, momentum, eps,
               relu):
        if training:
            B = y.shape[0]
            mean = y.mean(0)
            var = (y - mean).pow(2).sum(0)
            shift.copy_(mean)
            invstd.copy_(torch.rsqrt(var / B + eps))
            if track:
                b = bias if bias is not None else 0.0
                rm_out.copy_((1 - momentum) * rm + momentum * (mean + b))
                rv_out.copy_((1 - momentum) * rv + momentum * var / max(B - 1, 1))
        else:
            shift.copy_(rm - bias if bias is not None else rm)
            invstd.copy_(torch.rsqrt(rv + eps))
        z = (y - shift) * (gamma * invstd) + beta
        out.copy_(torch.relu(z) if relu else z)

    @staticmethod
    def bn_bwd(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, training, relu):
        dz = dout * (out > 0) if relu else dout
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
    def recon_bwd(go, y, bias, target, dy, dbias):
        d = y - target if bias is None else y + bias - target
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
               relu):
        B, N = y.shape
        ptrs = _ptrs(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out)
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
    def recon_bwd(go, y, bias, target, dy, dbias):
        B, N = y.shape
        _ext.C().recon_loss_backward_cpu(*_ptrs(go, y, bias, target, dy, dbias), _code(y), B, N)

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
               eps, relu):
        B, N = y.shape
        ptrs = _ptrs(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out)
        _ext.C().bn_relu_forward_cuda(*ptrs, _code(y), B, N, training, track, momentum, eps, relu, self.stream)

    def bn_bwd(self, dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, training, relu):
        B, N = y.shape
        ptrs = _ptrs(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias)
        _ext.C().bn_relu_backward_cuda(*ptrs, _code(y), B, N, training, relu, self.stream)

    def recon_fwd(self, y, bias, target, out):
        B, N = y.shape
        _ext.C().recon_loss_forward_cuda(*_ptrs(y, bias, target, out), _code(y), B, N, self.stream)

    def recon_bwd(self, go, y, bias, target, dy, dbias):
        B, N = y.shape
        _ext.C().recon_loss_backward_cuda(*_ptrs(go, y, bias, target, dy, dbias), _code(y), B, N, self.stream)

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
        self.guard = torch.cuda.device(self.device)
        self.guard.__enter__()
        return _CudaOn(_ext.stream_handle(self.device))

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


_KERNELS = {"reference": _Reference, "cpu": _Cpu, "cuda": _Cuda, "triton": _Triton}
# Kernels whose bn_fwd may be given out=y. The CUDA kernel declares y and out __restrict__, and no GPU was at
# hand to measure whether aliasing them would pay there.
_IN_PLACE = (_Cpu,)


def _gemm():
    """The Triton backend's whole-network paths: GEMMs in tl.dot with the layers fused around them."""
    from ..kernels import denoiser_gemm

    return denoiser_gemm


# ---------------------------------------------------------------- kernel-level building blocks

def _layer_forward(kern, y, bias, gamma, beta, rm, rv, training, track, momentum, eps, relu, out=None,
                   running_in_place=False):
    """(out, shift, invstd, rm_new, rv_new); rm_new/rv_new are None unless training and tracking.
    out=y normalises in place (kernels whose y and out may alias: see _IN_PLACE); running_in_place writes the
    updated running statistics over rm / rv (every kernel reads a feature's value before writing it)."""
    N = y.shape[1]
    out = torch.empty_like(y) if out is None else out
    shift = y.new_empty(N)
    invstd = y.new_empty(N)
    rm_out = (rm if running_in_place else y.new_empty(N)) if track else None
    rv_out = (rv if running_in_place else y.new_empty(N)) if track else None
    kern.bn_fwd(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, training, track, momentum, eps,
                relu)
    return out, shift, invstd, rm_out, rv_out


def _layer_backward(kern, dout, out, y, gamma, shift, invstd, training, relu, dy=None):
    """(dy, dgamma, dbeta, dbias); dy=dout overwrites dout (kernels in _IN_PLACE)."""
    N = y.shape[1]
    dy = torch.empty_like(y) if dy is None else dy
    dgamma, dbeta, dbias = y.new_empty(N), y.new_empty(N), y.new_empty(N)
    kern.bn_bwd(dout, out if relu else None, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, training, relu)
    return dy, dgamma, dbeta, dbias


def _hidden_layers(kern, x, weights, biases, gammas, betas, rms, rvs, training, track, momentum, eps, saved,
                   new_running):
    """Runs the hidden layers from x; appends (y, out, shift, invstd) per layer to `saved` when it is a list,
    and the updated running statistics to `new_running`, or with new_running=None (eager callers: functional
    custom ops may not mutate their inputs) writes them into rms / rvs.

    Without `saved` (no backward to come) and with a kernel in _IN_PLACE, the GEMMs write into two buffers
    in turn and each layer normalises its GEMM's output in place: no allocation per layer. On the CPU a fresh
    (B, n_h) tensor is often fresh pages from the OS, and their first-touch faults cost as much as the
    normalisation itself (measured on 2 cores at B = 256, n_h = 512: 164 -> 57 minor faults per generator
    term, 6% of its time)."""
    reuse = saved is None and kern in _IN_PLACE
    bufs: list = [None, None]  # layer i writes bufs[i % 2] while reading its input from the other
    for i in range(len(weights) - 1):
        if reuse:
            if bufs[i % 2] is None or bufs[i % 2].shape[1] != weights[i].shape[0]:
                bufs[i % 2] = x.new_empty(x.shape[0], weights[i].shape[0])
            y = torch.mm(x, weights[i].t(), out=bufs[i % 2])
        else:
            y = torch.mm(x, weights[i].t())
        rm = rms[i] if rms else None
        rv = rvs[i] if rvs else None
        out, shift, invstd, rm_new, rv_new = _layer_forward(kern, y, biases[i], gammas[i], betas[i], rm, rv,
                                                            training, track, momentum, eps, True,
                                                            out=y if reuse else None,
                                                            running_in_place=new_running is None)
        if saved is not None:
            saved += [y, out, shift, invstd]
        if track and new_running is not None:
            new_running += [rm_new, rv_new]
        x = out
    return x


# ---------------------------------------------------------------- differentiable torch recomputation
# Used for backwards taken with create_graph=True (second order and up): same math, plain torch ops.

def _torch_bn(y, bias, gamma, beta, training, eps, shift, invstd, relu):
    if bias is not None:
        y = y + bias
    if training:
        mean = y.mean(0)
        xhat = (y - mean) * torch.rsqrt((y - mean).pow(2).mean(0) + eps)
    else:
        rm = shift.detach() if bias is None else (shift + bias).detach()  # the running mean, a constant
        xhat = (y - rm) * invstd.detach()
    z = gamma * xhat + beta
    return torch.relu(z) if relu else z


def _torch_net(x, weights, biases, gammas, betas, training, eps, shifts, invstds):
    for i in range(len(weights) - 1):
        x = _torch_bn(x @ weights[i].t(), biases[i], gammas[i], betas[i], training, eps,
                      shifts[i] if shifts else None, invstds[i] if invstds else None, True)
    return F.linear(x, weights[-1], biases[-1])


def _grads_through(fn, inputs: list, grad_out: Tensor):
    """Gradients of fn(*inputs) against grad_out w.r.t. the inputs that require grad (None elsewhere),
    recorded for higher-order differentiation."""
    with torch.enable_grad():
        out = fn(*inputs)
        wanted = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
        got = torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True) if wanted else ()
    it = iter(got)
    return [next(it) if isinstance(t, Tensor) and t.requires_grad else None for t in inputs]


# ---------------------------------------------------------------- custom op: one fused layer

@_library.custom_op("fastgan::bn_relu", mutates_args=())
def _bn_relu(y: Tensor, bias: Optional[Tensor], gamma: Tensor, beta: Tensor, running_mean: Optional[Tensor],
             running_var: Optional[Tensor], training: bool, momentum: float, eps: float, relu: bool,
             backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out, shift, invstd, new_running_mean, new_running_var); the last two are empty unless training with
    running statistics."""
    track = training and running_mean is not None
    out, shift, invstd, rm, rv = _layer_forward(_KERNELS[backend], y, bias, gamma, beta, running_mean, running_var,
                                                training, track, momentum, eps, relu)
    _dispatch.record(OP_LAYER, backend)
    empty = y.new_empty(0)
    return out, shift, invstd, rm if track else empty, rv if track else empty.clone()


@_bn_relu.register_fake
def _bn_relu_fake(y, bias, gamma, beta, running_mean, running_var, training, momentum, eps, relu, backend):
    N = y.shape[1]
    n_run = N if (training and running_mean is not None) else 0
    return (torch.empty_like(y), y.new_empty(N), y.new_empty(N), y.new_empty(n_run), y.new_empty(n_run))


def _bn_relu_setup(ctx, inputs, output):
    y, bias, gamma, beta, _, _, training, _, eps, relu, backend = inputs
    out, shift, invstd, rm, rv = output
    ctx.mark_non_differentiable(shift, invstd, rm, rv)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(y, bias, gamma, beta, out, shift, invstd)
    ctx.training, ctx.eps, ctx.relu, ctx.backend = training, eps, relu, backend


def _bn_relu_backward(ctx, g_out, *_):
    if g_out is None:
        return (None,) * 11
    y, bias, gamma, beta, out, shift, invstd = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiable recomputation
        fn = lambda y_, b_, g_, be_: _torch_bn(y_, b_, g_, be_, ctx.training, ctx.eps, shift, invstd, ctx.relu)
        dy, dbias, dgamma, dbeta = _grads_through(fn, [y, bias, gamma, beta], g_out)
        _dispatch.record(OP_LAYER + "_backward", "reference")
    else:
        dy, dgamma, dbeta, dbias = torch.ops.fastgan.bn_relu_backward(g_out.contiguous(), out, y, gamma, shift,
                                                                      invstd, ctx.training, ctx.relu, ctx.backend)
        if bias is None:
            dbias = None
    return dy, dbias, dgamma, dbeta, None, None, None, None, None, None, None


_bn_relu.register_autograd(_bn_relu_backward, setup_context=_bn_relu_setup)


@_library.custom_op("fastgan::bn_relu_backward", mutates_args=())
def _bn_relu_backward_op(dout: Tensor, out: Tensor, y: Tensor, gamma: Tensor, shift: Tensor, invstd: Tensor,
                         training: bool, relu: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dy, dgamma, dbeta, dbias) of bn_relu; first order only (second order goes through _torch_bn)."""
    res = _layer_backward(_KERNELS[backend], dout, out, y, gamma, shift, invstd, training, relu)
    _dispatch.record(OP_LAYER + "_backward", backend)
    return res


@_bn_relu_backward_op.register_fake
def _bn_relu_backward_fake(dout, out, y, gamma, shift, invstd, training, relu, backend):
    N = y.shape[1]
    return torch.empty_like(y), y.new_empty(N), y.new_empty(N), y.new_empty(N)


# ---------------------------------------------------------------- custom op: reconstruction loss

@_library.custom_op("fastgan::recon_loss", mutates_args=())
def _recon_loss(y: Tensor, bias: Optional[Tensor], target: Tensor, backend: str) -> Tensor:
    """l_n = sum_f (y + bias - target)^2, shape (B,)."""
    out = y.new_empty(y.shape[0])
    _KERNELS[backend].recon_fwd(y, bias, target, out)
    _dispatch.record(OP_RECON, backend)
    return out


@_recon_loss.register_fake
def _recon_loss_fake(y, bias, target, backend):
    return y.new_empty(y.shape[0])


def _recon_setup(ctx, inputs, output):
    y, bias, target, backend = inputs
    ctx.save_for_backward(y, bias, target)
    ctx.backend = backend


def _recon_backward(ctx, go):
    y, bias, target = ctx.saved_tensors
    if torch.is_grad_enabled():
        fn = lambda y_, b_, t_: (y_ - t_ if b_ is None else y_ + b_ - t_).pow(2).sum(1)
        dy, dbias, dtarget = _grads_through(fn, [y, bias, target], go)
        _dispatch.record(OP_RECON + "_backward", "reference")
        return dy, dbias, dtarget, None
    want_dbias = bias is not None and bias.requires_grad
    dy, dbias = torch.ops.fastgan.recon_loss_backward(go.contiguous(), y, bias, target, want_dbias, ctx.backend)
    dtarget = -dy if target.requires_grad else None
    return dy, dbias if want_dbias else None, dtarget, None


_recon_loss.register_autograd(_recon_backward, setup_context=_recon_setup)


@_library.custom_op("fastgan::recon_loss_backward", mutates_args=())
def _recon_loss_backward_op(go: Tensor, y: Tensor, bias: Optional[Tensor], target: Tensor, want_dbias: bool,
                            backend: str) -> tuple[Tensor, Tensor]:
    """(dy, dbias) with dy = 2 go_n (y + bias - target); dbias is empty unless want_dbias."""
    dy = torch.empty_like(y)
    dbias = y.new_empty(y.shape[1] if want_dbias else 0)
    _KERNELS[backend].recon_bwd(go, y, bias, target, dy, dbias if want_dbias else None)
    _dispatch.record(OP_RECON + "_backward", backend)
    return dy, dbias


@_recon_loss_backward_op.register_fake
def _recon_loss_backward_fake(go, y, bias, target, want_dbias, backend):
    return torch.empty_like(y), y.new_empty(y.shape[1] if want_dbias else 0)


# ---------------------------------------------------------------- the whole denoiser loss
# saved = [x0, (y, out, shift, invstd) per hidden layer, z]: x0 = h + sigma * noise, z = last GEMM (no bias).

def _loss_forward_impl(h, noise, sigma, weights, biases, gammas, betas, running_means, running_vars, training,
                       momentum, eps, backend, running_in_place=False):
    """(per-sample loss (B,), saved activations, new running stats [rm0, rv0, rm1, ...] or []); with
    running_in_place (eager callers) the running statistics are updated in their tensors and [] returned."""
    if backend == "triton":
        with _dispatch.on_device(h):
            out = _gemm().loss_forward(h, noise, sigma, weights, biases, gammas, betas, running_means,
                                       running_vars, training, training and len(running_means) > 0, momentum, eps,
                                       running_in_place)
        _dispatch.record(OP_LOSS, backend)
        return out
    with _launch(backend, h) as kern:
        x0 = torch.empty_like(h)
        kern.corrupt(h, noise, sigma, x0)
        saved: list = [x0]
        new_running: list = []
        track = training and len(running_means) > 0
        x = _hidden_layers(kern, x0, weights, biases, gammas, betas, running_means, running_vars, training, track,
                           momentum, eps, saved, None if running_in_place else new_running)
        z = torch.mm(x, weights[-1].t())
        saved.append(z)
        per_sample = h.new_empty(h.shape[0])
        kern.recon_fwd(z, biases[-1], h, per_sample)
        _dispatch.record(OP_LOSS, backend)
        return per_sample, saved, new_running


def _loss_backward_impl(go, h, sigma, weights, biases, gammas, saved, training, need_h, need_noise, backend):
    """(dh or None, dnoise or None, dweights, dbiases, dgammas, dbetas): one walk down the layers."""
    if backend == "triton":
        with _dispatch.on_device(h):
            out = _gemm().loss_backward(go, h, sigma, weights, biases, gammas, saved, training, need_h, need_noise)
        _dispatch.record(OP_LOSS + "_backward", backend)
        return out
    with _launch(backend, h) as kern:
        z = saved[-1]
        dz = torch.empty_like(z)
        db_out = z.new_empty(z.shape[1])
        kern.recon_bwd(go, z, biases[-1], h, dz, db_out)
        dx0, dweights, dbiases, dgammas, dbetas = _net_backward(kern, dz, saved, weights, gammas, training,
                                                                need_h or need_noise)
        dbiases.append(db_out)
        dh = dnoise = None
        if need_h:
            dh = dx0 - dz  # h is also the target: l = ||z + b - h||^2
        if need_noise:
            dnoise = dx0 * sigma
        _dispatch.record(OP_LOSS + "_backward", backend)
        return dh, dnoise, dweights, dbiases, dgammas, dbetas


def _net_backward(kern, dz, saved, weights, gammas, training, need_input, need_weights=True):
    """One walk down the network from dz = dL/dz, z = the output GEMM's product (its bias not added):
    (dx0 or None, dweights (Nones unless need_weights), hidden layers' dbiases, dgammas, dbetas). `saved` as
    _hidden_layers writes it, after the network's input x0: [x0, (y, out, shift, invstd) per hidden layer, ...]."""
    depth = len(weights) - 1
    dweights = [None] * (depth + 1)
    dbiases = [None] * depth
    dgammas, dbetas = [None] * depth, [None] * depth
    if need_weights:
        dweights[depth] = torch.mm(dz.t(), saved[4 * depth - 2] if depth else saved[0])
    g = dz
    for i in reversed(range(depth)):
        y, out, shift, invstd = saved[1 + 4 * i: 5 + 4 * i]
        dout = torch.mm(g, weights[i + 1])
        g, dgammas[i], dbetas[i], dbiases[i] = _layer_backward(kern, dout, out, y, gammas[i], shift, invstd,
                                                               training, True,
                                                               dy=dout if kern in _IN_PLACE else None)
        if need_weights:
            dweights[i] = torch.mm(g.t(), saved[0] if i == 0 else saved[4 * i - 2])
    dx0 = torch.mm(g, weights[0]) if need_input else None
    return dx0, dweights, dbiases, dgammas, dbetas


def _loss_double_backward(go, h, noise, sigma, weights, biases, gammas, betas, saved, training, eps):
    """Same gradients as _loss_backward_impl through plain torch ops, recorded for higher orders."""
    d, nb = len(weights), len(gammas)
    shifts, invstds = saved[3:-1:4], saved[4:-1:4]

    def fn(h_, noise_, *params):
        w, b = list(params[:d]), list(params[d:2 * d])
        g, be = list(params[2 * d:2 * d + nb]), list(params[2 * d + nb:])
        r = _torch_net(h_ + sigma * noise_, w, b, g, be, training, eps, shifts, invstds)
        return (h_ - r).pow(2).sum(1)

    grads = _grads_through(fn, [h, noise, *weights, *biases, *gammas, *betas], go)
    _dispatch.record(OP_LOSS + "_backward", "reference")
    return (grads[0], grads[1], grads[2:2 + d], grads[2 + d:2 + 2 * d], grads[2 + 2 * d:2 + 2 * d + nb],
            grads[2 + 2 * d + nb:])


def _forward_impl(h, weights, biases, gammas, betas, running_means, running_vars, training, track, momentum, eps,
                  backend, running_in_place=False):
    """(r(h), new running stats or []), running_in_place as in _loss_forward_impl."""
    track = track and training and len(running_means) > 0
    if backend == "triton":
        with _dispatch.on_device(h):
            out = _gemm().forward(h, weights, biases, gammas, betas, running_means, running_vars, training, track,
                                  momentum, eps, running_in_place)
        _dispatch.record(OP_FORWARD, backend)
        return out
    new_running: list = []
    with _launch(backend, h) as kern:
        x = _hidden_layers(kern, h, weights, biases, gammas, betas, running_means, running_vars, training, track,
                           momentum, eps, None, None if running_in_place else new_running)
    _dispatch.record(OP_FORWARD, backend)
    return torch.addmm(biases[-1], x, weights[-1].t()), new_running


# ---------------------------------------------------------------- custom ops (torch.compile / export path)

@_library.custom_op("fastgan::denoiser_loss", mutates_args=())
def _denoiser_loss(h: Tensor, noise: Tensor, sigma: float, weights: list[Tensor], biases: list[Tensor],
                   gammas: list[Tensor], betas: list[Tensor], running_means: list[Tensor],
                   running_vars: list[Tensor], training: bool, momentum: float, eps: float,
                   backend: str) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """(per-sample loss (B,), saved activations, new running stats [rm0, rv0, rm1, ...] or [])."""
    return _loss_forward_impl(h, noise, sigma, weights, biases, gammas, betas, running_means, running_vars,
                              training, momentum, eps, backend)


@_denoiser_loss.register_fake
def _denoiser_loss_fake(h, noise, sigma, weights, biases, gammas, betas, running_means, running_vars, training,
                        momentum, eps, backend):
    B = h.shape[0]
    saved = [torch.empty_like(h)]
    for w in weights[:-1]:
        H = w.shape[0]
        saved += [h.new_empty(B, H), h.new_empty(B, H), h.new_empty(H), h.new_empty(H)]
    saved.append(torch.empty_like(h))
    track = training and len(running_means) > 0
    new_running = [h.new_empty(w.shape[0]) for w in weights[:-1] for _ in range(2)] if track else []
    return h.new_empty(B), saved, new_running


@_library.custom_op("fastgan::denoiser_loss_backward", mutates_args=())
def _denoiser_loss_backward(go: Tensor, h: Tensor, sigma: float, weights: list[Tensor], biases: list[Tensor],
                            gammas: list[Tensor], saved: list[Tensor], training: bool, need_h: bool,
                            need_noise: bool, backend: str) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor],
                                                                     list[Tensor], list[Tensor]]:
    """(dh, dnoise, dweights, dbiases, dgammas, dbetas); dh / dnoise are empty unless asked for."""
    dh, dnoise, *rest = _loss_backward_impl(go, h, sigma, weights, biases, gammas, saved, training, need_h,
                                            need_noise, backend)
    empty = h.new_empty(0)
    return (dh if need_h else empty, dnoise if need_noise else empty.clone(), *rest)


@_denoiser_loss_backward.register_fake
def _denoiser_loss_backward_fake(go, h, sigma, weights, biases, gammas, saved, training, need_h, need_noise,
                                 backend):
    return (h.new_empty(h.shape if need_h else (0,)), h.new_empty(h.shape if need_noise else (0,)),
            [torch.empty_like(w) for w in weights], [torch.empty_like(b) for b in biases],
            [torch.empty_like(g) for g in gammas], [torch.empty_like(g) for g in gammas])


def _loss_setup(ctx, inputs, output):
    h, noise, sigma, weights, biases, gammas, betas, running_means, _, training, _, eps, backend = inputs
    _, saved, new_running = output
    ctx.mark_non_differentiable(*saved, *new_running)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the saved activations
    ctx.sizes = (len(weights), len(gammas), len(running_means))
    ctx.save_for_backward(h, noise, *weights, *biases, *gammas, *betas, *saved)
    ctx.sigma, ctx.training, ctx.eps, ctx.backend = sigma, training, eps, backend


def _loss_backward(ctx, go, *_):
    d, nb, n_running = ctx.sizes
    if go is None:
        return (None,) * 13
    t = list(ctx.saved_tensors)
    h, noise = t[0], t[1]
    weights, biases = t[2:2 + d], t[2 + d:2 + 2 * d]
    gammas, betas = t[2 + 2 * d:2 + 2 * d + nb], t[2 + 2 * d + nb:2 + 2 * d + 2 * nb]
    saved = t[2 + 2 * d + 2 * nb:]
    if torch.is_grad_enabled():  # create_graph=True: differentiable recomputation
        grads = _loss_double_backward(go, h, noise, ctx.sigma, weights, biases, gammas, betas, saved, ctx.training,
                                      ctx.eps)
    else:
        need_h, need_noise = h.requires_grad, noise.requires_grad
        grads = torch.ops.fastgan.denoiser_loss_backward(go.contiguous(), h, ctx.sigma, weights, biases, gammas,
                                                         saved, ctx.training, need_h, need_noise, ctx.backend)
        grads = (grads[0] if need_h else None, grads[1] if need_noise else None, *grads[2:])
    dh, dnoise, dweights, dbiases, dgammas, dbetas = grads
    no_grad = [None] * n_running  # running statistics are buffers
    return dh, dnoise, None, dweights, dbiases, dgammas, dbetas, no_grad, list(no_grad), None, None, None, None


_denoiser_loss.register_autograd(_loss_backward, setup_context=_loss_setup)


@_library.custom_op("fastgan::denoiser_forward", mutates_args=())
def _denoiser_forward(h: Tensor, weights: list[Tensor], biases: list[Tensor], gammas: list[Tensor],
                      betas: list[Tensor], running_means: list[Tensor], running_vars: list[Tensor], training: bool,
                      track: bool, momentum: float, eps: float, backend: str) -> tuple[Tensor, list[Tensor]]:
    """(r(h), new running stats or []). Not differentiable: for targets and inference."""
    return _forward_impl(h, weights, biases, gammas, betas, running_means, running_vars, training, track, momentum,
                         eps, backend)


@_denoiser_forward.register_fake
def _denoiser_forward_fake(h, weights, biases, gammas, betas, running_means, running_vars, training, track,
                           momentum, eps, backend):
    track = track and training and len(running_means) > 0
    return torch.empty_like(h), ([h.new_empty(w.shape[0]) for w in weights[:-1] for _ in range(2)] if track else [])


# ---------------------------------------------------------------- eager path
# torch.library's autograd wrapper flattens list arguments with pytree on every call (~0.5 ms per call on
# the 2-core CI machine, more than the whole reference step at small sizes). Eagerly, a plain
# autograd.Function calls the same implementations; under torch.compile the custom ops above are used.

class _EagerLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, meta, h, noise, *params):
        sigma, training, momentum, eps, backend, depth, rms, rvs = meta
        d = depth + 1
        weights, biases = params[:d], params[d:2 * d]
        gammas, betas = params[2 * d:2 * d + depth], params[2 * d + depth:]
        per_sample, saved, new_running = _loss_forward_impl(h, noise, sigma, weights, biases, gammas, betas, rms,
                                                            rvs, training, momentum, eps, backend,
                                                            running_in_place=True)
        assert not new_running  # written in place
        ctx.save_for_backward(h, noise, *params)
        ctx.saved = saved
        ctx.meta = (sigma, training, eps, backend, depth)
        return per_sample

    @staticmethod
    def backward(ctx, go):
        sigma, training, eps, backend, depth = ctx.meta
        h, noise, *params = ctx.saved_tensors
        d = depth + 1
        weights, biases = params[:d], params[d:2 * d]
        gammas, betas = params[2 * d:2 * d + depth], params[2 * d + depth:]
        if torch.is_grad_enabled():  # create_graph=True: differentiable recomputation
            grads = _loss_double_backward(go, h, noise, sigma, weights, biases, gammas, betas, ctx.saved, training,
                                          eps)
        else:
            grads = _loss_backward_impl(go.contiguous(), h, sigma, weights, biases, gammas, ctx.saved, training,
                                        ctx.needs_input_grad[1], ctx.needs_input_grad[2], backend)
        dh, dnoise, dweights, dbiases, dgammas, dbetas = grads
        return (None, dh, dnoise, *dweights, *dbiases, *dgammas, *dbetas)


class _EagerRecon(torch.autograd.Function):
    """l_n = ||h_n - target_n||^2 with target a constant (the generator's term): gradient into h only.
    The kernels' first operand is h, so their dy is dl/dh as it stands."""

    @staticmethod
    def forward(ctx, target, h, backend):
        out = h.new_empty(h.shape[0])
        _KERNELS[backend].recon_fwd(h, None, target, out)
        _dispatch.record(OP_RECON, backend)
        ctx.save_for_backward(target, h)
        ctx.backend = backend
        return out

    @staticmethod
    def backward(ctx, go):
        target, h = ctx.saved_tensors
        if torch.is_grad_enabled():
            return None, _grads_through(lambda h_: (h_ - target).pow(2).sum(1), [h], go)[0], None
        dh = torch.empty_like(h)
        _KERNELS[ctx.backend].recon_bwd(go.contiguous(), h, None, target, dh, None)
        _dispatch.record(OP_RECON + "_backward", ctx.backend)
        return None, dh, None


class _EagerBnRelu(torch.autograd.Function):
    """The public bn_relu called eagerly: the custom op's kernels without torch.library's autograd wrapper, which
    cost more than the whole torch layer (F.batch_norm + relu and their backward) at small sizes."""

    @staticmethod
    def forward(ctx, meta, y, bias, gamma, beta):
        rm, rv, training, momentum, eps, relu, backend = meta
        track = training and rm is not None
        out, shift, invstd, _, _ = _layer_forward(_KERNELS[backend], y, bias, gamma, beta, rm, rv, training, track,
                                                  momentum, eps, relu, running_in_place=True)
        _dispatch.record(OP_LAYER, backend)
        ctx.save_for_backward(y, bias, gamma, beta, out, shift, invstd)
        ctx.meta = (training, eps, relu, backend)
        return out

    @staticmethod
    def backward(ctx, g_out):
        training, eps, relu, backend = ctx.meta
        y, bias, gamma, beta, out, shift, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable recomputation
            fn = lambda y_, b_, g_, be_: _torch_bn(y_, b_, g_, be_, training, eps, shift, invstd, relu)
            dy, dbias, dgamma, dbeta = _grads_through(fn, [y, bias, gamma, beta], g_out)
            _dispatch.record(OP_LAYER + "_backward", "reference")
            return None, dy, dbias, dgamma, dbeta
        dy, dgamma, dbeta, dbias = _layer_backward(_KERNELS[backend], g_out.contiguous(), out, y, gamma, shift,
                                                   invstd, training, relu)
        _dispatch.record(OP_LAYER + "_backward", backend)
        return None, dy, dbias if bias is not None else None, dgamma, dbeta


class _EagerForward(torch.autograd.Function):
    """r(h) with gradients: the whole network in one Function (its layers' kernels, one walk down in the
    backward), where the per-layer custom op would pay torch.library's autograd wrapper once per layer."""

    @staticmethod
    def forward(ctx, meta, h, *params):
        training, track, momentum, eps, backend, depth, rms, rvs = meta
        weights, biases, gammas, betas = _split(params, depth)
        saved: list = [h]
        with _launch(backend, h) as kern:
            x = _hidden_layers(kern, h, weights, biases, gammas, betas, rms, rvs, training, track, momentum, eps,
                               saved, None)
        r = torch.addmm(biases[-1], x, weights[-1].t())
        _dispatch.record(OP_FORWARD, backend)
        ctx.save_for_backward(h, *params)
        ctx.saved = saved
        ctx.meta = (training, eps, backend, depth)
        return r

    @staticmethod
    def backward(ctx, gr):
        training, eps, backend, depth = ctx.meta
        h, *params = ctx.saved_tensors
        weights, biases, gammas, betas = _split(params, depth)
        if torch.is_grad_enabled():  # create_graph=True: differentiable recomputation
            shifts, invstds = ctx.saved[3::4], ctx.saved[4::4]
            fn = lambda h_, *p: _torch_net(h_, *_split(p, depth), training, eps, shifts, invstds)
            grads = _grads_through(fn, [h, *params], gr)
            _dispatch.record(OP_FORWARD + "_backward", "reference")
            return (None, *grads)
        gr = gr.contiguous()
        with _launch(backend, gr) as kern:
            dh, dweights, dbiases, dgammas, dbetas = _net_backward(kern, gr, ctx.saved, weights, gammas, training,
                                                                   ctx.needs_input_grad[1],
                                                                   any(ctx.needs_input_grad[2:3 + depth]))
        dbiases.append(gr.sum(0))
        _dispatch.record(OP_FORWARD + "_backward", backend)
        return (None, dh, *dweights, *dbiases, *dgammas, *dbetas)


def _split(params, depth):
    """(weights, biases, gammas, betas) from the flat tuple the Functions take."""
    d = depth + 1
    return params[:d], params[d:2 * d], params[2 * d:2 * d + depth], params[2 * d + depth:]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _run_loss(h, noise, sigma, weights, biases, gammas, betas, rms, rvs, training, momentum, eps, backend):
    """Per-sample loss; updates rms / rvs in place in training mode."""
    with _dispatch.no_autocast(h.device):
        if _compiling():
            per_sample, _, new_running = torch.ops.fastgan.denoiser_loss(
                h, noise, sigma, weights, biases, gammas, betas, rms, rvs, training, momentum, eps, backend)
            _copy_running(rms, rvs, new_running)
            return per_sample
        meta = (sigma, training, momentum, eps, backend, len(weights) - 1, rms, rvs)
        return _EagerLoss.apply(meta, h, noise, *weights, *biases, *gammas, *betas)


def _run_forward(h, weights, biases, gammas, betas, rms, rvs, training, track, momentum, eps, backend):
    """r(h) without autograd; updates rms / rvs in place when `track` (and training)."""
    with _dispatch.no_autocast(h.device), torch.no_grad():
        if _compiling():
            r, new_running = torch.ops.fastgan.denoiser_forward(h, weights, biases, gammas, betas, rms, rvs,
                                                                training, track, momentum, eps, backend)
        else:
            r, new_running = _forward_impl(h, weights, biases, gammas, betas, rms, rvs, training, track, momentum,
                                           eps, backend, running_in_place=True)
    _copy_running(rms, rvs, new_running)
    return r


def _run_target_loss(target, h_fake, backend):
    """||h_fake - target||^2 per sample, gradient into h_fake only."""
    with _dispatch.no_autocast(target.device):
        if _compiling():
            return torch.ops.fastgan.recon_loss(h_fake, None, target, backend)
        return _EagerRecon.apply(target, h_fake, backend)


# ---------------------------------------------------------------- argument checks

def _check_number(name: str, value, *, low: float | None = None, high: float | None = None, open_low=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or (low is not None and (v < low or (open_low and v == low))) or (high is not None and v > high):
        lo = "" if low is None else (f"> {low}" if open_low else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        raise ValueError(f"{name} must be {' and '.join(p for p in (lo, hi) if p)}, got {value!r}")
    return v


def _check_params(weights, biases, gammas, betas, running_means, running_vars):
    """Validates the parameter lists; returns (n_features, dtype, device)."""
    for name, seq in (("weights", weights), ("biases", biases), ("gammas", gammas), ("betas", betas)):
        if not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} must be a list of tensors, got {type(seq).__name__}")
    if len(weights) < 1:
        raise ValueError("weights must hold depth + 1 >= 1 matrices, got an empty list")
    depth = len(weights) - 1
    for name, seq, n in (("biases", biases, depth + 1), ("gammas", gammas, depth), ("betas", betas, depth)):
        if len(seq) != n:
            raise ValueError(f"{name} must have {n} entries for {depth} hidden layers, got {len(seq)}")
    for name, seq in (("running_means", running_means), ("running_vars", running_vars)):
        if seq is not None and (not isinstance(seq, (list, tuple)) or len(seq) != depth):
            raise ValueError(f"{name} must be None or a list of {depth} tensors")
    if (running_means is None) != (running_vars is None):
        raise ValueError("running_means and running_vars must be given together")
    w0 = _checks.tensor("weights[0]", weights[0], min_dim=2)
    dtype, device = w0.dtype, w0.device
    if dtype not in PARAM_DTYPES:
        raise TypeError(f"weights[0] must be float32 or float64, got {dtype}")
    n_features = w0.shape[1]
    width = n_features
    for i in range(depth + 1):
        _checks.tensor(f"weights[{i}]", weights[i], min_dim=2)
        out_dim = n_features if i == depth else weights[i].shape[0]
        named = [(f"weights[{i}]", weights[i], (out_dim, width)), (f"biases[{i}]", biases[i], (out_dim,))]
        if i < depth:
            named += [(f"gammas[{i}]", gammas[i], (out_dim,)), (f"betas[{i}]", betas[i], (out_dim,))]
            if running_means is not None:
                named += [(f"running_means[{i}]", running_means[i], (out_dim,)),
                          (f"running_vars[{i}]", running_vars[i], (out_dim,))]
                for name in (f"running_means[{i}]", f"running_vars[{i}]"):
                    t = running_means[i] if name.startswith("running_means") else running_vars[i]
                    if isinstance(t, Tensor) and not t.is_contiguous():
                        raise ValueError(f"{name} must be contiguous (it is updated in place)")
        for name, t, shape in named:
            _checks.tensor(name, t)
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
            if t.dtype != dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but weights[0] has {dtype}; use one dtype")
            if t.device != device:
                raise ValueError(f"{name} is on {t.device} but weights[0] is on {device}; move them to one device")
        width = out_dim
    return n_features, dtype, device


def _check_features(name: str, h, n_features: int, dtype, device, training: bool) -> Tensor:
    _checks.tensor(name, h)
    if h.dim() != 2 or h.shape[1] != n_features:
        raise ValueError(f"{name} must have shape (B, {n_features}), got {tuple(h.shape)}")
    if h.device != device:
        raise ValueError(f"{name} is on {h.device} but the denoiser's parameters are on {device}")
    if training and h.shape[0] < 2:
        raise ValueError(f"{name}: training-mode BatchNorm needs a batch of at least 2 samples, got {h.shape[0]}")
    return h.to(dtype).contiguous()


def _contig(seq):
    return [t.contiguous() for t in seq]


def _copy_running(running_means, running_vars, new_running) -> None:
    if not new_running:
        return
    dst = [t for pair in zip(running_means, running_vars) for t in pair]
    with torch.no_grad():
        torch._foreach_copy_(dst, new_running)


# ---------------------------------------------------------------- functional API

def bn_relu(y: Tensor, bias: Optional[Tensor], gamma: Tensor, beta: Tensor, running_mean: Optional[Tensor] = None,
            running_var: Optional[Tensor] = None, *, training: bool = True, momentum: float = 0.1,
            eps: float = 1e-5, relu: bool = True, backend: str | None = None) -> Tensor:
    """relu(batch_norm(y + bias)) as one fused op: ``F.relu(F.batch_norm(y + bias, running_mean, running_var,
    gamma, beta, training, momentum, eps))``, running stats updated in place in training mode.

    y: (B, N) output of a GEMM without its bias; bias, gamma, beta, running stats: (N,). Differentiable
    w.r.t. y, bias, gamma and beta. relu=False gives the plain BatchNorm.
    """
    _checks.tensor("y", y, min_dim=2)
    if y.dim() != 2:
        raise ValueError(f"y must have shape (B, N), got {tuple(y.shape)}")
    if y.dtype not in PARAM_DTYPES:
        raise TypeError(f"y must be float32 or float64, got {y.dtype}")
    N, dtype, device = y.shape[1], y.dtype, y.device
    named = (("bias", bias), ("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
             ("running_var", running_var))
    for name, t in named:
        if t is None and name in ("gamma", "beta"):
            raise TypeError(f"{name} must be a tensor (the fused op is affine)")
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != (N,):
            raise ValueError(f"{name} must have shape ({N},), got {tuple(t.shape)}")
        if t.dtype != dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but y has {dtype}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but y is on {device}; move them to the same device")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required in eval mode (training=False)")
    if training and y.shape[0] < 2:
        raise ValueError(f"y: training-mode BatchNorm needs a batch of at least 2 samples, got {y.shape[0]}")
    momentum = _check_number("momentum", momentum, low=0.0, high=1.0)
    eps = _check_number("eps", eps, low=0.0, open_low=True)
    chosen = _dispatch.resolve(OP_LAYER, y.device, backend)
    c = lambda t: None if t is None else t.contiguous()
    if not _compiling() and (running_mean is None or (running_mean.is_contiguous() and running_var.is_contiguous())):
        meta = (running_mean, running_var, bool(training), momentum, eps, bool(relu), chosen)
        return _EagerBnRelu.apply(meta, y.contiguous(), c(bias), c(gamma), c(beta))
    out, _, _, rm, rv = torch.ops.fastgan.bn_relu(y.contiguous(), c(bias), c(gamma), c(beta), c(running_mean),
                                                  c(running_var), bool(training), momentum, eps, bool(relu), chosen)
    if training and running_mean is not None:
        _copy_running([running_mean], [running_var], [rm, rv])
    return out


def denoiser_loss(h: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], gammas: Sequence[Tensor],
                  betas: Sequence[Tensor], running_means: Sequence[Tensor] | None = None,
                  running_vars: Sequence[Tensor] | None = None, *, sigma: float = 1.0, noise: Tensor | None = None,
                  training: bool = True, momentum: float = 0.1, eps: float = 1e-5, reduction: str = "mean",
                  backend: str | None = None) -> Tensor:
    """DFM denoiser training loss ||h - r(h + sigma * noise)||^2, summed over features, reduced over the batch.

    r = (Linear(weights[i], biases[i]) -> BatchNorm(gammas[i], betas[i]) -> ReLU) for i < depth, then
    Linear(weights[depth], biases[depth]). noise: the standard-normal eps (B, F); drawn with torch.randn
    when None. Running stats (lists of depth tensors) are updated in place in training mode, as
    nn.BatchNorm1d does; they are required in eval mode. Differentiable w.r.t. h (both as the corrupted
    input and as the target), noise and all parameters.
    """
    n_features, dtype, device = _check_params(weights, biases, gammas, betas, running_means, running_vars)
    h = _check_features("h", h, n_features, dtype, device, training)
    sigma = _check_number("sigma", sigma, low=0.0)
    momentum = _check_number("momentum", momentum, low=0.0, high=1.0)
    eps = _check_number("eps", eps, low=0.0, open_low=True)
    _checks.choice("reduction", reduction, REDUCTIONS)
    if not training and running_means is None:
        raise ValueError("running_means and running_vars are required in eval mode (training=False)")
    if noise is None:
        noise = torch.randn_like(h)
    else:
        _checks.tensor("noise", noise)
        if noise.shape != h.shape:
            raise ValueError(f"noise must have the shape of h {tuple(h.shape)}, got {tuple(noise.shape)}")
        _checks.same_device(h=h, noise=noise)
        noise = noise.to(dtype).contiguous()
    chosen = _dispatch.resolve(OP_LOSS, device, backend)
    rms = list(running_means) if running_means is not None else []
    rvs = list(running_vars) if running_vars is not None else []
    per_sample = _run_loss(h, noise, sigma, _contig(weights), _contig(biases), _contig(gammas), _contig(betas), rms,
                           rvs, bool(training), momentum, eps, chosen)
    return _reduce(per_sample, reduction)


def denoiser_generator_loss(h_fake: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor],
                            gammas: Sequence[Tensor], betas: Sequence[Tensor],
                            running_means: Sequence[Tensor] | None = None,
                            running_vars: Sequence[Tensor] | None = None, *, training: bool = True,
                            eps: float = 1e-5, reduction: str = "mean", backend: str | None = None) -> Tensor:
    """DFM generator term ||h_fake - r(h_fake)||^2 (sum over features, reduced over the batch) with r(h_fake)
    a constant target: the gradient reaches h_fake only, never r's parameters.

    In training mode r normalises with h_fake's own batch statistics (the paper batch-normalises real and
    generated batches separately) and leaves the running statistics untouched; in eval mode it uses them.
    Multiply by lambda_denoise = 0.03 / n_features (the paper's setting) when adding it to G's loss.
    """
    n_features, dtype, device = _check_params(weights, biases, gammas, betas, running_means, running_vars)
    h_fake = _check_features("h_fake", h_fake, n_features, dtype, device, training)
    eps = _check_number("eps", eps, low=0.0, open_low=True)
    _checks.choice("reduction", reduction, REDUCTIONS)
    if not training and running_means is None:
        raise ValueError("running_means and running_vars are required in eval mode (training=False)")
    chosen = _dispatch.resolve(OP_LOSS, device, backend)
    rms = list(running_means) if running_means is not None else []
    rvs = list(running_vars) if running_vars is not None else []
    return _generator_loss(h_fake, weights, biases, gammas, betas, rms, rvs, bool(training), eps, reduction, chosen)


def _generator_loss(h_fake, weights, biases, gammas, betas, rms, rvs, training, eps, reduction, backend):
    # _run_forward runs without autograd: r(h_fake) is a constant target
    target = _run_forward(h_fake.detach(), _contig(weights), _contig(biases), _contig(gammas), _contig(betas),
                          _contig(rms), _contig(rvs), training, False, 0.0, eps, backend)
    return _reduce(_run_target_loss(target, h_fake, backend), reduction)


# ---------------------------------------------------------------- module

class Denoiser(nn.Module):
    """DFM denoising auto-encoder r over discriminator features, with fused kernels.

    The layers are an ordinary ``self.net = nn.Sequential((Linear, BatchNorm1d, ReLU) x depth, Linear)`` (the
    reference architecture, so state_dicts are interchangeable with it); the fused ops read its
    parameters and update its BatchNorm buffers (running_mean, running_var, num_batches_tracked) exactly
    as nn.BatchNorm1d does.

    * ``forward(h)``: r(h).
    * ``loss(h, noise=None)``: the denoiser's training loss ||h - r(h + sigma * eps)||^2, summed over
      features, mean over the batch. h is detached by default (the loss trains r only).
    * ``generator_loss(h_fake)``: ||h_fake - r(h_fake)||^2 with r(h_fake) constant; gradient into h_fake only.
      Scale by ``lambda_denoise = 0.03 / n_features`` (Warde-Farley & Bengio) in the generator's loss.

    hidden defaults to n_features (the paper: hidden width >= input width); sigma is the corruption's
    standard deviation (the paper: 1) and may be changed between steps for annealing.
    """

    def __init__(self, n_features: int, hidden: int | None = None, depth: int = 3, *, sigma: float = 1.0,
                 momentum: float | None = 0.1, eps: float = 1e-5, backend: str | None = None, device=None,
                 dtype=None):
        super().__init__()
        for name, v, low in (("n_features", n_features, 1), ("depth", depth, 0)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < low:
                raise ValueError(f"{name} must be >= {low}, got {v}")
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
            raise ValueError(f"hidden must be a positive int or None, got {hidden!r}")
        if momentum is not None:
            _check_number("momentum", momentum, low=0.0, high=1.0)
        _check_number("eps", eps, low=0.0, open_low=True)
        net = ref.make_denoiser(n_features, hidden, depth, momentum, eps)
        self._init(net.to(device=device, dtype=dtype), sigma, backend)

    def _init(self, net: nn.Sequential, sigma: float, backend: str | None) -> None:
        self.net = net
        mods = list(net)
        # plain tuples (not registered): the layers are the Sequential's; looked up once, not per call
        self._linears, self._norms = tuple(mods[0::3]), tuple(mods[1::3])
        self.sigma = _check_number("sigma", sigma, low=0.0)
        if backend is not None and backend not in _dispatch.BACKENDS:
            raise ValueError(f"backend must be one of {_dispatch.BACKENDS} or None, got {backend!r}")
        self.backend = backend

    @classmethod
    def from_sequential(cls, net: nn.Sequential, *, sigma: float = 1.0, backend: str | None = None) -> "Denoiser":
        """Wraps an existing ``nn.Sequential((Linear, BatchNorm1d, ReLU) x depth, Linear)`` (sharing its
        parameters and buffers). BatchNorm layers must be affine, track running stats and share eps and
        momentum; the output width must equal the input width."""
        if not isinstance(net, nn.Sequential):
            raise TypeError(f"net must be an nn.Sequential, got {type(net).__name__}")
        mods = list(net)
        if len(mods) % 3 != 1:
            raise ValueError("net must be (Linear, BatchNorm1d, ReLU) x depth followed by a Linear")
        for i, m in enumerate(mods):
            kind = (nn.Linear, nn.BatchNorm1d, nn.ReLU)[i % 3]
            if not isinstance(m, kind):
                raise ValueError(f"net[{i}] must be {kind.__name__}, got {type(m).__name__}")
            if isinstance(m, nn.Linear) and m.bias is None:
                raise ValueError(f"net[{i}]: Linear layers must have a bias")
            if isinstance(m, nn.BatchNorm1d) and not (m.affine and m.track_running_stats):
                raise ValueError(f"net[{i}]: BatchNorm1d must have affine=True and track_running_stats=True")
        bns = mods[1::3]
        if len({(m.eps, m.momentum) for m in bns}) > 1:
            raise ValueError("net: all BatchNorm1d layers must share eps and momentum")
        if mods[0].in_features != mods[-1].out_features:
            raise ValueError(f"net maps {mods[0].in_features} features to {mods[-1].out_features}; a denoiser "
                             "reconstructs its input")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._init(net, sigma, backend)
        return self

    # -- structure
    @property
    def linears(self) -> tuple:
        return self._linears

    @property
    def norms(self) -> tuple:
        return self._norms

    @property
    def n_features(self) -> int:
        return self.net[0].in_features

    @property
    def depth(self) -> int:
        return len(self.norms)

    @property
    def momentum(self) -> float | None:
        return self.norms[0].momentum if self.norms else 0.1

    @property
    def lambda_denoise(self) -> float:
        """The paper's weight of the generator term, 0.03 / n_h (Warde-Farley & Bengio, sec. 5)."""
        return 0.03 / self.n_features

    @property
    def eps(self) -> float:
        return self.norms[0].eps if self.norms else 1e-5

    def _params(self):
        # the modules' own dicts: nn.Module.__getattr__ costs ~1 us a lookup, 24 of them per call
        lin = [m._parameters for m in self._linears]
        bn_p = [m._parameters for m in self._norms]
        bn_b = [m._buffers for m in self._norms]
        return ([d["weight"] for d in lin], [d["bias"] for d in lin], [d["weight"] for d in bn_p],
                [d["bias"] for d in bn_p], [d["running_mean"] for d in bn_b], [d["running_var"] for d in bn_b])

    def _factor(self) -> float:
        """nn.BatchNorm1d's exponential_average_factor; counts the batch like it does."""
        bns = self.norms
        if not (self.training and bns):
            return 0.0
        with torch.no_grad():
            torch._foreach_add_([m.num_batches_tracked for m in bns], 1)
        if self.momentum is None:  # cumulative average (a host read, as in nn.BatchNorm1d)
            return 1.0 / float(bns[0].num_batches_tracked)
        return float(self.momentum)

    def _input(self, name: str, h) -> Tensor:
        w = self.net[0].weight
        if w.dtype not in PARAM_DTYPES:
            raise TypeError(f"Denoiser parameters must be float32 or float64, got {w.dtype}; keep the module in "
                            "fp32 (under autocast it runs in fp32 by itself)")
        return _check_features(name, h, self.n_features, w.dtype, w.device, self.training)

    # -- API
    def forward(self, h: Tensor) -> Tensor:
        """r(h) (no corruption). Training mode normalises with batch statistics and updates the running ones."""
        h = self._input("h", h)
        weights, biases, gammas, betas, rms, rvs = self._params()
        chosen = _dispatch.resolve(OP_LAYER, h.device, self.backend)
        factor = self._factor()
        needs_grad = torch.is_grad_enabled() and (
            h.requires_grad or any(p.requires_grad for ps in (weights, biases, gammas, betas) for p in ps))
        if not needs_grad:
            return _run_forward(h, weights, biases, gammas, betas, rms, rvs, self.training, True, factor, self.eps,
                                chosen)
        with _dispatch.no_autocast(h.device):
            if not _compiling():
                meta = (self.training, self.training and self.depth > 0, factor, self.eps, chosen, self.depth,
                        rms, rvs)
                return _EagerForward.apply(meta, h, *weights, *biases, *gammas, *betas)
            x, new_running = h, []
            for i in range(self.depth):
                y = torch.mm(x, weights[i].t())
                x, _, _, rm, rv = torch.ops.fastgan.bn_relu(y, biases[i], gammas[i], betas[i], rms[i], rvs[i],
                                                            self.training, factor, self.eps, True, chosen)
                if self.training:
                    new_running += [rm, rv]
            _copy_running(rms, rvs, new_running)
            return F.linear(x, weights[-1], biases[-1])

    def loss(self, h: Tensor, noise: Tensor | None = None, *, detach: bool = True, reduction: str = "mean") -> Tensor:
        """||h - r(h + sigma * noise)||^2 summed over features, reduced over the batch (mean by default).

        noise: standard-normal eps of h's shape (drawn with torch.randn when None). detach=True (default)
        stops the gradient into h, so the loss trains r only (DFM trains the discriminator's features with
        its own loss); detach=False also differentiates w.r.t. h. Training mode updates the running stats.
        """
        h = self._input("h", h)
        if detach:
            h = h.detach()
        weights, biases, gammas, betas, rms, rvs = self._params()
        _checks.choice("reduction", reduction, REDUCTIONS)
        if noise is None:
            noise = torch.randn_like(h)
        else:
            _checks.tensor("noise", noise)
            if noise.shape != h.shape:
                raise ValueError(f"noise must have the shape of h {tuple(h.shape)}, got {tuple(noise.shape)}")
            _checks.same_device(h=h, noise=noise)
            noise = noise.to(h.dtype).contiguous()
        chosen = _dispatch.resolve(OP_LOSS, h.device, self.backend)
        factor = self._factor()
        per_sample = _run_loss(h, noise, float(self.sigma), weights, biases, gammas, betas, rms, rvs, self.training,
                               factor, self.eps, chosen)
        return _reduce(per_sample, reduction)

    def generator_loss(self, h_fake: Tensor, *, reduction: str = "mean") -> Tensor:
        """||h_fake - r(h_fake)||^2 summed over features, reduced over the batch, with r(h_fake) a constant
        target (no gradient into r). Uses h_fake's own batch statistics in training mode and does not
        update the running statistics."""
        h_fake = self._input("h_fake", h_fake)
        _checks.choice("reduction", reduction, REDUCTIONS)
        chosen = _dispatch.resolve(OP_LOSS, h_fake.device, self.backend)
        return _generator_loss(h_fake, *self._params(), self.training, self.eps, reduction, chosen)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, backend={self.backend!r}"


class DenoiserLoss(nn.Module):
    """`denoiser.loss` as a module's forward, for wrappers that act on forward calls: under DistributedDataParallel,
    `DistributedDataParallel(DenoiserLoss(den))(h)` averages the denoiser's gradients across processes (a call of
    `den.loss` itself bypasses the wrapper, and its gradients would stay per-process)."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        if not isinstance(denoiser, Denoiser):
            raise TypeError(f"denoiser must be a fastgan.ops.Denoiser, got {type(denoiser).__name__}")
        self.denoiser = denoiser

    def forward(self, h: Tensor, noise: Tensor | None = None, *, detach: bool = True,
                reduction: str = "mean") -> Tensor:
        return self.denoiser.loss(h, noise, detach=detach, reduction=reduction)
