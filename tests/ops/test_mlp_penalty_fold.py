"""The closed form's fold (fastgan/ops/mlp_penalty.py fold_index): for a D ending Linear -> ReLU/LeakyReLU ... ->
Linear(1) without smooth activations, the tangent's GEMM through the penultimate Linear is replaced by a read of
the weight gradient's product. Where it applies and where it must not, and that the gradients are still the double
backward's, with the output weight's gradient read off that product (CUDA's) or summed directly (the CPU's:
mlp_penalty.direct_output)."""
import copy

import pytest
import torch
from torch import nn

from fastgan.ops import closed_form_maps, gradient_penalty, js_penalty, mlp_penalty, penalty_jvp

FOLDS = {  # name -> (D builder, index of the penultimate Linear among the closed form's layer records)
    "leaky": (lambda: nn.Sequential(nn.Linear(3, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)), 0),
    "deep_relu": (lambda: nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 12), nn.LeakyReLU(0.1),
                                        nn.Linear(12, 1)), 2),
    "two_acts": (lambda: nn.Sequential(nn.Linear(3, 16), nn.LeakyReLU(0.2), nn.Linear(16, 8), nn.LeakyReLU(0.3),
                                       nn.ReLU(), nn.Linear(8, 1)), 2),
    "no_activation": (lambda: nn.Sequential(nn.Linear(3, 16), nn.Linear(16, 1)), 0),
    "no_bias": (lambda: nn.Sequential(nn.Linear(3, 16, bias=False), nn.LeakyReLU(0.2), nn.Linear(16, 8, bias=False),
                                      nn.LeakyReLU(0.2), nn.Linear(8, 1, bias=False)), 2),
    "bias_last_only": (lambda: nn.Sequential(nn.Linear(3, 16, bias=False), nn.ReLU(), nn.Linear(16, 1)), 0),
    "eval_bn_first": (lambda: nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.LeakyReLU(0.2),
                                            nn.Linear(16, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)).eval(), 3),
    "flatten_input": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1)), 1),
}
NO_FOLD = {
    "single_linear": lambda: nn.Sequential(nn.Linear(3, 1)),
    "tanh_earlier": lambda: nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1)),
    "sigmoid_between": lambda: nn.Sequential(nn.Linear(3, 16), nn.Sigmoid(), nn.Linear(16, 1)),
    "eval_bn_between": lambda: nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1)).eval(),
    "conv_before_head": lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 1)),
    "conv_head": lambda: nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 1, 3), nn.Flatten()),
}


@pytest.fixture(params=[False, True], ids=["read_off_P", "direct"])
def direct(request, monkeypatch):
    """Both ways of the output weight's gradient on CPU tensors (the CPU's own: direct)."""
    monkeypatch.setattr(mlp_penalty, "direct_output", lambda w_out: request.param)
    return request.param


def _x(name, B, seed):
    g = torch.Generator().manual_seed(seed)
    if name in ("conv_before_head", "conv_head"):
        return torch.randn(B, 2, 3, generator=g, dtype=torch.float64)
    if name == "flatten_input":
        return torch.randn(B, 2, 3, generator=g, dtype=torch.float64)
    return torch.randn(B, 3, generator=g, dtype=torch.float64)


def _randomized(D):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in D.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return D.double()


def _records(D, x):
    steps, why = mlp_penalty.plan(D, x)
    assert steps is not None, why
    tensors = [t for kind, m in steps if kind in ("linear", "bn") for t in (m.weight, m.bias)]
    return mlp_penalty.primal_chain(x, steps, tensors, mlp_penalty.running_stats_norm)[1]


@pytest.mark.parametrize("name", list(FOLDS))
def test_fold_applies(name):
    make, index = FOLDS[name]
    D = _randomized(make())
    assert mlp_penalty.fold_index(_records(D, _x(name, 4, 0))) == index


@pytest.mark.parametrize("name", list(NO_FOLD))
def test_fold_does_not_apply(name):
    D = _randomized(NO_FOLD[name]())
    assert mlp_penalty.fold_index(_records(D, _x(name, 4, 0))) is None


def _grads(D, loss):
    D.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() if p.grad is not None else None for p in D.parameters()]


def _js_loss(D, xr, xf, mode):
    om, lr, lf = js_penalty(D, xr, xf, mode=mode)
    return torch.nn.functional.softplus(-lr).mean() + torch.nn.functional.softplus(lf).mean() + 0.7 * om


@pytest.mark.parametrize("joint", [False, True], ids=["two_passes", "joint_pass"])
@pytest.mark.parametrize("name", list(FOLDS) + list(NO_FOLD))
def test_js_penalty_gradients_equal_the_double_backward(name, joint, direct, monkeypatch):
    if joint:
        monkeypatch.setattr(penalty_jvp, "JOINT_MLP_DEVICES", {"cpu"})
    else:
        monkeypatch.setattr(penalty_jvp, "JOINT_MLP_MAX_ROWS", {})
    make = FOLDS[name][0] if name in FOLDS else NO_FOLD[name]
    D = _randomized(make())
    xr, xf = _x(name, 9, 1), _x(name, 6, 2)
    got = _grads(D, _js_loss(D, xr, xf, "mlp"))
    want = _grads(D, _js_loss(D, xr, xf, "double_backward"))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("weight", ["one", "js_fake", "callable"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradient_penalty_with_any_weight_and_upstream(weight, reduction, direct):
    D = _randomized(FOLDS["deep_relu"][0]())
    x = _x("deep_relu", 11, 3)
    w = (lambda p: torch.sigmoid(p) * (1 + p.mean())) if weight == "callable" else weight  # couples samples
    up = torch.linspace(-1, 2, 11, dtype=torch.float64)
    grads = {}
    for mode in ("mlp", "double_backward"):
        pen, psi = gradient_penalty(D, x, weight=w, reduction=reduction, mode=mode)
        pen = (pen * up).sum() if reduction == "none" else pen
        grads[mode] = _grads(D, pen + (psi.reshape(-1) * up.flip(0)).sum())
    for a, b in zip(grads["mlp"], grads["double_backward"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_through_the_fold(direct):
    D = _randomized(FOLDS["two_acts"][0]())
    names = [n for n, _ in D.named_parameters()]
    xr, xf = _x("two_acts", 5, 4), _x("two_acts", 4, 5)

    def penalty(*params):  # the closed form reads D's layers, so the parameters are swapped into D itself
        with torch.nn.utils.stateless._reparametrize_module(D, dict(zip(names, params))):
            om, lr, lf = js_penalty(D, xr, xf, mode="mlp")
            return om + lr.sum() - lf.square().sum()

    params = tuple(p.detach().clone().requires_grad_(True) for p in D.parameters())
    assert torch.autograd.gradcheck(penalty, params)


def test_the_cpu_sums_the_output_weight_gradient_directly(monkeypatch):
    w = torch.zeros(1, 4)
    assert mlp_penalty.direct_output(w) and mlp_penalty.direct_output(w.double())
    assert not mlp_penalty.direct_output(w.bfloat16())  # half types: not blocked (closed_form_maps._blocked)
    monkeypatch.setattr(closed_form_maps, "BLOCKED_SUM_DEVICES", set())  # as on CUDA
    assert not mlp_penalty.direct_output(w)


def test_the_direct_sum_reads_the_tangent_at_the_output_layer(monkeypatch):
    """direct_output's forward carries the tangent through the penultimate Linear (the GEMM the fold skips)."""
    D = _randomized(FOLDS["deep_relu"][0]())
    xr, xf = _x("deep_relu", 9, 1), _x("deep_relu", 6, 2)
    seen = {}
    real_save = mlp_penalty.save_layers

    def save(ctx, layers, *args):
        seen["t"] = [("t" in L) for L in layers]
        return real_save(ctx, layers, *args)

    monkeypatch.setattr(mlp_penalty, "save_layers", save)
    for direct in (True, False):
        monkeypatch.setattr(mlp_penalty, "direct_output", lambda w_out: direct)
        js_penalty(D, xr, xf, mode="mlp")
        assert seen["t"][-1] is direct and seen["t"][FOLDS["deep_relu"][1]], (direct, seen["t"])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bias_scale", [0.0, 5.0])
def test_float32_rounding_no_worse_than_without_the_fold(seed, bias_scale, direct, monkeypatch):
    """In float32 the output layer's weight gradient is rebuilt from the penultimate layer's product (sum_i W P +
    b * c): against the float64 double backward, every parameter's error stays within 2x the larger of the float32
    double backward's and the closed form's without the fold (large biases included), plus a few ulps."""
    torch.manual_seed(seed)
    D = nn.Sequential(nn.Linear(3, 128), nn.LeakyReLU(0.2), nn.Linear(128, 128), nn.LeakyReLU(0.2), nn.Linear(128, 1))
    with torch.no_grad():
        for m in D:
            if isinstance(m, nn.Linear):
                m.bias.add_(bias_scale * torch.randn_like(m.bias))
    g = torch.Generator().manual_seed(seed)
    xr, xf = torch.randn(512, 3, generator=g), torch.randn(512, 3, generator=g) * 0.5 + 0.3

    def grads(D, mode, dtype=torch.float32):
        D = copy.deepcopy(D).to(dtype)
        return [t.double() for t in _grads(D, _js_loss(D, xr.to(dtype), xf.to(dtype), mode))]

    truth = grads(D, "double_backward", torch.float64)
    plain = grads(D, "double_backward")
    folded = grads(D, "mlp")
    monkeypatch.setattr(mlp_penalty, "fold_index", lambda layers: None)
    unfolded = grads(D, "mlp")
    for i, (t, p, f, u) in enumerate(zip(truth, plain, folded, unfolded)):
        bound = 2 * max((p - t).abs().max(), (u - t).abs().max()) + 4 * torch.finfo(torch.float32).eps * t.abs().max()
        assert (f - t).abs().max() <= bound, i
