"""Reference of the BatchNorm (batch statistics) passes of the penalty's closed form (fastgan/ops/bn_closed_form.py),
written from their definitions. Tensors are (B, C, *spatial); means and sums run over every dim but the channel.

  stats:    xhat = (h - mean) / sqrt(var + eps), rstd = 1 / sqrt(var + eps)  (biased variance)
  centered: out = gamma rstd (t - mean t - xhat mean(xhat t)), mt = mean t, q = mean(xhat t): gamma times BatchNorm's
            derivative along t (for t = a tangent), or its backward map (for t = an upstream gradient)
  vjp:      the adjoints of h and gamma of (y, t') = (gamma xhat + beta, gamma dxhat(t)) for cotangents
            (rho, lam), dxhat(t) = rstd (t - mt - xhat q); and d beta = sum rho.
tests/ops/test_bn_closed_form.py checks vjp against autograd through BatchNorm's forward.
"""
from __future__ import annotations

import torch


def _dims(x: torch.Tensor) -> list:
    return [0] + list(range(2, x.dim()))


def _c(v, like):
    """A (C,) vector broadcast over like's channel dim (1 for None)."""
    if v is None:
        return 1.0
    return v.reshape([1, -1] + [1] * (like.dim() - 2))


def stats(h: torch.Tensor, eps: float):
    var, mean = torch.var_mean(h, _dims(h), unbiased=False, keepdim=True)
    rstd = 1.0 / torch.sqrt(var + eps)
    return (h - mean) * rstd, rstd.reshape(-1)


def centered(xhat, t, rstd, gamma):
    d = _dims(t)
    mt = t.mean(d, keepdim=True)
    q = (xhat * t).mean(d, keepdim=True)
    out = _c(gamma, t) * _c(rstd, t) * (t - mt - xhat * q)
    return out, mt.reshape(-1), q.reshape(-1)


def vjp(rho, lam, xhat, t, rstd, gamma, mt, q):
    d = _dims(xhat)

    def mean(z):
        return z.mean(d, keepdim=True)

    g, rs, m_t, q_ = _c(gamma, xhat), _c(rstd, xhat), _c(mt, xhat), _c(q, xhat)
    p = g * mean(lam * xhat)
    c = g * (mean(lam * t) - mean(lam) * m_t)
    dh = rs * g * (rho - mean(rho) - xhat * mean(rho * xhat)) \
        - rs * rs * (xhat * (c - 3 * p * q_) + q_ * g * (lam - mean(lam)) + p * (t - m_t))
    dxhat = rs * (t - m_t - xhat * q_)
    dgamma = None if gamma is None else (rho * xhat + lam * dxhat).sum(d)
    return dh, dgamma, rho.sum(d)
