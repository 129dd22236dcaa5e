"""Tiny float64 Method instances for the method tests (tests/ is on sys.path via conftest)."""
import torch

from fastgan.config import coerce
from fastgan.methods.step import Draws, Method
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


def draws(M, m=M_BATCH, for_d=True):
    d = M.draws(m, for_d)
    return Draws(**{k: (v.double() if torch.is_tensor(v) else v) for k, v in vars(d).items()})


def grads(loss, params):
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def assert_close(a, b, what, rtol=1e-7, atol=1e-10):
    assert len(a) == len(b)
    assert sum(float(x.abs().sum()) for x in a) > 0, f"{what}: all gradients are zero; the test would prove nothing"
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.allclose(x, y, rtol=rtol, atol=atol), f"{what}: parameter {i} differs by {(x - y).abs().max()}"


def d_setup(M):
    torch.manual_seed(5)
    x = torch.randn(M_BATCH, *SHAPE, dtype=torch.float64)
    d = draws(M)
    with torch.no_grad():
        fake = M.G(d.z)
    return x, fake, d
