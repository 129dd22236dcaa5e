"""gradient_penalty / js_penalty / r1_penalty / r2_penalty with mode="jvp" | "mlp" | "auto" against the
straightforward double backward of fastgan.reference.penalty (the oracle): penalty value, logits, D's parameter
gradients of (loss_D + gamma/2 * penalty) in one backward, and D's buffers after the call."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.ops import FallbackWarning, _dispatch
from fastgan.ops import gradient_penalty, js_penalty, penalty_mode, r1_penalty, r2_penalty
from fastgan.ops import mlp_penalty, penalty_jvp
from fastgan.reference import penalty as ref

from helpers import auto_as_on_cuda  # tests/ on sys.path
from penalty_zoo import DS, IMG, MLPS, VEC, DropoutConvD, NormZoo, WithSequential, mlp_leaky  # tests/ on sys.path


GAMMA = 2.0
MODE_OP = "gradient_penalty"


# ------------------------------------------------------------------ comparison helpers

def _make(name, dtype, seed=0):
    factory, make_x, _ = DS[name]
    torch.manual_seed(seed)
    D = factory().to(dtype)
    return D, make_x(6).to(dtype), make_x(6).to(dtype) * 0.5 + 0.3


def _d_loss(lr, lf):
    return F.softplus(-lr).mean() + F.softplus(lf).mean()


def _run_js(D, xr, xf, mode, seed=123):
    torch.manual_seed(seed)
    if mode == "reference":
        pen, lr, lf = ref.js_penalty(D, xr, xf)
    else:
        pen, lr, lf = js_penalty(D, xr, xf, mode=mode)
    (_d_loss(lr, lf) + GAMMA / 2 * pen).backward()
    return pen.detach(), lr.detach(), lf.detach()


def _assert_grads_close(D_got, D_want, rtol):
    """Each parameter's gradient within rtol of the oracle's, plus a floor for gradients that are 0 but for
    rounding (a Linear's bias before training-mode BatchNorm, which subtracts it again): rtol * 1e-3 of the whole
    gradient's norm, and at least 4 units of rounding of it in the gradients' dtype. Without the second, float32
    read 8-10e-6 against a floor of 7.3e-6 there (mlp_bn_train's 0.bias, the exact gradient 0, both sides rounding
    noise; ATen, MKL and oneDNN held to SSE4.2: see docs/testing.md, "Another CPU's rounding")."""
    want = [p.grad for p in D_want.parameters()]
    got = [p.grad for p in D_got.parameters()]
    total = torch.cat([w.reshape(-1) for w in want if w is not None]).norm()
    assert total > 0, "the oracle's gradient is zero: the comparison would prove nothing"
    floor = max(rtol * 1e-3, 4 * torch.finfo(total.dtype).eps) * total
    for (name, _), g, w in zip(D_want.named_parameters(), got, want):
        assert (g is None) == (w is None), name
        if w is None:
            continue
        err = (g - w).norm()
        assert err <= rtol * w.norm() + floor, f"{name}: |diff| {err:.3e}, |want| {w.norm():.3e}"


def _assert_buffers_equal(D_got, D_want):
    for (name, b), c in zip(D_want.named_buffers(), D_got.buffers()):
        assert torch.equal(b, c), f"buffer {name} differs after one call"


RTOL = {torch.float64: 1e-9, torch.float32: 2e-4}


def _check_mode_against_reference(name, mode, dtype):
    D, xr, xf = _make(name, dtype)
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    pen_r, lr_r, lf_r = _run_js(D_ref, xr, xf, "reference")
    expected_mode = DS[name][2] if mode == "auto" else mode
    before = _dispatch.counts[(MODE_OP, expected_mode)]
    pen, lr, lf = _run_js(D_new, xr, xf, mode)
    assert _dispatch.counts[(MODE_OP, expected_mode)] == before + 2, f"{expected_mode} did not run twice"
    tol = RTOL[dtype]
    torch.testing.assert_close(pen, pen_r.to(pen.dtype), rtol=tol, atol=0)
    torch.testing.assert_close(lr, lr_r, rtol=tol, atol=tol)
    torch.testing.assert_close(lf, lf_r, rtol=tol, atol=tol)
    _assert_grads_close(D_new, D_ref, tol)
    _assert_buffers_equal(D_new, D_ref)


# ------------------------------------------------------------------ every mode on every D, float64 and float32

@pytest.mark.parametrize("name", list(DS))
@pytest.mark.parametrize("mode", ["jvp", "auto"])
def test_js_penalty_mode_matches_double_backward_f64(mode, name, auto_jvp_on_cpu):
    _check_mode_against_reference(name, mode, torch.float64)


@pytest.mark.parametrize("name", list(DS))
def test_js_penalty_auto_matches_double_backward_f32(name, auto_jvp_on_cpu):
    _check_mode_against_reference(name, "auto", torch.float32)


@pytest.mark.parametrize("name,passes", [("mlp_leaky", 1), ("mlp_bn_eval", 1), ("mlp_spectral", 2),
                                         ("mlp_bn_train", 2), ("conv_leaky", 1), ("conv_bn_eval_conv_head", 1),
                                         ("conv_spectral", 2), ("conv_bn_train", 2)])
def test_js_penalty_mlp_runs_real_and_fake_in_one_pass(monkeypatch, name, passes):
    """Both batches (of different sizes) in one closed-form pass, equal to the double backward; a spectral-norm
    D keeps two passes, since its power iteration steps once per forward, as in the reference, and so does
    BatchNorm with batch statistics (each batch is normalized with its own)."""
    monkeypatch.setattr(penalty_jvp, "JOINT_MLP_DEVICES", {"cuda", "cpu"})  # on CPU by default up to 1024 rows
    runs = []
    real_run = mlp_penalty._run
    monkeypatch.setattr(mlp_penalty, "_run", lambda *a: runs.append(a[1].shape[0]) or real_run(*a))
    factory, make_x, _ = DS[name]
    torch.manual_seed(3)
    D = factory().double()
    xr, xf = make_x(5).double(), make_x(9).double() * 0.5 + 0.3
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    pen_r, lr_r, lf_r = _run_js(D_ref, xr, xf, "reference")
    pen, lr, lf = _run_js(D_new, xr, xf, "mlp")
    assert runs == ([14] if passes == 1 else [5, 9])
    assert lr.shape == (5,) and lf.shape == (9,)
    torch.testing.assert_close(pen, pen_r, rtol=1e-9, atol=0)
    torch.testing.assert_close(lr, lr_r, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lf, lf_r, rtol=1e-9, atol=1e-9)
    _assert_grads_close(D_new, D_ref, 1e-9)
    _assert_buffers_equal(D_new, D_ref)


@pytest.mark.parametrize("rows,passes", [((512, 512), 1), ((513, 512), 2), ((3, 1021), 1), ((1, 1024), 2)])
def test_cpu_joint_pass_up_to_its_row_limit(monkeypatch, rows, passes):
    """By default CPU runs both batches in one pass up to JOINT_MLP_MAX_ROWS["cpu"] = 1024 rows, two beyond."""
    assert penalty_jvp.JOINT_MLP_MAX_ROWS == {"cpu": 1024} and penalty_jvp.JOINT_MLP_DEVICES == {"cuda"}
    assert penalty_jvp.joint_pass("cuda", 10 ** 6) and not penalty_jvp.joint_pass("mps", 2)
    runs = []
    real_run = mlp_penalty._run
    monkeypatch.setattr(mlp_penalty, "_run", lambda *a: runs.append(a[1].shape[0]) or real_run(*a))
    D = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    pen, lr, lf = js_penalty(D, torch.randn(rows[0], 3), torch.randn(rows[1], 3), mode="mlp")
    assert runs == ([sum(rows)] if passes == 1 else list(rows))
    assert lr.shape == (rows[0],) and lf.shape == (rows[1],) and pen.isfinite()


def test_cpu_keeps_two_passes_for_a_convnet(monkeypatch):
    runs = []
    real_run = mlp_penalty._run
    monkeypatch.setattr(mlp_penalty, "_run", lambda *a: runs.append(a[1].shape[0]) or real_run(*a))
    D, xr, xf = _make("conv_leaky", torch.float32)
    js_penalty(D, xr, xf[:4], mode="mlp")
    assert runs == [xr.shape[0], 4]


@pytest.mark.parametrize("act,ran", [(nn.Tanh, "double_backward"), (nn.LeakyReLU, "mlp")])
def test_cpu_joint_pass_only_where_auto_picks_the_closed_form(monkeypatch, act, ran):
    """"auto" passes the closed form over for a Tanh MLP on CPU (AUTO_CLOSED_FORM_SMOOTH_DEVICES): the joint pass
    must not run it either."""
    runs = []
    real_run = mlp_penalty._run
    monkeypatch.setattr(mlp_penalty, "_run", lambda *a: runs.append(a[1].shape[0]) or real_run(*a))
    D = nn.Sequential(nn.Linear(3, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 1))
    before = {m: _dispatch.counts[(MODE_OP, m)] for m in ("mlp", "double_backward")}
    js_penalty(D, torch.randn(5, 3), torch.randn(4, 3), mode="auto")
    assert runs == ([9] if ran == "mlp" else [])
    assert {m: _dispatch.counts[(MODE_OP, m)] - before[m] for m in before} == \
        {"mlp": 2 * (ran == "mlp"), "double_backward": 2 * (ran == "double_backward")}


def test_auto_on_cpu_without_opt_in():
    """On CPU "auto" runs the closed form wherever it can (batch statistics included) except for MLPs with
    Tanh/Sigmoid activations, else the double backward."""
    smooth_seen = 0
    for name, (_, _, picked) in DS.items():
        D, x, _ = _make(name, torch.float32)
        steps = mlp_penalty.plan(D, x)[0]
        smooth = steps is not None and mlp_penalty.smooth_mlp(steps)
        smooth_seen += smooth
        want = "mlp" if steps is not None and not smooth else "double_backward"
        assert penalty_jvp.auto_mode(D, x, "mean") == want, name
        assert (steps is not None) == (picked == "mlp" or mlp_penalty.uses_batch_stats(steps or [])), name
        if smooth:
            mode, why = penalty_mode(D, x)
            assert mode == "double_backward" and "Tanh/Sigmoid" in why and "on cpu" in why, (name, why)
    assert smooth_seen >= 2  # mlp_tanh and the as_sequential() MLP: the rule is exercised


@pytest.mark.parametrize("act, smooth", [(nn.Tanh, True), (nn.Sigmoid, True), (nn.ReLU, False),
                                         (lambda: nn.LeakyReLU(0.2), False)])
@pytest.mark.parametrize("conv", [False, True])
def test_smooth_mlp_rule_is_per_device(act, smooth, conv, monkeypatch):
    """The closed form's extra curvature chain keeps "auto" off it on CPU for MLPs only (convnets keep it); as on
    CUDA it takes it for all."""
    if conv:
        D, x = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), act(), nn.Flatten(), nn.Linear(16, 1)), torch.randn(4, 3, 4, 4)
    else:
        D, x = nn.Sequential(nn.Linear(3, 8), act(), nn.Linear(8, 1)), torch.randn(4, 3)
    assert penalty_jvp.auto_mode(D, x, "mean") == ("double_backward" if smooth and not conv else "mlp")
    auto_as_on_cuda(monkeypatch)
    assert penalty_jvp.auto_mode(D, x, "mean") == "mlp"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", MLPS)
def test_js_penalty_mlp_mode_matches_double_backward(name, dtype):
    _check_mode_against_reference(name, "mlp", dtype)


@pytest.mark.parametrize("joint", [True, False], ids=["joint_pass", "two_passes"])
def test_auto_plans_d_once_per_penalty_term(monkeypatch, joint):
    """plan() walks D's modules (16-90 us): "auto" hands its steps on to the closed form instead of planning again."""
    if joint:
        monkeypatch.setattr(penalty_jvp, "JOINT_MLP_DEVICES", {"cuda", "cpu"})  # a convnet: two passes by default
    calls = []
    real_plan = mlp_penalty.plan
    monkeypatch.setattr(mlp_penalty, "plan", lambda *a, **k: calls.append(1) or real_plan(*a, **k))
    D, xr, xf = _make("conv_leaky", torch.float32)
    js_penalty(D, xr, xf, mode="auto")
    assert len(calls) == (1 if joint else 2)  # one plan per closed-form pass


def test_auto_keeps_using_jvp_after_its_check(auto_jvp_on_cpu):
    D, xr, xf = _make("conv_bn", torch.float64)
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    for step in range(3):  # three D updates: the later ones run without the check
        before = _dispatch.counts[(MODE_OP, "jvp")]
        _run_js(D_new, xr + step, xf, "auto", seed=step)
        _run_js(D_ref, xr + step, xf, "reference", seed=step)
        assert _dispatch.counts[(MODE_OP, "jvp")] == before + 2
        _assert_grads_close(D_new, D_ref, 1e-9)
        _assert_buffers_equal(D_new, D_ref)


@pytest.mark.parametrize("mode", ["jvp", "auto"])
def test_norms_and_softmax_whose_forward_ad_reverse_is_wrong(mode, auto_jvp_on_cpu):
    torch.manual_seed(0)
    D = NormZoo().double()
    xr, xf = IMG(5).double(), IMG(5).double()
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    _run_js(D_ref, xr, xf, "reference")
    before = _dispatch.counts[(MODE_OP, "jvp")]
    with _no_fallback():
        _run_js(D_new, xr, xf, mode)
    assert _dispatch.counts[(MODE_OP, "jvp")] == before + 2
    _assert_grads_close(D_new, D_ref, 1e-9)
    _assert_buffers_equal(D_new, D_ref)


@pytest.mark.parametrize("mode", ["jvp", "auto"])
def test_prelu_at_a_zero_input(mode, auto_jvp_on_cpu):
    """PReLU where its input is exactly 0 (a bias-free convolution over a black border): torch's forward-mode
    formula takes slope 1 there, its backward kernel, which forms g, slope a; the jvp tangent's derivative took
    torch's, the first convolution's weight gradient 15% off the double backward's (a fuzz audit)."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1, bias=False), nn.PReLU(4, init=0.25), nn.Conv2d(4, 4, 3, 2, 1),
                      nn.PReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 1)).double()
    _assert_jvp_on_black_borders(D, mode)


def _assert_jvp_on_black_borders(D, mode):
    """js_penalty by `mode` (taking jvp for both batches) against the reference, on images with exact-zero borders
    (a bias-free first convolution gives exact zeros there)."""
    torch.manual_seed(0)
    xr, xf = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.randn(4, 1, 8, 8, dtype=torch.float64)
    xr[..., :3] = 0
    xf[..., 2:5, :] = 0
    _closed_form_matches_the_reference(D, xr, xf, mode, ran="jvp")


class _FmaxD(nn.Module):
    def __init__(self, order):
        super().__init__()
        self.order = order
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, 1, 1, bias=False), nn.Conv2d(4, 4, 3, 2, 1)
        self.head = nn.Linear(4 * 4 * 4, 1)

    def forward(self, x):
        h = self.c1(x)
        z = torch.zeros_like(h)
        m = {"fmax": lambda: torch.fmax(h, z), "swapped": lambda: torch.fmax(z, h), "method": lambda: h.fmax(z),
             "scalar": lambda: torch.fmax(h, torch.tensor(0.0, dtype=h.dtype))}[self.order]()
        return self.head(torch.tanh(self.c2(m + 0.2 * h)).flatten(1))


@pytest.mark.parametrize("order", ["fmax", "swapped", "method", "scalar"])
def test_fmax_at_a_tie(order):
    """torch.fmax(h, 0) where h is exactly 0 (a bias-free convolution over a black border): torch's forward-mode
    formula takes the other operand's tangent at a tie, its backward kernel, which forms g, gives the gradient to
    the first; the jvp tangent's derivative took torch's, the layers' gradients 1-5% off the double backward's
    (a fuzz audit over op_db)."""
    torch.manual_seed(0)
    _assert_jvp_on_black_borders(_FmaxD(order).double(), "jvp")


@pytest.mark.parametrize("norm", [lambda c: nn.InstanceNorm2d(c), lambda c: nn.BatchNorm2d(c, affine=False),
                                  lambda c: nn.GroupNorm(2, c, affine=False),
                                  lambda c: nn.LayerNorm([c, 4, 4], elementwise_affine=False)],
                         ids=["instance", "batch", "group", "layer"])
def test_affine_free_norm_before_an_inplace_activation(norm):
    """pix2pix's PatchGAN block InstanceNorm2d(c) (affine=False by default), LeakyReLU(0.2, True): the jvp pass's
    norm returned the very tensor its tangent's backward had saved, which the in-place activation then overwrote
    (torch's "modified by an inplace operation" at the D update's backward)."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Conv2d(3, 4, 4, 2, 1), norm(4), nn.LeakyReLU(0.2, True), nn.Flatten(),
                      nn.Linear(64, 1)).double()
    xr, xf = IMG(4).double(), IMG(4).double()
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    _run_js(D_ref, xr, xf, "reference")
    before = _dispatch.counts[(MODE_OP, "jvp")]
    _run_js(D_new, xr, xf, "jvp")
    assert _dispatch.counts[(MODE_OP, "jvp")] == before + 2
    _assert_grads_close(D_new, D_ref, 1e-9)
    _assert_buffers_equal(D_new, D_ref)


def test_dropout_masks_replayed_and_rng_advanced_once():
    torch.manual_seed(0)
    D = DropoutConvD().double()
    xr, xf = IMG(6).double(), IMG(6).double()
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    _run_js(D_ref, xr, xf, "reference", seed=7)
    state_ref = torch.get_rng_state()
    _run_js(D_new, xr, xf, "jvp", seed=7)
    assert torch.equal(torch.get_rng_state(), state_ref), "the jvp path consumed a different amount of randomness"
    _assert_grads_close(D_new, D_ref, 1e-9)


@pytest.mark.parametrize("fn", [r1_penalty, r2_penalty], ids=["r1", "r2"])
@pytest.mark.parametrize("name,mode", [("conv_bn", "jvp"), ("mlp_leaky", "mlp"), ("mlp_tanh", "auto"),
                                       ("groupnorm_residual", "auto"), ("mlp_bn_train", "mlp")])
def test_r1_r2(fn, name, mode, auto_jvp_on_cpu):
    D, x, _ = _make(name, torch.float64)
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    pen_r, l_r = ref.r1_penalty(D_ref, x)
    (F.softplus(-l_r).mean() + GAMMA / 2 * pen_r).backward()
    pen, l = fn(D_new, x, mode=mode)
    (F.softplus(-l).mean() + GAMMA / 2 * pen).backward()
    torch.testing.assert_close(pen, pen_r, rtol=1e-12, atol=0)
    _assert_grads_close(D_new, D_ref, 1e-9)
    _assert_buffers_equal(D_new, D_ref)


WEIGHT_FNS = {
    "elementwise": lambda p: torch.exp(-0.3 * p) * torch.sigmoid(p),
    # a weight that couples samples: the w' term must be a vector-Jacobian product, not w'(psi_n) alone
    "coupled": lambda p: torch.softmax(p, 0) * p.shape[0] + 0.1 * p.mean(),
}


@pytest.mark.parametrize("wname", list(WEIGHT_FNS))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name,mode", [("conv_bn", "jvp"), ("mlp_bn_eval", "mlp"), ("mlp_leaky", "jvp"),
                                       ("mlp_bn_train", "mlp")])
def test_general_callable_weight(wname, reduction, name, mode):
    weight = WEIGHT_FNS[wname]
    D, x, _ = _make(name, torch.float64)
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    pen_r, l_r = ref.gradient_penalty(D_ref, x, weight, reduction)
    (l_r.sum() * 0.1 + pen_r).backward()
    pen, l = gradient_penalty(D_new, x, weight, reduction=reduction, mode=mode)
    (l.sum() * 0.1 + pen).backward()
    torch.testing.assert_close(pen, pen_r, rtol=1e-12, atol=0)
    _assert_grads_close(D_new, D_ref, 1e-9)


@pytest.mark.parametrize("weight", ["sigmoid", "exp", "kl"])
@pytest.mark.parametrize("name,mode", [("conv_bn", "jvp"), ("mlp_bn_eval", "mlp"), ("mlp_leaky", "jvp"),
                                       ("mlp_bn_train", "mlp"), ("conv_bn", "double_backward")])
def test_f_gan_named_weights_on_the_fused_op(weight, name, mode):
    """The f-GAN weights (sigma, e^psi, e^(psi - 1)) by name: the double backward's penalty and parameter gradients,
    and no call of the reference backend (as callables they ran there in every mode)."""
    D, x, _ = _make(name, torch.float64)
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    pen_r, l_r = ref.gradient_penalty(D_ref, x, weight, "mean")
    (l_r.sum() * 0.1 + pen_r).backward()
    on_reference = _dispatch.counts[("grad_norm_penalty", "reference")]
    pen, l = gradient_penalty(D_new, x, weight, mode=mode)
    (l.sum() * 0.1 + pen).backward()
    assert _dispatch.counts[("grad_norm_penalty", "reference")] == on_reference
    torch.testing.assert_close(pen, pen_r, rtol=1e-12, atol=0)
    _assert_grads_close(D_new, D_ref, 1e-9)


@pytest.mark.parametrize("weight", ["js_fake", "coupled"])
@pytest.mark.parametrize("name", ["mlp_bn_eval", "mlp_bn_train"])
def test_mlp_reduction_none_with_any_upstream(weight, name):
    """Per-sample upstream gradients: with batch statistics the tangent direction gP * v is only known in the
    backward (samples are coupled), which this checks."""
    weight = WEIGHT_FNS.get(weight, weight)
    D, x, _ = _make(name, torch.float64)
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    up = torch.linspace(-1, 2, x.shape[0], dtype=torch.float64)
    pen_r, l_r = ref.gradient_penalty(D_ref, x, weight, "none")
    ((pen_r * up).sum() + l_r.pow(2).sum()).backward()
    pen, l = gradient_penalty(D_new, x, weight, reduction="none", mode="mlp")
    ((pen * up).sum() + l.pow(2).sum()).backward()
    torch.testing.assert_close(pen, pen_r, rtol=1e-12, atol=0)
    _assert_grads_close(D_new, D_ref, 1e-9)


def _closed_form_matches_the_reference(D, xr, xf, mode, ran="mlp"):
    """js_penalty(mode=mode) on a copy of D runs the closed form (or `ran`) for both terms, with the reference's
    gradients and buffers."""
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    _run_js(D_ref, xr, xf, "reference")
    before = _dispatch.counts[(MODE_OP, ran)]
    _run_js(D_new, xr, xf, mode)
    assert _dispatch.counts[(MODE_OP, ran)] == before + 2
    _assert_grads_close(D_new, D_ref, 1e-9)
    for a, b in zip(D_new.buffers(), D_ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_custom_class_with_as_sequential_uses_closed_form(auto_jvp_on_cpu):
    torch.manual_seed(0)
    _closed_form_matches_the_reference(WithSequential().double(), VEC(6).double(), VEC(6).double(), "auto")


def test_nested_sequentials_are_opened_by_the_closed_form():
    """Blocks as nn.Sequentials inside an nn.Sequential (one layer listed twice included): the closed form runs
    the layers in the forward's order, batch statistics included; an unsupported layer is named by its path."""
    torch.manual_seed(0)
    act = nn.LeakyReLU(0.2)
    D = nn.Sequential(nn.Sequential(nn.Linear(3, 8), act), nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), act),
                      nn.Sequential(nn.Sequential(nn.Linear(8, 1)))).double()
    xr, xf = VEC(6).double(), VEC(6).double()
    assert penalty_mode(D, xr)[0] == "mlp"
    assert [kind for kind, _ in mlp_penalty.plan(D, xr)[0]] == ["linear", "leaky", "linear", "bn_batch", "leaky",
                                                                "linear"]
    _closed_form_matches_the_reference(D, xr, xf, "mlp")
    bad = nn.Sequential(nn.Sequential(nn.Linear(3, 8), nn.GroupNorm(2, 8)), nn.Linear(8, 1))
    assert mlp_penalty.plan(bad)[1] == "layer 0.1 (GroupNorm) is not a supported layer"


def test_functional_discriminator():
    torch.manual_seed(0)
    W1, W2 = torch.randn(16, 3, dtype=torch.float64), torch.randn(1, 16, dtype=torch.float64)
    W1.requires_grad_(True)
    W2.requires_grad_(True)

    def D(x):
        return F.silu(x @ W1.t()) @ W2.t()

    x = VEC(6).double()
    pen_r, l_r = ref.gradient_penalty(D, x, "js_real")
    want = torch.autograd.grad(pen_r + l_r.sum(), (W1, W2))
    for mode, ran in (("jvp", "jvp"), ("auto", "double_backward")):  # auto: D is not a module
        before = _dispatch.counts[(MODE_OP, ran)]
        pen, l = gradient_penalty(D, x, "js_real", mode=mode)
        got = torch.autograd.grad(pen + l.sum(), (W1, W2))
        assert _dispatch.counts[(MODE_OP, ran)] == before + 1
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,mode", [("conv_bn", "jvp"), ("mlp_tanh", "mlp"), ("conv_leaky", "mlp"),
                                       ("conv_bn_train", "mlp")])
def test_bfloat16_close_to_float64(name, mode):
    D, xr, xf = _make(name, torch.float64)
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D).to(torch.bfloat16)
    _run_js(D_ref, xr, xf, "reference")
    pen, _, _ = _run_js(D_new, xr.bfloat16(), xf.bfloat16(), mode)
    assert pen.dtype == torch.float32
    got = torch.cat([p.grad.double().reshape(-1) for p in D_new.parameters()])
    want = torch.cat([p.grad.reshape(-1) for p in D_ref.parameters()])
    assert (got - want).norm() <= 0.1 * want.norm()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_jvp_batch_statistics_under_autocast_as_accurate_as_the_double_backward(dtype):
    """jvp's BatchNorm rule computed the statistics and its tangent's cancelling sum in half precision under
    autocast: a BatchNorm bias gradient 50% off, 263x the double backward's error (an audit across dtypes,
    2026-12-06); normalized in float32 as torch's kernels do, the two are alike."""
    torch.manual_seed(2)
    D0 = nn.Sequential(nn.Linear(3, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 1))
    torch.manual_seed(102)
    xr, xf = torch.randn(16, 3), torch.randn(16, 3)

    def grads(D, xr, xf, mode, cast):
        with torch.autocast("cpu", dtype=dtype, enabled=cast):
            pen, lr, lf = ref.js_penalty(D, xr, xf) if mode == "reference" else js_penalty(D, xr, xf, mode=mode)
            loss = F.softplus(-lr).mean() + F.softplus(lf).mean() + 5 * pen
        loss.backward()
        return {n: p.grad.double() for n, p in D.named_parameters() if n != "0.bias"}  # 0.bias: 0 but rounding

    truth = grads(copy.deepcopy(D0).double(), xr.double(), xf.double(), "reference", False)
    err = {m: max(((g[n] - truth[n]).abs().max() / truth[n].abs().max()).item() for n in truth)
           for m, g in ((m, grads(copy.deepcopy(D0), xr, xf, m, True)) for m in ("double_backward", "jvp"))}
    assert err["jvp"] <= 2 * err["double_backward"], err


@pytest.mark.parametrize("mode", ["mlp", "auto"])
@pytest.mark.parametrize("name", ["mlp_leaky", "conv_leaky", "conv_bn_train"])
def test_closed_form_ignores_autocast(name, mode):
    """Under autocast the closed form computes in D's own dtype (its GEMMs mix forward and backward tensors, which
    autocast would cast apart), also when the backward runs inside the autocast region; a bfloat16 batch (G's
    output under autocast) is cast to D's dtype, as autocast would for D's first layer."""
    D, xr, xf = _make(name, torch.float32)
    xf = xf.bfloat16().float()  # representable in bfloat16: the cast below is exact
    ran = "mlp"  # on CPU "auto" runs the closed form for all three
    grads = []
    for autocast in (False, True):
        Dm = copy.deepcopy(D)
        before = _dispatch.counts[(MODE_OP, ran)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            pen, lr, lf = js_penalty(Dm, xr, xf.bfloat16() if autocast else xf, mode=mode)
            assert pen.dtype == lr.dtype == lf.dtype == torch.float32
            (_d_loss(lr.float(), lf.float()) + pen).backward()
        assert _dispatch.counts[(MODE_OP, ran)] == before + 2
        grads.append(torch.cat([p.grad.reshape(-1) for p in Dm.parameters()]))
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtypes", [(torch.float16, torch.bfloat16), (torch.float64, torch.float16),
                                    (torch.float32, torch.bfloat16)], ids=str)
def test_joint_pass_under_autocast_with_mixed_dtypes(monkeypatch, dtypes, device):
    """Under autocast, batches of different dtypes run in one pass (autocast's own cat rejects float16 with bfloat16;
    the batches are joined outside it), with the values of two passes."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)).to(device)
    xr, xf = torch.randn(5, 3).to(device, dtypes[0]), torch.randn(4, 3).to(device, dtypes[1])
    runs, out = [], []
    real_run = mlp_penalty._run
    monkeypatch.setattr(mlp_penalty, "_run", lambda *a: runs.append(a[1].shape[0]) or real_run(*a))
    for joint in (True, False):
        if not joint:
            monkeypatch.setattr(penalty_jvp, "JOINT_MLP_DEVICES", set())
            monkeypatch.setattr(penalty_jvp, "JOINT_MLP_MAX_ROWS", {})
        Dm = copy.deepcopy(D)
        with torch.autocast(device, dtype=torch.bfloat16):
            pen, lr, lf = js_penalty(Dm, xr, xf, mode="mlp")
            (_d_loss(lr.float(), lf.float()) + pen).backward()
        out.append([pen, lr, lf] + [p.grad for p in Dm.parameters()])
    assert runs == [9, 5, 4]
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ auto's choices and its fallback

class _no_fallback:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", FallbackWarning)

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)


class DirectBatchNorm(nn.Module):
    """Calls torch.batch_norm directly: the jvp path refuses it, so "auto" must fall back."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        h = self.conv(x)
        h = torch.batch_norm(h, self.bn.weight, self.bn.bias, self.bn.running_mean, self.bn.running_var,
                             True, 0.1, 1e-5, False)
        return self.head(F.leaky_relu(h, 0.2).flatten(1))


class GluD(nn.Module):
    """glu's forward-mode formula has no derivative: the jvp path fails in backward, which auto's check catches (torch's
    binding called directly: F.glu has a rule of the jvp pass since 2026-12-07)."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 16)
        self.l2 = nn.Linear(8, 1)

    def forward(self, x):
        return self.l2(torch._C._nn.glu(self.l1(x), -1))


@pytest.mark.parametrize("cls,make_x", [(DirectBatchNorm, IMG), (GluD, VEC)], ids=["direct_batch_norm", "glu"])
def test_auto_falls_back_loudly_and_correctly(cls, make_x, auto_jvp_on_cpu):
    torch.manual_seed(0)
    D = cls().double()
    xr, xf = make_x(6).double(), make_x(6).double()
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    _run_js(D_ref, xr, xf, "reference")
    before = _dispatch.counts[(MODE_OP, "double_backward")]
    with pytest.warns(FallbackWarning, match="jvp path does not support"):
        _run_js(D_new, xr, xf, "auto")
    assert _dispatch.counts[(MODE_OP, "double_backward")] == before + 2
    _assert_grads_close(D_new, D_ref, 1e-9)
    _assert_buffers_equal(D_new, D_ref)
    # the verdict is remembered for this D: no second check, no second warning
    before = _dispatch.counts[(MODE_OP, "double_backward")]
    with _no_fallback():
        _run_js(D_new, xr, xf, "auto")
    assert _dispatch.counts[(MODE_OP, "double_backward")] == before + 2


def test_auto_choices(auto_jvp_on_cpu):
    D, x, _ = _make("conv_bn", torch.float32)
    assert penalty_jvp.auto_mode(D, x, "none") == "double_backward"
    assert penalty_jvp.auto_mode(D, x, "mean") in ("check", "jvp")
    M, v, _ = _make("mlp_leaky", torch.float32)
    assert penalty_jvp.auto_mode(M, v, "none") == "mlp"
    M_train_bn = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    assert [k for k, _ in mlp_penalty.plan(M_train_bn, v)[0]] == ["linear", "bn_batch", "relu", "linear"]
    assert penalty_jvp.auto_mode(M_train_bn, v, "mean") in ("check", "jvp")
    assert [k for k, _ in mlp_penalty.plan(M_train_bn.eval(), v)[0]][1] == "bn"
    before = _dispatch.counts[(MODE_OP, "double_backward")]
    gradient_penalty(D, x, "one", reduction="none", mode="auto")
    assert _dispatch.counts[(MODE_OP, "double_backward")] == before + 1


# ------------------------------------------------------------------ errors

def test_penalty_mode_says_what_auto_runs_and_why(auto_jvp_on_cpu, monkeypatch):
    from fastgan.ops import penalty_mode

    for name, (factory, make_x, picked) in DS.items():
        torch.manual_seed(0)
        D, x = factory(), make_x(4)
        mode, why = penalty_mode(D, x)
        assert mode == picked == ("jvp" if penalty_jvp.auto_mode(D, x, "mean") == "check" else
                                  penalty_jvp.auto_mode(D, x, "mean")), name
        assert why.startswith("the closed form" if mode == "mlp" else "not the closed form: "), (name, why)
    G = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(144, 1))
    mode, why = penalty_mode(G, IMG(2))
    assert mode == "jvp" and "layer 1 (GroupNorm) is not a supported layer" in why and "matched" in why
    assert penalty_mode(G, IMG(2), reduction="none") == (
        "double_backward", "not the closed form: layer 1 (GroupNorm) is not a supported layer; jvp needs reduction "
        "'mean' or 'sum'")
    mode, why = penalty_mode(DS["conv_bn_train"][0](), IMG(2))
    assert mode == "jvp" and "BatchNorm normalizes with batch statistics" in why
    monkeypatch.setattr(penalty_jvp, "AUTO_JVP_DEVICES", {"cuda"})
    assert penalty_mode(G, IMG(2))[1].endswith("jvp runs on ['cuda'] only (not faster on cpu)")
    with pytest.raises(ValueError, match="reduction"):
        penalty_mode(G, IMG(2), reduction="max")


def test_bad_mode_and_unsupported_combinations():
    D, x, _ = _make("conv_bn", torch.float32)
    with pytest.raises(ValueError, match="mode must be one of"):
        js_penalty(D, x, x, mode="fast")
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        gradient_penalty(D, x, reduction="none", mode="jvp")
    with pytest.raises(ValueError, match="mode='mlp' cannot run this D: D is not an nn.Sequential"):
        r1_penalty(D, x, mode="mlp")
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm1d\) expects 8 features, gets 16"):
        r2_penalty(nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(8), nn.Linear(8, 1)), torch.randn(4, 3), mode="mlp")
    with pytest.raises(ValueError, match="expects 3 features, gets 5"):
        r1_penalty(mlp_leaky(), torch.randn(4, 5), mode="mlp")
    with pytest.raises(ValueError, match="output has 2 values per sample, not 1"):
        r1_penalty(nn.Sequential(nn.Linear(3, 2)), torch.randn(4, 3), mode="mlp")
    with pytest.raises(ValueError, match=r"weight\(psi\) must return a tensor of shape \(4,\)"):
        gradient_penalty(mlp_leaky(), torch.randn(4, 3), lambda p: p.sum(), mode="jvp")
    D2 = DirectBatchNorm()
    with pytest.raises(NotImplementedError, match="batch_norm called directly"):
        r1_penalty(D2, IMG(4), mode="jvp")


@pytest.mark.parametrize("D,x,match", [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 1)), IMG(2),
     r"layer 1 \(Linear\) gets a rank-4 input; flatten it first"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(256, 1)), IMG(2),
     r"layer 0 \(Conv2d\): padding_mode='reflect'"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.Flatten(), nn.Linear(256, 1)), IMG(2),
     r"padding='same' \(only zero padding given as numbers\)"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(5, 1, 6)), IMG(2), r"layer 1 \(Conv2d\) expects 5 channels, gets 4"),
    (nn.Sequential(nn.Conv2d(3, 1, 3)), VEC(2), r"layer 0 \(Conv2d\) needs a rank-4 input, gets rank 2"),
    (nn.Sequential(nn.Flatten(), nn.BatchNorm2d(192), nn.Linear(192, 1)), IMG(2),
     r"layer 1 \(BatchNorm2d\) gets a rank-2 input"),
    (nn.Sequential(nn.Conv2d(3, 1, 3), nn.Flatten(start_dim=2), nn.Linear(36, 1)), IMG(2),
     r"only nn.Flatten\(\) \(start_dim=1, end_dim=-1\)"),
    (nn.Sequential(nn.Conv2d(3, 2, 8)), IMG(2), "output has 2 values per sample, not 1"),
    (nn.Sequential(nn.Conv2d(3, 1, 3)), IMG(2), "output has 36 values per sample, not 1"),
    # said torch's "mat1 and mat2 must have the same dtype", naming neither (an audit across dtypes)
    (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double(), VEC(2),
     r"layer 0 \(Linear\) has torch\.float64 weights but x is torch\.float32"),
], ids=["linear_after_conv", "reflect", "same", "channels", "rank", "bn_rank", "flatten_dims", "width", "spatial",
        "dtype"])
def test_closed_form_rejects_unsupported_convnets(D, x, match):
    with pytest.raises(ValueError, match=match) as info:
        r1_penalty(D, x, mode="mlp")
    assert str(info.value).startswith("mode='mlp' cannot run this D: ")
    assert penalty_jvp.auto_mode(D, x, "mean") == "double_backward"  # on CPU; never the closed form


def test_hooks_on_inner_containers_and_changed_subclasses_disable_the_closed_form():
    from fastgan.models import ModelConfig, build_discriminator
    from fastgan.models.dcgan import DCGANDiscriminator

    D = build_discriminator(ModelConfig(arch="dcgan", dcgan_width=2, d_batchnorm=False), (2, 8, 8))
    x = torch.randn(3, 2, 8, 8)
    assert mlp_penalty.plan(D, x)[0] is not None
    handle = D.net.register_forward_hook(lambda m, i, o: o * 2)  # on a container, not a leaf layer
    steps, why = mlp_penalty.plan(D, x)
    assert steps is None and why.startswith("D.net has forward/backward hooks")
    handle.remove()

    class ScaledHead(DCGANDiscriminator):  # inherits as_sequential() but changes the forward
        def head(self, h):
            return 3 * torch.tanh(super().head(h))

    S = ScaledHead((2, 8, 8), width=2, batchnorm=False)
    assert S.as_sequential() is None
    assert mlp_penalty.plan(S, x)[1] == "D's as_sequential() declined (a subclass that changes the forward)"
    assert penalty_jvp.auto_mode(S, x, "mean") == "double_backward"


def test_mlp_hooks_disable_the_closed_form():
    M = mlp_leaky()
    M[1].register_forward_hook(lambda m, i, o: o * 2)
    assert mlp_penalty.plan(M)[0] is None
    with pytest.raises(ValueError, match=r"D\.1 has forward/backward hooks \(torch\.nn\.utils\.weight_norm/spectral_norm"):
        r1_penalty(M, torch.randn(4, 3), mode="mlp")


# ------------------------------------------------------------------ CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("name", list(DS))
@pytest.mark.parametrize("mode", ["jvp", "auto"])
def test_cuda_modes_match_double_backward(name, mode):
    """On CUDA "auto" picks jvp for non-MLP discriminators without any opt-in."""
    D, xr, xf = _make(name, torch.float32)
    D, xr, xf = D.cuda(), xr.cuda(), xf.cuda()
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    _run_js(D_ref, xr, xf, "reference")
    expected = DS[name][2] if mode == "auto" else mode
    before = _dispatch.counts[(MODE_OP, expected)]
    _run_js(D_new, xr, xf, mode)
    assert _dispatch.counts[(MODE_OP, expected)] == before + 2
    _assert_grads_close(D_new, D_ref, 1e-3)
    _assert_buffers_equal(D_new, D_ref)


@pytest.mark.cuda
@pytest.mark.parametrize("name", MLPS)
def test_cuda_mlp_mode(name):
    D, xr, xf = _make(name, torch.float64)
    D, xr, xf = D.cuda(), xr.cuda(), xf.cuda()
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    _run_js(D_ref, xr, xf, "reference")
    _run_js(D_new, xr, xf, "mlp")
    _assert_grads_close(D_new, D_ref, 1e-9)
    _assert_buffers_equal(D_new, D_ref)


@pytest.mark.cuda
def test_cuda_dropout_replayed():
    torch.manual_seed(0)
    D = DropoutConvD().double().cuda()
    xr, xf = IMG(6).double().cuda(), IMG(6).double().cuda()
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    _run_js(D_ref, xr, xf, "reference", seed=7)
    state_ref = torch.cuda.get_rng_state()
    _run_js(D_new, xr, xf, "jvp", seed=7)
    assert torch.equal(torch.cuda.get_rng_state(), state_ref)
    _assert_grads_close(D_new, D_ref, 1e-9)


@pytest.mark.parametrize("wrong", ["gradient", "value"])
def test_auto_falls_back_when_jvp_silently_disagrees_with_the_double_backward(wrong, auto_jvp_on_cpu, monkeypatch):
    """auto's one-time check must compare jvp's penalty and its parameter gradients with the double backward's,
    not only notice errors: a jvp result off by a term that raises nothing must give the FallbackWarning and the
    double backward's gradients (the oracle: fastgan.reference's double backward)."""
    real_jvp = penalty_jvp.jvp_penalty

    def skewed(D, x, *args, **kwargs):
        pen, logits = real_jvp(D, x, *args, **kwargs)
        if wrong == "gradient":  # same value, a gradient the double backward does not have
            s = 0.1 * sum((p * p).sum() for p in D.parameters())
            return pen + (s - s.detach()), logits
        # the same gradient, a value off by 1e-3 relative (far above the float64 tolerance)
        return pen + 1e-3 * pen.detach().abs(), logits

    monkeypatch.setattr(penalty_jvp, "jvp_penalty", skewed)
    D, xr, xf = _make("conv_bn", torch.float64)
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    _run_js(D_ref, xr, xf, "reference")
    with pytest.warns(FallbackWarning, match="jvp path does not support"):
        _run_js(D_new, xr, xf, "auto")
    _assert_grads_close(D_new, D_ref, 1e-9)
    _assert_buffers_equal(D_new, D_ref)


def test_closed_form_refuses_an_active_dropout():
    """The closed form has no step for Dropout (it treats it as the identity), so a D with an active Dropout must
    be refused by mode='mlp' and passed over by 'auto' (which would otherwise drop the masks silently)."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Dropout(0.5), nn.Linear(8, 1)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    steps, why = mlp_penalty.plan(D, x)
    assert steps is None and "Dropout" in why
    with pytest.raises(ValueError, match="Dropout"):
        gradient_penalty(D, x, "js_real", mode="mlp")
    assert penalty_mode(D, x)[0] != "mlp"
    # in eval mode (or with p=0) it is the identity, and the closed form takes it
    assert mlp_penalty.plan(D.eval(), x)[0] is not None


class _GluDropoutD(nn.Module):
    """GluD (torch's glu binding: the jvp path fails, auto's check falls back) with an active Dropout: D draws random
    numbers."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 16)
        self.drop = nn.Dropout(0.5)
        self.l2 = nn.Linear(8, 1)

    def forward(self, x):
        return self.l2(torch._C._nn.glu(self.drop(self.l1(x)), -1))


def test_auto_fallback_draws_the_double_backwards_dropout_masks(auto_jvp_on_cpu):
    """After a failed jvp check, auto's double backward must run from the random-number state the call started
    with: the same dropout masks, gradients and generator state as the double backward alone."""
    torch.manual_seed(0)
    D = _GluDropoutD().double()
    xr, xf = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    _run_js(D_ref, xr, xf, "reference")
    state_ref = torch.get_rng_state()
    with pytest.warns(FallbackWarning, match="jvp path does not support"):
        _run_js(D_new, xr, xf, "auto")
    _assert_grads_close(D_new, D_ref, 1e-9)
    assert torch.equal(torch.get_rng_state(), state_ref)


class _TrainOnlyDirectBatchNorm(nn.Module):
    """jvp runs it in eval mode (tanh) but not in training mode (torch.batch_norm called directly)."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 8)
        self.bn = nn.BatchNorm1d(8)
        self.l2 = nn.Linear(8, 1)

    def forward(self, x):
        h = self.l1(x)
        if self.training:
            h = torch.batch_norm(h, self.bn.weight, self.bn.bias, self.bn.running_mean, self.bn.running_var,
                                 True, 0.1, 1e-5, False)
        else:
            h = torch.tanh(h)
        return self.l2(h)


def test_auto_checks_jvp_again_after_train_eval_switch(auto_jvp_on_cpu):
    """auto's jvp verdict holds for D's modules with their training flags: a verdict reached in eval mode must
    not be reused in training mode, where this D's forward differs (and jvp cannot run it)."""
    torch.manual_seed(0)
    D = _TrainOnlyDirectBatchNorm().double()
    xr, xf = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    D.eval()
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    _run_js(D_new, xr, xf, "auto")  # eval: jvp matches, the verdict is remembered
    D_new.zero_grad()
    D_ref.train()
    D_new.train()
    _run_js(D_ref, xr, xf, "reference")
    with pytest.warns(FallbackWarning, match="jvp path does not support"):
        _run_js(D_new, xr, xf, "auto")
    _assert_grads_close(D_new, D_ref, 1e-9)
    _assert_buffers_equal(D_new, D_ref)


def test_a_weight_closing_over_a_learnable_tensor_gets_its_gradient_or_a_refusal():
    """A callable weight with a tensor that requires grad (a learnable scale): the double backward differentiates
    it, "auto" runs the double backward for it, and "jvp" / "mlp", which differentiate the weight through the
    logits only, refuse it rather than leave that tensor without its gradient."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    a = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)

    def w(psi):
        return a * torch.sigmoid(psi)

    xx = x.clone().requires_grad_(True)
    psi = D(xx).reshape(-1)
    (g,) = torch.autograd.grad(psi.sum(), xx, create_graph=True)
    want = torch.autograd.grad((w(psi) * g.pow(2).sum(1)).mean(), [a, *D.parameters()])
    for mode in ("double_backward", "auto"):
        before = _dispatch.counts[(MODE_OP, "double_backward")]
        pen, _ = gradient_penalty(D, x, w, mode=mode)
        got = torch.autograd.grad(pen, [a, *D.parameters()])
        assert all(torch.allclose(p, q, rtol=1e-12, atol=1e-15) for p, q in zip(got, want)), mode
        assert _dispatch.counts[(MODE_OP, "double_backward")] == before + 1
    for mode in ("jvp", "mlp"):
        with pytest.raises(ValueError, match=rf"^weight: .*require grad through tensors other than psi.*mode='{mode}'"):
            gradient_penalty(D, x, w, mode=mode)
    # the same weight with a detached scale: "auto" keeps the closed form (it differentiates through psi)
    before = _dispatch.counts[(MODE_OP, "mlp")]
    gradient_penalty(D, x, lambda psi: a.detach() * torch.sigmoid(psi), mode="auto")
    assert _dispatch.counts[(MODE_OP, "mlp")] == before + 1


def test_a_frozen_d_gets_the_same_values_and_the_documented_graphs():
    """docs/ops/penalty.md: with every parameter of D frozen the modes agree on the values; the double backward's
    results keep a graph to its own copy of x, the others have none (as a frozen D(x))."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)).requires_grad_(False)
    xr, xf = torch.randn(8, 3), torch.randn(8, 3)
    want = js_penalty(D, xr, xf, mode="double_backward")
    assert all(t.requires_grad for t in want)
    for mode in ("jvp", "mlp", "auto"):
        got = js_penalty(D, xr, xf, mode=mode)
        assert not any(t.requires_grad for t in got), mode
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b.detach())


@pytest.mark.parametrize("penalty", ["r1", "gradient"])
@pytest.mark.parametrize("mode", ["jvp", "mlp", "auto"])
def test_a_trainable_parameter_that_reaches_psi_but_not_omega(penalty, mode):
    """Only the last bias trainable: psi depends on it, its input gradient (so Omega, unweighted) does not. Omega
    requires grad as the double backward's does, giving the parameter no gradient (None, or mlp's zero):
    Omega.backward() alone runs (jvp returned an Omega without a graph, on which it raised)."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)).double().requires_grad_(False)
    D[2].bias.requires_grad_(True)
    x = torch.randn(6, 3, dtype=torch.float64)
    call = (lambda m: r1_penalty(D, x, mode=m)) if penalty == "r1" else \
        (lambda m: gradient_penalty(D, x, "one", mode=m))
    want, got = call("double_backward"), call(mode)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
        assert a.requires_grad and b.requires_grad
    none_or_zero = lambda g: g is None or not g.any()
    assert none_or_zero(torch.autograd.grad(got[0], [D[2].bias], allow_unused=True, retain_graph=True)[0])
    got[0].mul_(2).backward()  # in place, as any non-leaf result takes it
    assert none_or_zero(D[2].bias.grad)
