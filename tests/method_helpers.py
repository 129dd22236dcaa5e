"""Tiny float64 Method instances for the method tests (tests/ is on sys.path via conftest)."""
import torch

from fastgan.config import coerce
from fastgan.methods.step import Method
from fastgan.models import build_denoiser, build_discriminator, build_generator, build_noise_generator

SHAPE = (3,)
M_BATCH = 6


def make(name, *overrides, seed=0):
    cfg = coerce(None, [f"method.name={name}", f"optim.batch_size={M_BATCH}", "model.g_hidden=[7]",
                        "model.d_hidden=[6,5]", "run.steps=50", *overrides])
    torch.manual_seed(seed)
    G = build_generator(cfg.model, SHAPE).double()
    D = build_discriminator(cfg.model, SHAPE).double()
    noise_net = build_noise_generator(cfg.model, SHAPE).double() if "nt" in cfg.method.units else None
    denoiser = build_denoiser(D.feature_dim, 8, 2).double() if "dfm" in cfg.method.units else None
    gen = torch.Generator().manual_seed(seed + 1)
    M = Method(cfg, G, D, device="cpu", generator=gen, noise_net=noise_net, denoiser=denoiser)
    if M.noise is not None:
        M.noise.double()
    return cfg, M
