"""Goodfellow et al. (2014)'s fully connected GAN, from the authors' MNIST setup
(github.com/goodfeli/adversarial, mnist.yaml): G: z (100, Gaussian) -> ReLU 1200 -> ReLU 1200 -> output;
D: maxout 240 units x 5 pieces -> maxout 240 x 5 -> sigmoid, with dropout (keep 0.8 on D's input, 0.5 on the
hidden layers' inputs; pylearn2 rescales kept units by 1/keep, as nn.Dropout does). Weights uniform in
±0.05 (G) and ±0.005 (D).

The paper's MNIST G ends in a sigmoid on [0, 1] data; our images live in [-1, 1], where the same family is
tanh (2·sigmoid(a) − 1 = tanh(a/2)). Points get a linear output. The init ranges are the authors' numbers, not
rescaled for [-1, 1]: mapped back to [0, 1], G's tanh output layer with ±0.05 weights is a sigmoid one with ±0.1
((1 + tanh a) / 2 = sigmoid(2a); the marginals bias, atanh(2p − 1) = logit(p) / 2, is rescaled), and D's first
layer with ±0.005 on 2x − 1 is one with ±0.01 on x plus a random bias −Σ w (std ≈ 0.08 at 784 inputs): twice the
authors' effective scale on those two layers (an audit, 2026-12-07; the hidden layers are unchanged).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Discriminator, numel
from .mlp import MLPGenerator


class Maxout(nn.Module):
    """max over `pieces` affine maps per unit (Goodfellow et al. 2013)."""

    def __init__(self, in_features: int, units: int, pieces: int, batchnorm: bool = False):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(in_features, units * pieces)
        self.norm = nn.BatchNorm1d(units * pieces) if batchnorm else nn.Identity()

    def forward(self, x):
        y = self.norm(self.linear(x))
        if self.pieces == 1:
            return torch.relu(y)  # one piece: a plain rectifier layer
        return y.view(x.shape[0], self.units, self.pieces).amax(dim=2)

    def extra_repr(self):
        return f"units={self.units}, pieces={self.pieces}"


class GoodfellowGenerator(MLPGenerator):
    """ReLU 1200-1200: the fully connected generator with rectifier hidden units."""

    def __init__(self, latent_dim: int, data_shape: tuple, hidden=(1200, 1200), batchnorm: bool = False,
                 out: str = "tanh", out_scale: float = 1.0, latent_dist: str = "normal"):
        super().__init__(latent_dim, data_shape, hidden, act="relu", batchnorm=batchnorm, out=out,
                         out_scale=out_scale, latent_dist=latent_dist)


class MaxoutDiscriminator(Discriminator):
    """Features are the last maxout layer's output (before the dropout that feeds the logit)."""

    def __init__(self, data_shape: tuple, hidden=(240, 240), pieces: int = 5, input_dropout: float = 0.2,
                 dropout: float = 0.5, batchnorm: bool = False):
        super().__init__()
        self.data_shape = tuple(data_shape)
        layers, width = [nn.Dropout(input_dropout)], numel(self.data_shape)
        for i, h in enumerate(hidden):
            if i > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(Maxout(width, h, pieces, batchnorm=batchnorm and i > 0))
            width = h
        self.net = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, 1)
        self.feature_dim = width

    def body(self, x):
        return self.net(x.flatten(1))

    def head(self, h):
        return self.out(self.drop(h))
