"""Closed-form penalty gradients for Sequential discriminators, MLPs and convnets (gradient_penalty(...,
mode="mlp")).

D = nn.Sequential of Linear or Conv1d/2d/3d (zero padding), ReLU, LeakyReLU, Tanh, Sigmoid, BatchNorm1d/2d/3d with
running statistics (eval mode; with batch statistics see fastgan/ops/mlp_penalty_bn.py), Dropout in eval mode (or
p=0), Identity and Flatten, ending in one value per sample. Every layer but the Linear/Conv ones (closed_form_maps.
LinearMap: a linear map of its input) acts elementwise with a slope: the activation's derivative, or eval
BatchNorm's per-channel gamma / sqrt(var + eps). With delta_l = d psi / d(output of layer l) (per sample) the input
gradient is g = delta_1 W_1, a product of masked linear maps. For Omega = sum_n P_n with upstream gradients
(gP, gpsi) and a = gP * u + gpsi, u_n = w'(psi_n) ||g_n||^2:

    dL/dW_l = rho_l^T h_{l-1} + delta_l^T (gP * t_{l-1}),   dL/db_l = rho_l^T 1,

(for a convolution, X^T Y is its weight gradient for input Y and output gradient X), where h_{l-1} is the layer's
input, t the tangent of the forward pass in the direction v_n = 2 w(psi_n) g_n (t_0 = v, through each layer's
linear part), and rho the adjoint of the primal activations: rho = a * delta when every activation is piecewise
linear (their masks' derivatives vanish a.e., as in torch's double backward), so the D loss's gradient (through
gpsi) and the penalty's share ONE weight gradient per layer; a smooth activation adds gP * delta * t * sigma''(z)
to rho, which then needs its own backward chain. Samples are independent here, so reduction="none" works too.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import _checks, _dispatch, _eager, _hooks
from .compiled_d import uncompiled
from .closed_form_maps import (CONVS, LinearMap, _blocked, batch_total, bias_grad, channel_sum, per_channel,
                               per_sample)
from .penalty import require_samples, weight_vjp

_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LEAF_TYPES = (nn.Linear, *CONVS, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, *_BNS, nn.Identity, nn.Flatten,
               nn.Dropout)
_BN_RANKS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}
_ACTIVATIONS = {nn.ReLU: "relu", nn.LeakyReLU: "leaky", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}


def _first(items, pred):
    """The first item of items with pred(item) true, else None. A plain loop, not next(genexpr, None): the Dynamo
    of torch 2.4 and 2.8 cannot trace next() with a default (2.14's can), and plan() runs inside torch.compile."""
    for item in items:
        if pred(item):
            return item
    return None


def _conv_problem(m) -> str:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        return f"padding_mode={m.padding_mode!r}, padding={m.padding!r} (only zero padding given as numbers)"
    if type(m)._conv_forward is not _first(CONVS, lambda c: isinstance(m, c))._conv_forward:
        return "a convolution with its own _conv_forward"
    return ""


def _conv_out(shape, m) -> tuple | None:
    if shape is None:
        return None
    spatial = [(n + 2 * p - d * (k - 1) - 1) // s + 1
               for n, k, s, p, d in zip(shape[1:], m.kernel_size, m.stride, m.padding, m.dilation)]
    return (m.out_channels, *spatial)


def _layers(seq: nn.Sequential, prefix: str = ""):
    """(name, layer) in the order seq's forward runs them, nested plain nn.Sequentials opened (named "1.0"); a
    module listed twice comes twice, as the forward calls it twice. A torch.compile'd layer is the layer it wraps:
    the closed form never runs a layer's forward."""
    for name, m in seq._modules.items():
        m = uncompiled(m)
        if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
            yield from _layers(m, f"{prefix}{name}.")
        elif m is not None:
            yield f"{prefix}{name}", m


def plan(D, x: torch.Tensor | None = None):
    """(steps, "") when D is a network this module can differentiate in closed form (for input x, if given),
    else (None, why not). steps: list of (kind, module), kind in linear/bn/bn_batch/relu/leaky/tanh/sigmoid/flatten
    (linear: nn.Linear or a zero-padded Conv1d/2d/3d; bn: BatchNorm with running statistics; bn_batch: with batch
    statistics, see mlp_penalty_bn).

    D is an nn.Sequential, or any module with a method ``as_sequential()`` returning an nn.Sequential that
    computes exactly D's forward from D's own submodules (the opt-in for discriminators with a custom class).
    """
    if not isinstance(D, nn.Module):
        return None, "D is not an nn.Module"
    if isinstance(D, nn.parallel.DistributedDataParallel):
        # its gradient averaging is armed by a forward through the wrapper, which the closed form never runs
        return None, ("D is wrapped in DistributedDataParallel, whose gradient averaging needs D's forward to go "
                      "through the wrapper; under DDP use mode='jvp' or 'double_backward'")
    # hooks anywhere in D (containers included) change what its forward computes
    where = _hooks.where_hooked(D)
    if where is not None:
        return None, (f"{where} (torch.nn.utils.weight_norm/spectral_norm are hooks: their "
                      "torch.nn.utils.parametrizations versions run in the closed form)")
    if not isinstance(D, nn.Sequential) and callable(getattr(D, "as_sequential", None)):
        D = D.as_sequential()
        if D is None:
            return None, "D's as_sequential() declined (a subclass that changes the forward)"
    if not isinstance(D, nn.Sequential) or type(D).forward is not nn.Sequential.forward:
        return None, "D is not an nn.Sequential (and has no as_sequential())"
    steps = []
    # outside autocast (which the closed form meets by casting x to D's dtype) a layer of another dtype than x is
    # refused here, naming both: the GEMMs said "mat1 and mat2 must have the same dtype", naming neither
    dtype = None if x is None or _dispatch.autocast_enabled(x.device) else x.dtype
    # and a layer on another device than x, which the closed form never runs (torch's "Tensor on device cpu is not
    # on the expected device meta!" from its GEMMs, naming neither): D's forward would refuse it, as D's own error
    device = None if x is None else x.device
    # the per-sample shape flowing through D (None: unknown, x not given) and its rank (with the batch dim)
    shape = None if x is None else tuple(x.shape[1:])
    rank = None if x is None else x.dim()
    for i, m in _layers(D):
        kind = _first(_LEAF_TYPES, lambda t: isinstance(m, t))
        # subclasses that override forward (spectral-norm parametrized Linear keeps Linear.forward) are out; hooks
        # were checked above on every module of D, which as_sequential() draws its layers from
        if kind is None or type(m).forward is not kind.forward:
            return None, f"layer {i} ({type(m).__name__}) is not a supported layer"
        where = f"layer {i} ({type(m).__name__})"
        if kind is nn.Linear or kind in CONVS:
            # its parameters, not m.weight: a parametrized weight (spectral norm) would run its power iteration
            w = next(m.parameters(), None)
            if dtype is not None and w is not None and w.dtype != dtype:
                return None, f"{where} has {w.dtype} weights but x is {dtype}"
            if device is not None and w is not None and w.device != device:
                return None, f"{where} has weights on {w.device} but x is on {device}"
        if kind is nn.Linear:
            if rank not in (None, 2):
                return None, f"{where} gets a rank-{rank} input; flatten it first (nn.Flatten())"
            if shape is not None and m.in_features != shape[0]:
                return None, f"{where} expects {m.in_features} features, gets {shape[0]}"
            shape, rank = (m.out_features,), 2
            steps.append(("linear", m))
        elif kind in CONVS:
            why = _conv_problem(m)
            if why:
                return None, f"{where}: {why}"
            want = len(m.kernel_size) + 2
            if rank not in (None, want):
                return None, f"{where} needs a rank-{want} input, gets rank {rank}"
            if shape is not None and m.in_channels != shape[0]:
                return None, f"{where} expects {m.in_channels} channels, gets {shape[0]}"
            shape, rank = _conv_out(shape, m), want
            steps.append(("linear", m))
        elif kind in _ACTIVATIONS:
            steps.append((_ACTIVATIONS[kind], m))
        elif kind in _BNS:
            if shape is not None and m.num_features != shape[0]:
                return None, f"{where} expects {m.num_features} features, gets {shape[0]}"
            if rank is not None and rank not in _BN_RANKS[kind]:
                return None, f"{where} gets a rank-{rank} input"
            # batch statistics (training mode, or no running statistics): mlp_penalty_bn's closed form
            steps.append(("bn_batch" if m.training or m.running_mean is None else "bn", m))
        elif kind is nn.Dropout:
            if m.training and m.p > 0:
                return None, f"{where}: active Dropout is not supported"
        elif kind is nn.Flatten:
            if (m.start_dim, m.end_dim) != (1, -1):
                return None, f"{where}: only nn.Flatten() (start_dim=1, end_dim=-1) is supported"
            shape, rank = (None if shape is None else (math.prod(shape),)), 2
            steps.append(("flatten", m))
    last = _first(reversed(steps), lambda step: step[0] == "linear")
    last = None if last is None else last[1]
    if last is None:
        return None, "D has no Linear or convolution layer"
    width = math.prod(shape) if shape is not None else (last.out_features if isinstance(last, nn.Linear)
                                                        else last.out_channels)
    if width != 1:
        return None, f"D's output has {width} values per sample, not 1"
    return steps, ""


_aten = torch.ops.aten


class _Act:
    """An elementwise activation as torch's own backward kernels see it: `key` is the tensor its derivative is
    read from (the input for LeakyReLU, the output otherwise), so masks at 0 match the double backward."""

    def __init__(self, kind, m):
        self.kind, self.slope = kind, getattr(m, "negative_slope", 0.0)

    def forward(self, z):
        if self.kind == "leaky":
            return torch.nn.functional.leaky_relu(z, self.slope), z
        y = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[self.kind](z)
        return y, y

    def apply_slope(self, d, key):
        """d * sigma'(z)."""
        if self.kind == "leaky":
            return _aten.leaky_relu_backward(d, key, self.slope, False)
        if self.kind == "relu":
            return _aten.threshold_backward(d, key, 0)
        if self.kind == "tanh":
            return _aten.tanh_backward(d, key)
        return _aten.sigmoid_backward(d, key)

    @property
    def smooth(self):
        return self.kind in ("tanh", "sigmoid")

    def adjoint(self, rho, c, key):
        """rho * sigma'(z) + c * sigma''(z), with sigma'' written through sigma' (y = sigma(z)):
        tanh'' = -2 y tanh', sigmoid'' = (1 - 2 y) sigmoid'."""
        if self.kind == "tanh":
            return _aten.tanh_backward(torch.addcmul(rho, c, key, value=-2), key)
        if self.kind == "sigmoid":
            return _aten.sigmoid_backward(rho + c * (1 - 2 * key), key)
        return self.apply_slope(rho, key)


def by_row_block(weight, fn, *tensors) -> list:
    """[fn(weight, *tensors)], or for consecutive row blocks with their own weights (weight = ((weight, rows),
    ...), as js_penalty's real rows then fake rows in one batch) fn of each block's weight and rows."""
    if not isinstance(weight, tuple):
        return [fn(weight, *tensors)]
    parts, start = [], 0
    for w, rows in weight:
        parts.append(fn(w, *(t[start:start + rows] for t in tensors)))
        start += rows
    return parts


def _terms(g2, psi, weight, backend):
    """penalty_terms for one weight or for row blocks with their own weights (by_row_block)."""
    from .penalty_jvp import penalty_terms

    if isinstance(weight, tuple) and len(weight) == 2 and not any(callable(w) for w, _ in weight):
        return penalty_terms(g2, psi, (weight[0][0], weight[1][0]), 1, backend, split=weight[0][1])
    parts = by_row_block(weight, lambda w, g, p: penalty_terms(g, p, w, 1, backend), g2, psi)
    return parts[0] if len(parts) == 1 else tuple(torch.cat(z) for z in zip(*parts))


def weight_extras(weight, g2, psi_acc, u) -> dict:
    """What the backward needs of the weight: u, or for a callable weight (which may couple samples, so its
    VJP is redone with the real upstream) the logits and ||g||^2."""
    if callable(weight):
        ga = g2.to(psi_acc.dtype)
        return {"psi": psi_acc, "s": (ga * ga).sum(1)}
    return {"u": u}


def adjoint_seed(weight, extra, g_per, g_psi):
    """a = gP * w'(psi) ||g||^2 + gpsi: the adjoint of the logits in the penalty's parameter gradient."""
    dt = g_psi.dtype
    if callable(weight):
        with torch.enable_grad():
            p = extra["psi"].detach().requires_grad_(True)
            du = weight_vjp(weight(p), p, g_per.to(p.dtype) * extra["s"])
        return g_psi if du is None else du.to(dt) + g_psi
    return torch.addcmul(g_psi, g_per.to(dt), extra["u"].to(dt))


def save_layers(ctx, layers, extra: dict, inputs, spec, grads):
    """Layer records, extras and the Function's inputs (x, *tensors: what a create_graph backward recomputes
    from) through save_for_backward, so an in-place edit of a weight before backward raises as usual; the
    non-tensor fields, spec = (steps, weight, backend, the backend request the forward saw) and the closed form's
    first-order `grads` go on ctx."""
    keys, saved, others = [(-2, j) for j in range(len(inputs))], list(inputs), []
    for i, L in enumerate(layers):
        others.append({k: val for k, val in L.items() if not isinstance(val, torch.Tensor)})
        for k, val in L.items():
            if isinstance(val, torch.Tensor):
                keys.append((i, k))
                saved.append(val)
    for k, val in extra.items():
        keys.append((-1, k))
        saved.append(val)
    ctx.save_for_backward(*saved)
    ctx.keys, ctx.others = keys, others
    ctx.steps, ctx.weight, ctx.backend, ctx.request = spec
    ctx.grads = grads


def load_layers(ctx):
    layers = [dict(o) for o in ctx.others]
    extra, inputs = {}, []
    for (i, k), val in zip(ctx.keys, ctx.saved_tensors):
        if i == -2:
            inputs.append(val)
        else:
            (extra if i < 0 else layers[i])[k] = val
    return layers, extra, inputs


@_eager.function
class ClosedForm(torch.autograd.Function):
    """The backward of both MLP closed forms (this module's and mlp_penalty_bn's): ctx.grads(ctx, layers, extra,
    g_per, g_psi) -> [(d_bias, d_weight)] from the last Linear/BatchNorm to the first, or, in a backward with
    create_graph=True, penalty_create_graph's differentiable recompute instead of the closed form's constants."""

    @staticmethod
    def backward(ctx, g_per, g_psi):
        layers, extra, inputs = load_layers(ctx)
        # on CPU the backward runs on the caller's thread, inside the caller's autocast if any; its kernels run
        # where the forward's would have, whatever use_backend block surrounds backward()
        with _dispatch.no_autocast(g_psi.device), _dispatch.pin(ctx.request):
            if torch.is_grad_enabled():
                from .penalty_create_graph import mlp_grads

                x, *tensors = inputs
                return (None, None, *mlp_grads(x, ctx.steps, ctx.weight, ctx.backend, tensors, g_per, g_psi))
            out = []
            for d_bias, d_weight in reversed(ctx.grads(ctx, layers, extra, g_per, g_psi)):
                out += [d_weight, d_bias]
            return (None, None, *out)


def primal_chain(x, steps, tensors, norm):
    """The planned network's forward on x: (psi (B,), one record per step of what its backward needs). Linear
    and convolution records keep their LinearMap, W, b and their input h, activations their _Act and key, Flatten
    the shape it flattened; each BatchNorm layer runs through norm(kind, module, h, gamma, beta) -> (record
    fields, output), which differs between the closed forms."""
    B = x.shape[0]
    h = x
    layers = []
    it = iter(tensors)
    for kind, m in steps:
        if kind == "linear":
            W, b = next(it), next(it)
            layers.append({"kind": kind, "map": LinearMap(m), "W": W, "b": b, "h": h})
            h = layers[-1]["map"](h, W, b)
        elif kind in ("bn", "bn_batch"):
            fields, h_next = norm(kind, m, h, next(it), next(it))
            layers.append({"kind": kind, **fields})
            h = h_next
        elif kind == "flatten":
            layers.append({"kind": kind, "shape": h.shape})
            h = h.reshape(B, -1)
        else:
            act = _Act(kind, m)
            h, key = act.forward(h)
            layers.append({"kind": kind, "act": act, "key": key})
    if not _checks.one_per_sample(h, B):
        raise ValueError(f"D's output has shape {tuple(h.shape)}: logits must be (B,) or (B, 1, ..., 1)")
    layers[-1]["out_shape"] = tuple(h.shape)
    return h.reshape(B), layers


def own_output(psi: torch.Tensor) -> torch.Tensor:
    """The logits as the closed forms' Functions return them: under torch.compile a copy, not primal_chain's view
    of the last layer's (B, 1) output. torch 2.11's Dynamo routes the gradient of an autograd.Function output that
    aliases one of the forward's intermediates to the wrong output (pytorch/pytorch#180642, the same aliasing with
    an in-place op): every parameter gradient through the logits came out 0 when traced, for which 2.11 ran the
    closed form eagerly until 2026-12-05. Eagerly no copy is made (one more launch in a launch-bound update)."""
    return psi.clone() if torch.compiler.is_compiling() else psi


def fold_index(layers) -> int | None:
    """The index l of the penultimate Linear when the closed form can skip the tangent's last GEMM, else None.

    That is when D ends Linear_l -> ReLU/LeakyReLU ... -> Linear_L(1 output) and has no smooth activation: then
    h = S * z at Linear_L's input (z = W_l h_l + b_l, S the activations' slopes), delta_l = S * w_L, and with
    y_n = a_n h_l,n + gP_n t_l,n Linear_l's weight gradient is diag(w_L) P, P = S^T y, one GEMM as before. Linear_L's
    own, sum_n a_n h_n + gP_n t_n with t = S * (W_l t_l), is sum_o W_l,oi P_oi over i plus b_l * (S^T a): no GEMM
    for the tangent through W_l (for a d-n-n-1 MLP the closed form then costs the plain update's FLOPs).

    Where closed_form_maps._blocked (float32/float64 on CPU, where contractions follow the double backward's for
    accuracy) the tangent still runs through W_l and Linear_L's weight gradient is summed from h and t itself
    (direct_output): sum_o W_l,oi P_oi rounds after the batch sum, on terms larger than that gradient wherever W_l's
    row cancels, so where a WGAN-style loss's -1/B and +1/B cancel over the batches (a 3-32-32-1 LeakyReLU D at
    inputs ~100, 128 + 128 rows, on an Intel Xeon) it read a median 1.4x the double backward's error and 4x in 2 of
    40 seeds, against 0.55x (at most 2.4x) summed directly. Linear_l's stays diag(w_L) P (a median 0.7-0.9x the
    double backward's error there; summed from delta_l = S * w_L, 1.0-1.2x)."""
    last = len(layers) - 1
    out = layers[last]
    if out["kind"] != "linear" or out["map"].conv or any("act" in L and L["act"].smooth for L in layers):
        return None
    i = last - 1
    while i >= 0 and layers[i]["kind"] in ("relu", "leaky"):
        i -= 1
    if i < 0 or layers[i]["kind"] != "linear" or layers[i]["map"].conv:
        return None
    return i


def direct_output(w_out) -> bool:
    """Whether a folded D's output weight gradient is summed from its input and tangent (fold_index)."""
    return _blocked(w_out)


def smooth_mlp(steps) -> bool:
    """Whether a planned D is an MLP (no convolution) with an activation with curvature (Tanh, Sigmoid): there the
    closed form's extra backward chain (two more GEMMs per layer) leaves it no cheaper than the double backward."""
    return any(kind in ("tanh", "sigmoid") for kind, _ in steps) and not has_conv(steps)


def has_conv(steps) -> bool:
    """Whether a planned D has a convolution."""
    return any(kind == "linear" and isinstance(m, CONVS) for kind, m in steps)


def uses_batch_stats(steps) -> bool:
    """Whether a planned D normalizes with batch statistics (mlp_penalty_bn's closed form; samples coupled)."""
    return any(kind == "bn_batch" for kind, _ in steps)


def has_params(L) -> bool:
    return L["kind"] in ("linear", "bn", "bn_batch")


def running_stats_norm(kind, m, h, gamma, beta):
    """BatchNorm with running statistics: a per-channel affine map with slope gamma / sqrt(var + eps)."""
    rstd = torch.rsqrt(m.running_var + m.eps)
    slope = rstd if gamma is None else gamma * rstd
    fields = {"gamma": gamma, "beta": beta, "rstd": per_channel(rstd, h), "h": h,
              "mean": per_channel(m.running_mean, h), "slope": per_channel(slope, h)}
    return fields, torch.nn.functional.batch_norm(h, m.running_mean, m.running_var, gamma, beta, False, 0.0, m.eps)


class _MLPPenalty(ClosedForm):
    @staticmethod
    def forward(ctx, x, spec, *tensors):
        steps, weight, backend, _ = spec
        B = x.shape[0]
        psi, layers = primal_chain(x, steps, tensors, running_stats_norm)
        out_shape = layers[-1]["out_shape"]
        last = len(layers) - 1
        fold = fold_index(layers)
        direct = fold is not None and direct_output(layers[last]["W"])
        # delta: d psi_n / d (the layer's output), per sample; the last one is the input gradient
        delta = None  # None: ones in the shape of D's output
        for i in range(last, -1, -1):
            L = layers[i]
            if i == fold:  # delta = S * w_L, the activations' slopes S kept for grads
                L["S"] = delta
                delta = delta * layers[last]["W"]
            L["delta"] = delta
            if L["kind"] == "linear":
                if delta is None and fold is not None:
                    delta = psi.new_ones(B, L["W"].shape[1])
                elif delta is None and not L["map"].conv:
                    delta = L["W"].expand(B, -1)
                else:
                    delta = L["map"].input_grad(psi.new_ones(out_shape) if delta is None else delta, L["W"], L["h"])
            else:
                delta = psi.new_ones(out_shape) if delta is None else delta
                if L["kind"] == "flatten":
                    delta = delta.reshape(L["shape"])
                else:
                    delta = delta * L["slope"] if L["kind"] == "bn" else L["act"].apply_slope(delta, L["key"])
        acc = _checks.acc_dtype(delta.dtype)
        g2 = delta.reshape(B, -1)
        g2 = g2.to(acc) if acc == torch.float64 else g2
        psi_acc = psi.to(acc)
        per, u, v = _terms(g2, psi_acc, weight, backend)
        t = v.to(psi.dtype).reshape(x.shape)
        for i, L in enumerate(layers):
            L["t"] = t  # the tangent (direction v) at the layer's input
            if i == last or (i == fold and not direct):  # past the fold, grads reads the tangent's one use off P
                break
            if L["kind"] == "linear":
                t = L["map"](t, L["W"], None)
            elif L["kind"] == "flatten":
                t = t.reshape(B, -1)
            else:
                t = t * L["slope"] if L["kind"] == "bn" else L["act"].apply_slope(t, L["key"])
        save_layers(ctx, layers, weight_extras(weight, g2, psi_acc, u), (x, *tensors), spec, _MLPPenalty.grads)
        ctx.last, ctx.fold, ctx.direct = last, fold, direct
        return per, own_output(psi)

    @staticmethod
    def grads(ctx, layers, extra, g_per, g_psi):
        dt = g_psi.dtype
        a = adjoint_seed(ctx.weight, extra, g_per, g_psi)
        gp = g_per.to(dt)
        out_shape = layers[-1]["out_shape"]
        # rho: the adjoint of the primal activations (D loss + u term + the curvature of smooth activations).
        # With piecewise-linear activations only it is a * delta, and each Linear or convolution costs ONE weight
        # GEMM / convolution.
        smooth = any("act" in L and L["act"].smooth for L in layers)
        first = min(i for i, L in enumerate(layers) if has_params(L))
        rho = a.reshape([-1] + [1] * (len(out_shape) - 1))
        grads = []
        fold = ctx.fold
        rows = [n for _, n in ctx.weight] if isinstance(ctx.weight, tuple) else None  # the joint pass's batches
        for i in range(ctx.last, first - 1, -1):
            L = layers[i]
            d = L["delta"]
            if fold is not None and i == ctx.last:  # the fold layer's product P, read below (and here, unless direct)
                F = layers[fold]
                y = torch.addcmul(per_sample(gp, F["h"]) * F["t"], per_sample(a, F["h"]), F["h"])
                P, c = F["map"].weight_grad(F["S"], y, F["W"], rows), bias_grad(F["S"], a, rows)
            if fold is not None and i == ctx.last and not ctx.direct:
                dW = torch.bmm(F["W"].unsqueeze(1), P.unsqueeze(2)).reshape(1, -1)  # sum_i W_oi P_oi, one kernel
                dW = dW if F["b"] is None else torch.addcmul(dW, F["b"], c)
                grads.append((batch_total(a, rows, keepdim=True) if L["b"] is not None else None, dW))
            elif i == fold:  # delta_l^T y = diag(w_L) S^T y
                w = layers[ctx.last]["W"]
                grads.append((None if L["b"] is None else w[0] * c, w.t() * P))
            elif L["kind"] == "linear":
                h, lin = L["h"], L["map"]
                gt = per_sample(gp, h) * L["t"]
                if d is None and not lin.conv:  # the output Linear (a folded D's too, where ctx.direct): delta is ones
                    dW = batch_total(torch.addcmul(gt, rho, h), rows, keepdim=True)
                    db = batch_total(rho, rows)
                else:
                    d = rho.new_ones(out_shape) if d is None else d
                    if smooth:
                        dW = lin.weight_grad2(rho.expand_as(d), h, d, gt, L["W"], rows)
                        db = channel_sum(rho.expand_as(d), rows)
                    else:
                        dW = lin.weight_grad(d, torch.addcmul(gt, per_sample(a, h), h), L["W"], rows)
                        db = channel_sum(per_sample(a, d) * d, rows) if lin.conv else bias_grad(d, a, rows)
                grads.append((db if L["b"] is not None else None, dW))
                if smooth and i > first:
                    rho = lin.input_grad(rho if d is None else rho.expand_as(d), L["W"], h)
            elif L["kind"] == "bn":
                h = L["h"]
                dd = torch.ones_like(h) if d is None else d
                r = rho if (smooth or d is None) else per_sample(a, dd) * dd
                zhat = (h - L["mean"]) * L["rstd"]
                dgamma = None if L["gamma"] is None else \
                    channel_sum(r * zhat + per_sample(gp, h) * dd * L["t"] * L["rstd"])
                grads.append((None if L["beta"] is None else channel_sum(r.expand_as(h)), dgamma))
                if smooth:
                    rho = rho * L["slope"]
            elif not smooth:
                continue
            elif L["kind"] == "flatten":
                rho = rho.reshape(L["shape"])
            else:
                act = L["act"]
                if act.smooth:
                    dd = torch.ones_like(L["t"]) if d is None else d
                    rho = act.adjoint(rho, per_sample(gp, dd) * dd * L["t"], L["key"])
                else:
                    rho = act.apply_slope(rho, L["key"])
        return grads


# torch.compile with dynamic shapes makes a module's float attributes symbolic (specialize_float=False). Read first
# inside one autograd.Function's traced forward, such a value cannot be used by a second Function (the other
# batch's pass; Dynamo asserts "lift_tracked_freevar_to_input should not be called on root SubgraphTracer"), and
# passed in from outside it fails the same way. float() outside the Functions specializes it: a constant of the
# compiled graph, guarded (a changed slope recompiles). Eagerly it is not called: it would do nothing, at ~30 us a
# call (the attributes a layer lacks are looked up through nn.Module.__getattr__'s AttributeError).
_FLOAT_ATTRS = ("negative_slope", "eps", "momentum")


def constant_floats(steps):
    """Specialize the float attributes the closed form reads off the planned layers (see above)."""
    for _, m in steps:
        for name in _FLOAT_ATTRS:
            value = getattr(m, name, None)
            if value is not None:
                float(value)


def _run(D, x, weight, backend, steps=None):
    """steps: plan(D, x)'s, when the caller already has them."""
    if steps is None:
        steps, why = plan(D, x)
        if steps is None:
            raise ValueError(f"mode='mlp' cannot run this D: {why}; use mode='jvp', 'double_backward' or 'auto'")
    tensors = []
    for kind, m in steps:
        if kind in ("linear", "bn", "bn_batch"):
            tensors += [m.weight, m.bias]  # reading m.weight runs a parametrization (spectral norm) once
    if torch.compiler.is_compiling():
        constant_floats(steps)
    form = _MLPPenalty
    if uses_batch_stats(steps):
        from .mlp_penalty_bn import _BatchStatMLPPenalty as form
    # in D's own dtype under autocast too: the closed form's GEMMs mix the forward's and the backward's tensors;
    # autocast would have cast x (e.g. a bf16 G output) for D's first layer, so that cast is made here
    x = x.detach()
    dtype = _first(tensors, lambda t: t is not None).dtype
    if _dispatch.autocast_enabled(x.device) and x.dtype != dtype:
        x = x.to(dtype)
    with _dispatch.no_autocast(x.device):
        # the backward resolves its own kernels (BatchNorm's) under the request in force now: see ClosedForm
        return form.apply(x, (steps, weight, backend, _dispatch.requested_backend()), *tensors)


def mlp_penalty(D, x: torch.Tensor, weight="one", reduction: str = "mean", backend=None, steps=None):
    """(penalty, logits) as gradient_penalty(..., mode="mlp"); raises ValueError when D is not supported.
    steps: plan(D, x)'s, when the caller already has them."""
    require_samples("x", x, "mlp")
    per, psi = _run(D, x, weight, backend, steps)
    if reduction == "mean":
        per = per.mean()
    elif reduction == "sum":
        per = per.sum()
    return per, psi


def mlp_js_penalty(D, x_real: torch.Tensor, x_fake: torch.Tensor, backend=None, steps=None):
    """(Omega, logits_real, logits_fake) as js_penalty(..., mode="mlp"), with the real and fake batches in one
    pass: samples are independent in a supported D, so this is the two penalties' math in half the kernel
    launches (a D update of a small MLP is launch-bound, even replayed from a CUDA graph). steps: plan(D, x)'s."""
    sizes = [x_real.shape[0], x_fake.shape[0]]
    # outside autocast, whose cat rejects some dtype pairs (float16 with bfloat16): the promoted dtype holds both
    # batches exactly, so _run's cast to D's dtype rounds each value as casting its own batch would
    with _dispatch.no_autocast(x_real.device):
        x = torch.cat([x_real.detach(), x_fake.detach()])
    per, psi = _run(D, x, (("js_real", sizes[0]), ("js_fake", sizes[1])), backend, steps)
    # split, not slices: the backward of a split is one cat, of each slice a zero-filled copy
    per_r, per_f = per.split(sizes)
    psi_r, psi_f = psi.split(sizes)
    return per_r.mean() + per_f.mean(), psi_r, psi_f
