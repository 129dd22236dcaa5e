"""ResNet G and D of Roth et al. 2017's CelebA and LSUN runs: the 64x64 ResNet of Gulrajani et al. 2017's
improved_wgan_training (gan_64x64.py, GoodGenerator / GoodDiscriminator), with BatchNorm in G and D.

Roth et al., appendix 7.4: "The ResNets use pre-activation residual blocks with two 3 x 3 convolutional layers each
and ReLU nonlinearities. The generator has one linear layer, followed by four residual blocks, one deconvolutional
layer and tanh output activations. The discriminator has one convolutional layer, followed by four residual blocks
and a linear output layer"; "We use batch normalization in the generator and discriminator"; section 5.2: the
open-source implementation of Gulrajani et al., "with one notable exception: we use batch normalization also for
the discriminator" (Gulrajani's WGAN-GP critic used layer normalization).

With dim = `width` (64 in Gulrajani's code) and s = image side / 16 (4 at 64x64):
  G: z (128, N(0, I)) -> linear s*s*8dim -> up 8dim -> up 4dim -> up 2dim -> up dim -> BN ReLU conv3x3 C -> tanh
  D: x -> conv3x3 dim -> down 2dim -> down 4dim -> down 8dim -> down 8dim -> flatten (s*s*8dim) -> linear 1
Residual blocks (Gulrajani's ResidualBlock with resample 'up' / 'down'), cin -> cout channels:
  up:   out = conv3x3(cout->cout)(ReLU(BN(conv3x3(cin->cout)(upsample(ReLU(BN(x)))))))
        shortcut = conv1x1(cin->cout)(upsample(x))
  down: out = meanpool(conv3x3(cin->cout)(ReLU(BN(conv3x3(cin->cin)(ReLU(BN(x)))))))
        shortcut = conv1x1(cin->cout)(meanpool(x))
  return shortcut + out
upsample: nearest neighbour x2 (Gulrajani's UpsampleConv concatenates four copies of the input along the channels
and applies depth_to_space, which is nearest-neighbour upsampling); meanpool: the mean of each 2x2 window
(his ConvMeanPool / MeanPoolConv add the four strided slices and divide by 4).

Written from memory of Gulrajani's code, which is not in this repository, then checked (2026-12-07) against the
copy in Roth et al.'s repository (rothk/Stabilizing_GANs: igul222_GANs/gan_64x64.py's ResidualBlock,
ResNetGenerator, ResNetDiscriminator, UpsampleConv, ConvMeanPool, MeanPoolConv; tflib/ops/conv2d.py's init): the
block order, shortcuts, biases, which conv changes the channels, the channel plan, G's output layer, D's end and the
init below match it. The choices we had been unsure of, or made:
- The order of convolution and pooling in 'down' (convolve at full resolution, then pool: ConvMeanPool for the
  second conv; pool, then convolve: MeanPoolConv for the shortcut) and of upsampling and convolution in 'up'
  (upsample, then convolve, for the first conv and the shortcut) is our recollection of his code.
- The shortcut: a 1x1 convolution with a bias, present whenever the block resamples (so in all eight blocks here,
  the 8dim -> 8dim ones included; an identity shortcut only for a block that neither resamples nor changes
  channels, which these networks do not have). The kernel size 1 is our recollection.
- Which conv changes the channels: in 'up' the first (cin -> cout, then cout -> cout), in 'down' the second
  (cin -> cin, then cin -> cout). Our recollection; the parameter count depends on it.
- Biases: the first conv of a block has none (a BatchNorm follows it; his Conv1 had biases=False), the second conv,
  the shortcut and every other layer have one. With model.g_batchnorm / d_batchnorm off (our option; Roth et al.'s
  ResNet runs have BatchNorm) the first conv gets a bias, since no BatchNorm offset stands in for it.
- D ends with the last residual block's sum, flattened into the linear layer, with no BatchNorm or ReLU between
  (G's output has BN-ReLU before its last conv; we recall none in D).
- G's output layer is a 3x3 stride-1 convolution (Gulrajani's Conv2D 'Generator.Output'; Roth et al. call it "one
  deconvolutional layer": a stride-1 deconvolution is a convolution).
- BatchNorm: PyTorch's BatchNorm2d defaults (eps 1e-5, momentum 0.1); his tflib Batchnorm's epsilon and moving-
  average rate may differ (not checked). Train/eval mode follows fastgan's trainer, as for the other architectures.
- Init (model.init=paper) is tflib's as we recall it: every weight uniform with std sqrt(4 / (fan_in + fan_out))
  for convs with he_init (both convs of a block, G's output conv), sqrt(2 / (fan_in + fan_out)) (Glorot) for the
  shortcuts, D's input conv and both linear layers, fan_in = cin * k * k, fan_out = cout * k * k; biases 0,
  BatchNorm scale 1 and offset 0.
- Image sizes other than 64x64: the same four resamplings from side / 16 (32x32: start and end at 2x2; 16x16:
  1x1), square power-of-two sides >= 16 only; Gulrajani's code is for 64x64 (Roth et al.'s runs).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .base import Discriminator, Generator, output_activation

RESAMPLINGS = 4  # four residual blocks in G and in D, each doubling / halving the side
SMALLEST = 2 ** RESAMPLINGS  # side 16: G starts at, and D ends at, a 1x1 map


def check_image_shape(data_shape) -> tuple[int, int, int]:
    """(C, H, W) when the four x2 resamplings fit: H == W, a power of two, >= 16; else a ValueError naming
    data_shape."""
    shape = tuple(data_shape)
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] < SMALLEST or shape[1] & (shape[1] - 1):
        raise ValueError(f"data_shape: arch 'resnet' needs square images whose side is a power of two >= {SMALLEST} "
                         f"(its four x2 resamplings start G at, and end D at, side / {SMALLEST}: e.g. (3, 64, 64) "
                         f"or (3, 32, 32)), got {shape}"
                         + ("; set data.image_size to resize an image folder" if len(shape) == 3 else ""))
    return shape


def start_size(data_shape) -> int:
    """The side of G's first map and D's last one: image side / 16."""
    return check_image_shape(data_shape)[1] // SMALLEST


def generator_channels(width: int) -> tuple[int, ...]:
    """G's channels: the linear layer's output, then each up block's (Gulrajani: 8dim, 8dim, 4dim, 2dim, dim)."""
    return (8 * width, 8 * width, 4 * width, 2 * width, width)


def discriminator_channels(width: int) -> tuple[int, ...]:
    """D's channels: the input conv's output, then each down block's (dim, 2dim, 4dim, 8dim, 8dim)."""
    return (width, 2 * width, 4 * width, 8 * width, 8 * width)


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class ResidualBlock(nn.Module):
    """Gulrajani's pre-activation ResidualBlock, resample 'up' or 'down' (see the module docstring)."""

    def __init__(self, cin: int, cout: int, resample: str, batchnorm: bool = True):
        super().__init__()
        if resample not in ("up", "down"):
            raise ValueError(f"resample: must be 'up' or 'down', got {resample!r}")
        self.resample, self.cin, self.cout = resample, int(cin), int(cout)
        mid = cout if resample == "up" else cin  # up: the first conv changes the channels; down: the second
        self.bn1, self.relu1 = _norm(cin, batchnorm), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, mid, 3, padding=1, bias=not batchnorm)
        self.bn2, self.relu2 = _norm(mid, batchnorm), nn.ReLU()
        self.conv2 = nn.Conv2d(mid, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1)
        self.scale = nn.Upsample(scale_factor=2, mode="nearest") if resample == "up" else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(x))
        if self.resample == "up":
            skip = self.shortcut(self.scale(x))                # UpsampleConv, 1x1
            h = self.conv1(self.scale(h))                      # UpsampleConv, 3x3
            h = self.conv2(self.relu2(self.bn2(h)))
        else:
            skip = self.shortcut(self.scale(x))                # MeanPoolConv, 1x1
            h = self.conv1(h)
            h = self.scale(self.conv2(self.relu2(self.bn2(h))))  # ConvMeanPool, 3x3
        return skip + h

    def extra_repr(self) -> str:
        return f"{self.cin}, {self.cout}, resample={self.resample!r}"


@torch.no_grad()
def _tflib_uniform(weight: torch.Tensor, std: float) -> None:
    bound = std * math.sqrt(3.0)  # tflib's uniform(stdev, size): U(-stdev*sqrt(3), stdev*sqrt(3))
    nn.init.uniform_(weight, -bound, bound)


@torch.no_grad()
def _tflib_conv(conv: nn.Conv2d, he_init: bool) -> None:
    k = conv.kernel_size[0] * conv.kernel_size[1]
    fan_in, fan_out = conv.in_channels * k, conv.out_channels * k
    _tflib_uniform(conv.weight, math.sqrt((4.0 if he_init else 2.0) / (fan_in + fan_out)))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@torch.no_grad()
def _tflib_linear(linear: nn.Linear) -> None:
    _tflib_uniform(linear.weight, math.sqrt(2.0 / (linear.in_features + linear.out_features)))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


@torch.no_grad()
def _init_blocks_and_norms(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, ResidualBlock):
            _tflib_conv(m.conv1, he_init=True)
            _tflib_conv(m.conv2, he_init=True)
            _tflib_conv(m.shortcut, he_init=False)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNetGenerator(Generator):
    """`channels`: the linear layer's output channels, then each up block's (5 numbers); None:
    generator_channels(width). The NTGAN noise generator passes G's divided by model.noise_width_divisor."""

    def __init__(self, latent_dim: int, data_shape: tuple, width: int = 64, batchnorm: bool = True,
                 out: str = "tanh", out_scale: float = 1.0, latent_dist: str = "normal",
                 channels: Optional[Sequence[int]] = None):
        super().__init__()
        self.latent_dim, self.data_shape, self.latent_dist = int(latent_dim), tuple(data_shape), latent_dist
        c = check_image_shape(self.data_shape)[0]
        self.start = start_size(self.data_shape)
        channels = list(generator_channels(width) if channels is None else channels)
        if len(channels) != RESAMPLINGS + 1 or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in channels):
            raise ValueError(f"channels: {RESAMPLINGS + 1} positive channel counts (the linear layer's, then "
                             f"{RESAMPLINGS} up blocks'), got {channels!r}")
        self.channels = tuple(channels)
        self.fc = nn.Linear(self.latent_dim, channels[0] * self.start * self.start)
        self.blocks = nn.Sequential(*[ResidualBlock(a, b, "up", batchnorm) for a, b in zip(channels, channels[1:])])
        self.out = nn.Sequential(_norm(channels[-1], batchnorm), nn.ReLU(),
                                 nn.Conv2d(channels[-1], c, 3, padding=1), output_activation(out, out_scale))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.check_z(z)
        h = self.fc(z).view(z.shape[0], self.channels[0], self.start, self.start)
        return self.out(self.blocks(h))

    def paper_init(self) -> "ResNetGenerator":
        """tflib's init as used by Gulrajani's code (module docstring)."""
        _tflib_linear(self.fc)
        _init_blocks_and_norms(self)
        _tflib_conv(self.out[2], he_init=True)
        return self


class ResNetDiscriminator(Discriminator):
    """Features: the last residual block's output, flattened (the input of the final linear layer)."""

    def __init__(self, data_shape: tuple, width: int = 64, batchnorm: bool = True):
        super().__init__()
        self.data_shape = tuple(data_shape)
        c = check_image_shape(self.data_shape)[0]
        end = start_size(self.data_shape)
        channels = discriminator_channels(width)
        self.channels = channels
        self.conv_in = nn.Conv2d(c, channels[0], 3, padding=1)
        self.blocks = nn.Sequential(*[ResidualBlock(a, b, "down", batchnorm)
                                      for a, b in zip(channels, channels[1:])])
        self.feature_dim = channels[-1] * end * end
        self.out = nn.Linear(self.feature_dim, 1)

    def body(self, x):
        return self.blocks(self.conv_in(x)).flatten(1)

    def head(self, h):
        return self.out(h)

    def paper_init(self) -> "ResNetDiscriminator":
        """tflib's init as used by Gulrajani's code (module docstring)."""
        _tflib_conv(self.conv_in, he_init=False)
        _init_blocks_and_norms(self)
        _tflib_linear(self.out)
        return self
