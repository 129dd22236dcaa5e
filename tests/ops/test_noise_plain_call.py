"""noisy_clean_batch's plain path (fastgan/ops/noise.py _plain_call): the common call, (m, F) plain tensors with
eps or a one-element sigma, skips the general path's argument handling. It must take exactly the calls it can
answer as the general path would, bit for bit (values, gradients to second order, the state's advance, the
dispatch counts), and leave every other call, the bad ones included, to the general path."""
import contextlib

import pytest
import torch
from torch.autograd import forward_ad as fwAD

from fastgan.ops import NoiseState, noisy_clean_batch
from fastgan.ops import noise as N
from helpers import backend_calls

OP = "noisy_clean_batch"


def _noise(kind, n_noisy, F, dtype, requires_grad):
    if kind == "float":
        return 0.35
    acc = torch.float64 if dtype is torch.float64 else torch.float32
    if kind == "sigma":
        t = torch.tensor(0.35, dtype=acc)
    elif kind == "sigma_1":
        t = torch.tensor([0.35], dtype=acc)
    else:
        t = torch.randn(n_noisy, F, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(dtype)
    return t.requires_grad_(requires_grad)


def _run(backend, kind, mode, sides, dtype, grad, device="cpu", transposed=False):
    """Values, gradients (to second order where the dtype allows) and the state after the call; transposed: x and
    eps in column-major layouts."""
    m, F = 7, 3
    g = torch.Generator().manual_seed(0)
    xr, xf = (torch.randn(m, F, generator=g, dtype=torch.float64).to(dtype).to(device) for _ in range(2))
    if transposed:
        xr, xf = xr.t().contiguous().t(), xf.t().contiguous().t()
    xr, xf = xr.requires_grad_(grad), xf.requires_grad_(grad)
    xr = xr if "r" in sides else None
    xf = xf if "f" in sides else None
    noise = _noise(kind, m if mode == "double" else m - m // 2, F, dtype, grad)
    if isinstance(noise, torch.Tensor):
        noise = noise.to(device).detach()
        noise = (noise.t().contiguous().t() if transposed and noise.dim() == 2 else noise).requires_grad_(grad)
    state = NoiseState(11, device)
    r, f = noisy_clean_batch(xr, xf, noise, mode, state=state, backend=backend)
    outs = [t for t in (r, f) if t is not None]
    grads = []
    if grad:
        leaves = [t for t in (xr, xf, noise) if isinstance(t, torch.Tensor)]
        w = [torch.linspace(-1, 1, t.numel(), dtype=dtype, device=device).view_as(t) for t in outs]
        loss = sum((wi * t * t).sum() for wi, t in zip(w, outs))
        second = dtype in (torch.float32, torch.float64)
        grads = list(torch.autograd.grad(loss, leaves, create_graph=second))
        if second:
            grads += torch.autograd.grad(sum((t * t).sum() for t in grads), leaves, allow_unused=True)
    return [(r is None), (f is None)] + outs + grads + [state.tensor.clone()]


def _spied(monkeypatch):
    taken = []
    real = N._plain_call

    def spy(*args):
        out = real(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(N, "_plain_call", spy)
    return taken


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x, y), (x, y)
        else:
            assert x == y


def _check_plain_matches_general(monkeypatch, backend, kind, mode, sides, dtype, grad, device="cpu",
                                 transposed=False):
    taken = _spied(monkeypatch)
    calls = (backend_calls(OP, backend), backend_calls(OP + "_backward", backend))
    plain = _run(backend, kind, mode, sides, dtype, grad, device, transposed)
    plain_calls = (backend_calls(OP, backend) - calls[0], backend_calls(OP + "_backward", backend) - calls[1])
    assert taken and all(taken), "the common call went to the general path"
    monkeypatch.setattr(N, "_plain_call", lambda *args: None)
    calls = (backend_calls(OP, backend), backend_calls(OP + "_backward", backend))
    general = _run(backend, kind, mode, sides, dtype, grad, device, transposed)
    general_calls = (backend_calls(OP, backend) - calls[0], backend_calls(OP + "_backward", backend) - calls[1])
    _assert_same(plain, general)
    assert plain_calls == general_calls and plain_calls[0] >= 1


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "nograd"])
@pytest.mark.parametrize("sides", ["rf", "r", "f"])
@pytest.mark.parametrize("mode", ["double", "half"])
@pytest.mark.parametrize("kind", ["eps", "float", "sigma", "sigma_1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_the_plain_call_gives_the_general_paths_bits_on_cpu(monkeypatch, kind, mode, sides, dtype, grad):
    _check_plain_matches_general(monkeypatch, "cpu", kind, mode, sides, dtype, grad)


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])  # cuda: the CUDA C++ kernels, emulated
@pytest.mark.parametrize("kind", ["eps", "float", "sigma", "sigma_1"])
@pytest.mark.parametrize("mode", ["double", "half"])
def test_the_plain_call_gives_the_general_paths_bits_on_other_backends(monkeypatch, backend, kind, mode):
    _check_plain_matches_general(monkeypatch, backend, kind, mode, "rf", torch.float32, True)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@pytest.mark.parametrize("kind", ["eps", "float"])
@pytest.mark.parametrize("mode", ["double", "half"])
def test_the_plain_call_takes_column_major_batches(monkeypatch, backend, kind, mode):
    _check_plain_matches_general(monkeypatch, backend, kind, mode, "rf", torch.float32, True, transposed=True)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("kind", ["eps", "float", "sigma"])
@pytest.mark.parametrize("mode", ["double", "half"])
def test_on_a_gpu_the_plain_call_gives_the_general_paths_bits(monkeypatch, backend, kind, mode):
    _check_plain_matches_general(monkeypatch, backend, kind, mode, "rf", torch.float32, True, "cuda")


def test_the_plain_calls_node_is_the_eps_function_and_keeps_state_reads_to_the_draw():
    x = torch.randn(5, 2, requires_grad=True)
    eps = torch.randn(5, 2, requires_grad=True)
    r, _ = noisy_clean_batch(x, None, eps, backend="cpu")
    assert type(r.grad_fn).__name__ == "_EagerEpsBackward"
    sigma = torch.tensor(0.3, requires_grad=True)
    r, _ = noisy_clean_batch(x, x, sigma, state=NoiseState(2), backend="cpu")
    assert type(r.grad_fn).__name__ == "_EagerDrawBackward"


class _Sub(torch.Tensor):
    pass


def _general_cases():
    """(name, arguments) the plain path must leave to the general path."""
    x = torch.randn(6, 4)
    e = torch.randn(6, 4)
    yield "3-d batches", (torch.randn(6, 2, 2), torch.randn(6, 2, 2), 0.3, "double", None, "cpu")
    yield "a parameter", (torch.nn.Parameter(x.clone()), x, 0.3, "double", None, "cpu")
    yield "a subclass", (x.as_subclass(_Sub), x, 0.3, "double", None, "cpu")
    yield "an int batch", (x.long(), x.long(), 0.3, "double", None, "cpu")
    yield "shapes differ", (x, torch.randn(6, 5), 0.3, "double", None, "cpu")
    yield "dtypes differ", (x, x.double(), 0.3, "double", None, "cpu")
    yield "empty batch", (x[:0], x[:0], 0.3, "double", None, "cpu")
    yield "empty samples", (x[:, :0], x[:, :0], 0.3, "double", None, "cpu")
    yield "both None", (None, None, 0.3, "double", None, "cpu")
    yield "bad mode", (x, x, 0.3, "triple", None, "cpu")
    yield "eps of another dtype", (x, x, e.double(), "double", None, "cpu")
    yield "eps of the wrong rows", (x, x, e, "half", None, "cpu")
    yield "eps of another shape", (x, x, e[:, :3], "double", None, "cpu")
    yield "eps a parameter", (x, x, torch.nn.Parameter(e.clone()), "double", None, "cpu")
    yield "eps on meta", (x, x, e.to("meta"), "double", None, "cpu")
    yield "negative sigma", (x, x, -0.3, "double", None, "cpu")
    yield "nan sigma", (x, x, float("nan"), "double", None, "cpu")
    yield "int sigma", (x, x, 1, "double", None, "cpu")
    yield "sigma of float64", (x, x, torch.tensor(0.3, dtype=torch.float64), "double", None, "cpu")
    yield "sigma per feature", (x, x, torch.full((4,), 0.3), "double", None, "cpu")
    yield "sigma a parameter", (x, x, torch.nn.Parameter(torch.tensor(0.3)), "double", None, "cpu")
    yield "a string noise", (x, x, "0.3", "double", None, "cpu")
    yield "meta batches", (x.to("meta"), x.to("meta"), e.to("meta"), "double", None, "cpu")
    yield "a state of the wrong shape", (x, x, 0.3, "double", torch.zeros(2, dtype=torch.int64), "cpu")
    yield "a state subclass", (x, x, 0.3, "double", torch.zeros(3, dtype=torch.int64).as_subclass(_Sub), "cpu")


@pytest.mark.parametrize("name,args", list(_general_cases()), ids=[n for n, _ in _general_cases()])
def test_other_calls_go_to_the_general_path(name, args):
    try:
        out = N._plain_call(*args)
    except ValueError as e:  # _state_tensor's own error, which the general path raises alike
        assert "state" in name and "state must be" in str(e)
        return
    assert out is None


@pytest.mark.parametrize("context", ["dual_level", "fake_mode", "no_eager"])
def test_the_plain_call_declines_where_the_eager_path_does(monkeypatch, context):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, e = torch.randn(6, 4), torch.randn(6, 4)
    if context == "no_eager":
        monkeypatch.setattr(N._eager, "ok", lambda *t: False)
    ctx = {"dual_level": fwAD.dual_level(), "fake_mode": FakeTensorMode(allow_non_fake_inputs=True),
           "no_eager": contextlib.nullcontext()}[context]
    with ctx:
        assert N._plain_call(x, x, e, "double", None, "cpu") is None
        assert N._plain_call(x, x, 0.3, "double", None, "cpu") is None


def test_the_general_paths_errors_still_reach_the_caller():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match="noise .eps. must have shape"):
        noisy_clean_batch(x, x, torch.randn(5, 4), backend="cpu")
    with pytest.raises(ValueError, match="must be >= 0"):
        noisy_clean_batch(x, x, -1.0, backend="cpu")
    with pytest.raises(ValueError, match="mode"):
        noisy_clean_batch(x, x, 0.3, "triple", backend="cpu")
    with pytest.raises(TypeError, match="x_fake has dtype"):
        noisy_clean_batch(x, x.double(), 0.3, backend="cpu")
