"""The fused DFM denoiser's layers and whole network on a backend's kernels (denoiser_backends.py), shared by the
custom ops (denoiser_ops.py) and the eager autograd.Functions (denoiser_eager.py): one layer forward and backward,
the hidden layers, the whole loss (forward, and a backward that walks the layers once) and r(h); and the same
math in plain, differentiable torch for backwards taken with create_graph=True (second order and up).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import _dispatch, _eager
from .denoiser_backends import OP_FORWARD, OP_LOSS, _IN_PLACE, _gemm, _launch, dot_precision, fused_gemms

Tensor = torch.Tensor


# ---------------------------------------------------------------- kernel-level building blocks

def _layer_forward(kern, y, bias, gamma, beta, rm, rv, training, track, momentum, eps, relu, out=None,
                   running_in_place=False, count=None):
    """(out, shift, invstd, rm_new, rv_new); rm_new/rv_new are None unless training and tracking.
    out=y normalises in place (kernels whose y and out may alias: see _IN_PLACE); running_in_place writes the
    updated running statistics over rm / rv (every kernel reads a feature's value before writing it); count: the
    layer's num_batches_tracked, which the kernel adds 1 to."""
    N = y.shape[1]
    out = torch.empty_like(y) if out is None else out
    shift = y.new_empty(N)
    invstd = y.new_empty(N)
    rm_out = (rm if running_in_place else y.new_empty(N)) if track else None
    rv_out = (rv if running_in_place else y.new_empty(N)) if track else None
    kern.bn_fwd(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, training, track, momentum, eps,
                relu, count)
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


def batched_layers(weights, first: int, last: int) -> list:
    """The layers i in [first, last] whose weight gradients one torch.bmm computes: those of the commonest weight
    shape, when two or more share it (every layer when n_features == n_h; else the n_h x n_h hidden ones).
    Their GEMM inputs x_i are written into one (n, B, in) buffer by the forward and their output gradients into
    one (n, B, out) buffer by the backward, so that dW_i = g_i^T x_i is one launch for all of them, not one each:
    at B = 64 the step is launch-bound and a dW GEMM (K = B) fills few SMs alone."""
    shapes = [tuple(weights[i].shape) for i in range(first, last + 1)]
    if not shapes:
        return []
    common = max(shapes, key=shapes.count)
    chosen = [i for i in range(first, last + 1) if tuple(weights[i].shape) == common]
    return chosen if len(chosen) >= 2 else []


def stacks_inputs(backend: str) -> bool:
    """Whether an eager forward on this backend writes the batched_layers' inputs into one buffer for the backward's
    one bmm: not on the cpu backend, where the bmm saves no launch and torch's CPU bmm of g_i^T x_i (K = B) took twice
    the per-layer GEMMs' time at n_h 2048, B 64 (the loss step 1.34x the nn.Sequential's, 1.00 without it)."""
    return backend != "cpu"


def input_slots(weights, first: int, last: int, like) -> dict:
    """{layer i: its (B, in) slice of one new buffer} for the batched_layers(weights, first, last), where the
    forward writes their GEMM inputs; B and dtype like's."""
    layers = batched_layers(weights, first, last)
    if not layers:
        return {}
    buf = like.new_empty(len(layers), like.shape[0], weights[layers[0]].shape[1])
    return dict(zip(layers, buf.unbind(0)))


def _stacked(ts: list) -> Tensor | None:
    """The (n, B, F) tensor of which ts are the consecutive slices (as input_slots made them), or None."""
    t0 = ts[0]
    step = t0.numel()
    for k, t in enumerate(ts):
        if (t.untyped_storage().data_ptr() != t0.untyped_storage().data_ptr() or t.shape != t0.shape
                or not t.is_contiguous() or t.storage_offset() != t0.storage_offset() + k * step):
            return None
    return t0.as_strided((len(ts), *t0.shape), (step, t0.shape[1], 1))


def _gemm_input(saved: list, i: int) -> Tensor:
    """Layer i's GEMM input x_i in `saved` (as _hidden_layers writes it, after x0)."""
    return saved[0] if i == 0 else saved[4 * i - 2]


class Batched(NamedTuple):
    """The backward's side of batched_layers: one bmm g_all^T x_all gives their weight gradients."""
    grads: dict  # {layer i: its slice of g_all, where the backward writes the gradient at its GEMM's output}
    g_all: Tensor  # (n, B, out)
    x_all: Tensor  # (n, B, in): the forward's stacked GEMM inputs of the same layers


def batched_backward(weights, saved, first: int, last: int, like) -> Batched | None:
    """Batched for the batched_layers(weights, first, last) when the forward wrote their inputs into one buffer
    (the eager Functions do; a custom op's outputs may not alias, and Triton's tl.dot loss forward does not), else
    None: the backward may follow a forward of the other kind (FASTGAN_DENOISER_TRITON_GEMM is read at each call)."""
    layers = batched_layers(weights, first, last)
    x_all = _stacked([_gemm_input(saved, i) for i in layers]) if layers else None
    if x_all is None:
        return None
    g_all = like.new_empty(len(layers), like.shape[0], weights[layers[0]].shape[0])
    return Batched(dict(zip(layers, g_all.unbind(0))), g_all, x_all)


def _hidden_layers(kern, x, weights, biases, gammas, betas, rms, rvs, training, track, momentum, eps, saved,
                   new_running, slots=None, counts=None):
    """Runs the hidden layers from x; appends (y, out, shift, invstd) per layer to `saved` when it is a list,
    and the updated running statistics to `new_running`, or with new_running=None (eager callers: functional
    custom ops may not mutate their inputs) writes them into rms / rvs.

    Without `saved` (no backward to come) and with a kernel in _IN_PLACE, the GEMMs write into two buffers
    in turn and each layer normalises its GEMM's output in place: no allocation per layer. On the CPU a fresh
    (B, n_h) tensor is often fresh pages from the OS, and their first-touch faults cost as much as the
    normalisation itself (measured on 2 cores at B = 256, n_h = 512: 164 -> 57 minor faults per generator
    term, 6% of its time). slots: {layer i: the tensor its input x_i = out_{i-1} is written into} (input_slots).
    counts: the layers' num_batches_tracked, each added 1 to by its layer's kernel (None: none counted)."""
    slots = slots or {}
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
                                                            out=y if reuse else slots.get(i + 1),
                                                            running_in_place=new_running is None,
                                                            count=counts[i] if counts else None)
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
                       momentum, eps, backend, running_in_place=False, stack=False, counts=None):
    """(per-sample loss (B,), saved activations, new running stats [rm0, rv0, rm1, ...] or []); with
    running_in_place (eager callers) the running statistics are updated in their tensors and [] returned.
    stack: the inputs of batched_layers(weights, 0, depth) are slices of one buffer, for the backward's one
    bmm (eager callers: a custom op's outputs may not alias one another). counts: the layers' num_batches_tracked
    to add 1 to (eager callers: a custom op may not mutate them)."""
    if fused_gemms(backend):
        with _dispatch.on_device(h):
            out = _gemm(h.dtype).loss_forward(h, noise, sigma, weights, biases, gammas, betas, running_means,
                                              running_vars, training, training and len(running_means) > 0,
                                              momentum, eps, running_in_place, precision=dot_precision(h),
                                              counts=counts)
        _dispatch.record(OP_LOSS, backend)
        return out
    with _launch(backend, h) as kern:
        slots = input_slots(weights, 0, len(weights) - 1, h) if stack else {}
        x0 = slots.get(0)
        x0 = torch.empty_like(h) if x0 is None else x0
        kern.corrupt(h, noise, sigma, x0)
        saved: list = [x0]
        new_running: list = []
        track = training and len(running_means) > 0
        x = _hidden_layers(kern, x0, weights, biases, gammas, betas, running_means, running_vars, training, track,
                           momentum, eps, saved, None if running_in_place else new_running, slots, counts)
        z = torch.mm(x, weights[-1].t())
        saved.append(z)
        per_sample = h.new_empty(h.shape[0])
        kern.recon_fwd(z, biases[-1], h, per_sample)
        _dispatch.record(OP_LOSS, backend)
        return per_sample, saved, new_running


def _loss_backward_impl(go, h, sigma, weights, biases, gammas, saved, training, need_h, need_noise, backend,
                        go_div=0):
    """(dh or None, dnoise or None, dweights, dbiases, dgammas, dbetas): one walk down the layers. go_div as the
    kernels' recon_bwd takes it (0: go per row; > 0: go[0] / go_div for every row)."""
    if fused_gemms(backend):
        with _dispatch.on_device(h):
            out = _gemm(h.dtype).loss_backward(go, h, sigma, weights, biases, gammas, saved, training, need_h,
                                               need_noise, precision=dot_precision(h), go_div=go_div)
        _dispatch.record(OP_LOSS + "_backward", backend)
        return out
    with _launch(backend, h) as kern:
        z = saved[-1]
        batch = batched_backward(weights, saved, 0, len(weights) - 1, z) if stacks_inputs(backend) else None
        dz = batch.grads.get(len(weights) - 1) if batch else None
        dz = torch.empty_like(z) if dz is None else dz
        db_out = z.new_empty(z.shape[1])
        kern.recon_bwd(go, z, biases[-1], h, dz, db_out, go_div)
        dx0, dweights, dbiases, dgammas, dbetas = _net_backward(kern, dz, saved, weights, gammas, training,
                                                                need_h or need_noise, batch=batch)
        dbiases.append(db_out)
        dh = dnoise = None
        if need_h:
            dh = dx0 - dz  # h is also the target: l = ||z + b - h||^2
        if need_noise:
            dnoise = dx0 * sigma
        _dispatch.record(OP_LOSS + "_backward", backend)
        return dh, dnoise, dweights, dbiases, dgammas, dbetas


def _net_backward(kern, dz, saved, weights, gammas, training, need_input, need_weights=True, batch=None):
    """One walk down the network from dz = dL/dz, z = the output GEMM's product (its bias not added):
    (dx0 or None, dweights (Nones unless need_weights), hidden layers' dbiases, dgammas, dbetas). `saved` as
    _hidden_layers writes it, after the network's input x0: [x0, (y, out, shift, invstd) per hidden layer, ...].
    batch: batched_backward's for the layers whose dW_i = g_i^T x_i is one bmm (dz already in its grads when the
    last layer is one of them)."""
    depth = len(weights) - 1
    grads = batch.grads if need_weights and batch else {}
    dweights = [None] * (depth + 1)
    dbiases = [None] * depth
    dgammas, dbetas = [None] * depth, [None] * depth
    if need_weights and depth not in grads:
        dweights[depth] = torch.mm(dz.t(), _gemm_input(saved, depth))
    g = dz
    for i in reversed(range(depth)):
        y, out, shift, invstd = saved[1 + 4 * i: 5 + 4 * i]
        slot = grads.get(i)
        in_place = kern in _IN_PLACE
        dout = torch.mm(g, weights[i + 1], out=slot if in_place else None)
        g, dgammas[i], dbetas[i], dbiases[i] = _layer_backward(kern, dout, out, y, gammas[i], shift, invstd,
                                                               training, True, dy=dout if in_place else slot)
        if need_weights and slot is None:
            dweights[i] = torch.mm(g.t(), _gemm_input(saved, i))
    if grads:
        for i, dw in zip(grads, torch.bmm(batch.g_all.transpose(1, 2), batch.x_all).unbind(0)):
            dweights[i] = dw
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
                  backend, running_in_place=False, counts=None):
    """(r(h), new running stats or []), running_in_place and counts as in _loss_forward_impl."""
    track = track and training and len(running_means) > 0
    if fused_gemms(backend):
        with _dispatch.on_device(h):
            out = _gemm(h.dtype).forward(h, weights, biases, gammas, betas, running_means, running_vars, training,
                                         track, momentum, eps, running_in_place, precision=dot_precision(h),
                                         counts=counts)
        _dispatch.record(OP_FORWARD, backend)
        return out
    new_running: list = []
    with _launch(backend, h) as kern:
        x = _hidden_layers(kern, h, weights, biases, gammas, betas, running_means, running_vars, training, track,
                           momentum, eps, None, None if running_in_place else new_running, counts=counts)
    _dispatch.record(OP_FORWARD, backend)
    return torch.addmm(biases[-1], x, weights[-1].t()), new_running


# ---------------------------------------------------------------- running statistics the custom ops return

def count_batches(counts) -> None:
    """Adds 1 to each BatchNorm's num_batches_tracked in one launch: for the paths whose kernels do not (the custom
    ops, functional)."""
    if counts:
        with torch.no_grad():
            torch._foreach_add_(counts, 1)


def _copy_running(running_means, running_vars, new_running) -> None:
    if not new_running:
        return
    dst = [t for pair in zip(running_means, running_vars) for t in pair]
    if not torch.compiler.is_compiling() and _eager._functorch_active() and _eager._is_wrapped(new_running[0]) \
            and not _eager._is_wrapped(dst[0]):
        # statistics batched by vmap into unbatched buffers: torch's "Batching rule not implemented for
        # aten::_foreach_copy_" said nothing of the cause
        from .denoiser_ops import RUNNING_UNDER_VMAP

        raise RuntimeError(f"running statistics: {RUNNING_UNDER_VMAP}")
    with torch.no_grad():
        torch._foreach_copy_(dst, new_running)
