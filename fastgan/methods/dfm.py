"""Denoising feature matching (Warde-Farley & Bengio 2017, section 3 and section 5).

A denoiser r is trained on the discriminator's penultimate features of real data, corrupted with Gaussian
noise (eq. 5: min_r E_x ||Phi(x) - r(C(Phi(x)))||^2, sigma = 1 in all their experiments); the generator adds
lambda_denoise * ||Phi(G(z)) - r(Phi(G(z)))||^2 to lambda_adv times its adversarial loss (eq. 4), with
r(Phi(G(z))) "treated as constant with respect to gradient computations". lambda_denoise = 0.03 / n_h by
default (section 5). D is trained by its GAN loss only, so Phi(x) is a fixed input for r's loss.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._errors import ConfigError


def check_denoiser_width(hidden: Optional[int], feature_dim: int) -> None:
    """ConfigError naming model.denoiser_hidden where the denoiser would be narrower than D's features (its first
    layer maps feature_dim to hidden; the Denoiser's own error named no config key)."""
    if hidden is not None and hidden < feature_dim:
        raise ConfigError(f"model.denoiser_hidden: the DFM denoiser needs a width >= the discriminator's feature "
                          f"width {feature_dim} (its last hidden layer), got {hidden}")


def default_lambda_denoise(n_h: int, value: Optional[float] = None) -> float:
    """lambda_denoise, 0.03 / n_h unless given (section 5: "this division decouples the scale ... from the
    dimensionality of the representation")."""
    return float(value) if value is not None else 0.03 / float(n_h)


def _sq_norm(d: torch.Tensor) -> torch.Tensor:
    return d.reshape(d.shape[0], -1).pow(2).sum(1)


def denoiser_loss(r, phi_real: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eq. 5 on a batch: mean_i ||Phi(x_i) - r(Phi(x_i) + sigma n_i)||^2, Phi held fixed."""
    phi = phi_real.detach()
    return _sq_norm(phi - r(phi + sigma * noise)).mean()


def generator_term(r, phi_fake: torch.Tensor) -> torch.Tensor:
    """The denoising term of eq. 4: mean_i ||Phi(G(z_i)) - r(Phi(G(z_i)))||^2 with r(.) a constant target.

    The target is computed under no_grad from detached features: no gradient reaches r (nor, through r, the
    generator); the generator moves Phi(G(z)) towards the denoised features. r's buffers (BatchNorm running
    statistics) are left as they were, as fastgan.ops.Denoiser's generator_loss leaves them: they track the
    corrupted real features r trains on, not G's features, whose batch statistics only normalise this call.
    """
    with torch.no_grad():
        if r.training:
            # BatchNorm updates copies of the buffers: writing the originals back in place would bump their
            # version, which the denoiser's loss, computed from the same parameters in a simultaneous update and
            # not yet backpropagated, saved for its backward
            copies = {k: b.clone() for k, b in r.named_buffers()}
            target = torch.func.functional_call(r, copies, (phi_fake.detach(),))
        else:
            target = r(phi_fake.detach())
    return _sq_norm(phi_fake - target).mean()
