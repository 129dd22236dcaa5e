"""Every method's gradients (D, G, NT's noise model, DFM's denoiser) against fastgan.reference.methods, on
tiny float64 models with the same random draws handed to both sides."""

import pytest
import torch

from fastgan.methods.step import Draws
from fastgan.reference import methods as ref
from fastgan.reference import penalty as ref_pen

from method_helpers import M_BATCH, SHAPE, assert_close, d_setup, draws, grads, make  # noqa: E402


def noise_of(M, d):
    with torch.no_grad():
        return M.noise(d.eps_draws)


def logits(D, x):
    return D(x).reshape(x.shape[0])


# ---------------------------------------------------------------- plain GAN family

@pytest.mark.parametrize("loss,g_loss", [("minimax", "nonsaturating"), ("minimax", "saturating"),
                                         ("least_squares", "nonsaturating"), ("wgan_gp", "nonsaturating")])
@pytest.mark.parametrize("bn", [False, True])
def test_gan_losses_match_reference(loss, g_loss, bn):
    cfg, M = make("gan", f"method.loss={loss}", f"method.g_loss={g_loss}", f"model.d_batchnorm={str(bn).lower()}")
    x, fake, d = d_setup(M)
    P = list(M.D.parameters())
    got = grads(M.d_objective(x, fake, d).d_loss, P)
    if loss == "minimax":
        want = ref.gan_d_loss(M.D, x, fake)
    elif loss == "least_squares":
        want = ref.lsgan_d_loss(M.D, x, fake)
    else:
        want = ref.wgan_gp_d_loss(M.D, x, fake, d.gp_u, cfg.method.gp_weight)
    assert_close(got, grads(want, P), "D")
    dg = draws(M, for_d=False)
    PG = list(M.G.parameters())
    got = grads(M.g_objective(M.G(dg.z), dg)[0], PG)
    fake_g = M.G(dg.z)
    want = {"minimax": lambda: ref.gan_g_loss(M.D, fake_g, g_loss == "saturating"),
            "least_squares": lambda: ref.lsgan_g_loss(M.D, fake_g),
            "wgan_gp": lambda: ref.wgan_g_loss(M.D, fake_g)}[loss]()
    assert_close(got, grads(want, PG), "G")


# ---------------------------------------------------------------- Roth et al.

@pytest.mark.parametrize("schedule", ["fixed", "anneal"])
@pytest.mark.parametrize("bn", [False, True])
def test_roth_js_matches_reference(schedule, bn):
    cfg, M = make("roth", f"method.roth.schedule={schedule}", "method.roth.gamma=0.7",
                  f"model.d_batchnorm={str(bn).lower()}")
    M.update_schedules(20)
    gamma = M.gamma.value.item()
    expect = 0.7 if schedule == "fixed" else ref.gamma_schedule(20, 2.0, 0.01, 50)
    assert gamma == pytest.approx(expect, rel=1e-6)
    x, fake, d = d_setup(M)
    P = list(M.D.parameters())
    out = M.d_objective(x, fake, d)
    assert_close(grads(out.d_loss, P), grads(ref.roth_js_d_loss(M.D, x, fake, gamma), P), "D")
    # the generator objective stays unregularized (section 4.1): the plain non-saturating loss
    dg = draws(M, for_d=False)
    PG = list(M.G.parameters())
    assert_close(grads(M.g_objective(M.G(dg.z), dg)[0], PG), grads(ref.gan_g_loss(M.D, M.G(dg.z), False), PG), "G")


@pytest.mark.parametrize("penalty,loss", [("r1", "minimax"), ("r2", "minimax"), ("r1", "least_squares")])
def test_roth_r1_r2_match_reference(penalty, loss):
    cfg, M = make("roth", f"method.roth.penalty={penalty}", f"method.loss={loss}", "method.roth.gamma=1.3")
    x, fake, d = d_setup(M)
    P = list(M.D.parameters())
    fn = ref.roth_r1_d_loss if penalty == "r1" else ref.roth_r2_d_loss
    want = fn(M.D, x, fake, M.gamma.value.item(), base=loss)
    assert_close(grads(M.d_objective(x, fake, d).d_loss, P), grads(want, P), "D")


@pytest.mark.parametrize("bn,mode", [(False, "double_backward"), (True, "double_backward"), (True, "auto"),
                                     (True, "jvp")], ids=["", "batchnorm", "batchnorm-auto", "batchnorm-jvp"])
@pytest.mark.parametrize("f", ["gan", "js", "kl", "reverse_kl", "pearson", "squared_hellinger"])
def test_roth_general_f_gan_matches_reference(f, bn, mode):
    """Eq. 19 differentiates the statistic T = g_f(psi): with training-mode BatchNorm, which couples a batch's
    samples, grad_x sum T is not g_f'(psi) grad_x sum psi, so the penalty must differentiate T itself there."""
    cfg, M = make("roth", "method.loss=fgan", f"method.f_divergence={f}", "method.roth.penalty=f",
                  "method.roth.gamma=0.9", "method.g_loss=saturating", f"model.d_batchnorm={str(bn).lower()}",
                  f"method.roth.mode={mode}")
    x, fake, d = d_setup(M)
    P = list(M.D.parameters())
    want = ref.roth_f_d_loss(M.D, x, fake, f, M.gamma.value.item())
    assert_close(grads(M.d_objective(x, fake, d).d_loss, P), grads(want, P), "D")
    dg = draws(M, for_d=False)
    PG = list(M.G.parameters())
    assert_close(grads(M.g_objective(M.G(dg.z), dg)[0], PG),
                 grads(ref.fgan_g_loss(M.D, M.G(dg.z), f, saturating=True), PG), "G")


# ---------------------------------------------------------------- NTGAN

@pytest.mark.parametrize("noise", ["fixed", "learned_sigma", "generator"])
@pytest.mark.parametrize("batch", ["full", "half"])
def test_nt_matches_reference(noise, batch):
    cfg, M = make("nt", f"method.nt.noise={noise}", f"method.nt.batch={batch}", "method.nt.lam=0.3",
                  "method.nt.sigma=0.8", "model.d_batchnorm=true")
    x, fake, d = d_setup(M)
    P = list(M.D.parameters())
    out = M.d_objective(x, fake, d)
    eps_live = M.noise(d.eps_draws)
    eps = eps_live.detach()
    value = ref.nt_d_value(M.D, x, fake, eps, d.mu, batch)
    assert_close(grads(out.d_loss, P), grads(-value, P), "D")
    if noise != "fixed":
        # Algorithm 1: omega <- omega - alpha grad_omega(L_D^r + L_D^f + lambda L_eps)
        pen = eps_live.pow(2).sum() * 0 + (M.noise.sigma ** 2 if noise == "learned_sigma"
                                           else ref.noise_penalty_generator(eps_live))
        obj = ref.noise_objective(ref.nt_d_value(M.D, x, fake, eps_live, d.mu, batch), 0.3, pen)
        PN = list(M.noise.parameters())
        assert_close(grads(out.noise_loss, PN), grads(obj, PN), "noise")
    else:
        assert out.noise_loss is None
    dg = draws(M, for_d=False)
    PG = list(M.G.parameters())
    want = ref.nt_g_loss(M.D, M.G(dg.z), noise_of(M, dg), dg.mu, False, batch)
    assert_close(grads(M.g_objective(M.G(dg.z), dg)[0], PG), grads(want, PG), "G")


def test_nt_noise_only_matches_reference():
    cfg, M = make("nt", "method.nt.noise=fixed", "method.nt.clean=false")
    x, fake, d = d_setup(M)
    assert d.mu is None
    P = list(M.D.parameters())
    eps = noise_of(M, d)
    assert_close(grads(M.d_objective(x, fake, d).d_loss, P),
                 grads(-ref.nt_noise_only_d_value(M.D, x, fake, eps), P), "D")


@pytest.mark.parametrize("loss", ["least_squares", "wgan_gp"])
def test_nt_composes_with_other_losses(loss):
    cfg, M = make("nt", f"method.loss={loss}", "method.nt.noise=generator")
    x, fake, d = d_setup(M)
    P = list(M.D.parameters())
    eps, mu, m = noise_of(M, d), d.mu, M_BATCH
    xr, xf = torch.cat([x, x + eps]), torch.cat([fake, fake + eps])
    lr, lf = logits(M.D, xr), logits(M.D, xf)
    if loss == "least_squares":
        want = ref.nt_weighted_d_loss(0.5 * (lr - 1) ** 2, 0.5 * lf ** 2, mu, m)
    else:
        u = d.gp_u
        x_hat = (u[:, None] * xr + (1 - u[:, None]) * xf).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(logits(M.D, x_hat).sum(), x_hat, create_graph=True)
        gp = (g.norm(dim=1) - 1) ** 2
        want = ref.nt_weighted_d_loss(-lr, lf, mu, m) + 10.0 * ((mu * gp[:m]).mean() + ((1 - mu) * gp[m:]).mean())
    assert_close(grads(M.d_objective(x, fake, d).d_loss, P), grads(want, P), "D")


def test_nt_with_spectral_norm_discriminator():
    cfg, M = make("nt", "model.spectral_norm=true", "method.nt.noise=fixed")
    M.D.eval()  # no power iteration per call, so both sides see the same normalised weights
    x, fake, d = d_setup(M)
    P = list(M.D.parameters())
    assert any("parametrizations" in n for n, _ in M.D.named_parameters())
    want = -ref.nt_d_value(M.D, x, fake, noise_of(M, d), d.mu)
    assert_close(grads(M.d_objective(x, fake, d).d_loss, P), grads(want, P), "D")


def test_nt_with_roth_penalty_weights_every_sample_by_mu():
    cfg, M = make("roth+nt", "method.nt.noise=generator", "method.roth.gamma=0.5")
    x, fake, d = d_setup(M)
    P = list(M.D.parameters())
    out = M.d_objective(x, fake, d)
    eps, mu, m = noise_of(M, d), d.mu, M_BATCH
    xr, xf = torch.cat([x, x + eps]), torch.cat([fake, fake + eps])
    pr, _ = ref_pen.gradient_penalty(M.D, xr, "js_real", reduction="none")
    pf, _ = ref_pen.gradient_penalty(M.D, xf, "js_fake", reduction="none")
    omega = ref.nt_weighted_d_loss(pr, pf, mu, m)
    want = -ref.nt_d_value(M.D, x, fake, eps, mu) + 0.25 * omega
    assert_close(grads(out.d_loss, P), grads(want, P), "D")
    # the noise network still gets the adversarial objective's gradient through the penalty's forward pass
    eps_live = M.noise(d.eps_draws)
    obj = -(-ref.nt_d_value(M.D, x, fake, eps_live, mu)) + 1.0 * ref.noise_penalty_generator(eps_live)
    PN = list(M.noise.parameters())
    assert_close(grads(out.noise_loss, PN), grads(obj, PN), "noise")


# ---------------------------------------------------------------- DFM

@pytest.mark.parametrize("bn", [False, True])  # BatchNorm in D: features normalised with their own batch's statistics
@pytest.mark.parametrize("fused", ["true", "false"])
def test_dfm_matches_reference(bn, fused):
    cfg, M = make("dfm", "method.dfm.lambda_adv=0.7", f"model.d_batchnorm={str(bn).lower()}",
                  f"method.dfm.fused={fused}")
    assert M.lambda_dn == pytest.approx(0.03 / M.D.feature_dim)
    x, fake, d = d_setup(M)
    out = M.d_objective(x, fake, d)
    P = list(M.D.parameters())
    assert_close(grads(out.d_loss, P), grads(ref.gan_d_loss(M.D, x, fake), P), "D")
    PR = list(M.denoiser.parameters())
    phi = M.D.features(x)
    assert_close(grads(out.denoiser_loss, PR), grads(ref.dfm_denoiser_loss(M.denoiser, phi, d.dn_noise, 1.0), PR), "r")
    # the denoiser's loss does not reach D (Phi(x) is data for r; D trains on its GAN loss only)
    assert all(g is None for g in torch.autograd.grad(out.denoiser_loss, P, retain_graph=True, allow_unused=True))
    dg = draws(M, for_d=False)
    PG = list(M.G.parameters())
    want = ref.dfm_g_loss(M.D, M.denoiser, M.G(dg.z), 0.7, M.lambda_dn)
    assert_close(grads(M.g_objective(M.G(dg.z), dg)[0], PG), grads(want, PG), "G")


def test_dfm_target_is_constant():
    cfg, M = make("dfm")
    dg = draws(M, for_d=False)
    g_loss, stats = M.g_objective(M.G(dg.z), dg)
    PR = list(M.denoiser.parameters())
    assert all(g is None for g in torch.autograd.grad(g_loss, PR, retain_graph=True, allow_unused=True))
    # and the G gradient differs from the one obtained by differentiating through r (the target matters)
    fake = M.G(dg.z)
    logits_, phi = M.D.forward_features(fake)
    through_r = 0.7 * ((phi - M.denoiser(phi)) ** 2).sum(1).mean()
    PG = list(M.G.parameters())
    const = ((phi - M.denoiser(phi).detach()) ** 2).sum(1).mean() * 0.7
    a, b = grads(through_r, PG), grads(const, PG)
    assert any(not torch.allclose(x, y) for x, y in zip(a, b))


def test_roth_nt_dfm_composite_matches_reference():
    cfg, M = make("roth+nt+dfm", "method.nt.noise=learned_sigma", "method.roth.gamma=0.4", "model.d_batchnorm=true")
    x, fake, d = d_setup(M)
    out = M.d_objective(x, fake, d)
    eps, mu, m = noise_of(M, d), d.mu, M_BATCH
    xr, xf = torch.cat([x, x + eps]), torch.cat([fake, fake + eps])
    pr, _ = ref_pen.gradient_penalty(M.D, xr, "js_real", reduction="none")
    pf, _ = ref_pen.gradient_penalty(M.D, xf, "js_fake", reduction="none")
    want = -ref.nt_d_value(M.D, x, fake, eps, mu) + 0.2 * ref.nt_weighted_d_loss(pr, pf, mu, m)
    P = list(M.D.parameters())
    assert_close(grads(out.d_loss, P), grads(want, P), "D")
    phi = M.D.features(xr)[:m]  # clean real rows of the {x, x + eps} batch, same batch statistics
    PR = list(M.denoiser.parameters())
    assert_close(grads(out.denoiser_loss, PR), grads(ref.dfm_denoiser_loss(M.denoiser, phi, d.dn_noise, 1.0), PR), "r")
    # G: the NT construction for the adversarial term, DFM on the clean generated rows
    fake_g = M.G(d.z)
    logits_g, phi_g = M.D.forward_features(torch.cat([fake_g, fake_g + eps]))
    adv = sum(mu * -torch.log(torch.sigmoid(logits_g[i])) + (1 - mu) * -torch.log(torch.sigmoid(logits_g[m + i]))
              for i in range(m)) / m
    target = M.denoiser(phi_g[:m]).detach()
    want_g = adv + M.lambda_dn * ((phi_g[:m] - target) ** 2).sum(1).mean()
    PG = list(M.G.parameters())
    assert_close(grads(M.g_objective(M.G(d.z), d)[0], PG), grads(want_g, PG), "G")


def test_roth_runs_the_fused_penalty_kernel():
    from fastgan import _ext
    from fastgan.ops import _dispatch

    backend = "cpu" if _ext.available()[0] else "reference"
    for penalty, extra in [("js", []), ("r1", []), ("js", ["method.name=roth+nt", "method.nt.noise=fixed"])]:
        cfg, M = make("roth", f"method.roth.penalty={penalty}", *extra)
        M.G.float(), M.D.float()
        x = torch.randn(M_BATCH, *SHAPE)
        d = M.draws(M_BATCH)
        d = Draws(**{k: (v.float() if torch.is_tensor(v) else v) for k, v in vars(d).items()})
        before = _dispatch.counts[("grad_norm_penalty", backend)]
        out = M.d_objective(x, M.G(d.z).detach(), d)
        out.d_loss.backward()
        assert _dispatch.counts[("grad_norm_penalty", backend)] > before, (penalty, extra)
        assert _dispatch.counts[("grad_norm_penalty_backward", backend)] > 0


def test_the_oracles_dfm_generator_term_leaves_the_denoisers_running_statistics():
    """r(Phi(G(z))) is a constant target: the generator term does not train r, so neither it nor the method moves r's
    BatchNorm running statistics (the reference and fastgan alike)."""
    cfg, M = make("dfm")
    M.denoiser.train()
    dg = draws(M, for_d=False)
    fake = M.G(dg.z)
    before = {k: v.clone() for k, v in M.denoiser.state_dict().items()}
    ref.dfm_g_loss(M.D, M.denoiser, fake, 0.7, M.lambda_dn)
    M.g_objective(fake, dg)
    after = M.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_oracles_r1_losses_name_an_unknown_base():
    cfg, M = make("roth")
    x, fake, _ = d_setup(M)
    with pytest.raises(ValueError, match=r"base: .*'minimax' or 'least_squares', got 'wgan_gp'"):
        ref.roth_r1_d_loss(M.D, x, fake, 1.0, base="wgan_gp")
