"""The fused DFM denoiser's layers and whole network on a backend's kernels (denoiser_backends.py), shared by the
custom ops (denoiser_ops.py) and the eager autograd.Functions (denoiser_eager.py): one layer forward and backward,
the hidden layers, the whole loss (forward, and a backward that walks the layers once) and r(h); and the same
math in plain, differentiable torch for backwards taken with create_graph=True (second order and up).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _dispatch
from .denoiser_backends import OP_FORWARD, OP_LOSS, _IN_PLACE, _gemm, _launch, dot_precision, fused_gemms

Tensor = torch.Tensor


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
    if dout.dtype is not y.dtype:  # the C++ kernels read every pointer in y's dtype: a half dout would be overrun
        raise TypeError(f"denoiser BatchNorm+ReLU backward: the incoming gradient is {dout.dtype}, the layer's "
                        f"output {y.dtype} (a GEMM autocast to half?)")
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


# ---------------------------------------------------------------- the whole denoiser loss
# saved = [x0, (y, out, shift, invstd) per hidden layer, z]: x0 = h + sigma * noise, z = last GEMM (no bias).

def _loss_forward_impl(h, noise, sigma, weights, biases, gammas, betas, running_means, running_vars, training,
                       momentum, eps, backend, running_in_place=False):
    """(per-sample loss (B,), saved activations, new running stats [rm0, rv0, rm1, ...] or []); with
    running_in_place (eager callers) the running statistics are updated in their tensors and [] returned."""
    if fused_gemms(backend):
        with _dispatch.on_device(h):
            out = _gemm(h.dtype).loss_forward(h, noise, sigma, weights, biases, gammas, betas, running_means,
                                              running_vars, training, training and len(running_means) > 0,
                                              momentum, eps, running_in_place, precision=dot_precision(h))
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
    if fused_gemms(backend):
        with _dispatch.on_device(h):
            out = _gemm(h.dtype).loss_backward(go, h, sigma, weights, biases, gammas, saved, training, need_h,
                                               need_noise, precision=dot_precision(h))
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
    if fused_gemms(backend):
        with _dispatch.on_device(h):
            out = _gemm(h.dtype).forward(h, weights, biases, gammas, betas, running_means, running_vars, training,
                                         track, momentum, eps, running_in_place, precision=dot_precision(h))
        _dispatch.record(OP_FORWARD, backend)
        return out
    new_running: list = []
    with _launch(backend, h) as kern:
        x = _hidden_layers(kern, h, weights, biases, gammas, betas, running_means, running_vars, training, track,
                           momentum, eps, None, None if running_in_place else new_running)
    _dispatch.record(OP_FORWARD, backend)
    return torch.addmm(biases[-1], x, weights[-1].t()), new_running


# ---------------------------------------------------------------- running statistics the custom ops return

def _copy_running(running_means, running_vars, new_running) -> None:
    if not new_running:
        return
    dst = [t for pair in zip(running_means, running_vars) for t in pair]
    with torch.no_grad():
        torch._foreach_copy_(dst, new_running)
