"""The fused DFM denoiser's custom ops (``torch.ops.fastgan.*``), each with a fake kernel, and autograd for the
differentiable ones; importing this module registers them. They run under torch.compile / export (and for the
public bn_relu given strided running statistics); eagerly, denoiser_eager.py's autograd.Functions run the same
implementations (denoiser_net.py) without torch.library's wrapper.
  * ``bn_relu``: one fused layer, with autograd (the public ``bn_relu``; ``Denoiser.forward`` with gradients under
    torch.compile);
  * ``recon_loss``: l_n = sum_f (y + b - t)^2, with autograd;
  * ``denoiser_loss``: the whole training loss in one op, with a hand-written backward
    (``denoiser_loss_backward``) that walks the layers once;
  * ``denoiser_forward``: r(h) without autograd (targets, inference).
Custom ops must be functional: updated running statistics come back as new tensors, and their callers copy them
into the buffers.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _checks, _dispatch, _library
from .denoiser_backends import OP_LAYER, OP_RECON, _KERNELS
from .denoiser_net import (_forward_impl, _grads_through, _layer_backward, _layer_forward, _loss_backward_impl,
                           _loss_double_backward, _loss_forward_impl, _torch_bn)

Tensor = torch.Tensor
# the kernels' element types: every tensor of a call in one of them
_DTYPES = (torch.float32, torch.float64)


# ---------------------------------------------------------------- custom op: one fused layer

@_library.custom_op("fastgan::bn_relu", mutates_args=())
def _bn_relu(y: Tensor, bias: Optional[Tensor], gamma: Tensor, beta: Tensor, running_mean: Optional[Tensor],
             running_var: Optional[Tensor], training: bool, momentum: float, eps: float, relu: bool,
             backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out, shift, invstd, new_running_mean, new_running_var); the last two are empty unless training with
    running statistics."""
    _checks.op_shapes("bn_relu", ("y", y, (None, None)))
    N = y.shape[1]
    vectors = (("bias", bias), ("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
               ("running_var", running_var))
    _checks.op_shapes("bn_relu", *((k, v, (N,)) for k, v in vectors))
    _checks.op_dtypes("bn_relu", ("y", y), *vectors, allowed=_DTYPES)
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


@_dispatch.autocast_off
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
    _checks.op_shapes("bn_relu_backward", ("y", y, (None, None)))
    vectors = (("gamma", gamma), ("shift", shift), ("invstd", invstd))
    _checks.op_shapes("bn_relu_backward", ("dout", dout, y.shape), ("out", out, y.shape),
                      *((k, v, (y.shape[1],)) for k, v in vectors))
    _checks.op_dtypes("bn_relu_backward", ("y", y), ("dout", dout), ("out", out), *vectors, allowed=_DTYPES)
    res = _layer_backward(_KERNELS[backend], dout, out, y, gamma, shift, invstd, training, relu)
    _dispatch.record(OP_LAYER + "_backward", backend)
    return res


@_bn_relu_backward_op.register_fake
def _bn_relu_backward_fake(dout, out, y, gamma, shift, invstd, training, relu, backend):
    N = y.shape[1]
    return torch.empty_like(y), y.new_empty(N), y.new_empty(N), y.new_empty(N)


# ---------------------------------------------------------------- custom op: reconstruction loss

def _recon_shapes(op, y, bias, target, go=None):
    _checks.op_shapes(op, ("y", y, (None, None)))
    _checks.op_shapes(op, ("bias", bias, (y.shape[1],)), ("target", target, y.shape), ("go", go, (y.shape[0],)))
    _checks.op_dtypes(op, ("y", y), ("bias", bias), ("target", target), ("go", go), allowed=_DTYPES)


@_library.custom_op("fastgan::recon_loss", mutates_args=())
def _recon_loss(y: Tensor, bias: Optional[Tensor], target: Tensor, backend: str) -> Tensor:
    """l_n = sum_f (y + bias - target)^2, shape (B,)."""
    _recon_shapes("recon_loss", y, bias, target)
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


@_dispatch.autocast_off
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
    _recon_shapes("recon_loss_backward", y, bias, target, go)
    dy = torch.empty_like(y)
    dbias = y.new_empty(y.shape[1] if want_dbias else 0)
    _KERNELS[backend].recon_bwd(go, y, bias, target, dy, dbias if want_dbias else None)
    _dispatch.record(OP_RECON + "_backward", backend)
    return dy, dbias


@_recon_loss_backward_op.register_fake
def _recon_loss_backward_fake(go, y, bias, target, want_dbias, backend):
    return torch.empty_like(y), y.new_empty(y.shape[1] if want_dbias else 0)


# ---------------------------------------------------------------- custom ops (torch.compile / export path)

def _net_shapes(op, h, weights, biases, gammas, betas=(), running_means=(), running_vars=(), noise=None, go=None,
                saved=None):
    """The layers' tensors against h (B, n) and each other (see _checks.op_shapes): weights (out, in) chained from
    n back to n, biases (out,), the hidden layers' gammas, betas and running statistics (out,)."""
    _checks.op_shapes(op, ("h", h, (None, None)))
    B, n = h.shape
    hidden = len(weights) - 1
    for name, items, count in (("weights", weights, None), ("biases", biases, len(weights)),
                               ("gammas", gammas, hidden), ("betas", betas, hidden if betas else 0),
                               ("running_means", running_means, hidden if running_means else 0),
                               ("running_vars", running_vars, len(running_means))):
        if (count is None and not items) or (count is not None and len(items) != count):
            raise ValueError(f"fastgan::{op}: {name} must hold {count if count is not None else 'at least 1'} "
                             f"tensors for {len(weights)} weights, got {len(items)}")
    width = n
    for i, w in enumerate(weights):
        out = n if i == hidden else None
        _checks.op_shapes(op, (f"weights[{i}]", w, (out, width)))
        width = w.shape[0]
        vectors = [("biases", biases)] + ([("gammas", gammas), ("betas", betas), ("running_means", running_means),
                                           ("running_vars", running_vars)] if i < hidden else [])
        _checks.op_shapes(op, *((f"{k}[{i}]", v[i] if v else None, (width,)) for k, v in vectors))
    _checks.op_shapes(op, ("noise", noise, (B, n)), ("go", go, (B,)))
    if saved is not None:
        want = [(B, n)] + [s for w in weights[:-1] for s in ((B, w.shape[0]), (B, w.shape[0]), (w.shape[0],),
                                                             (w.shape[0],))] + [(B, n)]
        if len(saved) != len(want):
            raise ValueError(f"fastgan::{op}: saved must hold {len(want)} tensors for {len(weights)} weights, got "
                             f"{len(saved)}")
        _checks.op_shapes(op, *((f"saved[{i}]", t, s) for i, (t, s) in enumerate(zip(saved, want))))
    lists = (("weights", weights), ("biases", biases), ("gammas", gammas), ("betas", betas),
             ("running_means", running_means), ("running_vars", running_vars), ("saved", saved or ()))
    _checks.op_dtypes(op, ("h", h), ("noise", noise), ("go", go),
                      *((f"{k}[{i}]", t) for k, items in lists for i, t in enumerate(items)), allowed=_DTYPES)


@_library.custom_op("fastgan::denoiser_loss", mutates_args=())
def _denoiser_loss(h: Tensor, noise: Tensor, sigma: float, weights: list[Tensor], biases: list[Tensor],
                   gammas: list[Tensor], betas: list[Tensor], running_means: list[Tensor],
                   running_vars: list[Tensor], training: bool, momentum: float, eps: float,
                   backend: str) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """(per-sample loss (B,), saved activations, new running stats [rm0, rv0, rm1, ...] or [])."""
    _net_shapes("denoiser_loss", h, weights, biases, gammas, betas, running_means, running_vars, noise=noise)
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
    _net_shapes("denoiser_loss_backward", h, weights, biases, gammas, go=go, saved=saved)
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


@_dispatch.autocast_off
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
    _net_shapes("denoiser_forward", h, weights, biases, gammas, betas, running_means, running_vars)
    return _forward_impl(h, weights, biases, gammas, betas, running_means, running_vars, training, track, momentum,
                         eps, backend)


@_denoiser_forward.register_fake
def _denoiser_forward_fake(h, weights, biases, gammas, betas, running_means, running_vars, training, track,
                           momentum, eps, backend):
    track = track and training and len(running_means) > 0
    return torch.empty_like(h), ([h.new_empty(w.shape[0]) for w in weights[:-1] for _ in range(2)] if track else [])


# ---------------------------------------------------------------- vmap
RUNNING_UNDER_VMAP = ("under vmap a training-mode BatchNorm would update the running statistics once per vmapped "
                      "sample (torch's batch_norm refuses this too); use eval mode or call it without vmap")
# torch.func.vmap's per-sample fallback, which runs the other custom ops under vmap, refuses any op with a Tensor[]
# argument ("Batching rule not implemented for fastgan::denoiser_loss. We could not generate a fallback"): these
# three take the layers' lists, so Denoiser.loss, generator_loss and a no-grad forward failed under vmap, in eval
# mode too. Their rule is that fallback's loop: the op once per vmapped sample, the outputs stacked.


def _per_sample(op, name):
    """op's vmap rule (name: its qualified name). An op taking running_means updates them where training (and
    track, if it has that argument) is true: refused, as that would be once per vmapped sample."""
    import torch.utils._pytree as pytree

    names = [a.name for a in op._opoverload._schema.arguments]
    running_at = ((names.index("training"), names.index("track") if "track" in names else None,
                   names.index("running_means")) if "running_means" in names else None)

    def take(a, d, i):
        if isinstance(a, (list, tuple)):
            return [take(t, None if d is None else d[j], i) for j, t in enumerate(a)]
        return a if d is None else a.select(d, i)

    def rule(info, in_dims, *args):
        if running_at is not None:
            training, track, running = (args[k] if k is not None else True for k in running_at)
            if training and track and len(running):
                raise RuntimeError(f"{name}: {RUNNING_UNDER_VMAP}")
        if info.batch_size == 0:
            raise ValueError(f"{name}: vmap over a dimension of size 0")
        outs = [op(*(take(a, d, i) for a, d in zip(args, in_dims))) for i in range(info.batch_size)]
        leaves, spec = pytree.tree_flatten(outs[0])
        stacked = [torch.stack(ts) for ts in zip(*(pytree.tree_leaves(o) for o in outs))]
        return pytree.tree_unflatten(stacked, spec), pytree.tree_unflatten([0] * len(leaves), spec)
    return rule


if hasattr(torch.library, "register_vmap"):  # torch >= 2.5
    for _op in (_denoiser_loss, _denoiser_forward, _denoiser_loss_backward):
        torch.library.register_vmap(_op, _per_sample(_op, f"fastgan::{_op._name}"))
