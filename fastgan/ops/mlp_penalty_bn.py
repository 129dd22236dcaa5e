"""mode="mlp" for MLP discriminators whose BatchNorm1d normalizes with batch statistics (training mode).

Batch statistics couple the samples: psi_m depends on every x_n, the input gradient is g = d(sum psi)/dx through
BatchNorm's batch-coupled backward, and the tangent of a perturbation V of the inputs mixes samples too. So the
tangent cannot be formed in the forward and scaled per sample afterwards (mlp_penalty's shortcut); here it runs
in the backward, in the direction V = gP * 2 w(psi) g with the real upstream gP. With a = gP * u + gpsi
(u = w'(psi) ||g||^2), the parameter gradient is that of  F = sum_n a_n psi_n + sum_n T_n  (T: the tangent of
psi along V), by reverse mode over the primal chain h and the tangent chain t together: per layer the
adjoints rho (of h) and lambda (of t),
    Linear:      dW = rho'^T h + lambda'^T t,  db = 1^T rho',  rho = rho' W,  lambda = lambda' W;
    activation:  rho = sigma'(z) rho' + sigma''(z) t lambda',  lambda = sigma'(z) lambda';
    BatchNorm:   the vector-Jacobian product of (y, t') = (gamma xhat + beta, gamma dxhat(t)) at (h, t, gamma),
                 in closed form (_bn_vjp).
The GEMMs are the same as a double backward's; what is saved is the generic graph around them. BatchNorm's
running statistics are updated once per call by the module itself, exactly as one forward of D does.
"""
from __future__ import annotations


import torch

from . import _checks
from .mlp_penalty import ClosedForm


def _batch_stats(h: torch.Tensor, eps: float):
    mean = h.mean(0)
    xc = h - mean
    rstd = torch.rsqrt((xc * xc).mean(0) + eps)
    return xc * rstd, rstd


def _normalized_tangent(xhat, rstd, t):
    """d xhat along t: rstd * (t - mean(t) - xhat * mean(xhat * t)), also BatchNorm's backward map (symmetric)."""
    return rstd * (t - t.mean(0) - xhat * (xhat * t).mean(0))


def _affine(y, gamma, beta):
    if gamma is not None:
        y = y * gamma
    return y if beta is None else y + beta


def _norm(kind, m, h, gamma, beta):
    """BatchNorm runs as the module (its output and its running-statistics update, once per call, like D's
    forward); the record keeps xhat and rstd of the statistics it normalized with."""
    if kind == "bn_batch":
        xhat, rstd = _batch_stats(h, m.eps)
    else:
        rstd = torch.rsqrt(m.running_var + m.eps)
        xhat = (h - m.running_mean) * rstd
    return {"gamma": gamma, "beta": beta, "xhat": xhat, "rstd": rstd}, m(h)


def _input_gradient(layers, like):
    """d(sum psi)/dx: the backward of sum psi, BatchNorm's batch coupling included."""
    delta = torch.ones_like(like)
    for L in reversed(layers):
        if L["kind"] == "linear":
            delta = delta @ L["W"]
        elif L["kind"] in ("bn", "bn_batch"):
            d = _affine(delta, L["gamma"], None)
            delta = _normalized_tangent(L["xhat"], L["rstd"], d) if L["kind"] == "bn_batch" else d * L["rstd"]
        else:
            delta = L["act"].apply_slope(delta, L["key"])
    return delta


def _tangents(layers, V):
    """The tangent at each layer's input, for input direction V."""
    t = V
    for L in layers:
        L["t"] = t
        if L["kind"] == "linear":
            t = t @ L["W"].t()
        elif L["kind"] == "bn_batch":
            t = _affine(_normalized_tangent(L["xhat"], L["rstd"], t), L["gamma"], None)
        elif L["kind"] == "bn":
            t = _affine(t * L["rstd"], L["gamma"], None)
        else:
            t = L["act"].apply_slope(t, L["key"])


def _bn_vjp(L, rho, lam):
    """Adjoints of BatchNorm's (h, t, gamma) for cotangents rho (of y = gamma xhat + beta) and lam (of the output
    tangent gamma dxhat(t)). With batch statistics, per channel (means over the batch), l = gamma lam,
    p = mean(l xhat), q = mean(xhat t), c = mean(l t) - mean(l) mean(t):
        d h = M(gamma rho) - rstd^2 (xhat (c - 3 p q) + q (l - mean l) + p (t - mean t)),
        d t = M(l),   d gamma = sum(rho xhat + lam dxhat),
    M the symmetric map of _normalized_tangent (BatchNorm's backward); the second term of d h is the derivative
    of <l, dxhat> through rstd and xhat."""
    gamma, xhat, rstd, t = L["gamma"], L["xhat"], L["rstd"], L["t"]
    if L["kind"] == "bn":  # running statistics: a per-channel scale
        dxhat = t * rstd
        d_gamma = None if gamma is None else (rho * xhat + lam * dxhat).sum(0)
        scale = rstd if gamma is None else rstd * gamma
        return rho * scale, lam * scale, d_gamma
    dxhat = _normalized_tangent(xhat, rstd, t)
    d_gamma = None if gamma is None else (rho * xhat + lam * dxhat).sum(0)
    l = _affine(lam, gamma, None)
    lc, tc = l - l.mean(0), t - t.mean(0)
    p, q = (l * xhat).mean(0), (xhat * t).mean(0)
    c = (lc * tc).mean(0)
    curvature = rstd * rstd * (xhat * (c - 3 * p * q) + q * lc + p * tc)
    d_h = _normalized_tangent(xhat, rstd, _affine(rho, gamma, None)) - curvature
    return d_h, _normalized_tangent(xhat, rstd, l), d_gamma


class _BatchStatMLPPenalty(ClosedForm):
    @staticmethod
    def forward(ctx, x, spec, *tensors):
        from .mlp_penalty import _terms, primal_chain, save_layers, weight_extras

        steps, weight, backend = spec
        psi, layers = primal_chain(x, steps, tensors, _norm)
        g = _input_gradient(layers, psi.reshape(-1, 1))
        acc = _checks.acc_dtype(g.dtype)
        g2 = g.to(acc) if acc == torch.float64 else g
        psi_acc = psi.to(acc)
        per, u, v = _terms(g2, psi_acc, weight, backend)
        save_layers(ctx, layers, {**weight_extras(weight, g2, psi_acc, u), "v": v}, (x, *tensors), spec,
                    _BatchStatMLPPenalty.grads)
        return per, psi

    @staticmethod
    def grads(ctx, layers, extra, g_per, g_psi):
        from .mlp_penalty import adjoint_seed

        dt, v = g_psi.dtype, extra["v"]
        rho = adjoint_seed(ctx.weight, extra, g_per, g_psi)[:, None]
        _tangents(layers, (g_per.to(v.dtype)[:, None] * v).to(dt))
        lam = torch.ones_like(rho)
        first = min(i for i, L in enumerate(layers) if "act" not in L)
        grads = []
        for i in range(len(layers) - 1, first - 1, -1):
            L = layers[i]
            if L["kind"] == "linear":
                dW = torch.addmm(rho.t() @ L["h"], lam.t(), L["t"])
                grads.append((rho.sum(0) if L["b"] is not None else None, dW))
                if i > first:
                    rho, lam = rho @ L["W"], lam @ L["W"]
            elif L["kind"] in ("bn", "bn_batch"):
                d_h, d_t, d_gamma = _bn_vjp(L, rho, lam)
                grads.append((rho.sum(0) if L["beta"] is not None else None, d_gamma))
                rho, lam = d_h, d_t
            else:
                act = L["act"]
                rho = act.adjoint(rho, lam * L["t"], L["key"])
                lam = act.apply_slope(lam, L["key"])
        return grads
