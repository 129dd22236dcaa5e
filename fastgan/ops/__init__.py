"""Fused ops, each usable on any user's nn.Module. See README "Ops"."""
from ._dispatch import BACKENDS, BackendUnavailable, FallbackWarning
from .penalty import grad_norm_penalty, gradient_penalty, js_penalty, r1_penalty, r2_penalty

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "FallbackWarning",
    "grad_norm_penalty",
    "gradient_penalty",
    "js_penalty",
    "r1_penalty",
    "r2_penalty",
]
