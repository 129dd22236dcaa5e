"""Fully connected G and D (Roth et al.'s 2-D submanifold mixture experiment).

Roth et al. (2017, appendix 7.3) use "the architecture of [Unrolled GANs]" with a 2-d latent; their code
(github.com/rothk/Stabilizing_GANs, 3DGAN/3DGAN.py) makes it concrete: G: z -> tanh 128 -> tanh 128 ->
linear 3; D: x -> tanh 128 -> tanh 128 -> linear logit; weights truncated-normal with std 0.1, biases 0.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Discriminator, Generator, activation, numel, output_activation


class MLPGenerator(Generator):
    def __init__(self, latent_dim: int, data_shape: tuple, hidden=(128, 128), act: str = "tanh",
                 slope: float = 0.2, batchnorm: bool = False, out: str = "linear", out_scale: float = 1.0,
                 latent_dist: str = "normal"):
        super().__init__()
        self.latent_dim, self.data_shape, self.latent_dist = int(latent_dim), tuple(data_shape), latent_dist
        layers, width = [], self.latent_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(act, slope))
            width = h
        layers += [nn.Linear(width, numel(self.data_shape)), output_activation(out, out_scale)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.check_z(z)
        return self.net(z).view(z.shape[0], *self.data_shape)


class MLPDiscriminator(Discriminator):
    """BatchNorm (when on) in every hidden layer but the first, as in DCGAN-style discriminators."""

    def __init__(self, data_shape: tuple, hidden=(128, 128), act: str = "tanh", slope: float = 0.2,
                 batchnorm: bool = False):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.activation_name = act
        layers, width = [], numel(self.data_shape)
        for i, h in enumerate(hidden):
            layers.append(nn.Linear(width, h))
            if batchnorm and i > 0:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(act, slope))
            width = h
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(width, 1)
        self.feature_dim = width

    def body(self, x):
        return self.net(x.flatten(1))

    def head(self, h):
        return self.out(h)

    def as_sequential(self) -> nn.Sequential | None:
        """This D's forward as one nn.Sequential of its own layers (the same parameters): the opt-in of
        fastgan.ops.gradient_penalty(mode="mlp"/"auto") to the closed-form penalty gradient. Logits (B, 1).
        None for a subclass that changes the forward."""
        if not self._forward_is(MLPDiscriminator):
            return None
        return nn.Sequential(nn.Flatten(), *self.net, self.out)
