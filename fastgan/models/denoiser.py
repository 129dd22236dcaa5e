"""DFM denoiser r(h) on D's penultimate features (Warde-Farley & Bengio 2017, section 5): deep, fully
connected, ReLU, the same width in every hidden layer and no smaller than the input, BatchNorm in every
layer but the output. The paper's ImageNet denoiser has 10 hidden layers of 2048 units (section 5); 3 hidden
layers is our default for the small data sets here (model.denoiser_depth).

Plain PyTorch; the fused version lives elsewhere.
"""
from __future__ import annotations

import torch
from torch import nn


class Denoiser(nn.Module):
    def __init__(self, feature_dim: int, hidden: int | None = None, depth: int = 3):
        super().__init__()
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim: must be a positive int, got {feature_dim!r}")
        hidden = feature_dim if hidden is None else hidden
        if not isinstance(hidden, int) or hidden < feature_dim:
            raise ValueError(f"hidden: the DFM denoiser needs hidden width >= its input width {feature_dim}, "
                             f"got {hidden!r}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth: must be a positive int (number of hidden layers), got {depth!r}")
        self.feature_dim, self.hidden, self.depth = feature_dim, hidden, depth
        layers, width = [], feature_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, feature_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[1] != self.feature_dim:
            got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"h: expected shape (B, {self.feature_dim}), got {got}")
        return self.net(h)
