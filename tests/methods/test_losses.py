"""Each loss and regularizer against a small hand-computed example (values worked out in the comments)."""
import math

import pytest
import torch

from fastgan.methods import fdiv, losses
from fastgan.methods.roth import GammaSchedule
from fastgan.reference import methods as ref
from fastgan.reference import penalty as penalty_ref

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_minimax_d_loss_hand_values():
    # D(x) = sigmoid(2), D(G(z)) = sigmoid(-1): -log sigmoid(2) - log(1 - sigmoid(-1)) = log(1+e^-2) + log(1+e^-1)
    tr, tf = losses.d_terms("minimax", T(2.0), T(-1.0))
    assert tr.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-12)
    assert tf.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-12)
    # at logits 0 both terms are log 2: the loss of a discriminator that cannot tell (Goodfellow, -log 4)
    tr, tf = losses.d_terms("minimax", T(0.0), T(0.0))
    assert (tr + tf).item() == pytest.approx(math.log(4), abs=1e-12)


def test_generator_losses_hand_values():
    # saturating: log(1 - sigmoid(-1)) = -log(1 + e^-1); non-saturating: -log sigmoid(-1) = log(1 + e)
    assert losses.g_terms("minimax", "saturating", T(-1.0)).item() == pytest.approx(-math.log(1 + math.exp(-1)))
    assert losses.g_terms("minimax", "nonsaturating", T(-1.0)).item() == pytest.approx(math.log(1 + math.e))
    # least squares: (2 - 1)^2 / 2; WGAN: -psi
    assert losses.g_terms("least_squares", "nonsaturating", T(2.0)).item() == pytest.approx(0.5)
    assert losses.g_terms("wgan_gp", "nonsaturating", T(2.5)).item() == pytest.approx(-2.5)


def test_least_squares_and_wgan_d_terms():
    tr, tf = losses.d_terms("least_squares", T(3.0), T(2.0))
    assert (tr.item(), tf.item()) == (pytest.approx(2.0), pytest.approx(2.0))  # (3-1)^2/2, 2^2/2
    tr, tf = losses.d_terms("wgan_gp", T(3.0), T(2.0))
    assert (tr.item(), tf.item()) == (pytest.approx(-3.0), pytest.approx(2.0))


def test_softplus_form_is_finite_where_the_naive_form_is_not():
    v = torch.tensor([-200.0, 200.0])  # float32
    tr, tf = losses.d_terms("minimax", v, -v)
    assert torch.isfinite(tr).all() and torch.isfinite(tf).all()
    assert tr[0].item() == pytest.approx(200.0) and tf[1].item() == pytest.approx(0.0, abs=1e-30)
    assert not torch.isfinite(-torch.log(torch.sigmoid(v[:1]))).all()  # what the softplus form avoids
    g = losses.g_terms("minimax", "nonsaturating", v)
    assert torch.isfinite(g).all() and g[0].item() == pytest.approx(200.0)


def test_weighted_reduce():
    t = T(1.0, 2.0, 3.0, 4.0)
    assert losses.reduce(t).item() == pytest.approx(2.5)
    w = T(0.1, 0.1, 0.4, 0.4)
    assert losses.reduce(t, w).item() == pytest.approx(0.1 + 0.2 + 1.2 + 1.6)


class Linear(torch.nn.Module):
    """psi(x) = a . x: the input gradient is a everywhere."""

    def __init__(self, a):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, x):
        return x @ self.a


def test_wgan_gp_hand_value():
    D = Linear([3.0, 4.0])  # ||grad|| = 5 everywhere: (5 - 1)^2 = 16 per sample
    x = torch.randn(4, 2, dtype=torch.float64)
    gp = losses.gp_per_sample(D, x, -x, torch.rand(4, dtype=torch.float64))
    assert torch.allclose(gp, torch.full((4,), 16.0, dtype=torch.float64))


def test_roth_js_hand_value():
    from fastgan.methods.roth import regularizer

    # At x = 0, psi = 0 and sigmoid = 1/2, so Omega = 1/4 ||a||^2 (real) + 1/4 ||a||^2 (fake) = 12.5 for a = (3, 4)
    D = Linear([3.0, 4.0])
    x = torch.zeros(3, 2, dtype=torch.float64)
    omega, lr, lf = regularizer(D, "js", x, x)
    assert omega.item() == pytest.approx(12.5)
    assert torch.equal(lr, torch.zeros(3, dtype=torch.float64))
    # per-sample weights give the weighted expectations: half the weight on the real side halves its term
    w = torch.full((3,), 1 / 6, dtype=torch.float64)
    omega_w, _, _ = regularizer(D, "js", x, x, w, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert omega_w.item() == pytest.approx(6.25 / 2 + 6.25)
    # R1 / R2: ||a||^2 = 25
    assert regularizer(D, "r1", x, x)[0].item() == pytest.approx(25.0)
    assert regularizer(D, "r2", x, x)[0].item() == pytest.approx(25.0)


@pytest.mark.parametrize("f", fdiv.DIVERGENCES)
def test_fgan_stable_forms_match_the_table(f):
    v = torch.linspace(-3, 3, 13, dtype=torch.float64)
    g, fstar = ref.F_GAN[f]
    assert torch.allclose(fdiv.activation(f, v), g(v), atol=1e-12)
    assert torch.allclose(fdiv.conjugate_of_activation(f, v), fstar(g(v)), atol=1e-10)


@pytest.mark.parametrize("f", fdiv.DIVERGENCES)
def test_f_penalty_weight_is_conjugate_curvature_times_activation_slope(f):
    # w(v) = f*''(g_f(v)) g_f'(v)^2, derived by hand in fdiv.py; checked here by autograd of the table.
    g, fstar = ref.F_GAN[f]
    v = torch.linspace(-2, 2, 9, dtype=torch.float64, requires_grad=True)
    t = g(v)
    (dg,) = torch.autograd.grad(t.sum(), v, create_graph=True)
    (d1,) = torch.autograd.grad(fstar(t).sum(), t, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), t)
    weight, scale = fdiv.penalty_weight(f)
    # a named weight of the fused op (so no f-GAN penalty runs on the reference backend), valued by the reference
    w = scale * penalty_ref.WEIGHT_FNS[weight](v.detach())
    assert torch.allclose(w, (d2 * dg ** 2).detach(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("f", fdiv.DIVERGENCES)
def test_conjugate_curvature_and_the_linear_activations(f):
    """f*''(g_f(v)), the weight of ||grad T||^2 where T's own gradient is taken (a batch-coupled D), as the square
    of fdiv.conjugate_curvature_root, by autograd of the table; and fdiv.LINEAR lists exactly the divergences whose
    g_f is the identity (where the per-sample rewrite holds for any D)."""
    g, fstar = ref.F_GAN[f]
    v = torch.linspace(-2, 2, 9, dtype=torch.float64)
    t = g(v).requires_grad_(True)
    (d1,) = torch.autograd.grad(fstar(t).sum(), t, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), t)
    assert torch.allclose(fdiv.conjugate_curvature_root(f, v) ** 2, d2, rtol=1e-9, atol=1e-12)
    assert (f in fdiv.LINEAR) == torch.equal(fdiv.activation(f, v), v)


def test_f_penalty_refuses_the_closed_form_where_batchnorm_couples_the_samples():
    from fastgan.methods.roth import regularizer

    mode = "mlp"
    D = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU(),
                            torch.nn.Linear(3, 1)).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"method.roth.mode: 'mlp' .*gradient of T = g_f\(psi\).*use 'jvp'"):
        regularizer(D, "f", x, x, f="gan", mode=mode)
    # g_f(v) = v: T's gradient is psi's, and the modes run; in eval mode the samples are independent again
    regularizer(D, "f", x, x, f="kl", mode=mode)
    regularizer(D.eval(), "f", x, x, f="gan", mode=mode)


@pytest.mark.parametrize("loss,f", [("minimax", "gan"), ("least_squares", "gan"),
                                    *[("fgan", f) for f in fdiv.DIVERGENCES]])
def test_decision_threshold_is_where_the_optimal_d_meets_p_equal_q(loss, f):
    """Where p = q the optimal D's logit minimises the real and the fake term at one point: the loss's terms are
    flat there and rise on both sides (cross-testing calls a sample real above it)."""
    t = losses.decision_threshold(loss, f)
    v = torch.tensor([t - 0.1, t, t + 0.1], dtype=torch.float64, requires_grad=True)
    real, fake = losses.d_terms(loss, v, v, f)
    (g,) = torch.autograd.grad((real + fake).sum(), v)
    assert g[0] < 0 and abs(g[1]) < 1e-12 and g[2] > 0


def test_a_wgan_critic_has_no_decision_threshold():
    assert losses.decision_threshold("wgan_gp") is None
    with pytest.raises(ValueError, match="method.f_divergence"):
        losses.decision_threshold("fgan", "hellinger")


def test_fgan_gan_divergence_is_the_minimax_loss():
    v_r, v_f = T(0.3, -1.2), T(2.0, -0.5)
    a = losses.d_terms("fgan", v_r, v_f, "gan")
    b = losses.d_terms("minimax", v_r, v_f)
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert torch.allclose(losses.g_terms("fgan", "nonsaturating", v_f, "gan"),
                          losses.g_terms("minimax", "nonsaturating", v_f))


def test_gamma_annealing_schedule_values():
    # Roth Algorithm 1: gamma = gamma0 * alpha^(t/T); gamma0 = 2, alpha = 0.01, T = 100
    s = GammaSchedule("anneal", 0.1, 2.0, 0.01, 100)
    expect = {0: 2.0, 1: 2.0 * 0.01 ** 0.01, 50: 0.2, 100: 0.02, 150: 0.02}
    for t, want in expect.items():
        assert s.update(t).item() == pytest.approx(want, rel=1e-6), t
        assert s.update(t).item() == pytest.approx(ref.gamma_schedule(min(t, 100), 2.0, 0.01, 100), rel=1e-6)
    before = s.value
    s.update(torch.tensor(25))  # a device-tensor step works and updates the same tensor in place
    assert s.value is before and s.value.item() == pytest.approx(2.0 * 0.01 ** 0.25, rel=1e-6)
    fixed = GammaSchedule("fixed", 0.1, 2.0, 0.01, 100)
    assert fixed.update(77).item() == pytest.approx(0.1)


def _ops_run(fn):
    from fastgan.graph_check import _Recorder  # graph_check's own op recorder

    with _Recorder() as rec:
        fn()
    return [name for name, _, _ in rec.ops]


def test_annealed_schedules_write_a_host_step_by_one_fill():
    # Before: torch.as_tensor(t, device=...) then exp and copy_: on a GPU a host-to-device copy, which torch
    # ends by synchronizing the stream, every step of an annealed run (graphed runs included). A fill takes the
    # value as a kernel argument. The tensor form (t already on the device) keeps the device arithmetic.
    from fastgan.methods.nt import FixedNoise

    s = GammaSchedule("anneal", 0.1, 2.0, 0.01, 100)
    assert _ops_run(lambda: s.update(37)) == ["aten::fill_.Scalar"]
    by_fill = s.value.item()
    s.update(torch.tensor(37))
    assert by_fill == pytest.approx(s.value.item(), rel=1e-7) == pytest.approx(2.0 * 0.01 ** 0.37, rel=1e-7)
    n = FixedNoise(1.5, "linear", total=10)
    assert _ops_run(lambda: n.update(3)) == ["aten::fill_.Scalar"]
    assert n.sigma.item() == pytest.approx(1.05, rel=1e-7)
    n.update(torch.tensor(3))
    assert n.sigma.item() == pytest.approx(1.05, rel=1e-7)


def test_fixed_noise_linear_annealing():
    from fastgan.methods.nt import FixedNoise

    n = FixedNoise(1.5, "linear", total=10)
    n.update(0)
    assert n.sigma.item() == pytest.approx(1.5)
    n.update(4)
    assert n.sigma.item() == pytest.approx(1.5 * 0.6)
    n.update(10)
    assert n.sigma.item() == 0.0
    n.update(12)
    assert n.sigma.item() == 0.0


# its Linear test module).


def test_reference_nt_half_batch_of_an_odd_batch():
    # NTGAN section 2.3, "half": m = 3, h = 1 clean sample and 2 noisy ones (same eps for real and fake), each
    # part averaged: L_r = mu log s(psi(x_1)) + (1 - mu) (log s(psi(x_2 + e_1)) + log s(psi(x_3 + e_2))) / 2
    D = Linear([1.0])  # psi(x) = x
    x_real, x_fake = T(0.5, 1.0, -1.0)[:, None], T(-0.5, 2.0, 0.0)[:, None]
    eps = T(0.5, 1.0)[:, None]  # noisy real 1.5, 0.0; noisy fake 2.5, 1.0
    mu = 0.25
    ls = lambda v: -math.log1p(math.exp(-v))  # noqa: E731  log sigmoid(v)
    l1s = lambda v: -math.log1p(math.exp(v))  # noqa: E731  log(1 - sigmoid(v))
    want = (mu * ls(0.5) + (1 - mu) * (ls(1.5) + ls(0.0)) / 2
            + mu * l1s(-0.5) + (1 - mu) * (l1s(2.5) + l1s(1.0)) / 2)
    got = ref.nt_d_value(D, x_real, x_fake, eps, torch.tensor(mu, dtype=torch.float64), batch="half")
    assert got.item() == pytest.approx(want, rel=1e-12)
    # the generator's step (non-saturating): mu (-log s(psi(x~_1))) + (1 - mu) (mean of -log s on the noisy two)
    want_g = -(mu * ls(-0.5) + (1 - mu) * (ls(2.5) + ls(1.0)) / 2)
    got_g = ref.nt_g_loss(D, x_fake, eps, torch.tensor(mu, dtype=torch.float64), batch="half")
    assert got_g.item() == pytest.approx(want_g, rel=1e-12)


def test_dfm_denoiser_loss_corrupts_with_sigma_times_the_noise():
    # Eq. 5 with C(h) = h + sigma n: for r the identity, Phi - r(Phi + sigma n) = -sigma n, so the loss is
    # sigma^2 mean_i ||n_i||^2 = 0.25 * (9 + 25 + 1 + 0) / 4 for sigma = 0.5
    from fastgan.methods import dfm

    phi = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    want = 0.25 * 35 / 4
    assert dfm.denoiser_loss(torch.nn.Identity(), phi, n, 0.5).item() == pytest.approx(want, rel=1e-12)
    assert ref.dfm_denoiser_loss(torch.nn.Identity(), phi, n, 0.5).item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_dfm_generator_term_holds_the_target_constant(training):
    # Eq. 4 with r(Phi(G(z))) "treated as constant with respect to gradient computations": the term's gradient is
    # 2 (Phi - r(Phi)) / B into Phi alone, and none reaches r's parameters (the Method restricts its backward to G's
    # parameters, so only the unit shows a gradient leaking into r)
    import copy

    from fastgan.methods import dfm

    torch.manual_seed(0)
    r = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                            torch.nn.Linear(4, 3)).double().train(training)
    phi = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        target = copy.deepcopy(r)(phi)
    dfm.generator_term(r, phi).backward()
    assert all(p.grad is None for p in r.parameters())
    torch.testing.assert_close(phi.grad, 2 * (phi.detach() - target) / 5, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["double_backward", "auto", "jvp", "mlp"])
def test_roth_f_penalty_pearson_hand_value(mode):
    from fastgan.methods.roth import regularizer

    # Pearson chi^2: T = v, f*(t) = t^2 / 4 + t, f*'' = 1/2, so Omega_f = E_Q[1/2 ||grad psi||^2] = 12.5 for
    # psi = a . x with a = (3, 4), in every penalty mode
    D = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False)).double()  # "mlp" runs on an nn.Sequential
    with torch.no_grad():
        D[0].weight.copy_(T(3.0, 4.0)[None])
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    omega, _, _ = regularizer(D, "f", x, x, f="pearson", mode=mode)
    assert omega.item() == pytest.approx(12.5, rel=1e-12)


@pytest.mark.parametrize("f, want", [("pearson", 12.5), ("reverse_kl", 25.0)])
def test_the_oracles_f_penalty_hand_values(f, want):
    # Eq. 19 on psi = a . x, a = (3, 4): Pearson, T = psi, f*'' = 1/2: 25 / 2; reverse KL, T = -e^-psi, f*(t) =
    # -1 - log(-t), f*''(T) = 1/T^2 = e^(2 psi) and ||grad T||^2 = e^(-2 psi) 25: 25 at every x (the oracle takes
    # f*'' by differentiating f* twice and T's own gradient: a first derivative, or psi's gradient, reads otherwise)
    from fastgan.methods.roth import regularizer

    D = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        D[0].weight.copy_(T(3.0, 4.0)[None])
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    assert ref.roth_f_penalty(D, x, f).item() == pytest.approx(want, rel=1e-12)
    assert regularizer(D, "f", x, x, f=f)[0].item() == pytest.approx(want, rel=1e-12)
