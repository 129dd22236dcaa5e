"""Fused ops, each usable on any user's nn.Module. See README "Ops"."""
from ._dispatch import BACKENDS, BackendUnavailable, FallbackWarning
from .denoiser import Denoiser, bn_relu, denoiser_generator_loss, denoiser_loss
from .penalty import grad_norm_penalty, gradient_penalty, js_penalty, r1_penalty, r2_penalty

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "Denoiser",
    "FallbackWarning",
    "bn_relu",
    "denoiser_generator_loss",
    "denoiser_loss",
    "grad_norm_penalty",
    "gradient_penalty",
    "js_penalty",
    "r1_penalty",
    "r2_penalty",
]
