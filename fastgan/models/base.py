"""Shared pieces: the generator / discriminator interfaces, activations, inits, spectral normalization."""
from __future__ import annotations

import math
import operator

import torch
from torch import nn


def _index(n) -> int:
    if isinstance(n, bool):
        raise TypeError
    return operator.index(n)  # int() would take 3.5 (as 3) or "3"


def check_data_shape(data_shape) -> tuple[int, ...]:
    try:
        shape = tuple(_index(s) for s in data_shape)
    except TypeError:
        raise ValueError(f"data_shape: expected a tuple of ints, got {data_shape!r}") from None
    if len(shape) not in (1, 3) or any(s < 1 for s in shape):
        raise ValueError(f"data_shape: expected (D,) points or (C, H, W) images, got {data_shape!r}")
    return shape


def activation(name: str, slope: float = 0.2) -> nn.Module:
    if name == "tanh":
        return nn.Tanh()
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(slope)
    raise ValueError(f"activation: unknown {name!r}")


class ScaledTanh(nn.Module):
    """scale * tanh(x): the NTGAN noise generator's output (scale 2 lets the noise exceed the data range)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x):
        return self.scale * torch.tanh(x)

    def extra_repr(self):
        return f"scale={self.scale}"


def output_activation(kind: str, scale: float = 1.0) -> nn.Module:
    """'linear' for points, 'tanh' for images in [-1, 1], 'scaled_tanh' for the noise generator."""
    if kind == "linear":
        return nn.Identity()
    if kind == "tanh":
        return nn.Tanh()
    if kind == "scaled_tanh":
        return ScaledTanh(scale)
    raise ValueError(f"output activation: unknown {kind!r}")


class Generator(nn.Module):
    """z (B, latent_dim) -> x (B, *data_shape)."""

    latent_dim: int
    latent_dist: str = "normal"
    data_shape: tuple

    def sample_latent(self, batch_size: int, generator: torch.Generator | None = None, device=None,
                      dtype=torch.float32) -> torch.Tensor:
        """Draw z from the prior (normal, or uniform on [-1, 1]) on `device` (default: the model's)."""
        try:
            n = _index(batch_size)
        except TypeError:
            n = -1
        if n < 0:
            raise ValueError(f"batch_size: must be an int >= 0, got {batch_size!r}")
        batch_size = n
        if device is None:
            p = next(self.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        shape = (batch_size, self.latent_dim)
        gdev = generator.device if generator is not None else device
        if self.latent_dist == "uniform":
            z = torch.rand(shape, generator=generator, device=gdev, dtype=dtype).mul_(2).sub_(1)
        else:
            z = torch.randn(shape, generator=generator, device=gdev, dtype=dtype)
        return z.to(device)

    def check_z(self, z: torch.Tensor):
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z: expected a tensor, got {type(z).__name__}")
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z: expected shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise TypeError(f"z: expected a floating-point tensor, got {z.dtype}")


class Discriminator(nn.Module):
    """x -> logits (B,); ``forward_features`` also returns the penultimate features (B, feature_dim) of the
    same pass (DFM reads them). Subclasses define ``body`` (x -> features) and ``head`` (features -> logit).
    Everything is twice differentiable, so gradient penalties can differentiate the logits' input gradient."""

    feature_dim: int
    data_shape: tuple

    def body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_x(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.data_shape or x.dim() != len(self.data_shape) + 1:
            raise ValueError(f"x: expected shape (B, {', '.join(map(str, self.data_shape))}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_x(x)
        h = self.body(x)
        return self.head(h).reshape(-1), h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_x(x)
        return self.body(x)

    def _forward_is(self, cls) -> bool:
        """Whether this object's forward is cls's (body, head, forward and forward_features not overridden by a
        subclass): only then may cls.as_sequential() stand for it."""
        return all(getattr(type(self), name) is getattr(cls, name)
                   for name in ("body", "head", "forward", "forward_features"))


_WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def init_weights(module: nn.Module, scheme: str, **kw) -> nn.Module:
    """Re-initialise every linear / conv / BatchNorm layer of `module`, biases to 0.

    schemes: "trunc_normal" (std; truncated at 2 std like TensorFlow's), "uniform" (bound),
    "dcgan" (N(0, 0.02) weights, BatchNorm gamma ~ N(1, 0.02)).
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, _WEIGHTED):
                if scheme == "trunc_normal":
                    nn.init.trunc_normal_(m.weight, std=kw["std"], a=-2 * kw["std"], b=2 * kw["std"])
                elif scheme == "uniform":
                    nn.init.uniform_(m.weight, -kw["bound"], kw["bound"])
                elif scheme == "dcgan":
                    nn.init.normal_(m.weight, 0.0, 0.02)
                else:
                    raise ValueError(f"init scheme: unknown {scheme!r}")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, _NORMS) and m.affine:
                if scheme == "dcgan":
                    nn.init.normal_(m.weight, 1.0, 0.02)
                else:
                    nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return module


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalization on every linear / conv layer (torch.nn.utils.parametrizations.spectral_norm)."""
    from torch.nn.utils.parametrizations import spectral_norm

    for m in list(module.modules()):
        if isinstance(m, _WEIGHTED):
            spectral_norm(m)
    return module


def numel(shape) -> int:
    return int(math.prod(shape))
