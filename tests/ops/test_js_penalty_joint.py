"""js_penalty's default mode runs both batches' input gradients in one autograd.grad call (_double_backward_batches):
it must give what its two gradient_penalty calls give: Omega, the logits, D's buffers (BatchNorm's running
statistics, spectral norm's vectors) and a Dropout D's random draws bit for bit, and D's parameter gradients
through Omega and the logits up to the order in which autograd's engine adds their contributions (the joint
graph's nodes are numbered otherwise: a convolution's weight gradient then differs in its last bits), i.e. in
float64 within 1e-12 of their size and in float32 within 2x the two calls' own error against float64; and it
counts two double-backward penalties. Mutation checks: swapping the batches' weights js_penalty passes to
_double_backward_batches fails the 8 comparisons; D's forward on the fake batch before the real one fails the 6 of
the Ds with state (BatchNorm, Dropout, spectral norm). mode="auto" takes the joint pass where it runs the double
backward for both batches, and inside torch.compile js_penalty runs eagerly as a whole, joint pass included
(mutations: auto's per-batch calls fail 4 tests, compile's per-batch graph breaks 2).
"""
import copy
import importlib

import pytest
import torch
from torch import nn

from fastgan.ops import _dispatch, gradient_penalty, js_penalty, penalty_mode


def _mlp():
    return nn.Sequential(nn.Linear(3, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))


def _conv_bn():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))


def _dropout():
    return nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))


def _spectral():
    return nn.Sequential(nn.utils.spectral_norm(nn.Linear(3, 16)), nn.ReLU(), nn.Linear(16, 1))


DS = {"mlp": (_mlp, (3,)), "conv_bn": (_conv_bn, (3, 8, 8)), "dropout": (_dropout, (3,)),
      "spectral": (_spectral, (3,))}


def _separately(D, xr, xf):
    pen_r, lr = gradient_penalty(D, xr, "js_real", backend="cpu")
    pen_f, lf = gradient_penalty(D, xf, "js_fake", backend="cpu")
    return pen_r + pen_f, lr, lf


def _step(fn, D, xr, xf, seed):
    torch.manual_seed(seed)
    pen, lr, lf = fn(D, xr, xf)
    loss = nn.functional.softplus(-lr).mean() + nn.functional.softplus(lf).mean() + 0.5 * pen
    loss.backward()
    return pen.detach(), lr.detach(), lf.detach(), {n: p.grad for n, p in D.named_parameters()}, \
        {n: b.clone() for n, b in D.named_buffers()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(DS))
def test_joint_equals_two_calls_bit_for_bit(name, dtype):
    make, shape = DS[name]
    torch.manual_seed(0)
    D1 = make().to(dtype)
    D2, D3 = copy.deepcopy(D1), copy.deepcopy(D1).double()
    xr, xf = torch.randn(24, *shape, dtype=dtype), torch.randn(20, *shape, dtype=dtype)
    before = dict(_dispatch.counts)
    joint = _step(lambda D, a, b: js_penalty(D, a, b, backend="cpu"), D1, xr, xf, seed=5)
    key = ("gradient_penalty", "double_backward")
    assert _dispatch.counts[key] - before.get(key, 0) == 2
    apart = _step(_separately, D2, xr, xf, seed=5)
    for a, b in zip(joint[:3], apart[:3]):
        assert torch.equal(a, b)
    assert joint[4].keys() == apart[4].keys()
    for n in joint[4]:
        assert torch.equal(joint[4][n], apart[4][n]), (name, n)
    assert joint[3].keys() == apart[3].keys() and all(g is not None for g in joint[3].values())
    exact = _step(_separately, D3, xr.double(), xf.double(), seed=5)[3] if dtype == torch.float32 else None
    for n, g in joint[3].items():
        other = apart[3][n]
        if exact is None:
            assert (g - other).abs().max() <= 1e-12 * other.abs().max(), (name, n)
        else:
            err, err_apart = ((t.double() - exact[n]).abs().max() for t in (g, other))
            assert err <= 2 * err_apart + 4 * torch.finfo(dtype).eps * exact[n].abs().max(), (name, n, err, err_apart)


def test_same_batch_twice_and_a_d_ignoring_its_input():
    torch.manual_seed(1)
    D = _mlp()
    x = torch.randn(8, 3)
    omega, lr, lf = js_penalty(D, x, x)
    assert torch.equal(lr, lf) and omega.requires_grad
    with pytest.raises(ValueError, match="do not depend on its input x"):
        js_penalty(lambda t: D(t.detach()), x, x)
    # one batch's logits independent of x (a D that detaches its second call's input) is refused the same way
    calls = []

    def half_detached(t):
        calls.append(1)
        return D(t if len(calls) % 2 else t.detach())
    with pytest.raises(ValueError, match="do not depend on its input x"):
        js_penalty(half_detached, x, x)


def _tanh_mlp():
    # the closed form handles Tanh, but "auto" passes it over on CPU (not faster there): the double backward runs
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))


def _input_grads_spy(monkeypatch):
    """The number of logits each input_grads call got: [2] for the joint pass, [1, 1] for a call per batch."""
    module = importlib.import_module("fastgan.ops.penalty")
    calls, real = [], module.input_grads

    def spy(logits, xs, create_graph=False):
        calls.append(len(logits))
        return real(logits, xs, create_graph)
    monkeypatch.setattr(module, "input_grads", spy)
    return calls


@pytest.mark.parametrize("make", [_tanh_mlp, _dropout, _spectral], ids=["tanh_mlp", "dropout", "spectral"])
def test_auto_runs_the_joint_pass_where_it_takes_the_double_backward(monkeypatch, make):
    torch.manual_seed(2)
    D1 = make().double()
    D2 = copy.deepcopy(D1)
    xr, xf = torch.randn(12, 3, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    assert penalty_mode(D1, xr)[0] == "double_backward"
    calls = _input_grads_spy(monkeypatch)
    before = dict(_dispatch.counts)
    auto = _step(lambda D, a, b: js_penalty(D, a, b, mode="auto", backend="cpu"), D1, xr, xf, seed=3)
    assert calls == [2]  # the joint pass
    key = ("gradient_penalty", "double_backward")
    assert _dispatch.counts[key] - before.get(key, 0) == 2
    apart = _step(_separately, D2, xr, xf, seed=3)
    for a, b in zip(auto[:3], apart[:3]):
        assert torch.equal(a, b)
    for n in apart[4]:
        assert torch.equal(auto[4][n], apart[4][n]), n
    for n, g in auto[3].items():
        assert (g - apart[3][n]).abs().max() <= 1e-12 * apart[3][n].abs().max(), n


def test_auto_keeps_per_batch_calls_where_a_batch_takes_another_mode(monkeypatch):
    # an empty real batch takes the double backward, the fake one the closed form: neither joint pass applies
    torch.manual_seed(4)
    D = nn.Sequential(nn.Linear(3, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)).double()
    xr, xf = torch.randn(0, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    calls = _input_grads_spy(monkeypatch)
    before = dict(_dispatch.counts)
    js_penalty(D, xr, xf, mode="auto", backend="cpu")
    assert calls == [1]
    assert _dispatch.counts[("gradient_penalty", "mlp")] - before.get(("gradient_penalty", "mlp"), 0) == 1


@pytest.mark.parametrize("mode", ["double_backward", "auto"])
def test_one_joint_pass_inside_a_compiled_function(monkeypatch, mode):
    """Inside torch.compile js_penalty runs eagerly as a whole (one graph break), so the joint pass runs there too:
    the same values, logits and buffers as eager mode's call, bit for bit."""
    torch.manual_seed(5)
    D1 = (_conv_bn() if mode == "double_backward" else _tanh_mlp()).double()
    D2 = copy.deepcopy(D1)
    shape = (3, 8, 8) if mode == "double_backward" else (3,)
    xr, xf = torch.randn(8, *shape, dtype=torch.float64), torch.randn(8, *shape, dtype=torch.float64)

    def fn(D, a, b):
        return js_penalty(D, a, b, mode=mode, backend="cpu")
    calls = _input_grads_spy(monkeypatch)
    torch._dynamo.reset()
    try:
        got = [_step(torch.compile(fn, backend="eager"), D1, xr, xf, seed=6) for _ in range(2)]
    finally:
        torch._dynamo.reset()
    assert calls == [2, 2]
    want = [_step(fn, D2, xr, xf, seed=6) for _ in range(2)]
    for g, w in zip(got, want):
        for a, b in zip(g[:3], w[:3]):
            assert torch.equal(a, b)
        for n in w[4]:
            assert torch.equal(g[4][n], w[4][n]), n
        for n in w[3]:
            torch.testing.assert_close(g[3][n], w[3][n], rtol=1e-12, atol=1e-14)


def _fully_convolutional():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))


@pytest.mark.parametrize("mode", ["double_backward", "jvp", "auto"])
def test_a_fully_convolutional_d_takes_batches_of_two_resolutions(mode):
    """js_penalty is what two gradient_penalty calls give, and those take a D that pools globally over real and
    fake images of different sizes: js_penalty refused them ("x_real has sample shape (3, 8, 8) but x_fake has
    (3, 12, 12)"). Only the rank and dim 1 (features, channels) must match."""
    torch.manual_seed(0)
    D = _fully_convolutional().double()
    xr, xf = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(3, 3, 12, 12, dtype=torch.float64)
    a, b = copy.deepcopy(D), copy.deepcopy(D)
    pen, lr, lf = js_penalty(a, xr, xf, mode=mode)
    (pen + lr.sum() - lf.sum()).backward()
    (pr, wr), (pf, wf) = (gradient_penalty(b, xr, "js_real", mode=mode), gradient_penalty(b, xf, "js_fake", mode=mode))
    (pr + pf + wr.sum() - wf.sum()).backward()
    torch.testing.assert_close(pen, pr + pf, rtol=1e-12, atol=0)
    torch.testing.assert_close((lr, lf), (wr, wf), rtol=0, atol=0)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-15)
    for p, q in zip(a.buffers(), b.buffers()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"x_real has sample shape \(3, 8, 8\) but x_fake has \(4, 8, 8\): their "
                                         r"ranks and features/channels \(dim 1\) must match"):
        js_penalty(D, xr, torch.randn(2, 4, 8, 8, dtype=torch.float64), mode=mode)
    with pytest.raises(ValueError, match=r"x_real has sample shape \(3, 8, 8\) but x_fake has \(3, 64\)"):
        js_penalty(D, xr, torch.randn(2, 3, 64, dtype=torch.float64), mode=mode)
