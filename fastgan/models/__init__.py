"""Generators, discriminators, the NTGAN noise generator and the DFM denoiser, built from a ModelConfig.

- ``build_generator(cfg, data_shape)``: ``.latent_dim``, ``.sample_latent(B, generator=None)``,
  ``forward(z) -> (B, *data_shape)``. It needs no data, so it leaves ``cfg.g_output_bias='marginals'`` to its
  caller: ``G.init_output_bias(dataset.feature_mean())`` (the trainer does so at a fresh start).
- ``build_discriminator(cfg, data_shape)``: ``.feature_dim``, ``forward(x) -> logits (B,)``,
  ``forward_features(x) -> (logits, features)``, ``features(x)``.
- ``build_noise_generator(cfg, data_shape)``: G's architecture / noise_width_divisor, output
  noise_output_scale * tanh.
- ``build_denoiser(feature_dim, hidden=None, depth=3)``.
"""
from __future__ import annotations

from torch import nn

from .base import Discriminator, Generator, apply_spectral_norm, check_data_shape, init_weights
from .config import ARCH_DEFAULTS, ARCHS, ModelConfig
from .dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_filters
from .denoiser import Denoiser
from .goodfellow import GoodfellowGenerator, Maxout, MaxoutDiscriminator
from .mlp import MLPDiscriminator, MLPGenerator
from .noise import noise_generator
from .resnet import ResidualBlock, ResNetDiscriminator, ResNetGenerator
from .resnet import check_image_shape as check_resnet_shape

__all__ = ["ModelConfig", "ARCHS", "ARCH_DEFAULTS", "Generator", "Discriminator", "Denoiser", "Maxout",
           "ResidualBlock", "ResNetGenerator", "ResNetDiscriminator",
           "build_generator", "build_discriminator", "build_noise_generator", "build_denoiser",
           "build_denoiser_from_config"]


def _check(cfg, data_shape):
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg: expected a ModelConfig, got {type(cfg).__name__}")
    from ..config import check_section

    check_section(cfg, "model")  # a ModelConfig made in Python skips fastgan.config's validation
    shape = check_data_shape(data_shape)
    if cfg.arch == "dcgan" and len(shape) != 3:
        raise ValueError(f"data_shape: arch 'dcgan' needs images (C, H, W), got {tuple(data_shape)}")
    if cfg.arch == "resnet":
        check_resnet_shape(shape)  # square, a power of two >= 16: a ValueError naming data_shape
    return shape


def _out_kind(shape) -> str:
    return "tanh" if len(shape) == 3 else "linear"


def _paper_init(cfg: ModelConfig, module: nn.Module, role: str) -> nn.Module:
    if cfg.init != "paper":
        return module
    if cfg.arch == "mlp":  # Roth's 3DGAN code: truncated normal, std 0.1
        return init_weights(module, "trunc_normal", std=0.1)
    if cfg.arch == "goodfellow":  # mnist.yaml irange: 0.05 (G), 0.005 (D)
        return init_weights(module, "uniform", bound=0.05 if role == "G" else 0.005)
    if cfg.arch == "resnet":  # Gulrajani et al.'s tflib init (fastgan/models/resnet.py)
        return module.paper_init()
    return init_weights(module, "dcgan")  # Radford et al. 2015


def build_generator(cfg: ModelConfig, data_shape: tuple) -> Generator:
    shape = _check(cfg, data_shape)
    z, bn = cfg.resolved("latent_dim"), bool(cfg.resolved("g_batchnorm"))
    if cfg.arch == "mlp":
        g = MLPGenerator(z, shape, cfg.resolved("g_hidden"), cfg.mlp_activation, cfg.leaky_slope, bn,
                         out=_out_kind(shape), latent_dist=cfg.latent_dist)
    elif cfg.arch == "goodfellow":
        g = GoodfellowGenerator(z, shape, cfg.resolved("g_hidden"), bn, out=_out_kind(shape),
                                latent_dist=cfg.latent_dist)
    elif cfg.arch == "resnet":
        g = ResNetGenerator(z, shape, cfg.resnet_width, bn, latent_dist=cfg.latent_dist)
    else:
        g = DCGANGenerator(z, shape, cfg.dcgan_width, bn, latent_dist=cfg.latent_dist,
                           filters=dcgan_filters(cfg, shape), activation_name=cfg.dcgan_activation)
    return _paper_init(cfg, g, "G")


def build_discriminator(cfg: ModelConfig, data_shape: tuple) -> Discriminator:
    shape = _check(cfg, data_shape)
    bn = bool(cfg.resolved("d_batchnorm"))
    if cfg.arch == "mlp":
        d = MLPDiscriminator(shape, cfg.resolved("d_hidden"), cfg.mlp_activation, cfg.leaky_slope, bn)
    elif cfg.arch == "goodfellow":
        d = MaxoutDiscriminator(shape, cfg.resolved("d_hidden"), cfg.maxout_pieces, cfg.d_input_dropout,
                                cfg.d_dropout, bn)
    elif cfg.arch == "resnet":
        d = ResNetDiscriminator(shape, cfg.resnet_width, bn)
    else:
        d = DCGANDiscriminator(shape, cfg.dcgan_width, bn, cfg.leaky_slope, activation_name=cfg.dcgan_activation,
                               input_batchnorm=cfg.d_input_batchnorm)
    d = _paper_init(cfg, d, "D")
    if cfg.spectral_norm:  # after init: the parametrization keeps the initialised weight as its original
        apply_spectral_norm(d)
    return d


def build_noise_generator(cfg: ModelConfig, data_shape: tuple) -> Generator:
    shape = _check(cfg, data_shape)
    return _paper_init(cfg, noise_generator(cfg, shape, cfg.resolved("latent_dim")), "G")


def build_denoiser(feature_dim: int, hidden: int | None = None, depth: int = 3) -> Denoiser:
    return Denoiser(feature_dim, hidden, depth)


def build_denoiser_from_config(cfg: ModelConfig, feature_dim: int) -> Denoiser:
    return Denoiser(feature_dim, cfg.denoiser_hidden, cfg.denoiser_depth)
