"""Update schedules: k discriminator steps per generator step (Goodfellow Algorithm 1), and DFM's simultaneous
update of D, denoiser and G from the same parameters."""
import copy

import pytest
import torch

from fastgan.config import coerce
from fastgan.methods.step import Draws, Method
from fastgan.models import build_denoiser, build_discriminator, build_generator
from fastgan.reference import methods as ref


def make(*overrides):
    cfg = coerce(None, ["optim.batch_size=8", "model.g_hidden=[6]", "model.d_hidden=[6,5]", *overrides])
    torch.manual_seed(0)
    G, D = build_generator(cfg.model, (3,)).double(), build_discriminator(cfg.model, (3,)).double()
    den = build_denoiser(D.feature_dim, 6, 2).double() if "dfm" in cfg.method.units else None
    return Method(cfg, G, D, device="cpu", generator=torch.Generator().manual_seed(1), denoiser=den)


@pytest.mark.parametrize("k", [1, 3])
def test_k_discriminator_steps_per_generator_step(k):
    M = make("method.name=gan", f"method.d_steps={k}")
    events = []
    for name, opt in M.optimizers.items():
        orig = opt.step
        opt.step = (lambda n, f: (lambda *a, **kw: (events.append(n), f(*a, **kw))[1]))(name, orig)
    batches = []

    def sample(m):
        batches.append(m)
        return torch.randn(m, 3, dtype=torch.float64)

    M.train_step(1, sample)
    M.train_step(2, sample)
    assert events == (["D"] * k + ["G"]) * 2
    assert batches == [8] * (2 * k)  # a fresh real batch for every D step


def test_generator_step_sees_the_updated_discriminator():
    # alternating: the G gradient is taken after D's step (Algorithm 1 order)
    M = make("method.name=gan", "optim.optimizer=sgd", "optim.lr_d=0.5", "optim.lr_g=0.1")
    gen_state = M.generator.get_state()
    x = torch.randn(8, 3, dtype=torch.float64)
    D0, G0 = copy.deepcopy(M.D), copy.deepcopy(M.G)
    M.train_step(1, lambda m: x)
    # replay the draws: D step consumed z_d, the G step z_g
    M.generator.set_state(gen_state)
    z_d = M.sample_z(8).double()
    z_g = M.sample_z(8).double()
    d_loss = ref.gan_d_loss(D0, x, G0(z_d).detach())
    gD = torch.autograd.grad(d_loss, list(D0.parameters()))
    with torch.no_grad():
        for p, g in zip(D0.parameters(), gD):
            p -= 0.5 * g
    g_loss = ref.gan_g_loss(D0, G0(z_g), saturating=False)
    gG = torch.autograd.grad(g_loss, list(G0.parameters()))
    for p_new, p_old, g in zip(M.G.parameters(), G0.parameters(), gG):
        assert torch.allclose(p_new, p_old - 0.1 * g, rtol=1e-10, atol=1e-12)
    for p_new, p_old in zip(M.D.parameters(), D0.parameters()):
        assert torch.allclose(p_new, p_old, rtol=1e-10, atol=1e-12)


def _dfm_step(*overrides):
    """One DFM training step by SGD (lr: D 0.3, G 0.2, denoiser 0.4); the networks before it, the real batch, the
    step's draws (re-drawn from the same generator state) and the fake batch the old G makes from them."""
    M = make("method.name=dfm", "optim.optimizer=sgd", "optim.lr_d=0.3", "optim.lr_g=0.2",
             "optim.lr_denoiser=0.4", *overrides)
    D0, G0, r0 = copy.deepcopy(M.D), copy.deepcopy(M.G), copy.deepcopy(M.denoiser)
    gen_state = M.generator.get_state()
    x = torch.randn(8, 3, dtype=torch.float64)
    M.train_step(1, lambda m: x)
    M.generator.set_state(gen_state)
    d = M.draws(8)
    d = Draws(**{k: (v.double() if torch.is_tensor(v) else v) for k, v in vars(d).items()})
    return M, D0, G0, r0, x, d, G0(d.z)


def test_dfm_updates_all_networks_from_the_same_parameters():
    M, D0, G0, r0, x, d, fake = _dfm_step()
    assert M.update_kind == "simultaneous"
    gD = torch.autograd.grad(ref.gan_d_loss(D0, x, fake.detach()), list(D0.parameters()))
    phi = D0.features(x)
    gr = torch.autograd.grad(ref.dfm_denoiser_loss(r0, phi, d.dn_noise, 1.0), list(r0.parameters()))
    gG = torch.autograd.grad(ref.dfm_g_loss(D0, r0, fake, 1.0, 0.03 / D0.feature_dim), list(G0.parameters()))
    for new, old, g, lr in [(M.D, D0, gD, 0.3), (M.denoiser, r0, gr, 0.4), (M.G, G0, gG, 0.2)]:
        moved = 0.0
        for p_new, p_old, gi in zip(new.parameters(), old.parameters(), g):
            assert torch.allclose(p_new, p_old - lr * gi, rtol=1e-9, atol=1e-12)
            moved += float((p_new - p_old).detach().abs().sum())
        assert moved > 0


def test_simultaneous_needs_one_d_step():
    from fastgan.config import ConfigError

    with pytest.raises(ConfigError, match=r"method.d_steps"):
        coerce(None, ["method.name=dfm", "method.d_steps=2"])
    cfg = coerce(None, ["method.name=dfm", "method.d_steps=2", "method.update=alternating"])
    assert cfg.method.resolved_update == "alternating"


@pytest.mark.parametrize("fused", ["true", "false"])
def test_dfm_uses_the_configured_sigma_and_loss_weights(fused):
    # eq. 4 / eq. 5 with non-default lambda_denoise, lambda_adv and corruption sigma (defaults 0.03 / n_h, 1, 1)
    M, D0, G0, r0, x, d, fake = _dfm_step("method.dfm.lambda_denoise=0.5", "method.dfm.lambda_adv=2.0",
                                          "method.dfm.sigma=0.5", f"method.dfm.fused={fused}")
    assert M.lambda_dn == 0.5
    gr = torch.autograd.grad(ref.dfm_denoiser_loss(r0, D0.features(x), d.dn_noise, 0.5), list(r0.parameters()))
    gG = torch.autograd.grad(ref.dfm_g_loss(D0, r0, fake, 2.0, 0.5), list(G0.parameters()))
    for new, old, g, lr in [(M.denoiser, r0, gr, 0.4), (M.G, G0, gG, 0.2)]:
        for p_new, p_old, gi in zip(new.parameters(), old.parameters(), g):
            assert torch.allclose(p_new, p_old - lr * gi, rtol=1e-9, atol=1e-12)
