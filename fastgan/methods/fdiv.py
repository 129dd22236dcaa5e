"""f-divergences for the f-GAN objective and Roth et al.'s general regularizer (Roth et al. 2017, eq. 19).

The discriminator network outputs v; the variational function is T = g_f(v) with the output activation g_f of
Nowozin et al. (2016, Table 2), and D maximises E_P[T] - E_Q[f*(T)] (f* the Fenchel conjugate).
Roth's regularizer is Omega_f = E_Q[f*''(T) ||grad_x T||^2]. Since grad_x T = g_f'(v) grad_x v, it equals
E_Q[w(v) ||grad_x v||^2] with w(v) = f*''(g_f(v)) g_f'(v)^2, which is what `penalty_weight` returns, so the
fused gradient-norm op (which takes the gradient of v) computes it. All forms below are written in v so
they stay finite where the textbook forms overflow (for example f*(T) of the GAN divergence = softplus(v)).
That rewrite holds per sample: where D couples a batch's samples (BatchNorm with batch statistics),
grad_{x_n} sum_m T_m is not g_f'(v_n) grad_{x_n} sum_m v_m unless g_f is linear (LINEAR: kl, pearson), and the
regularizer differentiates T itself with the weight f*''(T), as eq. 19 reads, taken into that gradient as its root
(`conjugate_curvature_root`): f*'' grows like exp(2v) or exp(3v) where g_f'(v) decays, so alone it overflows.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import LINEAR_F_DIVERGENCES

DIVERGENCES = ("gan", "js", "kl", "reverse_kl", "pearson", "squared_hellinger")
LINEAR = LINEAR_F_DIVERGENCES  # g_f(v) = v


def _check(f: str) -> None:
    if f not in DIVERGENCES:
        raise ValueError(f"method.f_divergence: must be one of {DIVERGENCES}, got {f!r}")


def activation(f: str, v: torch.Tensor) -> torch.Tensor:
    """T = g_f(v)."""
    _check(f)
    if f == "gan":
        return -F.softplus(-v)
    if f == "js":
        return math.log(2.0) - F.softplus(-v)
    if f in ("kl", "pearson"):
        return v
    if f == "reverse_kl":
        return -torch.exp(-v)
    return 1 - torch.exp(-v)  # squared_hellinger


def conjugate_of_activation(f: str, v: torch.Tensor) -> torch.Tensor:
    """f*(g_f(v))."""
    _check(f)
    if f == "gan":
        return F.softplus(v)  # -log(1 - exp(T)) with exp(T) = sigmoid(v)
    if f == "js":
        return F.softplus(v) - math.log(2.0)  # -log(2 - exp(T)) with exp(T) = 2 sigmoid(v)
    if f == "kl":
        return torch.exp(v - 1)
    if f == "reverse_kl":
        return v - 1  # -1 - log(-T) with T = -exp(-v)
    if f == "pearson":
        return 0.25 * v * v + v
    return torch.expm1(v)  # squared_hellinger: T / (1 - T) with 1 - T = exp(-v)


def penalty_weight(f: str):
    """(weight, scale): the name of fastgan.ops.grad_norm_penalty's weight w and the factor with
    scale * w(v) = f*''(g_f(v)) g_f'(v)^2.

    Every divergence's weight is one of the op's named weights, so each runs on the fused kernels: "one"
    (reverse KL, Pearson), "sigmoid" (GAN, JS), "kl" (KL: e^(v - 1), its own form: e^-1 e^v would overflow float32
    from v ~ 88.7 where e^(v - 1) does from 89.7), "exp" (squared Hellinger: 2 e^v, as the factor 2 applied after
    the op overflows no sooner than 2 e^v itself).
    """
    _check(f)
    return _WEIGHTS[f]


def conjugate_curvature_root(f: str, v: torch.Tensor) -> torch.Tensor:
    """sqrt(f*''(g_f(v))), the root of the weight of ||grad_x T||^2 in eq. 19, which the regularizer multiplies into
    grad_x T before squaring (where T's own gradient is needed: a batch-coupled D): ||grad_x T|| shrinks (gan, js:
    large v) or grows (reverse_kl, squared_hellinger: v < 0) like 1/sqrt(f*''), so their product stays
    representable where f*'' overflows."""
    _check(f)
    if f in ("gan", "js"):
        # sqrt(e^v (1 + e^v)), each exp of an exact argument; each side's clamp keeps the other side finite (an
        # inf there would turn torch.where's zero gradient into NaN)
        vp, vn = v.clamp(min=0), v.clamp(max=0)
        return torch.where(v > 0, torch.exp(vp) * torch.sqrt(1 + torch.exp(-vp)),
                           torch.exp(0.5 * vn) * torch.sqrt(1 + torch.exp(vn)))
    if f == "kl":
        return torch.exp(0.5 * (v - 1))
    if f == "reverse_kl":
        return torch.exp(v)
    if f == "pearson":
        return torch.full_like(v, math.sqrt(0.5))
    return math.sqrt(2.0) * torch.exp(1.5 * v)  # squared_hellinger


_WEIGHTS = {"gan": ("sigmoid", 1.0), "js": ("sigmoid", 1.0), "kl": ("kl", 1.0),
            "reverse_kl": ("one", 1.0), "pearson": ("one", 0.5), "squared_hellinger": ("exp", 2.0)}
