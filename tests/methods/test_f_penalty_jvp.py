"""Roth's Omega_f by reverse-over-forward where D couples its samples (fastgan.ops.penalty_statistic): the same value,
parameter gradients, buffers and second-order gradients as the double backward of eq. 19, in float64."""
import pytest
import torch
from torch import nn

from fastgan.methods import fdiv
from fastgan.methods.roth import regularizer, statistic
from fastgan.ops import _dispatch, penalty_jvp
from fastgan.ops.dual_rules import DualRules

NONLINEAR = [f for f in fdiv.DIVERGENCES if f not in fdiv.LINEAR]
# on a GPU the same float64 comparisons run with CUDA's BatchNorm and convolution kernels (and auto's own choice)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _mlp():
    return nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 16), nn.BatchNorm1d(16),
                         nn.LeakyReLU(0.2), nn.Linear(16, 1))


def _convnet():
    return nn.Sequential(nn.Conv2d(2, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.Conv2d(4, 8, 3, 2, 1),
                         nn.BatchNorm2d(8), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 2 * 2, 1))


def _run(D, mode, xr, xf, f, coef):
    D.zero_grad()
    omega, lr, lf = regularizer(D, "f", xr, xf, None, coef, f=f, mode=mode)
    (omega + 0.3 * lf.sum() - 0.2 * lr.sum()).backward()  # the logits' own gradients pass through too
    return omega.detach(), [p.grad.clone() for p in D.parameters()], [b.clone() for b in D.buffers()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("net,shape", [(_mlp, (3,)), (_convnet, (2, 8, 8))], ids=["mlp", "convnet"])
@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "weighted"])
@pytest.mark.parametrize("f", NONLINEAR)
def test_jvp_matches_the_double_backward_of_the_statistic(net, shape, weighted, f, device):
    g = torch.Generator().manual_seed(3)
    xr = torch.randn(12, *shape, generator=g, dtype=torch.float64).to(device)
    xf = 1.5 * torch.randn(12, *shape, generator=g, dtype=torch.float64).to(device)
    coef = torch.rand(12, generator=g, dtype=torch.float64).to(device) if weighted else None
    coef = coef / coef.sum() if weighted else None
    torch.manual_seed(0)
    D = net().double().to(device)
    start = {k: v.clone() for k, v in D.state_dict().items()}
    want = _run(D, "double_backward", xr, xf, f, coef)
    D.load_state_dict(start)
    _dispatch.counts.clear()
    got = _run(D, "jvp", xr, xf, f, coef)
    assert _dispatch.counts.get(("gradient_penalty", "jvp")) == 1
    assert not _dispatch.counts.get(("gradient_penalty", "double_backward"))
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=0)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * max(t.abs().max().item() for t in want[1]))
    for a, b in zip(got[2], want[2]):  # running statistics advanced once per forward, as the double backward's
        assert torch.equal(a, b)


def _mlp_case(seed: int, B: int):
    """(generator, x, D, D's state at the start, D's parameters)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    D = _mlp().double()
    return g, x, D, {k: v.clone() for k, v in D.state_dict().items()}, list(D.parameters())


@pytest.mark.parametrize("f", ["gan", "squared_hellinger"])
def test_a_create_graph_backward_differentiates_the_statistic_penalty(f):
    """A second-order gradient (a Hessian-vector product of Omega_f in D's parameters) through the jvp penalty
    replays the double backward of T's gradient, not psi's (BatchNorm in ordinary ops there and here: torch's
    fused kernel has wrong third derivatives, pytorch/pytorch#186256)."""
    g, x, D, start, P = _mlp_case(5, 10)
    vec = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in P]

    def hvp(pen):
        gs = torch.autograd.grad(pen, P, create_graph=True)
        return torch.autograd.grad(sum((a * v).sum() for a, v in zip(gs, vec)), P, allow_unused=True)

    with DualRules():
        want = hvp(statistic(f).double_backward(D, x, "one", "mean", None))
    D.load_state_dict(start)
    got = hvp(penalty_jvp.jvp_penalty(D, x, "one", "mean", stat=statistic(f))[0])
    for a, b in zip(got, want):
        if b is None:
            assert a is None or not a.any()
            continue
        scale = max(t.abs().max().item() for t in want if t is not None)
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * scale)


def test_the_jvp_terms_of_the_statistic_are_each_needed():
    """Without T's slope differentiated through the dual forward (only its value) the gradients are off: the test
    above could fail."""
    _, x, D, start, P = _mlp_case(7, 12)
    stat = statistic("gan")
    want = torch.autograd.grad(stat.double_backward(D, x, "one", "mean", None), P, allow_unused=True)
    D.load_state_dict(start)

    class Frozen(type(stat)):
        __slots__ = ()

        def slope(self, psi):
            return super().slope(psi.detach())

    frozen = Frozen(stat.fn, stat.root)
    got = torch.autograd.grad(penalty_jvp.jvp_penalty(D, x, "one", "mean", stat=frozen)[0], P, allow_unused=True)
    err = max((a - b).abs().max().item() for a, b in zip(got, want) if b is not None)
    assert err > 1e-6 * max(b.abs().max().item() for b in want if b is not None)


def test_a_root_of_the_wrong_shape_is_refused():
    stat = type(statistic("gan"))(torch.sigmoid, lambda v: v.reshape(-1, 1))
    D = _mlp().double()
    with pytest.raises(ValueError, match=r"Statistic: root must return a tensor of the logits' shape \(4,\)"):
        penalty_jvp.jvp_penalty(D, torch.randn(4, 3, dtype=torch.float64), "one", "mean", stat=stat)
    with pytest.raises(TypeError, match="Statistic: fn and root must be callables"):
        type(stat)(torch.sigmoid, 2.0)


class _NoJvp(torch.autograd.Function):
    """An activation without a forward-mode rule: jvp cannot run D, auto's check falls back."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2)


class _NoJvpTanh(nn.Module):
    def forward(self, x):
        return _NoJvp.apply(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("jvp_runs", [True, False], ids=["jvp", "falls-back"])
def test_auto_takes_checked_jvp_where_it_would_for_psi(monkeypatch, jvp_runs, device):
    """Where "auto" takes jvp for D (CUDA; stood in for by the CPU with AUTO_JVP_DEVICES patched), Omega_f of a
    batch-coupled D does too, after one check against the double backward of T's gradient; where jvp cannot run D, a
    FallbackWarning and the double backward, then and on later calls. The CPU's own choice stays the double
    backward."""
    g = torch.Generator().manual_seed(11)
    xr = torch.randn(12, 3, generator=g, dtype=torch.float64).to(device)
    xf = torch.randn(12, 3, generator=g, dtype=torch.float64).to(device)
    torch.manual_seed(0)
    D = _mlp().double().to(device)
    if not jvp_runs:
        D[2] = _NoJvpTanh()
    start = {k: v.clone() for k, v in D.state_dict().items()}
    _dispatch.counts.clear()
    want = _run(D, "double_backward", xr, xf, "js", None)
    if device == "cpu":
        D.load_state_dict(start)
        _dispatch.counts.clear()
        torch.testing.assert_close(_run(D, "auto", xr, xf, "js", None)[0], want[0], rtol=0, atol=0)
        assert _dispatch.counts.get(("gradient_penalty", "double_backward")) == 1  # the CPU's choice
        monkeypatch.setattr(penalty_jvp, "AUTO_JVP_DEVICES", {"cuda", "cpu"})
        monkeypatch.setattr(penalty_jvp, "AUTO_CLOSED_FORM_BATCH_STATS_DEVICES", set())
    for call in range(2):
        D.load_state_dict(start)
        _dispatch.counts.clear()
        if jvp_runs or call:
            got = _run(D, "auto", xr, xf, "js", None)
        else:
            with pytest.warns(_dispatch.FallbackWarning, match="jvp path does not support this discriminator"):
                got = _run(D, "auto", xr, xf, "js", None)
        ran = "jvp" if jvp_runs else "double_backward"
        assert _dispatch.counts.get(("gradient_penalty", ran)) == 1, (call, dict(_dispatch.counts))
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=0)
        for a, b in zip(got[1], want[1]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * max(t.abs().max().item() for t in want[1]))
        for a, b in zip(got[2], want[2]):
            assert torch.equal(a, b)
