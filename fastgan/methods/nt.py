"""NTGAN, noise-tempered GANs (anonymous, "Noise-tempered generative adversarial networks").

Section 2.2 / Algorithm 1: with mu ~ U(0, 1) drawn every iteration,
    L_D^r = sum_i mu ln D(x_i) + (1 - mu) ln D(x_i + eps_i),  L_D^f likewise on fake samples with the same eps,
so the loss of every sample is weighted by mu (clean) or 1 - mu (noisy). Here those weights are per-sample
weights (mu/m, (1 - mu)/m, summing to 1 per batch) that any loss (minimax, least squares, WGAN-GP, f-GAN)
and Roth's penalty reduce with. Section 2.3: D sees the real batch {x, x + eps} and the fake batch
{x~, x~ + eps} (or, "half", {x_1..x_{m/2}, x_{m/2+1} + eps_1, ...}). Noise models (eqs. 5 and 6): fixed
Gaussian, Gaussian with learned sigma and penalty lambda sigma^2, or a noise generator N(w), w ~ N(0, I)
(G's own prior: model.latent_dist=uniform draws w on [-1, 1] too), with penalty lambda ||eps||^2. The learned
noise minimises the D objective plus its penalty, in the same iteration as D (Algorithm 1:
omega <- omega - alpha grad_omega(L_D^r + L_D^f + lambda L_eps)).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

class NoiseModel(nn.Module):
    """eps from standard-normal draws. `draw` makes the draws, `forward(draws)` maps them to eps (with a graph
    to the learnable parameters, if any), `penalty(eps)` is the term that lambda multiplies."""

    learnable = False

    def draw(self, n: int, data_shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        gdev = generator.device if generator is not None else device
        return torch.randn((n, *data_shape), generator=generator, device=gdev, dtype=dtype).to(device)

    def magnitude(self, eps: torch.Tensor) -> torch.Tensor:
        """What the logs show: sigma for Gaussian noise, the mean per-sample ||eps|| for the generator."""
        raise NotImplementedError


class FixedNoise(NoiseModel):
    """eps = sigma(t) * n with n ~ N(0, I); sigma(t) = sigma (or sigma * (1 - t/T) when linearly annealed,
    ablation row (c): "the added Gaussian noise is linearly annealed")."""

    def __init__(self, sigma: float, anneal: str = "none", total: int = 1, device=None):
        super().__init__()
        self.sigma0, self.anneal, self.total = float(sigma), anneal, int(total)
        self.register_buffer("sigma", torch.tensor(float(sigma), device=device), persistent=False)

    def update(self, t) -> None:
        if self.anneal == "linear" and isinstance(t, torch.Tensor):
            t = t.to(self.sigma.device, torch.float64).clamp(0, self.total)
            self.sigma.copy_((1 - t / self.total) * self.sigma0)
        elif self.anneal == "linear":  # a fill, not a host-to-device copy (which synchronizes): see GammaSchedule
            self.sigma.fill_((1 - min(max(float(t), 0.0), self.total) / self.total) * self.sigma0)

    def forward(self, draws):
        return self.sigma * draws

    def penalty(self, eps):
        return None

    def magnitude(self, eps):
        return self.sigma.detach().clone()


class LearnedSigma(NoiseModel):
    """eps = sigma * n with a learned scalar sigma; penalty sigma^2 (eq. 5)."""

    learnable = True

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = nn.Parameter(torch.tensor(float(sigma)))

    def update(self, t) -> None:
        pass

    def forward(self, draws):
        return self.sigma * draws

    def penalty(self, eps):
        return self.sigma.pow(2)

    def magnitude(self, eps):
        return self.sigma.detach().abs()


class GeneratedNoise(NoiseModel):
    """eps = N(w), w ~ N(0, I) in the noise network's latent space; penalty mean_i ||eps_i||^2 (eq. 6, the
    sum of Algorithm 1's L_eps divided by m like every other term here)."""

    learnable = True

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def update(self, t) -> None:
        pass

    def draw(self, n, data_shape, generator=None, device=None, dtype=torch.float32):
        if hasattr(self.net, "sample_latent"):
            return self.net.sample_latent(n, generator=generator, device=device, dtype=dtype)
        gdev = generator.device if generator is not None else device
        return torch.randn((n, self.net.latent_dim), generator=generator, device=gdev, dtype=dtype).to(device)

    def forward(self, draws):
        return self.net(draws)

    def penalty(self, eps):
        return eps.reshape(eps.shape[0], -1).pow(2).sum(1).mean()

    def magnitude(self, eps):
        return eps.detach().reshape(eps.shape[0], -1).norm(dim=1).mean()


def noise_count(m: int, batch: str, clean: bool) -> int:
    """How many eps one batch of m samples needs."""
    return m - m // 2 if (batch == "half" and clean) else m


def build(x: torch.Tensor, eps: torch.Tensor, mu: Optional[torch.Tensor], batch: str, clean: bool):
    """(D batch, per-sample weights or None, slice of the clean rows or None).

    full: {x, x + eps} with weights mu/m and (1 - mu)/m; half: {x_1..x_h, x_{h+1} + eps_1, ...} (h = m // 2)
    with weights mu/h and (1 - mu)/(m - h); noise only (clean=False): {x + eps}, plain mean.
    """
    m = x.shape[0]
    if not clean:
        return x + eps, None, None
    w, rows = weights(m, mu, batch)
    if batch == "full":
        return torch.cat([x, x + eps], 0), w, rows
    h = m // 2
    return torch.cat([x[:h], x[h:] + eps], 0), w, rows


def weights(m: int, mu: torch.Tensor, batch: str):
    """(per-sample weights of a clean + noisy batch built from m samples, slice of its clean rows)."""
    if batch == "full":
        return torch.cat([(mu / m).expand(m), ((1 - mu) / m).expand(m)]), slice(0, m)
    h = m // 2
    return torch.cat([(mu / h).expand(h), ((1 - mu) / (m - h)).expand(m - h)]), slice(0, h)


FUSED_MODES = {"full": "double", "half": "half"}


def fused_build(x_real, x_fake, noise: "NoiseModel", eps, mu, batch: str, state, *, grad_noise: bool = True):
    """(real batch, fake batch, weights, clean rows) as `build` gives them, from fastgan.ops.noisy_clean_batch.

    Fixed and learned sigma draw eps = sigma * z inside the op from the Philox stream of `state` (eps is not
    given); the noise generator's output eps is added as given. grad_noise=False: no gradient to sigma.
    Either batch may be None (the generator step builds the fake batch only).
    """
    from .. import ops

    if isinstance(noise, GeneratedNoise):
        arg = eps
    else:
        arg = noise.sigma if grad_noise else noise.sigma.detach()
    xr, xf = ops.noisy_clean_batch(x_real, x_fake, arg, FUSED_MODES[batch], state=state)
    m = (x_real if x_real is not None else x_fake).shape[0]
    w, rows = weights(m, mu, batch)
    return xr, xf, w, rows
