"""mode="mlp" for discriminators (MLPs and convnets) whose BatchNorm normalizes with batch statistics (training
mode).

Batch statistics couple the samples: psi_m depends on every x_n, the input gradient is g = d(sum psi)/dx through
BatchNorm's batch-coupled backward, and the tangent of a perturbation V of the inputs mixes samples too. So the
tangent cannot be formed in the forward and scaled per sample afterwards (mlp_penalty's shortcut); here it runs
in the backward, in the direction V = gP * 2 w(psi) g with the real upstream gP. With a = gP * u + gpsi
(u = w'(psi) ||g||^2), the parameter gradient is that of  F = sum_n a_n psi_n + sum_n T_n  (T: the tangent of
psi along V), by reverse mode over the primal chain h and the tangent chain t together: per layer the
adjoints rho (of h) and lambda (of t),
    Linear/Conv: dW = rho'^T h + lambda'^T t,  db = 1^T rho',  rho = rho' W;
    activation:  rho = sigma'(z) rho' + sigma''(z) t lambda';
    BatchNorm:   the vector-Jacobian product of (y, t') = (gamma xhat + beta, gamma dxhat(t)) at (h, t, gamma),
                 in closed form (_bn_vjp).
lambda needs no chain of its own: the tangent map is D's Jacobian, so lambda at a layer's output is d(sum psi)/d
(that output), the input-gradient chain the forward already ran. The GEMMs/convolutions are the double backward's;
what is saved is the generic graph around them: each BatchNorm layer's statistics, its derivative on the input-gradient
and tangent chains and its vjp are one fused kernel each (fastgan/ops/bn_closed_form.py, ~50 torch kernels per layer
before). BatchNorm's running statistics are updated once per call by the module itself, exactly as one forward of D
does.
"""
from __future__ import annotations

import functools

import torch

from . import _checks, bn_closed_form
from .closed_form_maps import channel_sum, dense_affine
from .mlp_penalty import ClosedForm, running_stats_norm, has_params


def _norm(kind, m, h, gamma, beta, backend=None):
    """BatchNorm with batch statistics runs as the module (its output and its running-statistics update, once per
    call, like D's forward); the record keeps xhat and rstd (C,) of the statistics it normalized with, from
    bn_closed_form's fused kernel. With running statistics: mlp_penalty's record (a per-channel slope)."""
    if kind == "bn":
        return running_stats_norm(kind, m, h, gamma, beta)
    xhat, rstd = bn_closed_form.stats(h.contiguous(), m.eps, backend)
    gamma, beta = dense_affine(gamma, beta)
    return {"gamma": gamma, "beta": beta, "xhat": xhat, "rstd": rstd}, m(h)


def _input_gradient(layers, psi, backend):
    """d(sum psi)/dx: the backward of sum psi, BatchNorm's batch coupling included. Each record keeps the
    gradient at its layer's output (delta): it is also the adjoint of the tangent there (see grads)."""
    delta = psi.new_ones(layers[-1]["out_shape"])
    for L in reversed(layers):
        L["delta"] = delta
        if L["kind"] == "linear":
            delta = L["map"].input_grad(delta, L["W"], L["h"])
        elif L["kind"] == "flatten":
            delta = delta.reshape(L["shape"])
        elif L["kind"] == "bn_batch":  # BatchNorm's backward map is its (symmetric) derivative map
            delta = bn_closed_form.centered(L["xhat"], delta.contiguous(), L["rstd"], L["gamma"], backend)[0]
        elif L["kind"] == "bn":
            delta = delta * L["slope"]
        else:
            delta = L["act"].apply_slope(delta, L["key"])
    return delta


def _tangents(layers, V, backend):
    """The tangent at each layer's input, for input direction V; BatchNorm layers with batch statistics also keep
    the means of t and xhat * t for their vjp."""
    t = V
    for L in layers:
        if L["kind"] == "bn_batch":
            t = t.contiguous()
        L["t"] = t
        if L["kind"] == "linear":
            t = L["map"](t, L["W"], None)
        elif L["kind"] == "flatten":
            t = t.reshape(t.shape[0], -1)
        elif L["kind"] == "bn_batch":  # gamma * d xhat along t
            t, L["mt"], L["q"] = bn_closed_form.centered(L["xhat"], t, L["rstd"], L["gamma"], backend)
        elif L["kind"] == "bn":
            t = t * L["slope"]
        else:
            t = L["act"].apply_slope(t, L["key"])


def _bn_vjp(L, rho, lam, backend):
    """Adjoints of BatchNorm's h, gamma and beta for cotangents rho (of y = gamma xhat + beta) and lam (of the
    output tangent gamma dxhat(t)). With batch statistics (per channel, means over the batch and spatial dims),
    l = gamma lam, p = mean(l xhat), q = mean(xhat t), c = mean(l t) - mean(l) mean(t):
        d h = M(gamma rho) - rstd^2 (xhat (c - 3 p q) + q (l - mean l) + p (t - mean t)),
        d gamma = sum(rho xhat + lam dxhat),   d beta = sum(rho),
    M the symmetric map of bn_closed_form.centered (BatchNorm's backward); the second term of d h is the derivative
    of <l, dxhat> through rstd and xhat. (The tangent's own adjoint, M(l), is the delta of the layer below.) One
    fused kernel: bn_closed_form.vjp (formulas in fastgan/reference/bn_closed_form.py)."""
    gamma, rstd, t = L["gamma"], L["rstd"], L["t"]
    if L["kind"] == "bn":  # running statistics: a per-channel scale
        h = L["h"]
        rho = rho.expand_as(h)
        xhat = (h - L["mean"]) * rstd
        d_gamma = None if gamma is None else channel_sum(rho * xhat + lam * (t * rstd))
        d_beta = None if L["beta"] is None else channel_sum(rho)
        return rho * L["slope"], d_gamma, d_beta
    xhat = L["xhat"]
    d_h, d_gamma, d_beta = bn_closed_form.vjp(rho.expand_as(xhat).contiguous(), lam.contiguous(), xhat, t, rstd,
                                              gamma, L["mt"], L["q"], backend)
    return d_h, d_gamma, (None if L["beta"] is None else d_beta)


class _BatchStatMLPPenalty(ClosedForm):
    @staticmethod
    def forward(ctx, x, spec, *tensors):
        from .mlp_penalty import _terms, own_output, primal_chain, save_layers, weight_extras

        steps, weight, backend, _ = spec
        psi, layers = primal_chain(x, steps, tensors, functools.partial(_norm, backend=backend))
        g = _input_gradient(layers, psi, backend)
        acc = _checks.acc_dtype(g.dtype)
        g2 = g.reshape(g.shape[0], -1)
        g2 = g2.to(acc) if acc == torch.float64 else g2
        psi_acc = psi.to(acc)
        per, u, v = _terms(g2, psi_acc, weight, backend)
        save_layers(ctx, layers, {**weight_extras(weight, g2, psi_acc, u), "v": v}, (x, *tensors), spec,
                    _BatchStatMLPPenalty.grads)
        ctx.x_shape = x.shape
        return per, own_output(psi)

    @staticmethod
    def grads(ctx, layers, extra, g_per, g_psi):
        from .mlp_penalty import adjoint_seed

        dt, v = g_psi.dtype, extra["v"]
        out_shape = layers[-1]["out_shape"]
        rho = adjoint_seed(ctx.weight, extra, g_per, g_psi).reshape(out_shape)
        _tangents(layers, (g_per.to(v.dtype)[:, None] * v).to(dt).reshape(ctx.x_shape), ctx.backend)
        first = min(i for i, L in enumerate(layers) if has_params(L))
        grads = []
        for i in range(len(layers) - 1, first - 1, -1):
            L = layers[i]
            # lam, the adjoint of the tangent at this layer's output, is d(sum psi)/d(output): the tangent map is
            # the Jacobian, so its adjoint on ones is the input-gradient chain the forward already ran
            lam = L["delta"]
            if L["kind"] == "linear":
                lin, h = L["map"], L["h"]
                rho = rho.expand_as(lam)
                dW = lin.weight_grad2(rho, h, lam, L["t"], L["W"])
                grads.append((channel_sum(rho) if L["b"] is not None else None, dW))
                if i > first:
                    rho = lin.input_grad(rho, L["W"], h)
            elif L["kind"] == "flatten":
                rho = rho.reshape(L["shape"])
            elif L["kind"] in ("bn", "bn_batch"):
                rho, d_gamma, d_beta = _bn_vjp(L, rho, lam, ctx.backend)
                grads.append((d_beta, d_gamma))
            else:
                rho = L["act"].adjoint(rho, lam * L["t"], L["key"])
        return grads
