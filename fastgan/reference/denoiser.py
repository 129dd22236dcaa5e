"""Reference DFM denoiser (Warde-Farley & Bengio 2017): the obvious nn.Sequential and losses.

r = (Linear -> BatchNorm1d -> ReLU) x depth -> Linear, trained on real features h corrupted with Gaussian
noise: loss = mean_n ||h_n - r(h_n + sigma * eps_n)||^2 (sum over features, mean over the batch). The
generator's term is mean_n ||h_n - r(h_n)||^2 on generated features with r(h) held constant. The paper
batch-normalises real and generated batches each with its own statistics; the generator term does not
move the running statistics (they describe the data the denoiser is trained on).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ._reduce import reduce_batch as _reduce


def make_denoiser(n_features: int, hidden: int | None = None, depth: int = 3, momentum: float | None = 0.1,
                  eps: float = 1e-5) -> nn.Sequential:
    hidden = n_features if hidden is None else hidden
    layers: list[nn.Module] = []
    width = n_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden, eps=eps, momentum=momentum), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, n_features))
    return nn.Sequential(*layers)


def denoiser_loss(net: nn.Module, h: torch.Tensor, noise: torch.Tensor, sigma: float = 1.0,
                  reduction: str = "mean") -> torch.Tensor:
    """||h - r(h + sigma * noise)||^2 per sample; differentiable w.r.t. h and r's parameters."""
    r = net(h + sigma * noise)
    return _reduce((h - r).pow(2).sum(1), reduction)


def forward_without_update(net: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """net(h), but BatchNorm layers in training mode normalise with the batch statistics without
    touching their running statistics."""
    x = h
    for m in net:
        if isinstance(m, nn.BatchNorm1d) and m.training:
            x = F.batch_norm(x, None, None, m.weight, m.bias, True, 0.0, m.eps)
        else:
            x = m(x)
    return x


def generator_loss(net: nn.Sequential, h_fake: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """||h_fake - r(h_fake)||^2 per sample with r(h_fake) a constant target (gradient only into h_fake)."""
    with torch.no_grad():
        target = forward_without_update(net, h_fake)
    return _reduce((h_fake - target).pow(2).sum(1), reduction)


def functional_forward(x, weights, biases, gammas, betas, running_means, running_vars, training: bool,
                       momentum: float = 0.1, eps: float = 1e-5):
    """r(x) from parameter lists (len(weights) == depth + 1); F.batch_norm updates running stats in place
    in training mode when they are given."""
    depth = len(weights) - 1
    for i in range(depth):
        rm = running_means[i] if running_means is not None else None
        rv = running_vars[i] if running_vars is not None else None
        x = F.relu(F.batch_norm(F.linear(x, weights[i], biases[i]), rm, rv, gammas[i], betas[i], training,
                                momentum, eps))
    return F.linear(x, weights[depth], biases[depth])


def functional_denoiser_loss(h, noise, sigma, weights, biases, gammas, betas, running_means, running_vars,
                             training: bool, momentum: float = 0.1, eps: float = 1e-5, reduction: str = "mean"):
    r = functional_forward(h + sigma * noise, weights, biases, gammas, betas, running_means, running_vars,
                           training, momentum, eps)
    return _reduce((h - r).pow(2).sum(1), reduction)
