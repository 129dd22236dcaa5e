"""The fused DFM denoiser's eager path: plain autograd.Functions over denoiser_net.py's implementations
(torch.library's wrapper costs ~0.5 ms a call with list arguments, and more than the whole torch layer for
bn_relu), and the choice between them and the custom ops (denoiser_ops.py): ``_compiling()``, asked by
``_run_loss`` / ``_run_forward`` / ``_run_target_loss`` here and by denoiser.py's bn_relu and Denoiser.forward,
always through this module's attribute, so that patching it here switches every caller to the custom ops.
"""
from __future__ import annotations

import torch

from ..reference._reduce import reduce_batch
from . import _dispatch, _eager
from . import denoiser_ops  # noqa: F401  (registers the torch.ops.fastgan.* the _run_* functions call)
from .denoiser_backends import OP_FORWARD, OP_LAYER, OP_RECON, _KERNELS, _launch, per_row_go
from .denoiser_net import (_copy_running, _forward_impl, _grads_through, _hidden_layers, _layer_backward,
                           _layer_forward, _loss_backward_impl, _loss_double_backward, _loss_forward_impl,
                           _net_backward, _torch_bn, _torch_net, batched_backward, count_batches, input_slots,
                           stacks_inputs)


# ---------------------------------------------------------------- eager path
# The eager loss Functions return the loss reduced over the batch: autograd then hands their backward the mean's
# or sum's gradient, which the loss kernel's backward divides itself (go_div), where autograd's MeanBackward
# would launch a division of its own.
_GO_DIV = {"mean": lambda B: max(B, 1), "sum": lambda B: 1, "none": lambda B: 0}  # an empty batch: no row reads it


# torch.library's autograd wrapper flattens list arguments with pytree on every call (~0.5 ms per call on
# the 2-core CI machine, more than the whole reference step at small sizes). Eagerly, a plain
# autograd.Function calls the same implementations; under torch.compile the custom ops of denoiser_ops.py are used.

@_eager.function
class _EagerLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, meta, h, noise, *params):
        sigma, training, momentum, eps, backend, depth, rms, rvs, reduction, counts = meta
        d = depth + 1
        weights, biases = params[:d], params[d:2 * d]
        gammas, betas = params[2 * d:2 * d + depth], params[2 * d + depth:]
        per_sample, saved, new_running = _loss_forward_impl(h, noise, sigma, weights, biases, gammas, betas, rms,
                                                            rvs, training, momentum, eps, backend,
                                                            running_in_place=True, stack=stacks_inputs(backend),
                                                            counts=counts)
        assert not new_running  # written in place
        # the activations saved as torch saves them, not kept in a ctx attribute: autograd frees saved tensors after
        # the backward (unless retain_graph), an attribute lives as long as the graph, so a loss kept after
        # backward() (the last step's until reassigned, a list of logged losses) held all of them (384 MiB at
        # B = 32768, 512 features, depth 2)
        ctx.save_for_backward(h, noise, *params, *saved)
        ctx.meta = (sigma, training, eps, backend, depth)
        ctx.n_params = len(params)
        ctx.go_div = _GO_DIV[reduction](h.shape[0])
        return reduce_batch(per_sample, reduction)

    @staticmethod
    @_dispatch.autocast_off
    def backward(ctx, go):
        sigma, training, eps, backend, depth = ctx.meta
        h, noise, *rest = ctx.saved_tensors
        params, saved = rest[:ctx.n_params], rest[ctx.n_params:]
        d = depth + 1
        weights, biases = params[:d], params[d:2 * d]
        gammas, betas = params[2 * d:2 * d + depth], params[2 * d + depth:]
        if torch.is_grad_enabled():  # create_graph=True: differentiable recomputation
            grads = _loss_double_backward(per_row_go(go, ctx.go_div, h.shape[0]), h, noise, sigma, weights, biases,
                                          gammas, betas, saved, training, eps)
        else:
            grads = _loss_backward_impl(go.contiguous(), h, sigma, weights, biases, gammas, saved, training,
                                        ctx.needs_input_grad[1], ctx.needs_input_grad[2], backend, ctx.go_div)
        dh, dnoise, dweights, dbiases, dgammas, dbetas = grads
        return (None, dh, dnoise, *dweights, *dbiases, *dgammas, *dbetas)


@_eager.function
class _EagerRecon(torch.autograd.Function):
    """l_n = ||h_n - target_n||^2 with target a constant (the generator's term): gradient into h only.
    The kernels' first operand is h, so their dy is dl/dh as it stands."""

    @staticmethod
    def forward(ctx, target, h, backend, reduction):
        out = h.new_empty(h.shape[0])
        _KERNELS[backend].recon_fwd(h, None, target, out)
        _dispatch.record(OP_RECON, backend)
        ctx.save_for_backward(target, h)
        ctx.backend = backend
        ctx.go_div = _GO_DIV[reduction](h.shape[0])
        return reduce_batch(out, reduction)

    @staticmethod
    @_dispatch.autocast_off
    def backward(ctx, go):
        target, h = ctx.saved_tensors
        if torch.is_grad_enabled():
            go = per_row_go(go, ctx.go_div, h.shape[0])
            return None, _grads_through(lambda h_: (h_ - target).pow(2).sum(1), [h], go)[0], None, None
        dh = torch.empty_like(h)
        _KERNELS[ctx.backend].recon_bwd(go.contiguous(), h, None, target, dh, None, ctx.go_div)
        _dispatch.record(OP_RECON + "_backward", ctx.backend)
        return None, dh, None, None


@_eager.function
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
    @_dispatch.autocast_off
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


@_eager.function
class _EagerForward(torch.autograd.Function):
    """r(h) with gradients: the whole network in one Function (its layers' kernels, one walk down in the
    backward), where the per-layer custom op would pay torch.library's autograd wrapper once per layer."""

    @staticmethod
    def forward(ctx, meta, h, *params):
        training, track, momentum, eps, backend, depth, rms, rvs, counts = meta
        weights, biases, gammas, betas = _split(params, depth)
        saved: list = [h]
        # h and the output's gradient are the caller's: the hidden layers' only
        slots = input_slots(weights, 1, depth - 1, h) if stacks_inputs(backend) else {}
        with _launch(backend, h) as kern:
            x = _hidden_layers(kern, h, weights, biases, gammas, betas, rms, rvs, training, track, momentum, eps,
                               saved, None, slots, counts)
        r = torch.addmm(biases[-1], x, weights[-1].t())
        _dispatch.record(OP_FORWARD, backend)
        ctx.save_for_backward(h, *params, *saved[1:])  # saved[0] is h; not an attribute: see _EagerLoss
        ctx.meta = (training, eps, backend, depth)
        ctx.n_params = len(params)
        return r

    @staticmethod
    @_dispatch.autocast_off
    def backward(ctx, gr):
        training, eps, backend, depth = ctx.meta
        h, *rest = ctx.saved_tensors
        params, saved = rest[:ctx.n_params], [h, *rest[ctx.n_params:]]
        weights, biases, gammas, betas = _split(params, depth)
        if torch.is_grad_enabled():  # create_graph=True: differentiable recomputation
            shifts, invstds = saved[3::4], saved[4::4]
            fn = lambda h_, *p: _torch_net(h_, *_split(p, depth), training, eps, shifts, invstds)
            grads = _grads_through(fn, [h, *params], gr)
            _dispatch.record(OP_FORWARD + "_backward", "reference")
            return (None, *grads)
        gr = gr.contiguous()
        need_weights = any(ctx.needs_input_grad[2:3 + depth])
        batch = batched_backward(weights, saved, 1, depth - 1, gr) if need_weights and stacks_inputs(backend) else None
        with _launch(backend, gr) as kern:
            dh, dweights, dbiases, dgammas, dbetas = _net_backward(
                kern, gr, saved, weights, gammas, training, ctx.needs_input_grad[1], need_weights, batch)
        dbiases.append(gr.sum(0))
        _dispatch.record(OP_FORWARD + "_backward", backend)
        return (None, dh, *dweights, *dbiases, *dgammas, *dbetas)


def _split(params, depth):
    """(weights, biases, gammas, betas) from the flat tuple the Functions take."""
    d = depth + 1
    return params[:d], params[d:2 * d], params[2 * d:2 * d + depth], params[2 * d + depth:]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _custom_ops(first=None, *others) -> bool:
    """Whether the custom ops must run instead of the eager Functions, which hand data_ptr() to the kernels:
    under torch.compile (``_compiling()``, patched by tests to force this path), and on fake or meta tensors,
    tensor subclasses, under Python dispatch modes or functorch transforms. The callers have checked that the
    tensors share first's device (_eager.ok_on_one_device); None entries are skipped."""
    return _compiling() or not _eager.ok_on_one_device(first, *others)


def _run_loss(h, noise, sigma, weights, biases, gammas, betas, rms, rvs, training, momentum, eps, backend,
              reduction, counts=()):
    """The loss reduced over the batch ("mean", "sum" or "none"); updates rms / rvs in place in training mode, and
    adds 1 to each of `counts` (the layers' num_batches_tracked)."""
    with _dispatch.no_autocast(h.device):
        if _custom_ops(h, noise, *weights, *biases, *gammas, *betas, *rms, *rvs, *counts):
            count_batches(counts)
            per_sample, _, new_running = torch.ops.fastgan.denoiser_loss(
                h, noise, sigma, weights, biases, gammas, betas, rms, rvs, training, momentum, eps, backend)
            _copy_running(rms, rvs, new_running)
            return reduce_batch(per_sample, reduction)
        meta = (sigma, training, momentum, eps, backend, len(weights) - 1, rms, rvs, reduction, counts)
        return _EagerLoss.apply(meta, h, noise, *weights, *biases, *gammas, *betas)


def _run_forward(h, weights, biases, gammas, betas, rms, rvs, training, track, momentum, eps, backend, counts=()):
    """r(h) without autograd; updates rms / rvs in place when `track` (and training), and adds 1 to each of
    `counts`."""
    with _dispatch.no_autocast(h.device), torch.no_grad():
        if _custom_ops(h, *weights, *biases, *gammas, *betas, *rms, *rvs, *counts):
            count_batches(counts)
            r, new_running = torch.ops.fastgan.denoiser_forward(h, weights, biases, gammas, betas, rms, rvs,
                                                                training, track, momentum, eps, backend)
        else:
            r, new_running = _forward_impl(h, weights, biases, gammas, betas, rms, rvs, training, track, momentum,
                                           eps, backend, running_in_place=True, counts=counts)
    _copy_running(rms, rvs, new_running)
    return r


def _run_target_loss(target, h_fake, backend, reduction):
    """||h_fake - target||^2 reduced over the batch, gradient into h_fake only."""
    with _dispatch.no_autocast(target.device):
        if _custom_ops(target, h_fake):
            return reduce_batch(torch.ops.fastgan.recon_loss(h_fake, None, target, backend), reduction)
        return _EagerRecon.apply(target, h_fake, backend, reduction)
