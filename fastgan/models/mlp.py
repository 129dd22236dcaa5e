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

    @torch.no_grad()
    def init_output_bias(self, mean: torch.Tensor) -> None:
        """Sets the output layer's bias so that a zero input to it gives the data's per-feature mean (Goodfellow
        et al.'s code: pylearn2's init_sigmoid_bias_from_marginals, on G's sigmoid output): then G starts at the
        data's marginals and its first updates need not move every pixel there. Means at the bounds of a tanh
        output are clipped as pylearn2 clips probabilities (1e-7 from 0 and 1, here 2e-7 from -1 and 1)."""
        if not isinstance(mean, torch.Tensor):
            raise TypeError(f"mean: expected a tensor, got {type(mean).__name__}")
        if tuple(mean.shape) != self.data_shape:
            raise ValueError(f"mean: expected shape {self.data_shape} (G's samples), got {tuple(mean.shape)}")
        if not bool(torch.isfinite(mean).all()):
            raise ValueError("mean: holds non-finite values")
        linear, act = self.net[-2], self.net[-1]
        m = mean.detach().to(torch.float64).flatten().cpu()
        if isinstance(act, nn.Tanh):
            m = torch.atanh(m.clamp(-1.0 + 2e-7, 1.0 - 2e-7))
        elif not isinstance(act, nn.Identity):
            raise ValueError(f"init_output_bias: G's output activation {type(act).__name__} has no inverse here")
        linear.bias.copy_(m.to(linear.bias.dtype))


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
