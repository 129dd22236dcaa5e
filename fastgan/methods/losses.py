"""Adversarial losses on discriminator logits, per sample, in numerically stable (softplus) form.

Every function returns per-sample terms; `reduce` turns them into the batch loss, either as a plain mean or
as a weighted sum (NTGAN's mu-weighting hands in weights that sum to 1 over a batch). Conventions: D and G
both *minimise* what is returned here.

- minimax (Goodfellow et al. 2014, eq. 1 and Algorithm 1): D minimises -log D(x) - log(1 - D(G(z))) with
  D = sigmoid(psi): softplus(-psi_real) + softplus(psi_fake). G minimises log(1 - D(G(z))) = -softplus(psi)
  ("saturating") or -log D(G(z)) = softplus(-psi) ("non-saturating", section 3 of the paper).
- least_squares (Mao et al. 2017, a-b-c = 0-1-1): D: (psi_r - 1)^2 / 2 + psi_f^2 / 2, G: (psi_f - 1)^2 / 2.
- wgan_gp (Gulrajani et al. 2017): D: psi_f - psi_r + lambda (||grad psi(x_hat)|| - 1)^2, G: -psi_f.
- fgan (Nowozin et al. 2016, the f-GAN family that Roth et al. eq. 19 regularise): D maximises
  E_P[T] - E_Q[f*(T)] with T = g_f(psi); see fastgan.methods.fdiv.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..ops.compiled_d import uncompiled
from ..ops.penalty import logits_of
from . import fdiv

LOSSES = ("minimax", "least_squares", "wgan_gp", "fgan")
G_LOSSES = ("nonsaturating", "saturating")


def d_terms(loss: str, logits_real: torch.Tensor, logits_fake: torch.Tensor, f: str = "gan"):
    """(per-sample real terms, per-sample fake terms) of the discriminator loss, without any regularizer."""
    if loss == "minimax":
        return F.softplus(-logits_real), F.softplus(logits_fake)
    if loss == "least_squares":
        return 0.5 * (logits_real - 1).pow(2), 0.5 * logits_fake.pow(2)
    if loss == "wgan_gp":
        return -logits_real, logits_fake
    if loss == "fgan":
        return -fdiv.activation(f, logits_real), fdiv.conjugate_of_activation(f, logits_fake)
    raise ValueError(f"method.loss: must be one of {LOSSES}, got {loss!r}")


def decision_threshold(loss: str, f: str = "gan") -> Optional[float]:
    """The logit at which a discriminator trained with `loss` is indifferent between real and fake (where the
    optimal D meets p = q: the minimiser of its real and fake terms at one point), so that "real" is a logit
    above it; None for wgan_gp, whose critic is unchanged by adding a constant and has no such point.
    minimax: sigmoid(psi) = 1/2 at 0; least_squares (0-1-1): psi = p / (p + q) = 1/2; fgan: g_f(v) = f'(1), 0
    for every divergence here but kl (f(u) = u log u, g_f(v) = v: 1)."""
    if loss == "minimax":
        return 0.0
    if loss == "least_squares":
        return 0.5
    if loss == "wgan_gp":
        return None
    if loss == "fgan":
        fdiv.activation(f, torch.zeros(()))  # names a bad divergence
        return 1.0 if f == "kl" else 0.0
    raise ValueError(f"method.loss: must be one of {LOSSES}, got {loss!r}")


def g_terms(loss: str, g_loss: str, logits_fake: torch.Tensor, f: str = "gan") -> torch.Tensor:
    """Per-sample generator loss on the logits of generated samples."""
    if loss == "minimax":
        # saturating: minimise log(1 - sigmoid(psi)) = -softplus(psi); non-saturating: -log sigmoid(psi).
        return -F.softplus(logits_fake) if g_loss == "saturating" else F.softplus(-logits_fake)
    if loss == "least_squares":
        return 0.5 * (logits_fake - 1).pow(2)
    if loss == "wgan_gp":
        return -logits_fake
    if loss == "fgan":
        # saturating: minimise -E_Q[f*(T)] (G's side of the f-GAN saddle); non-saturating: maximise E_Q[T]
        # (Nowozin et al. 2016, section 3.2, the alternative G objective).
        if g_loss == "saturating":
            return -fdiv.conjugate_of_activation(f, logits_fake)
        return -fdiv.activation(f, logits_fake)
    raise ValueError(f"method.loss: must be one of {LOSSES}, got {loss!r}")


def reduce(per_sample: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over the batch, or sum of weights * terms when weights (summing to 1) are given."""
    if weights is None:
        return per_sample.mean()
    return (weights * per_sample).sum()


def gp_per_sample(D, x_real: torch.Tensor, x_fake: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(||grad_x psi(x_hat)|| - 1)^2 per sample at x_hat = u x_real + (1 - u) x_fake (WGAN-GP).

    u: (B,) uniform draws. x_hat is detached: the penalty is a discriminator term (x_real and x_fake may
    carry a graph to NTGAN's learned noise, which only minimises the adversarial objective).
    """
    shape = (-1,) + (1,) * (x_real.dim() - 1)
    x_hat = (u.view(shape) * x_real + (1 - u.view(shape)) * x_fake).detach().requires_grad_(True)
    # compiled code in D runs as its Python source: a compiled forward has no double backward
    logits = logits_of(uncompiled(D), x_hat)
    (g,) = torch.autograd.grad(logits.sum(), x_hat, create_graph=True)
    return (g.reshape(g.shape[0], -1).norm(dim=1) - 1).pow(2)
