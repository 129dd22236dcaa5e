"""The penalty ops at the edges of float range, against fastgan.reference and float64:
- an infinite logit: jvp's value was nan (its zero-valued surrogate term was s - s.detach() with s = inf);
- input gradients whose squares overflow float32: the CPU kernel's float lanes for contiguous rows made the result
  depend on F and the layout, and a weight whose slope is 0 ("one", or saturated) gave 0 * inf = nan logit
  gradients where the reference has none."""
import math

import pytest
import torch
from torch import nn

from fastgan.ops import grad_norm_penalty, js_penalty, r1_penalty
from fastgan.ops import penalty as P
from fastgan.ops.penalty_jvp import penalty_terms
from fastgan.reference import penalty as ref

from helpers import assert_close_to_oracle

BACKENDS = ["reference", "cpu", "triton", "cuda"]  # "cuda": the emulated kernels (the shared header's nan guard)


@pytest.mark.parametrize("mode", ["double_backward", "jvp", "mlp", "auto"])
@pytest.mark.parametrize("inf", [float("inf"), float("-inf")])
def test_infinite_logits_keep_the_penalty_finite_in_every_mode(mode, inf):
    """A diverged D (its output bias +-inf): every logit is infinite, the input gradients finite, the JS weights
    saturated at 0 and 1."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)).double()
    with torch.no_grad():
        D[2].bias.fill_(inf)
    xr, xf = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    pen, _, _ = js_penalty(D, xr, xf, mode=mode)
    want, _, _ = ref.js_penalty(D, xr, xf)
    assert torch.isfinite(want)
    torch.testing.assert_close(pen, want)
    params = [D[0].weight, D[0].bias, D[2].weight]
    for a, b in zip(torch.autograd.grad(pen, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(r1_penalty(D, xr, mode=mode)[0], ref.r1_penalty(D, xr)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("F", [1, 3, 4, 255, 256, 600])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_overflowing_squares_do_not_depend_on_the_layout(backend, F, layout):
    """|g| = 3e19: each square (9e38) overflows float32 but the float64 sum of a row, times a weight of ~4e-77 (a
    logit of 88), is finite. The CPU kernel sums in double (its short float32 rows, F <= 4, square in double too:
    1e19's squares fit in float32 one by one and could not tell); the others (float32 accumulation, as torch's) give
    inf for every F and layout, the same answer for every layout."""
    g64 = torch.full((3, F), 3e19, dtype=torch.float64)
    psi = torch.full((3,), 88.0)
    g = g64.float() if layout == "contiguous" else g64.float().t().contiguous().t()
    got = grad_norm_penalty(g, psi, "js_real", reduction="none", backend=backend)
    dense = grad_norm_penalty(g64.float(), psi, "js_real", reduction="none", backend=backend)
    torch.testing.assert_close(got, dense, equal_nan=True)
    if backend == "cpu":  # (1 - sigmoid(88))^2 = sigmoid(-88)^2 (1 - sigmoid rounds to 0 even in float64)
        want = torch.sigmoid(-psi.double()) ** 2 * (g64 * g64).sum(1)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("F", [4, 256])
def test_the_weight_one_gives_zero_logit_gradients_where_the_norm_overflows(backend, F):
    """The weight "one" does not depend on the logits (the reference's logit gradient is zero): ||g||^2 = inf in a
    float32 accumulation must not make it 0 * inf = nan."""
    g = torch.full((3, F), 1e30)
    psi = torch.zeros(3, requires_grad=True)
    pen = grad_norm_penalty(g, psi, "one", backend=backend)
    (dpsi,) = torch.autograd.grad(pen, psi)
    assert torch.equal(dpsi, torch.zeros(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_order_logit_gradient_of_a_zero_slope_weight_with_overflowing_squares_is_zero(backend):
    """Weight "one" (slope 0) and |g| = 1e18: ||g||^2 and <G, g> overflow float32; the penalty does not depend on the
    logits, so the second-order logit gradient is 0, as the reference's, not 0 * inf = nan (the first-order case
    above was guarded, the double backward's terms were not)."""
    g = torch.full((2, 4097), 1e18, requires_grad=True)
    psi = torch.zeros(2, requires_grad=True)
    pen = grad_norm_penalty(g, psi, "one", "sum", backend=backend)
    dg, = torch.autograd.grad(pen, g, create_graph=True)
    d2, = torch.autograd.grad(dg.sum(), psi, allow_unused=True, materialize_grads=True)
    assert torch.equal(d2, torch.zeros(2))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_a_row_of_millions_of_features_within_twice_the_references_error(backend):
    """One row of a 1024 x 1024 RGB input's gradient (F = 3 * 2**20): Triton added the row's 3072 chunk sums in
    float32, 6 ulp off (past the bound); in float64 the value and the logit gradient hold the 2x rule."""
    g = torch.randn(1, 3 * 2 ** 20, generator=torch.Generator().manual_seed(0))
    psi = torch.full((1,), 0.3)

    def value_and_slope(fn, g, psi):
        psi = psi.clone().requires_grad_(True)
        out = fn(g, psi)
        return out.detach(), torch.autograd.grad(out.sum(), psi)[0]

    got = value_and_slope(lambda g, p: grad_norm_penalty(g, p, "js_real", "none", backend=backend), g, psi)
    low = value_and_slope(lambda g, p: ref.grad_norm_penalty(g, p, "js_real", "none"), g, psi)
    truth = value_and_slope(lambda g, p: ref.grad_norm_penalty(g, p, "js_real", "none"), g.double(), psi.double())
    for name, a, b, c in zip(("value", "logit gradient"), got, low, truth):
        assert_close_to_oracle(a, b, c, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,g,psi", [(torch.float64, 1e200, 800.0), (torch.float64, 1e200, float("inf"))])
@pytest.mark.parametrize("weight", ["js_real", "js_fake", "sigmoid"])
def test_a_weight_saturated_at_one_has_slope_zero_where_norms_overflow(backend, dtype, g, psi, weight):
    """js_real at psi -> -inf and js_fake and sigmoid at +inf (past where exp(-|psi|) rounds to 0 in double): the
    weight is 1 and does not move. The cpu kernel held exp(-|psi|) at exp(-708), so the slope was ~1e-307, not 0, and
    times an overflowed ||g||^2 the logit gradient was +-inf where the reference's is 0."""
    psi_t = torch.full((2,), -psi if weight == "js_real" else psi, dtype=dtype, requires_grad=True)
    pen = grad_norm_penalty(torch.full((2, 3), g, dtype=dtype), psi_t, weight, backend=backend)
    (d,) = torch.autograd.grad(pen, psi_t)
    assert torch.equal(d, torch.zeros_like(d))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight,psi", [("exp", 88.5), ("exp", 88.7), ("kl", 89.5)])
def test_an_exponential_weight_near_float32s_top_keeps_finite_gradients(backend, weight, psi):
    """e^psi past 1.7e38: the backward's 2 w overflowed before the mean's 1 / B brought dgrad back in range (inf
    where the float64 oracle's is ~1e35; cpu, working in double, was finite), in the backward and in the terms."""
    g = torch.tensor([[0.01, -0.01, 0.005]] * 64)
    psi_t = torch.full((64,), psi)
    gg, pp = g.clone().requires_grad_(True), psi_t.clone().requires_grad_(True)
    got = grad_norm_penalty(gg, pp, weight, "mean", backend=backend)
    dg, dl = torch.autograd.grad(got, (gg, pp))
    g64, p64 = g.double().requires_grad_(True), psi_t.double().requires_grad_(True)
    want = ref.grad_norm_penalty(g64, p64, weight, "mean")
    dg64, dl64 = torch.autograd.grad(want, (g64, p64))
    for name, a, b in (("value", got, want), ("dgrad", dg, dg64), ("dlogits", dl, dl64)):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=0, msg=name)
    per, u, v = P.terms(g, psi_t, P.WEIGHTS[weight], P.WEIGHTS[weight], 64, 64, backend)
    torch.testing.assert_close(v.double(), dg64, rtol=1e-5, atol=0)
    # jvp's terms of NT's mu-weighted rows (a callable on the reference backend)
    per, u, v = penalty_terms(g, psi_t, P.SampleWeighted(weight, torch.ones(64)), 64, backend)
    torch.testing.assert_close(v.double(), dg64, rtol=1e-5, atol=0)
    # the second order (the op's backward's own backward, shared by every backend): d(dgrad . t)/dpsi
    gg, pp = g.clone().requires_grad_(True), psi_t.clone().requires_grad_(True)
    (dg2,) = torch.autograd.grad(grad_norm_penalty(gg, pp, weight, "mean", backend=backend), gg, create_graph=True)
    t = torch.linspace(-1, 1, 3)
    (d2,) = torch.autograd.grad((dg2 * t).sum(), pp)
    g64, p64 = g.double().requires_grad_(True), psi_t.double().requires_grad_(True)
    (dg2_64,) = torch.autograd.grad(ref.grad_norm_penalty(g64, p64, weight, "mean"), g64, create_graph=True)
    (d2_64,) = torch.autograd.grad((dg2_64 * t.double()).sum(), p64)
    assert torch.isfinite(d2).all()
    torch.testing.assert_close(d2.double(), d2_64, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])  # the reference backend's torch.sigmoid gives 0
# where the weight or its slope is subnormal (js_fake's at psi < -708 and js_real's at psi > 708 are 0 in double)
@pytest.mark.parametrize("weight,psi", [("sigmoid", -710.0), ("sigmoid", -740.0), ("sigmoid", 712.0),
                                        ("js_real", -710.0), ("js_real", -740.0), ("js_fake", 712.0)])
def test_far_logits_sigmoids_are_their_subnormal_values(backend, weight, psi):
    """float64 logits past |psi| = 708, where a sigmoid or its slope is subnormal: the cpu kernel's polynomial exp
    is held at exp(-708) there, which made sigmoid(-710)'s weight 3.3e-308 (1e-8 times ||g||^2 = 2.25e300, not
    7.4e-8). The truth from the exact exp (math.exp: torch.sigmoid rounds a subnormal result to 0)."""
    g = torch.full((1, 3), 1.5e150 / math.sqrt(3), dtype=torch.float64)
    s2 = (g * g).sum().item()
    e = math.exp(-abs(psi))  # subnormal
    small, big = e / (1 + e), 1 / (1 + e)  # sigmoid(-|psi|), sigmoid(|psi|)
    s, q = (small, big) if psi < 0 else (big, small)
    w, dw = {"sigmoid": (s, s * q), "js_real": (q * q, -2 * s * q * q), "js_fake": (s * s, 2 * s * s * q)}[weight]
    assert 0 < abs(dw) < 2.3e-308  # a subnormal slope: the held exp gave ~3e-308
    p = torch.full((1,), psi, dtype=torch.float64, requires_grad=True)
    got = grad_norm_penalty(g, p, weight, "sum", backend=backend)
    (dl,) = torch.autograd.grad(got, p)
    # against products of subnormals: their few significant bits bound the agreement
    torch.testing.assert_close(got.item(), w * s2, rtol=1e-6, atol=0)
    torch.testing.assert_close(dl.item(), dw * s2, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight,psi,reduction", [("exp", 80.0, "mean"), ("kl", 81.0, "mean"), ("exp", 80.0, "sum")])
def test_a_penalty_past_float32s_top_keeps_its_logit_gradient_finite(backend, weight, psi, reduction):
    """w ||g||^2 = e^80 * 1e4 overflows (the value is inf on every backend), while its logit gradient through a
    mean (or a sum's upstream below 1) is back in range: formed as dw (||g||^2 go), as torch's autograd of the
    formula does, not (dw ||g||^2) go, which was inf on the Triton and CUDA kernels (a fuzzer's finding)."""
    g = torch.full((4, 100), 10.0)
    pp = torch.full((4,), psi, requires_grad=True)
    go = torch.tensor(0.25) if reduction == "sum" else None
    got = grad_norm_penalty(g, pp, weight, reduction, backend=backend)
    assert torch.isinf(got)
    (dl,) = torch.autograd.grad(got, pp, grad_outputs=go)
    p64 = pp.detach().double().requires_grad_(True)
    (dl64,) = torch.autograd.grad(ref.grad_norm_penalty(g.double(), p64, weight, reduction), p64,
                                  grad_outputs=None if go is None else go.double())
    assert dl64.abs().max() < torch.finfo(torch.float32).max
    torch.testing.assert_close(dl.double(), dl64, rtol=1e-5, atol=0)
    if reduction == "mean":  # the closed forms' and jvp's terms: u = dw ||g||^2 / B
        per, u, v = P.terms(g, pp.detach(), P.WEIGHTS[weight], P.WEIGHTS[weight], 4, 4, backend)
        torch.testing.assert_close(u.double(), dl64, rtol=1e-5, atol=0)
