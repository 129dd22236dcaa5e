"""Reference NTGAN mu-weighted clean/noisy losses (Noise-Tempered GAN, Algorithm 1) in softplus form, and
Roth et al.'s JS penalty weights from the same logits: the oracle of fastgan/ops/nt_losses.py.

With D = sigmoid(psi), Algorithm 1 maximises
  L_D^r = sum_i mu ln D(x_i) + (1 - mu) ln D(x_i + eps_i),
  L_D^f = sum_i mu ln(1 - D(x~_i)) + (1 - mu) ln(1 - D(x~_i + eps_i))   over D, and
  L_G^f = sum_i mu ln D(x~_i) + (1 - mu) ln D(x~_i + eps_i)              over G.
A batch of logits holds its clean samples first and its noisy ones after (fastgan.ops.noisy_clean_batch):
the first N // 2 are clean, the rest noisy. Losses here are the minimised ones, -L, with the sums replaced
by means over each part (reduction="mean") or kept as sums (reduction="sum"); an empty part contributes 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(t: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean" and t.numel() > 0:
        return t.mean()
    return t.sum()


def _tempered(terms: torch.Tensor, mu, reduction: str) -> torch.Tensor:
    n_clean = terms.shape[0] // 2
    return mu * _reduce(terms[:n_clean], reduction) + (1 - mu) * _reduce(terms[n_clean:], reduction)


def d_loss(logits_real, logits_fake, mu, reduction: str = "mean") -> torch.Tensor:
    """-(L_D^r + L_D^f): mu-weighted -ln D on real and -ln(1 - D) on fake logits."""
    return (_tempered(-F.logsigmoid(logits_real), mu, reduction)
            + _tempered(-F.logsigmoid(-logits_fake), mu, reduction))


def g_loss(logits_fake, mu, reduction: str = "mean") -> torch.Tensor:
    """-L_G^f: the non-saturating generator loss, mu-weighted -ln D on the fake logits."""
    return _tempered(-F.logsigmoid(logits_fake), mu, reduction)


def js_weights(logits_real, logits_fake):
    """Roth et al.'s JS regularizer weights: (1 - sigma(psi))^2 on real, sigma(psi)^2 on fake."""
    return (1 - torch.sigmoid(logits_real)) ** 2, torch.sigmoid(logits_fake) ** 2


def nt_losses(logits_real, logits_fake, mu, loss: str = "d", reduction: str = "mean", js: bool = False):
    """Reference of fastgan.ops.nt_losses."""
    value = d_loss(logits_real, logits_fake, mu, reduction) if loss == "d" else g_loss(logits_fake, mu, reduction)
    if js:
        return (value, *js_weights(logits_real, logits_fake))
    return value
