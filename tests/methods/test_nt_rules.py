"""NTGAN's rules: one eps shared by the real and fake batch, mu ~ U(0,1) per iteration weighting clean and
noisy losses, the noise model's update direction, the half-batch construction."""
import copy
import math

import pytest
import torch
from torch import nn

from fastgan.config import coerce
from fastgan.methods import nt as nt_mod
from fastgan.methods.step import Draws, Method
from fastgan.models import build_discriminator, build_generator, build_noise_generator


class SumD(nn.Module):
    """psi(x) = sum(x): hand-computable logits; records every batch it sees."""

    def __init__(self, shape=(3,)):
        super().__init__()
        self.data_shape, self.feature_dim = shape, 1
        self.w = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.seen = []

    def forward_features(self, x):
        self.seen.append(x.detach().clone())
        h = (x.reshape(x.shape[0], -1).sum(1) * self.w)[:, None]
        return h[:, 0], h

    def forward(self, x):
        return self.forward_features(x)[0]

    def features(self, x):
        return self.forward_features(x)[1]


class ZeroG(nn.Module):
    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def forward(self, z):
        return z.new_zeros(z.shape[0], 3) + self.b


def make(*overrides, D=None, G=None):
    cfg = coerce(None, ["method.name=nt", "optim.batch_size=4", "method.nt.noise=fixed", *overrides])
    gen = torch.Generator().manual_seed(3)
    return Method(cfg, G or ZeroG(), D or SumD(), device="cpu", generator=gen)


def test_real_and_fake_batches_share_eps():
    M = make("method.nt.sigma=0.5")
    x = torch.randn(4, 3, dtype=torch.float64)
    d = M.draws(4)
    d = Draws(z=d.z.double(), eps_draws=d.eps_draws.double(), mu=d.mu.double())
    M.d_objective(x, torch.full((4, 3), 2.0, dtype=torch.float64), d)
    real, fake = M.D.seen
    assert real.shape == (8, 3) and fake.shape == (8, 3)  # {x, x + eps} and {x~, x~ + eps}, one pass each
    assert torch.equal(real[:4], x)
    eps_r, eps_f = real[4:] - real[:4], fake[4:] - fake[:4]
    assert torch.allclose(eps_r, eps_f)  # the same eps for both batches
    assert torch.allclose(eps_r, 0.5 * d.eps_draws)
    assert eps_r.abs().sum() > 0


def test_mu_weights_clean_and_noisy_losses():
    # psi = sum(x): real x = 0 (clean logit 0), fake x~ = 0; noisy logits s_i = sum(eps_i).
    # L_D = mu * (log 2 + log 2) + (1 - mu) * mean_i [softplus(-s_i) + softplus(s_i)]
    M = make()
    zero = torch.zeros(4, 3, dtype=torch.float64)
    eps_draws = torch.randn(4, 3, dtype=torch.float64)
    s = eps_draws.sum(1)
    noisy = (torch.nn.functional.softplus(-s) + torch.nn.functional.softplus(s)).mean().item()
    for mu in (0.0, 0.25, 0.9):
        d = Draws(z=torch.zeros(4, 2, dtype=torch.float64), eps_draws=eps_draws,
                  mu=torch.tensor(mu, dtype=torch.float64))
        got = M.d_objective(zero, zero, d).d_loss.item()
        assert got == pytest.approx(mu * 2 * math.log(2) + (1 - mu) * noisy, rel=1e-12)


def test_mu_is_drawn_per_iteration_and_per_update():
    M = make()
    mus = []
    orig = M.d_objective

    def spy(x, fake, d):
        mus.append(("D", float(d.mu)))
        return orig(x, fake.double(), Draws(z=d.z, eps_draws=d.eps_draws.double(), mu=d.mu.double()))

    M.d_objective = spy
    g_orig = M.g_objective

    def gspy(fake, d):
        mus.append(("G", float(d.mu)))
        return g_orig(fake, Draws(z=d.z, eps_draws=d.eps_draws.double(), mu=d.mu.double()))

    M.g_objective = gspy
    for t in range(1, 4):
        M.train_step(t, lambda m: torch.randn(m, 3, dtype=torch.float64))
    assert [k for k, _ in mus] == ["D", "G"] * 3
    values = [v for _, v in mus]
    assert all(0.0 <= v < 1.0 for v in values)
    assert len(set(values)) == len(values)  # a fresh mu every time (Algorithm 1 samples it in both loops)


def test_half_batch_construction():
    x = torch.arange(12, dtype=torch.float64).reshape(6, 2)
    eps = torch.full((3, 2), 100.0, dtype=torch.float64)
    xb, w, clean = nt_mod.build(x, eps, torch.tensor(0.3, dtype=torch.float64), "half", True)
    assert xb.shape == (6, 2)
    assert torch.equal(xb[:3], x[:3]) and torch.equal(xb[3:], x[3:] + 100.0)
    assert torch.allclose(w, torch.tensor([0.1] * 3 + [0.7 / 3] * 3, dtype=torch.float64))
    assert clean == slice(0, 3) and nt_mod.noise_count(6, "half", True) == 3
    xb, w, clean = nt_mod.build(x, x, torch.tensor(0.3), "full", True)
    assert xb.shape == (12, 2) and w.sum().item() == pytest.approx(1.0)
    xb, w, clean = nt_mod.build(x, x, None, "full", False)
    assert torch.equal(xb, 2 * x) and w is None and clean is None


def _tiny_nt(*overrides):
    cfg = coerce(None, ["method.name=nt", "optim.batch_size=16", "model.g_hidden=[8]", "model.d_hidden=[8,8]",
                        "optim.optimizer=sgd", "optim.lr_noise=0.01", "optim.lr_d=0.01", "method.nt.noise=generator",
                        *overrides])
    torch.manual_seed(0)
    G, D = build_generator(cfg.model, (3,)).double(), build_discriminator(cfg.model, (3,)).double()
    net = build_noise_generator(cfg.model, (3,)).double()
    return Method(cfg, G, D, device="cpu", generator=torch.Generator().manual_seed(1), noise_net=net)


def _draws64(M, m):
    d = M.draws(m)
    return Draws(**{k: (v.double() if torch.is_tensor(v) else v) for k, v in vars(d).items()})


def _value(M, x, fake, d, eps):
    """The D objective V = mu E log D(x) + ... that D ascends (minus D's loss)."""
    xr, wr, _ = nt_mod.build(x, eps, d.mu, "full", True)
    xf, wf, _ = nt_mod.build(fake, eps, d.mu, "full", True)
    lr, lf = M.D(xr), M.D(xf)
    return ((wr * torch.nn.functional.logsigmoid(lr)).sum() + (wf * torch.nn.functional.logsigmoid(-lf)).sum()).item()


def test_noise_generator_descends_the_d_objective():
    # Eq. 6 / Algorithm 1: the noise network minimises the D objective (+ lambda ||eps||^2). With lambda = 0, one
    # small step of the noise network lowers the objective D maximises (for D held at its old parameters).
    M = _tiny_nt("method.nt.lam=0.0")
    x = torch.randn(16, 3, dtype=torch.float64)
    d = _draws64(M, 16)
    with torch.no_grad():
        fake = M.G(d.z)
        eps0 = M.noise(d.eps_draws)
    D0 = copy.deepcopy(M.D.state_dict())
    out = M.d_objective(x, fake, d)
    # the noise gradient is exactly minus D's gradient direction on the shared adversarial term
    PN = list(M.noise.parameters())
    g_noise = torch.autograd.grad(out.noise_loss, PN, retain_graph=True)
    g_dloss = torch.autograd.grad(out.d_loss, PN, retain_graph=True)
    for a, b in zip(g_noise, g_dloss):
        assert torch.allclose(a, -b)
    M.d_update(x, d)
    M.D.load_state_dict(D0)
    with torch.no_grad():
        eps1 = M.noise(d.eps_draws)
        assert _value(M, x, fake, d, eps1) < _value(M, x, fake, d, eps0)


def test_noise_penalty_shrinks_the_noise():
    M = _tiny_nt("method.nt.lam=10.0", "optim.lr_noise=0.001")
    x = torch.randn(16, 3, dtype=torch.float64)
    d = _draws64(M, 16)
    with torch.no_grad():
        n0 = M.noise(d.eps_draws).pow(2).sum(1).mean()
    M.d_update(x, d)
    with torch.no_grad():
        n1 = M.noise(d.eps_draws).pow(2).sum(1).mean()
    assert n1 < n0


def test_learned_sigma_gradient_includes_penalty():
    # d/dsigma (V + lam sigma^2) = dV/dsigma + 2 lam sigma
    M = make("method.nt.noise=learned_sigma", "method.nt.sigma=0.7", "method.nt.lam=0.5")
    M.noise.double()
    zero = torch.zeros(4, 3, dtype=torch.float64)
    d = Draws(z=torch.zeros(4, 2, dtype=torch.float64), eps_draws=torch.randn(4, 3, dtype=torch.float64),
              mu=torch.tensor(0.4, dtype=torch.float64))
    out = M.d_objective(zero, zero, d)
    (g,) = torch.autograd.grad(out.noise_loss, [M.noise.sigma], retain_graph=True)
    (g_adv,) = torch.autograd.grad(-out.adv, [M.noise.sigma])
    assert g.item() == pytest.approx(g_adv.item() + 2 * 0.5 * M.noise.sigma.item(), rel=1e-10)
    assert g_adv.item() != 0


def test_half_batch_weights_of_an_odd_batch():
    # m = 5: h = 2 clean rows x_1, x_2 and 3 noisy rows x_3 + eps_1 .. x_5 + eps_3; each part is averaged over
    # its own rows, so the weights are mu / 2 and (1 - mu) / 3, and they sum to 1
    x = torch.arange(10, dtype=torch.float64).reshape(5, 2)
    eps = torch.full((3, 2), 100.0, dtype=torch.float64)
    xb, w, clean = nt_mod.build(x, eps, torch.tensor(0.3, dtype=torch.float64), "half", True)
    assert torch.equal(xb[:2], x[:2]) and torch.equal(xb[2:], x[2:] + 100.0)
    assert torch.allclose(w, torch.tensor([0.15, 0.15] + [0.7 / 3] * 3, dtype=torch.float64))
    assert w.sum().item() == pytest.approx(1.0)
    assert clean == slice(0, 2) and nt_mod.noise_count(5, "half", True) == 3


def test_fixed_noise_annealing_follows_the_generator_iteration():
    # ablation row (c): sigma(t) = sigma (1 - t / T) for generator iteration t = 1, 2, ... (held at 0 after T)
    M = _tiny_nt("method.nt.noise=fixed", "method.nt.sigma=1.5", "method.nt.sigma_anneal=linear",
                 "method.nt.anneal_steps=10")
    for t in (1, 4, 10, 12):
        M.update_schedules(t)
        assert M.noise.sigma.item() == pytest.approx(1.5 * max(0.0, 1 - t / 10)), t


def test_annealed_fixed_noise_scales_eps_by_the_current_sigma():
    # eps = sigma(t) n: the annealed sigma, not the initial one, scales the draws (sigma(4) = 1.5 * 0.6)
    noise = nt_mod.FixedNoise(1.5, "linear", total=10)
    draws = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    noise.update(4)
    assert torch.allclose(noise(draws), 0.9 * draws)
    noise.update(10)
    assert torch.equal(noise(draws), torch.zeros_like(draws))
