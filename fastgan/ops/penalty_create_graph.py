"""Higher-order gradients through the penalty modes "jvp" and "mlp".

Both modes form the penalty's parameter gradient from quantities held constant (the JVP direction v = 2 w(psi) g,
u = w'(psi) ||g||^2, the closed form's saved layers), which is exact for the first derivative only. When a
backward runs with create_graph=True (torch then runs every backward function with grad mode on), the gradient
must itself be a differentiable function of D's parameters, so these paths form it there by the double backward
instead: the penalty is recomputed from D's state as it was at the call (buffers, random-number state) with its
input gradient built with a graph, and differentiated with create_graph=True. A plain `loss.backward()` never
takes this path; `_dispatch.counts[("gradient_penalty", "create_graph")]` counts the times it ran.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _dispatch, _eager
from .closed_form_maps import dense_affine, per_channel, reduce_dims

MODE_OP = "gradient_penalty"
PATH = "create_graph"


def graph_nodes(t: torch.Tensor):
    """Each node of t's autograd graph, once."""
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        yield fn
        stack.extend(nxt for nxt, _ in fn.next_functions)


def graph_leaves(t: torch.Tensor) -> list:
    """The leaf tensors requiring grad that t's graph reaches (the AccumulateGrad nodes' variables)."""
    return [fn.variable for fn in graph_nodes(t) if getattr(fn, "variable", None) is not None]


@_eager.function
class CreateGraphTap(torch.autograd.Function):
    """Zero, with the gradient of s - s.detach() for a surrogate `diff` = s (jvp's, or the penalty itself where
    "auto" ran the double backward; its value taken as zero: s itself is inf or nan where a logit is infinite, and
    inf - inf would make the penalty nan). A first-order backward passes the gradient on into s's graph (the fast
    path); a backward with create_graph=True instead returns, for `params`, the gradient of replay() (the penalty
    recomputed by the double backward, exact to any order) with a graph. `own`: leaves of s's graph that are not
    D's inputs to differentiate (the double backward's own copy of x)."""

    @staticmethod
    def forward(ctx, diff, replay, own, *params):
        # inputs kept as plain attributes (only a create_graph backward reads them): save_for_backward's
        # per-tensor bookkeeping would cost every first-order step
        ctx.replay, ctx.diff, ctx.own, ctx.params = replay, diff, own, params
        return torch.zeros_like(diff)

    @staticmethod
    def backward(ctx, grad):
        if not torch.is_grad_enabled():
            return (grad, None, None) + (None,) * len(ctx.params)
        diff, params = ctx.diff, ctx.params
        known = {id(p) for p in params} | {id(t) for t in ctx.own}
        stray = [leaf for leaf in graph_leaves(diff) if id(leaf) not in known]
        if stray:
            raise ValueError(f"gradient_penalty(mode='jvp' or 'auto') with create_graph=True: D's output depends on "
                             f"{len(stray)} tensor(s) requiring grad that are not D's parameters (shape "
                             f"{tuple(stray[0].shape)}); pass D as a function of those tensors or use "
                             "mode='double_backward'")
        _dispatch.record(MODE_OP, PATH)
        pen = ctx.replay()
        grads = torch.autograd.grad(pen, params, grad, create_graph=True, allow_unused=True) if params else ()
        return (None, None, None) + tuple(grads)


# ---------------------------------------------------------------- mode "mlp"

def _any_order_norm(kind, m, h, gamma, beta):
    """BatchNorm as the closed forms ran it, without touching the running statistics (the call already advanced
    them once); batch statistics in ordinary ops, as torch's fused batch_norm has wrong third derivatives
    (pytorch/pytorch#186256)."""
    if kind == "bn_batch":
        dims = reduce_dims(h)
        mean = h.mean(dims, keepdim=True)
        xc = h - mean
        y = xc * torch.rsqrt((xc * xc).mean(dims, keepdim=True) + m.eps)
        if gamma is not None:
            y = y * per_channel(gamma, y)
        return {}, y if beta is None else y + per_channel(beta, y)
    gamma, beta = dense_affine(gamma, beta)
    return {}, F.batch_norm(h, m.running_mean, m.running_var, gamma, beta, False, 0.0, m.eps)


def _per_sample(g2, psi, weight, backend):
    from .mlp_penalty import by_row_block
    from .penalty import grad_norm_penalty

    parts = by_row_block(weight, lambda w, g, p: grad_norm_penalty(g, p, w, "none", backend), g2, psi)
    return torch.cat(parts)


def mlp_grads(x, steps, weight, backend, tensors, g_per, g_psi):
    """The closed form's input gradients (for `tensors`), differentiable: (per, psi) recomputed from x and
    tensors with the input gradient built with a graph, then their vector-Jacobian product with create_graph."""
    from .mlp_penalty import primal_chain

    _dispatch.record(MODE_OP, PATH)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        psi, _ = primal_chain(xg, steps, tensors, _any_order_norm)
        (g,) = torch.autograd.grad(psi.sum(), xg, create_graph=True)
        per = _per_sample(g.reshape(g.shape[0], -1), psi, weight, backend)
        live = [i for i, t in enumerate(tensors) if t is not None and t.requires_grad]
        got = torch.autograd.grad((per, psi), [tensors[i] for i in live], (g_per.to(per.dtype), g_psi),
                                  create_graph=True, allow_unused=True)
    out = [None] * len(tensors)
    for i, d in zip(live, got):
        out[i] = d
    return out
