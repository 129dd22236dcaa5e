"""Fused ops, each usable on any user's nn.Module. See README "Ops"."""
from . import bn_closed_form  # noqa: F401  (registers fastgan::bn_cf_* for torch.compile, export, opcheck)
from ._dispatch import BACKENDS, BackendUnavailable, FallbackWarning, use_backend
from .denoiser import Denoiser, DenoiserLoss, bn_relu, denoiser_generator_loss, denoiser_loss
from .noise import noisy_clean_batch
from .noise_state import NoiseState, default_noise_state, stream_seed
from .nt_losses import nt_losses
from .penalty import grad_norm_penalty, gradient_penalty, js_penalty, penalty_mode, r1_penalty, r2_penalty

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "Denoiser",
    "DenoiserLoss",
    "FallbackWarning",
    "NoiseState",
    "bn_relu",
    "default_noise_state",
    "denoiser_generator_loss",
    "denoiser_loss",
    "grad_norm_penalty",
    "gradient_penalty",
    "js_penalty",
    "noisy_clean_batch",
    "nt_losses",
    "penalty_mode",
    "r1_penalty",
    "r2_penalty",
    "stream_seed",
    "use_backend",
]
