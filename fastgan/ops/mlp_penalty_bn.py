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
what is saved is the generic graph around them. BatchNorm's running statistics are updated once per call by the
module itself, exactly as one forward of D does.
"""
from __future__ import annotations


import torch

from . import _checks
from .closed_form_maps import channel_sum, per_channel, reduce_dims
from .mlp_penalty import ClosedForm, has_params


def _batch_stats(h: torch.Tensor, eps: float):
    dims = reduce_dims(h)
    mean = h.mean(dims, keepdim=True)
    xc = h - mean
    rstd = torch.rsqrt((xc * xc).mean(dims, keepdim=True) + eps)
    return xc * rstd, rstd


def _mean(t, dims):
    return t.mean(dims, keepdim=True)


def _centered(xhat, scale, t):
    """scale * (t - mean(t) - xhat * mean(xhat * t)) with a per-channel scale, means over the batch and spatial
    dims: rstd times this is d xhat along t, and BatchNorm's backward map (it is symmetric). Also returns mean(t)
    and mean(xhat * t). Written as scale * t + const + xhat * coef, so a big tensor is touched 6 times, not 9."""
    dims = reduce_dims(t)
    mt, q = _mean(t, dims), _mean(xhat * t, dims)
    return torch.addcmul(scale * t - scale * mt, xhat, -scale * q), mt, q


def _affine(y, gamma, beta):
    if gamma is not None:
        y = y * per_channel(gamma, y)
    return y if beta is None else y + per_channel(beta, y)


def _norm(kind, m, h, gamma, beta):
    """BatchNorm runs as the module (its output and its running-statistics update, once per call, like D's
    forward); the record keeps xhat and rstd of the statistics it normalized with."""
    if kind == "bn_batch":
        xhat, rstd = _batch_stats(h, m.eps)
    else:
        rstd = per_channel(torch.rsqrt(m.running_var + m.eps), h)
        xhat = (h - per_channel(m.running_mean, h)) * rstd
    return {"gamma": gamma, "beta": beta, "xhat": xhat, "rstd": rstd}, m(h)


def _input_gradient(layers, psi):
    """d(sum psi)/dx: the backward of sum psi, BatchNorm's batch coupling included. Each record keeps the
    gradient at its layer's output (delta): it is also the adjoint of the tangent there (see grads)."""
    delta = psi.new_ones(layers[-1]["out_shape"])
    for L in reversed(layers):
        L["delta"] = delta
        if L["kind"] == "linear":
            delta = L["map"].input_grad(delta, L["W"], L["h"])
        elif L["kind"] == "flatten":
            delta = delta.reshape(L["shape"])
        elif L["kind"] == "bn_batch":
            delta = _centered(L["xhat"], _gamma_times(L, L["rstd"]), delta)[0]
        elif L["kind"] == "bn":
            delta = delta * _gamma_times(L, L["rstd"])
        else:
            delta = L["act"].apply_slope(delta, L["key"])
    return delta


def _gamma_times(L, c):
    """gamma * c per channel (c, when BatchNorm has no affine weight)."""
    return c if L["gamma"] is None else per_channel(L["gamma"], c) * c


def _tangents(layers, V):
    """The tangent at each layer's input, for input direction V; BatchNorm layers with batch statistics also keep
    d xhat and the means of t and xhat * t for _bn_vjp."""
    t = V
    for L in layers:
        L["t"] = t
        if L["kind"] == "linear":
            t = L["map"](t, L["W"], None)
        elif L["kind"] == "flatten":
            t = t.reshape(t.shape[0], -1)
        elif L["kind"] == "bn_batch":
            L["dxhat"], L["mt"], L["q"] = _centered(L["xhat"], L["rstd"], t)
            t = _gamma_times(L, L["dxhat"])
        elif L["kind"] == "bn":
            t = t * _gamma_times(L, L["rstd"])
        else:
            t = L["act"].apply_slope(t, L["key"])


def _bn_vjp(L, rho, lam):
    """Adjoints of BatchNorm's h and gamma for cotangents rho (of y = gamma xhat + beta) and lam (of the output
    tangent gamma dxhat(t)). With batch statistics, per channel (means over the batch and spatial dims),
    l = gamma lam, p = mean(l xhat), q = mean(xhat t), c = mean(l t) - mean(l) mean(t):
        d h = M(gamma rho) - rstd^2 (xhat (c - 3 p q) + q (l - mean l) + p (t - mean t)),
        d gamma = sum(rho xhat + lam dxhat),
    M the symmetric map of _centered (BatchNorm's backward); the second term of d h is the derivative of
    <l, dxhat> through rstd and xhat. (The tangent's own adjoint, M(l), is the delta of the layer below.)
    d h is formed as rstd gamma rho + A xhat + B lam + C t + K with per-channel A, B, C, K, from the means of
    rho, xhat rho, lam, xhat lam and t lam: 15 passes over the layer's activations."""
    gamma, xhat, rstd, t = L["gamma"], L["xhat"], L["rstd"], L["t"]
    rho = rho.expand_as(xhat)
    if L["kind"] == "bn":  # running statistics: a per-channel scale
        d_gamma = None if gamma is None else channel_sum(rho * xhat + lam * (t * rstd))
        return rho * _gamma_times(L, rstd), d_gamma
    dims = reduce_dims(xhat)
    n = xhat.numel() // xhat.shape[1]
    s_rx = (rho * xhat).sum(dims, keepdim=True)
    d_gamma = None if gamma is None else (s_rx + (lam * L["dxhat"]).sum(dims, keepdim=True)).reshape(-1)
    g = 1.0 if gamma is None else per_channel(gamma, xhat)
    mr, mxr = _mean(rho, dims), s_rx / n
    mlam, mlx, mlt = _mean(lam, dims), _mean(lam * xhat, dims), _mean(lam * t, dims)
    mt, q = L["mt"], L["q"]
    r2 = rstd * rstd
    p = g * mlx
    c = g * (mlt - mlam * mt)
    a_coef = -rstd * g * mxr - r2 * (c - 3 * p * q)
    k = r2 * (q * g * mlam + p * mt) - rstd * g * mr
    d_h = torch.addcmul(torch.addcmul(torch.addcmul((rstd * g) * rho + k, xhat, a_coef), lam, -r2 * q * g), t, -r2 * p)
    return d_h, d_gamma


class _BatchStatMLPPenalty(ClosedForm):
    @staticmethod
    def forward(ctx, x, spec, *tensors):
        from .mlp_penalty import _terms, primal_chain, save_layers, weight_extras

        steps, weight, backend = spec
        psi, layers = primal_chain(x, steps, tensors, _norm)
        g = _input_gradient(layers, psi)
        acc = _checks.acc_dtype(g.dtype)
        g2 = g.reshape(g.shape[0], -1)
        g2 = g2.to(acc) if acc == torch.float64 else g2
        psi_acc = psi.to(acc)
        per, u, v = _terms(g2, psi_acc, weight, backend)
        save_layers(ctx, layers, {**weight_extras(weight, g2, psi_acc, u), "v": v}, (x, *tensors), spec,
                    _BatchStatMLPPenalty.grads)
        ctx.x_shape = x.shape
        return per, psi

    @staticmethod
    def grads(ctx, layers, extra, g_per, g_psi):
        from .mlp_penalty import adjoint_seed

        dt, v = g_psi.dtype, extra["v"]
        out_shape = layers[-1]["out_shape"]
        rho = adjoint_seed(ctx.weight, extra, g_per, g_psi).reshape(out_shape)
        _tangents(layers, (g_per.to(v.dtype)[:, None] * v).to(dt).reshape(ctx.x_shape))
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
                beta_grad = channel_sum(rho.expand_as(L["xhat"])) if L["beta"] is not None else None
                rho, d_gamma = _bn_vjp(L, rho, lam)
                grads.append((beta_grad, d_gamma))
            else:
                rho = L["act"].adjoint(rho, lam * L["t"], L["key"])
        return grads
