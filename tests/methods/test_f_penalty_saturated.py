"""Roth's general regularizer Omega_f = E_Q[f*''(T) ||grad_x T||^2] (eq. 19) for a D that couples its batch's
samples (training-mode BatchNorm), where T = g_f(psi)'s own gradient is taken, at fake logits far from zero:
float32 against float64."""
import pytest
import torch
from torch import nn

from fastgan.methods import fdiv
from fastgan.methods.roth import regularizer
from fastgan.reference import methods as ref

# f*''(T) written in v (T = g_f(v), Nowozin et al.'s Table 2): gan e^T / (1 - e^T)^2 with e^T = sigmoid(v), js
# 2 e^T / (2 - e^T)^2 with e^T = 2 sigmoid(v), reverse_kl 1 / T^2 with T = -e^-v, squared_hellinger 2 / (1 - T)^3
# with 1 - T = e^-v, kl e^(T - 1), pearson 1/2 (T = v). The table's T-forms cancel to 0 or inf past |v| ~ 37 even
# in float64.
CURVATURE = {"gan": lambda v: v.exp() * (1 + v.exp()), "js": lambda v: v.exp() * (1 + v.exp()),
             "reverse_kl": lambda v: (2 * v).exp(), "squared_hellinger": lambda v: 2 * (3 * v).exp(),
             "kl": lambda v: (v - 1).exp(), "pearson": lambda v: torch.full_like(v, 0.5)}


def _d(bias, dtype):
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    with torch.no_grad():
        D[3].bias.fill_(bias)  # every fake logit within ~2 of it
    return D.to(dtype)


def _omega64(D, x, f):
    x = x.detach().requires_grad_(True)
    v = D(x).reshape(-1)
    (g,) = torch.autograd.grad(ref.F_GAN[f][0](v).sum(), x, create_graph=True)
    return (CURVATURE[f](v) * g.pow(2).sum(1)).mean()


@pytest.mark.parametrize("f,bias", [("gan", 2), ("gan", 60), ("gan", -60), ("js", 60), ("reverse_kl", 2),
                                    ("reverse_kl", 60), ("reverse_kl", -60), ("squared_hellinger", 2),
                                    ("squared_hellinger", 38), ("squared_hellinger", -38)])
@pytest.mark.parametrize("mode", ["double_backward", "jvp"])
def test_f_penalty_of_a_batchnorm_d_at_logits_far_from_zero(f, bias, mode):
    """f*''(T) overflows float32 at |psi| ~ 44 (squared_hellinger: 30) and ||grad T||^2 at psi ~ -44: taken
    apart, Omega_f was inf or NaN where it is 0.08 (gan at +60, reverse_kl at +-60) or 1e16 (squared_hellinger at
    38); its root is taken into the gradient before squaring (fdiv.conjugate_curvature_root). gan, js and
    reverse_kl now hold to |psi| ~ 87; squared_hellinger, whose penalty's gradient with respect to grad T is
    2 f*''(T) grad T ~ e^(2 psi), to ~40. mode "jvp" (penalty_statistic) holds as far: its tangent's direction is
    normalized."""
    g = torch.Generator().manual_seed(1)
    xr, xf = torch.randn(16, 2, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)
    D64 = _d(bias, torch.float64)
    want = _omega64(D64, xf, f)
    want_grads = torch.autograd.grad(want, list(D64.parameters()))
    D = _d(bias, torch.float32)
    omega, _, lf = regularizer(D, "f", xr.float(), xf.float(), f=f, mode=mode)
    assert (lf - bias).abs().max() < 3
    got_grads = torch.autograd.grad(omega, list(D.parameters()))
    assert omega.item() == pytest.approx(want.item(), rel=2e-5)
    scale = max(t.abs().max().item() for t in want_grads)
    for name_, a, b in zip(dict(D.named_parameters()), got_grads, want_grads):
        assert (a.double() - b).abs().max().item() <= 2e-5 * scale, name_


@pytest.mark.parametrize("f", fdiv.DIVERGENCES)
def test_conjugate_curvature_root(f):
    """Its square is f*''(g_f(v)), its gradient the square root's (gradcheck, through v = 0 where gan's and js's two
    branches meet), and it is finite in float32 wherever its product with ||grad T|| is."""
    v = torch.linspace(-30, 30, 61, dtype=torch.float64)
    torch.testing.assert_close(fdiv.conjugate_curvature_root(f, v) ** 2, CURVATURE[f](v), rtol=1e-13, atol=0)
    torch.autograd.gradcheck(lambda t: fdiv.conjugate_curvature_root(f, t),
                             torch.tensor([-3.0, -1e-3, 0.0, 1e-3, 2.0], dtype=torch.float64, requires_grad=True))
    far = {"squared_hellinger": 55.0}.get(f, 85.0)
    assert fdiv.conjugate_curvature_root(f, torch.tensor([-far, far])).isfinite().all()


@pytest.mark.parametrize("f,bias", [("gan", 12), ("reverse_kl", 12), ("squared_hellinger", 8)])
@pytest.mark.parametrize("mode", ["double_backward", "jvp"])
def test_f_penalty_of_a_float16_batchnorm_d(f, bias, mode):
    """The root and its product with grad T in float32, as grad_norm_penalty accumulates a half D's penalty: in
    float16 the root overflowed at psi ~ 11 (gan, reverse_kl; squared_hellinger ~ 7) and Omega_f read NaN or inf
    where it is 0.08 or 525 (a review)."""
    g = torch.Generator().manual_seed(1)
    xr, xf = torch.randn(16, 2, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)
    want = _omega64(_d(bias, torch.float64), xf, f)
    omega, _, _ = regularizer(_d(bias, torch.float16), "f", xr.half(), xf.half(), f=f, mode=mode)
    assert omega.item() == pytest.approx(want.item(), rel=0.01)  # float16's logits: ~1e-2 relative at |psi| ~ 12
