"""NTGAN noise generator (NTGAN appendix 6.3 and Table 1): "equivalent to the generator architecture with the
number of filters reduced by a factor of eight", output "tanh activation scaled by a factor of two".

It takes the same latent size as G, so a trainer can feed it G's z (as the nearest public NTGAN code does)
or its own draw.
"""
from __future__ import annotations

from .config import ModelConfig
from .dcgan import DCGANGenerator, dcgan_filters
from .goodfellow import GoodfellowGenerator
from .mlp import MLPGenerator
from .resnet import ResNetGenerator, generator_channels


def _shrink(widths, divisor: int) -> tuple[int, ...]:
    return tuple(max(1, w // divisor) for w in widths)


def noise_generator(cfg: ModelConfig, data_shape: tuple, latent_dim: int):
    div, scale, bn = cfg.noise_width_divisor, cfg.noise_output_scale, bool(cfg.resolved("g_batchnorm"))
    common = dict(out="scaled_tanh", out_scale=scale, latent_dist=cfg.latent_dist)
    if cfg.arch == "mlp":
        return MLPGenerator(latent_dim, data_shape, _shrink(cfg.resolved("g_hidden"), div), cfg.mlp_activation,
                            cfg.leaky_slope, bn, **common)
    if cfg.arch == "goodfellow":
        return GoodfellowGenerator(latent_dim, data_shape, _shrink(cfg.resolved("g_hidden"), div), bn, **common)
    if cfg.arch == "resnet":  # each of G's channel counts divided (not the width before it is multiplied)
        return ResNetGenerator(latent_dim, data_shape, cfg.resnet_width, bn, **common,
                               channels=_shrink(generator_channels(cfg.resnet_width), div))
    return DCGANGenerator(latent_dim, data_shape, cfg.dcgan_width, bn, **common,  # the width counts at div 1 only
                          filters=dcgan_filters(cfg, data_shape, div), activation_name=cfg.dcgan_activation)
