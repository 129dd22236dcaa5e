"""Denoiser.forward with gradients (the drop-in module called as r(h) in a user's loop): the whole network in one
autograd.Function, one walk down in its backward, against nn.Sequential on every backend."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

from fastgan import _ext
from fastgan.ops import Denoiser, _dispatch, bn_relu
from fastgan.ops import denoiser_eager as de

from denoiser_helpers import CPU_BACKENDS, assert_within_twice, delta, layer_inputs, make_pair, state


def _cotangent(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_forward_with_gradients_matches_sequential(backend, training, depth):
    den, net = make_pair(hidden=20, depth=depth, backend=backend, training=training)
    h = torch.randn(9, 12, dtype=torch.float64, requires_grad=True)
    h2 = h.detach().clone().requires_grad_()
    g = _cotangent((9, 12))
    for step in range(2):  # the second step normalises with the running stats the first one updated (eval: same)
        h.grad = h2.grad = None
        den.zero_grad(set_to_none=True)
        net.zero_grad(set_to_none=True)
        before = dict(_dispatch.counts)
        r = den(h)
        assert delta(before) == {("denoiser_forward", backend): 1}
        before = dict(_dispatch.counts)
        (r * g).sum().backward()
        assert delta(before) == {("denoiser_forward_backward", backend): 1}
        want = net(h2)
        (want * g).sum().backward()
        torch.testing.assert_close(r, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h.grad, h2.grad, rtol=1e-10, atol=1e-12)
        got, ref_state = state(den.net), state(net)
        for k, v in ref_state.items():
            torch.testing.assert_close(got[k], v, rtol=1e-10, atol=1e-12, msg=f"step {step}: {k}")


class _CountGemms(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
        return func(*args, **(kwargs or {}))


def _backward_gemms(out):
    with _CountGemms() as c:
        out.pow(2).sum().backward()
    return c.n


def test_gradient_only_where_asked():
    """The backward runs the GEMMs of the gradients asked for: h without grad gets none, a frozen denoiser no
    weight gradients (it still passes the gradient into h)."""
    den, net = make_pair(depth=2)
    h = torch.randn(6, 12, dtype=torch.float64)
    assert _backward_gemms(den(h)) == 5  # per layer: the incoming gradient (but the first's) and the weight's
    assert all(p.grad is not None for p in den.parameters())
    den.zero_grad(set_to_none=True)
    den.requires_grad_(False)
    net.requires_grad_(False)
    hg = h.clone().requires_grad_()
    assert _backward_gemms(den(hg)) == 3  # the input gradients only
    assert all(p.grad is None for p in den.parameters())
    h2 = h.clone().requires_grad_()
    net(h2).pow(2).sum().backward()
    torch.testing.assert_close(hg.grad, h2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_forward_gradcheck_and_gradgradcheck(training):
    den, _ = make_pair(n=4, hidden=5, depth=2, training=training)
    h = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    params = list(den.parameters())
    fn = lambda h_, *ps: den(h_)  # gradcheck perturbs the parameters in place: den reads them
    assert gradcheck(fn, (h, *params), eps=1e-6, atol=1e-7)
    before = dict(_dispatch.counts)
    assert gradgradcheck(fn, (h, *params), eps=1e-6, atol=1e-6)
    assert delta(before)[("denoiser_forward_backward", "reference")] > 0  # second order: plain torch


def test_float32_within_twice_the_reference_error():
    master, net64 = make_pair(n=16, hidden=24, depth=3, seed=3)
    net64.float().double()  # the truth is float64 on the float32 inputs: rounding them is no kernel's error
    g = torch.Generator().manual_seed(4)
    h = (torch.randn(32, 16, generator=g, dtype=torch.float64) * 2 + 0.5).float().double()
    cot = _cotangent((32, 16), seed=5).float().double()
    h64 = h.clone().requires_grad_()
    (net64(h64) * cot).sum().backward()
    truth = {"h": h64.grad, **state(net64)}
    runs = {}
    for name in ("fused", "reference"):
        net = copy.deepcopy(master.net).float()
        mod = Denoiser.from_sequential(net, backend="cpu") if name == "fused" else net
        h32 = h.float().requires_grad_()
        (mod(h32) * cot.float()).sum().backward()
        runs[name] = {"h": h32.grad, **state(net)}
    for k, t in truth.items():
        if t.dtype == torch.int64:
            continue
        assert_within_twice(k, runs["fused"][k], runs["reference"][k], t)


def test_cuda_launches_share_one_device_guard(monkeypatch, cuda_emu_module):
    """backend="cuda" (CUDA C++ kernels in the emulator): a whole-network call enters the device guard and reads the
    stream once for all of its launches, not once per launch."""
    import contextlib

    from helpers import emulate_cuda

    emulate_cuda(monkeypatch, cuda_emu_module)
    guards, streams, launches = [], [], []

    def guard(device):
        guards.append(device)
        return contextlib.nullcontext()

    def stream(device):
        streams.append(device)
        return 0

    class Counting:
        def __getattr__(self, name):
            fn = getattr(cuda_emu_module, name)
            if not name.endswith("_cuda"):
                return fn
            return lambda *a: (launches.append(name), fn(*a))[1]

    monkeypatch.setattr(torch.cuda, "device", guard)
    monkeypatch.setattr(_ext, "stream_handle", stream)
    monkeypatch.setattr(_ext, "C", lambda: Counting())
    den, net = make_pair(depth=3, backend="cuda")
    h = torch.randn(8, 12, dtype=torch.float64)
    def no_grad_forward():
        with torch.no_grad():
            den(h)

    calls = {}
    for name, step in {"loss": lambda: den.loss(h).backward(),
                       "forward": lambda: den(h.clone().requires_grad_()).sum().backward(),
                       "no-grad forward": no_grad_forward}.items():
        guards.clear(), streams.clear(), launches.clear()
        step()
        calls[name] = (len(guards), len(streams), len(launches))
    # loss: corrupt + 3 layers + recon forward, recon + 3 layers backward; r(h): 3 layers each way
    assert calls == {"loss": (2, 2, 9), "forward": (2, 2, 6), "no-grad forward": (1, 1, 3)}
    assert all(d == h.device for d in guards + streams)


# ---------------------------------------------------------------- eager Functions vs the custom ops (torch.compile)

def _layer_run(y, bias, gamma, beta, rm, rv, training):
    out = bn_relu(y, bias, gamma, beta, rm, rv, training=training, momentum=0.2)
    grads = torch.autograd.grad((out * _cotangent(out.shape)).sum(), (y, bias, gamma, beta))
    return out, grads, rm, rv


@pytest.mark.parametrize("training", [True, False])
def test_eager_paths_equal_the_custom_ops(monkeypatch, training):
    """Eagerly bn_relu and r(h) with gradients run plain autograd.Functions; under torch.compile the custom ops
    (bn_relu per layer). Same values, gradients and running statistics either way."""
    applied = []
    for cls in (de._EagerBnRelu, de._EagerForward):
        real = cls.apply
        monkeypatch.setattr(cls, "apply", lambda *a, _real=real, _name=cls.__name__: (applied.append(_name),
                                                                                     _real(*a))[1])
    y, bias, gamma, beta, rm, rv = layer_inputs(B=7, N=5)
    eager = _layer_run(y, bias, gamma, beta, rm.clone(), rv.clone(), training)
    den, _ = make_pair(training=training)
    h = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)
    den(h).pow(2).sum().backward()
    eager_state = {"h": h.grad, **{k: v.clone() for k, v in state(den.net).items()}}
    assert applied == ["_EagerBnRelu", "_EagerForward"]

    applied.clear()
    monkeypatch.setattr(de, "_compiling", lambda: True)
    op = _layer_run(y, bias, gamma, beta, rm.clone(), rv.clone(), training)
    den2, _ = make_pair(training=training)
    h2 = h.detach().clone().requires_grad_()
    before = dict(_dispatch.counts)
    den2(h2).pow(2).sum().backward()
    assert delta(before) == {("bn_relu", "cpu"): 2, ("bn_relu_backward", "cpu"): 2}
    assert applied == []
    for a, b in zip((eager[0], *eager[1], *eager[2:]), (op[0], *op[1], *op[2:])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    op_state = {"h": h2.grad, **state(den2.net)}
    for k, v in eager_state.items():
        torch.testing.assert_close(op_state[k], v, rtol=1e-12, atol=1e-14, msg=k)


def test_bn_relu_running_stats_in_strided_tensors():
    """Running statistics that are views with a stride are still updated in place (through a contiguous copy)."""
    y, bias, gamma, beta, rm, rv = layer_inputs(B=7, N=5)
    rm_s = torch.zeros(10, dtype=torch.float64)[::2]
    rv_s = torch.zeros(10, dtype=torch.float64)[::2]
    rm_s.copy_(rm), rv_s.copy_(rv)
    out = bn_relu(y, bias, gamma, beta, rm_s, rv_s, momentum=0.2)
    want = F.relu(F.batch_norm(y + bias, rm, rv, gamma, beta, True, 0.2, 1e-5))
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rm_s, rm, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rv_s, rv, rtol=1e-12, atol=1e-14)


class _RunningStatWrites(TorchDispatchMode):
    """torch's copies into the given tensors: what an out-of-place update of the running statistics costs (one
    more kernel a step). The reference's torch "kernels" write with copy_, and the Triton interpreter copies its
    arguments back with it, so only the foreach copy counts."""

    def __init__(self, tensors):
        super().__init__()
        self.ptrs = {t.data_ptr() for t in tensors}
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._foreach_copy_.default:
            if any(t.data_ptr() in self.ptrs for t in args[0]):
                self.copies.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_eager_calls_update_running_stats_in_their_tensors(backend, monkeypatch):
    """The loss and r(h) in training mode write the running statistics straight into the module's buffers (every
    backend, the Triton GEMM path included), with nn.BatchNorm1d's values. (The dispatch mode that watches the
    writes would send the calls to the custom ops: the eager Functions are kept for it.)"""
    monkeypatch.setattr(de, "_custom_ops", lambda *tensors: False)
    den, net = make_pair(hidden=20, depth=2, backend=backend)
    buffers = [b for name, b in den.named_buffers() if "running" in name]
    ptrs = [b.data_ptr() for b in buffers]
    h = torch.randn(9, 12, dtype=torch.float64)
    noise = torch.randn(9, 12, dtype=torch.float64)
    with _RunningStatWrites(buffers) as w:
        den.loss(h, noise).backward()
        den(h.requires_grad_()).sum().backward()
        with torch.no_grad():
            den(h)
    assert w.copies == []
    assert [b.data_ptr() for b in den.buffers() if b.dim() and b.data_ptr() in ptrs] == ptrs
    with torch.no_grad():
        net(h.detach() + den.sigma * noise)
        net(h.detach())
        net(h.detach())
    want = dict(net.named_buffers())
    for k, v in den.net.named_buffers():
        torch.testing.assert_close(v, want[k], rtol=1e-10, atol=1e-12, msg=k)
