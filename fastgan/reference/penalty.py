"""Reference gradient-norm penalties (Roth et al. 2017), written the obvious way with double backward."""
from __future__ import annotations

import math

import torch
from ._reduce import reduce_batch as _reduce


def weight_one(logits: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(logits)


def weight_js_real(logits: torch.Tensor) -> torch.Tensor:
    """(1 - sigma(psi))^2: the JS regularizer's weight on real samples (Roth et al. eq. 20)."""
    return (1 - torch.sigmoid(logits)) ** 2


def weight_js_fake(logits: torch.Tensor) -> torch.Tensor:
    """sigma(psi)^2: the JS regularizer's weight on generated samples."""
    return torch.sigmoid(logits) ** 2


def weight_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """sigma(psi): f*''(T) g_f'(psi)^2 of the GAN and JS f-divergences (Roth et al. eq. 19)."""
    return torch.sigmoid(logits)


def weight_exp(logits: torch.Tensor) -> torch.Tensor:
    """exp(psi): the squared Hellinger f-divergence's weight in eq. 19, times 2."""
    return torch.exp(logits)


def weight_kl(logits: torch.Tensor) -> torch.Tensor:
    """exp(psi - 1): the KL f-divergence's weight in eq. 19."""
    return torch.exp(logits - 1)


WEIGHT_FNS = {"one": weight_one, "js_real": weight_js_real, "js_fake": weight_js_fake, "sigmoid": weight_sigmoid,
              "exp": weight_exp, "kl": weight_kl}


def grad_norm_penalty(grad, logits, weight="one", reduction="mean"):
    """w(psi_n) * ||grad_n||^2 per sample, reduced over the batch."""
    w_fn = WEIGHT_FNS[weight] if isinstance(weight, str) else weight
    per_sample = w_fn(logits.reshape(-1)) * grad.reshape(grad.shape[0], math.prod(grad.shape[1:])).pow(2).sum(1)
    return _reduce(per_sample, reduction)


def gradient_penalty(D, x, weight="one", reduction="mean"):
    """(penalty, logits) with penalty differentiable w.r.t. D's parameters through torch's double backward."""
    x = x.detach().requires_grad_(True)
    logits = D(x).reshape(x.shape[0])
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad_norm_penalty(grad, logits, weight, reduction), logits


def js_penalty(D, x_real, x_fake):
    """Omega = E_P[(1 - sigma(psi))^2 ||grad psi||^2] + E_Q[sigma(psi)^2 ||grad psi||^2]; returns (Omega, logits_real, logits_fake)."""
    pen_real, logits_real = gradient_penalty(D, x_real, "js_real")
    pen_fake, logits_fake = gradient_penalty(D, x_fake, "js_fake")
    return pen_real + pen_fake, logits_real, logits_fake


def r1_penalty(D, x_real):
    """E_P[||grad psi||^2] (Mescheder et al. R1); returns (penalty, logits_real)."""
    return gradient_penalty(D, x_real, "one")


def r2_penalty(D, x_fake):
    """E_Q[||grad psi||^2] (R2); returns (penalty, logits_fake)."""
    return gradient_penalty(D, x_fake, "one")


def penalty_terms(grad, logits, weight="one", weight2=None, split=None, div=1):
    """(per, u, v): per_n = w(psi_n) ||grad_n||^2 and the gradients of sum(per) / div w.r.t. the logits (u) and
    grad (v), by autograd, with rows from `split` on weighted by weight2 (js_penalty's real rows, then fake)."""
    B = grad.shape[0]
    split = B if split is None else split
    with torch.enable_grad():
        g = grad.detach().reshape(B, -1).requires_grad_(True)
        p = logits.detach().reshape(B).requires_grad_(True)
        per = torch.cat([grad_norm_penalty(g[:split], p[:split], weight, "none"),
                         grad_norm_penalty(g[split:], p[split:], weight2 or weight, "none")])
        u, v = torch.autograd.grad(per.sum() / div, (p, g), allow_unused=True)
    return per.detach(), (torch.zeros_like(p) if u is None else u), v
