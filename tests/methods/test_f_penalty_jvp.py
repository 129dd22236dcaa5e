"""Roth's Omega_f by reverse-over-forward where D couples its samples (fastgan.ops.penalty_statistic): the same value,
parameter gradients, buffers and second-order gradients as the double backward of eq. 19, in float64."""
import pytest
import torch
from torch import nn

from fastgan.methods import fdiv
from fastgan.methods.roth import regularizer, statistic
from fastgan.ops import _dispatch, penalty_jvp
from fastgan.ops.dual_rules import DualRules

from helpers import NoJvpTanh

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
        D[2] = NoJvpTanh()
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


# ---------------------------------------------------------------- an audit's differential fuzzing (2026-12)

def _hvp(omega, P, vec):
    gs = torch.autograd.grad(omega, P, create_graph=True)
    return torch.autograd.grad(sum((a * v).sum() for a, v in zip(gs, vec)), P)


def test_auto_on_the_cpu_differentiates_omega_f_to_second_order():
    """"auto" on the CPU runs Omega_f of a BatchNorm D by the double backward, exact to any order as for psi's
    penalty (a replay with the norms in ordinary ops): it took torch's fused BatchNorm third derivatives, a
    Hessian-vector product 9% off."""
    g, x, D, start, P = _mlp_case(5, 10)
    xr = torch.randn(10, 3, generator=g, dtype=torch.float64)
    vec = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in P]
    with DualRules():
        want = _hvp(statistic("gan").double_backward(D, x, "one", "mean", None), P, vec)
    D.load_state_dict(start)
    omega, _, _ = regularizer(D, "f", xr, x, f="gan", mode="auto")
    scale = max(t.abs().max().item() for t in want)
    for a, b in zip(_hvp(omega, P, vec), want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * scale)


@pytest.mark.parametrize("f,bias", [("squared_hellinger", -60.0), ("gan", -180.0), ("js", -180.0)])
def test_jvp_where_the_root_underflows_in_float32(f, bias):
    """(log r)' was taken in float32, where r underflows (squared_hellinger at psi ~ -58, gan/js at ~ -174): inf or
    NaN, and with it every parameter gradient of mode "jvp", where the double backward's are finite."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    with torch.no_grad():
        D[3].bias.fill_(bias)
    g = torch.Generator().manual_seed(1)
    xr, xf = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    start = {k: v.clone() for k, v in D.state_dict().items()}
    grads = {}
    for mode in ("double_backward", "jvp"):
        D.load_state_dict(start)
        omega, _, _ = regularizer(D, "f", xr, xf, f=f, mode=mode)
        grads[mode] = torch.autograd.grad(omega, list(D.parameters()))
    scale = max(t.abs().max().item() for t in grads["double_backward"])
    for a, b in zip(grads["jvp"], grads["double_backward"]):
        assert a.isfinite().all()
        assert (a - b).abs().max().item() <= 1e-4 * scale + 1e-45


def _no_jvp_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), NoJvpTanh(), nn.Linear(8, 1)).double()


def test_a_refused_jvp_leaves_d_and_the_generators_as_at_the_call():
    """mode "jvp" refusing D: the real batch's forward, run before the fake batch's jvp, is undone too (its
    BatchNorm statistics and dropout draws had stayed advanced)."""
    D = _no_jvp_mlp()
    x = torch.randn(8, 3, dtype=torch.float64)
    start = {k: v.clone() for k, v in D.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(NotImplementedError, match="forward-mode AD cannot run D's forward"):
        regularizer(D, "f", x, x + 1, f="gan", mode="jvp")
    for k, v in D.state_dict().items():
        assert torch.equal(v, start[k]), k
    assert torch.equal(torch.get_rng_state(), rng)


def test_auto_keeps_the_graph_of_an_x_fake_that_carries_one(monkeypatch):
    """Where "auto" takes the checked jvp (CUDA, stood in for by the CPU), an x_fake carrying a graph (NTGAN's
    learned noise) takes the double backward, as for psi's penalty: the jvp detached it, and the noise got no
    gradient from Omega_f nor from the fake logits."""
    from helpers import auto_as_on_cuda

    auto_as_on_cuda(monkeypatch)
    g, xf, D, start, _ = _mlp_case(3, 8)
    xr = torch.randn(8, 3, generator=g, dtype=torch.float64)
    got = {}
    for mode in ("double_backward", "auto"):
        D.load_state_dict(start)
        noise = torch.zeros_like(xf, requires_grad=True)
        omega, _, lf = regularizer(D, "f", xr, xf + noise, f="gan", mode=mode)
        got[mode] = torch.autograd.grad(omega + lf.sum(), noise)[0]
    torch.testing.assert_close(got["auto"], got["double_backward"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("forced_by", ["x_fake-graph", "weights-requiring-grad"])
def test_auto_forced_to_the_double_backward_runs_each_batch_once(monkeypatch, forced_by):
    """Where "auto" (as on CUDA, before D's check) must take Omega_f's double backward (an x_fake carrying a graph,
    per-sample weights requiring grad), no check runs, so neither batch is taken again: one forward each."""
    from helpers import auto_as_on_cuda

    auto_as_on_cuda(monkeypatch)
    g, xf, D, start, _ = _mlp_case(3, 8)
    xr = torch.randn(8, 3, generator=g, dtype=torch.float64)
    wf = None
    if forced_by == "x_fake-graph":
        xf = xf + torch.zeros_like(xf, requires_grad=True)
    else:
        wf = torch.full((xf.shape[0],), 1.0 / xf.shape[0], dtype=torch.float64, requires_grad=True)
    calls = []
    D.register_forward_hook(lambda *_: calls.append(1))
    regularizer(D, "f", xr, xf, None, wf, f="gan", mode="auto")
    assert len(calls) == 2


@pytest.mark.parametrize("f", ["gan", "kl"])
@pytest.mark.parametrize("held", ["eval-batchnorm", "frozen-weight"])
def test_auto_falling_back_leaves_the_real_logits_differentiable(monkeypatch, held, f):
    """A failed check puts D's state back; a copy into an unchanged tensor the real logits' graph saved (an eval-mode
    BatchNorm's statistics, a frozen weight) bumped its version, and the D update's backward failed ("modified by
    an inplace operation")."""
    from helpers import auto_as_on_cuda

    auto_as_on_cuda(monkeypatch)
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 8), NoJvpTanh(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)).double()
    if held == "eval-batchnorm":
        D[3].eval()
    else:
        D[3] = nn.Identity()
        D[2].weight.requires_grad_(False)
    x = torch.randn(8, 3, dtype=torch.float64)
    start = {k: v.clone() for k, v in D.state_dict().items()}
    P = [p for p in D.parameters() if p.requires_grad]

    def grads():
        omega, lr, lf = regularizer(D, "f", x, x + 0.5, f=f, mode=mode)
        return torch.autograd.grad(omega + 0.3 * lf.sum() - 0.2 * lr.sum(), P)

    mode = "double_backward"
    want = grads()
    D.load_state_dict(start)
    mode = "auto"
    with pytest.warns(_dispatch.FallbackWarning):
        got = grads()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


class _FunctionalBatchNormD(nn.Module):
    """A D whose forward normalizes with F.batch_norm (no BatchNorm module to find)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.l2(torch.tanh(nn.functional.batch_norm(self.l1(x), None, None, training=True)))


class _MinibatchStdD(nn.Module):
    """ProGAN/StyleGAN's minibatch standard deviation, appended as a feature."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 8), nn.Linear(9, 1)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        std = h.std(0).mean().expand(h.shape[0], 1)
        return self.l2(torch.cat([h, std], 1))


def _standardizing_function_d():
    """A function D (no module at all) standardizing its features over the batch: (D, its parameters)."""
    m = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()

    def D(x):
        h = m[1](m[0](x))
        return m[2]((h - h.mean(0)) / (h.std(0) + 1e-3))

    return D, list(m.parameters())


@pytest.mark.parametrize("mode", ["double_backward", "jvp", "auto"])
@pytest.mark.parametrize("make", [lambda: _FunctionalBatchNormD().double(), lambda: _MinibatchStdD().double(),
                                  _standardizing_function_d], ids=["F.batch_norm", "minibatch-std", "function"])
def test_a_d_mixing_samples_in_its_own_forward_gets_eq_19(make, mode):
    """Without a BatchNorm module to tell that D couples its samples, Omega_f was taken per sample
    (g_f'(psi) grad psi): the same in every mode, and off eq. 19 (36% for the F.batch_norm D). A forward outside
    torch.nn and fastgan takes T's own gradient, as the oracle."""
    from fastgan.reference import methods as ref

    g = torch.Generator().manual_seed(2)
    xr, xf = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    D = make()
    D, P = D if isinstance(D, tuple) else (D, list(D.parameters()))
    want = ref.roth_f_penalty(D, xf, "gan")
    want_grads = torch.autograd.grad(want, P)
    omega, _, _ = regularizer(D, "f", xr, xf, f="gan", mode=mode)
    torch.testing.assert_close(omega, want, rtol=1e-10, atol=0)
    for a, b in zip(torch.autograd.grad(omega, P), want_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
