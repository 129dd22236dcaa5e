"""DCGAN-style G and D of NTGAN Table 1, for any (C, H, W) image shape.

Table 1 (32x32 CIFAR-10, M = 512):
  G: z (128, N(0, I)) -> FC BN ReLU 4x4xM -> deconv4 s2 BN ReLU 256 -> 128 -> 64 -> deconv3 s1 tanh 3
  D: conv3 s1 lReLU 64 -> conv4 s2 BN lReLU 64 -> 128 -> 256 -> 512 -> FC 1
(STL-10 at 64x64 adds one layer to each with M = 1024.) The rule that yields both: G starts at the smallest
size reachable by halving H and W while they stay even and >= 4, with M = width * 2**(number of doublings);
D halves while the size stays even and >= 2, doubling channels from `width` after the first stride-2 conv.
For 28x28 this gives G: FC 7x7x256 -> 128 -> 64 -> out, D: 64 -> 64 -> 128 (7x7) -> FC.

NTGAN Table 4's robustness settings vary G's filters (e.g. [64, 64, 64, 64] instead of [512, 256, 128, 64]: the
FC layer's channels, then each upsampling's) and swap every hidden activation for tanh (G's ReLUs and D's leaky
ReLUs).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .base import Discriminator, Generator, activation, output_activation

ACTIVATIONS = ("relu", "tanh")  # relu: Table 1's ReLU in G and leaky ReLU in D; tanh: tanh in both


def _halvings(h: int, w: int, smallest: int) -> int:
    n = 0
    while h % 2 == 0 and w % 2 == 0 and h // 2 >= smallest and w // 2 >= smallest:
        h, w, n = h // 2, w // 2, n + 1
    return n


def _check_activation(act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"activation: must be one of {ACTIVATIONS}, got {act!r}")


def plan(data_shape: tuple) -> dict:
    """Layer plan for an image shape: G's start size and upsamplings, D's downsamplings and feature size."""
    c, h, w = data_shape
    n_up, n_down = _halvings(h, w, 4), _halvings(h, w, 2)
    return {"channels": c, "n_up": n_up, "g_start": (h >> n_up, w >> n_up), "n_down": n_down,
            "d_end": (h >> n_down, w >> n_down)}


def default_g_filters(width: int, shape: tuple) -> list:
    """Table 1's generator channels: width * 2**n_up halving to width."""
    n_up = plan(shape)["n_up"]
    return [width * 2 ** (n_up - i) for i in range(n_up + 1)]


def dcgan_filters(cfg, shape: tuple, divisor: int = 1):
    """A ModelConfig's dcgan_g_filters (each divided by `divisor`, at least 1) after checking its length against
    the image size, which the config alone does not know; None when unset, except with a divisor: then G's
    default channels, each divided (dividing the width before doubling it is not G's channels / divisor when
    the width is not a multiple of the divisor)."""
    if cfg.dcgan_g_filters is None:
        if divisor == 1:
            return None
        return [max(1, f // divisor) for f in default_g_filters(cfg.dcgan_width, shape)]
    need = plan(shape)["n_up"] + 1
    if len(cfg.dcgan_g_filters) != need:
        from ..config import ConfigError  # fastgan.config imports this package: not at module level

        raise ConfigError(f"model.dcgan_g_filters: a {shape[1]}x{shape[2]} image needs {need} channel counts (the "
                          f"FC layer's, then {need - 1} upsamplings'), got {list(cfg.dcgan_g_filters)}")
    return [max(1, f // divisor) for f in cfg.dcgan_g_filters]


class DCGANGenerator(Generator):
    """`filters`: the channels of the FC layer's output and of each upsampling's (plan's n_up + 1 numbers);
    None: width * 2**n_up halving to width (Table 1)."""

    def __init__(self, latent_dim: int, data_shape: tuple, width: int = 64, batchnorm: bool = True,
                 out: str = "tanh", out_scale: float = 1.0, latent_dist: str = "normal",
                 filters: Optional[Sequence[int]] = None, activation_name: str = "relu"):
        super().__init__()
        _check_activation(activation_name)
        self.latent_dim, self.data_shape, self.latent_dist = int(latent_dim), tuple(data_shape), latent_dist
        p = plan(self.data_shape)
        self.start = p["g_start"]
        if filters is None:
            filters = default_g_filters(width, self.data_shape)
        filters = list(filters)
        if len(filters) != p["n_up"] + 1 or not all(
                isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in filters):
            raise ValueError(f"filters: a {tuple(self.data_shape)} image needs {p['n_up'] + 1} positive channel "
                             f"counts (the FC layer's, then {p['n_up']} upsamplings'), got {filters!r}")
        self.filters = tuple(filters)
        self.m = filters[0]
        self.fc = nn.Linear(self.latent_dim, self.m * self.start[0] * self.start[1])
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        layers = [norm(self.m), activation(activation_name)]
        for cin, cout in zip(filters, filters[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), norm(cout), activation(activation_name)]
        layers += [nn.ConvTranspose2d(filters[-1], p["channels"], 3, stride=1, padding=1),
                   output_activation(out, out_scale)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.check_z(z)
        return self.net(self.fc(z).view(z.shape[0], self.m, *self.start))


class DCGANDiscriminator(Discriminator):
    """Features: the last conv block's output, flattened (the input of the final FC)."""

    def __init__(self, data_shape: tuple, width: int = 64, batchnorm: bool = True, slope: float = 0.2,
                 activation_name: str = "relu", input_batchnorm: bool = False):
        super().__init__()
        _check_activation(activation_name)
        self.data_shape = tuple(data_shape)
        p = plan(self.data_shape)
        act = "leaky_relu" if activation_name == "relu" else "tanh"
        layers = [nn.BatchNorm2d(p["channels"])] if input_batchnorm else []  # NTGAN 6.3's SNGAN + NT
        layers, ch = layers + [nn.Conv2d(p["channels"], width, 3, stride=1, padding=1), activation(act, slope)], width
        for i in range(p["n_down"]):
            out = width * 2 ** i
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(activation(act, slope))
            ch = out
        self.net = nn.Sequential(*layers)
        self.feature_dim = ch * p["d_end"][0] * p["d_end"][1]
        self.out = nn.Linear(self.feature_dim, 1)

    def body(self, x):
        return self.net(x).flatten(1)

    def head(self, h):
        return self.out(h)

    def as_sequential(self) -> nn.Sequential | None:
        """The same forward as one nn.Sequential of this module's layers (the penalty's closed form reads it); None
        for a subclass that changes the forward."""
        if not self._forward_is(DCGANDiscriminator):
            return None
        return nn.Sequential(*self.net, nn.Flatten(), self.out)
