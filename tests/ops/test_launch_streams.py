"""Every CUDA C++ and Triton launch helper, called with tensors on cuda:1 while cuda:0 is current, makes cuda:1
current around the launch, hands the C++ kernels cuda:1's current stream, and gives cuda:0 back: on CPU, with
torch.cuda's device context and current_stream replaced by a stand-in that keeps a current device and a stream
handle per device, and fake tensors on cuda:1 (no kernel runs). tests/ops/test_device_guard.py runs the ops on a
second GPU where there is one; no lent machine has had two."""
import importlib

import pytest
import torch

import fastgan._ext as _ext

DEV = torch.device("cuda", 1)
STREAM = {0: 0xA000, 1: 0xB001}          # per-device "current stream" handles


class FT:
    """A fake (contiguous) tensor on cuda:1: what the launch helpers read from their arguments."""

    def __init__(self, *shape, dtype=torch.float32):
        self.shape, self.dtype, self.device = torch.Size(shape), dtype, DEV

    def data_ptr(self):
        return id(self)

    def dim(self):
        return len(self.shape)

    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    def stride(self, d=None):
        st, acc = [], 1
        for s in reversed(self.shape):
            st.append(acc)
            acc *= max(s, 1)
        st = tuple(reversed(st))
        return st if d is None else st[d]

    def new_empty(self, *shape, dtype=None):
        return FT(*(shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape),
                  dtype=dtype or self.dtype)


class FakeCuda:
    def __init__(self):
        self.current = 0
        self.calls = []

    def device(self, d):
        # a class with __enter__/__exit__ as torch.cuda.device is (a generator-based context manager would give
        # the device back when garbage-collected, hiding a guard left entered)
        fake = self

        class Guard:
            def __init__(self):
                self.index = torch.device(d).index if not isinstance(d, int) else d

            def __enter__(self):
                self.before, fake.current = fake.current, (fake.current if self.index is None else self.index)

            def __exit__(self, *exc):
                fake.current = self.before

        return Guard()

    def current_stream(self, device=None):
        idx = self.current if device is None else torch.device(device).index
        idx = self.current if idx is None else idx
        return type("S", (), {"cuda_stream": STREAM[idx]})()


@pytest.fixture
def fake(monkeypatch):
    f = FakeCuda()
    monkeypatch.setattr(torch.cuda, "device", f.device)
    monkeypatch.setattr(torch.cuda, "current_stream", f.current_stream)

    class C:
        def __getattr__(self, name):
            def record(*args):
                f.calls.append((name, f.current, args))
            return record

    monkeypatch.setattr(_ext, "C", lambda: C())
    return f


def _check_cpp(fake, stream_pos=-1):
    assert fake.calls, "no C++ launch recorded"
    for name, cur, args in fake.calls:
        assert cur == 1, f"{name} launched with cuda:{cur} current, tensors on cuda:1"
        assert args[stream_pos] == STREAM[1], f"{name} got stream {args[stream_pos]:#x}, want cuda:1's"
    assert fake.current == 0, "the guard was not released"


def test_penalty_cuda(fake):
    P = importlib.import_module("fastgan.ops.penalty")
    g, l = FT(4, 3), FT(4)
    P._fwd_cuda(g, l, 0, FT(4))
    P._bwd_cuda(FT(4), g, l, 1, FT(4, 3), FT(4))
    P._terms_cuda(g, l, 1, 2, 2, 4, FT(4), FT(4), FT(4, 3))
    _check_cpp(fake)


def test_noise_cuda(fake):
    from fastgan.ops import noise_runners as N
    x, st = FT(4, 6), FT(3, dtype=torch.int64)
    N._fwd_cuda(x, x, None, None, 0.5, st, True, FT(2, dtype=torch.int64), FT(8, 6), FT(8, 6), 1, False)
    N._fwd_cuda(None, x, None, None, 0.5, st, True, FT(2, dtype=torch.int64), None, FT(8, 6), 1, False)
    N._bwd_cuda(FT(8, 6), None, st, FT(4, 6), None, None, FT(4, 1), 4, 1, False)
    _check_cpp(fake)


def test_nt_losses_cuda(fake):
    L = importlib.import_module("fastgan.ops.nt_losses")
    lr, lf = FT(8), FT(8)
    L._fwd_cuda(lr, lf, None, 0.3, 0, 0, FT(), None, None)
    L._bwd_cuda(FT(), None, None, lr, lf, None, 0.3, 0, 0, FT(8), FT(8))
    _check_cpp(fake)


def test_bn_closed_form_cuda(fake):
    from fastgan.ops import bn_closed_form as B
    k = B._KERNELS["cuda"]
    h = FT(4, 3, 5)
    k.stats(h, 1e-5, FT(4, 3, 5), FT(3))
    k.centered(h, h, FT(3), FT(3), FT(4, 3, 5), FT(3), FT(3))
    k.vjp(h, h, h, h, FT(3), FT(3), FT(3), FT(3), FT(4, 3, 5), FT(3), FT(3))
    _check_cpp(fake)


def test_denoiser_cuda_single_and_whole_network(fake):
    from fastgan.ops import denoiser_backends as D
    y = FT(4, 6)
    D._Cuda.bn_fwd(y, None, FT(6), FT(6), FT(6), FT(6), FT(4, 6), FT(6), FT(6), FT(6), FT(6), True, True, .1,
                   1e-5, True)
    D._Cuda.recon_bwd(FT(4), y, None, y, FT(4, 6), None, 0)
    with D._launch("cuda", y) as kern:
        assert fake.current == 1
        kern.corrupt(y, y, 0.1, FT(4, 6))
        kern.recon_fwd(y, FT(6), y, FT(4))
    _check_cpp(fake)


# ---------------------------------------------------------------- Triton: the launch happens under the guard

TRITON = [
    ("penalty", "forward", lambda P: P._fwd_triton(FT(4, 3), FT(4), FT(4), 0), "fastgan.ops.penalty"),
    ("penalty", "backward", lambda P: P._bwd_triton(FT(4), FT(4, 3), FT(4), 0, FT(4, 3), FT(4)),
     "fastgan.ops.penalty"),
    ("penalty", "terms", lambda P: P._terms_triton(FT(4, 3), FT(4), 1, 2, 2, 4, FT(4), FT(4), FT(4, 3)),
     "fastgan.ops.penalty"),
    ("nt_losses", "forward", lambda L: L._fwd_triton(FT(8), FT(8), None, .3, 0, 0, FT(), None, None),
     "fastgan.ops.nt_losses"),
    ("nt_losses", "backward",
     lambda L: L._bwd_triton(FT(), None, None, FT(8), FT(8), None, .3, 0, 0, FT(8), FT(8)), "fastgan.ops.nt_losses"),
    ("noise", "forward", lambda N: N._fwd_triton(FT(4, 6), None, None, None, .5, FT(3, dtype=torch.int64), True,
                                                 FT(2, dtype=torch.int64), FT(8, 6), None, 1, False),
     "fastgan.ops.noise_runners"),
    ("noise", "backward", lambda N: N._bwd_triton(None, FT(8, 6), None, None, FT(4, 6), None, None, 4, 1, False),
     "fastgan.ops.noise_runners"),
    ("bn_closed_form", "stats", lambda B: B._KERNELS["triton"].stats(FT(4, 3, 5), 1e-5, FT(4, 3, 5), FT(3)),
     "fastgan.ops.bn_closed_form"),
    ("denoiser", "corrupt", lambda D: D._Triton.corrupt(FT(4, 6), FT(4, 6), .1, FT(4, 6)),
     "fastgan.ops.denoiser_backends"),
    ("denoiser", "bn_forward", lambda D: D._Triton.bn_fwd(*[FT(4, 6)] * 11, True, True, .1, 1e-5, True),
     "fastgan.ops.denoiser_backends"),
]


@pytest.mark.parametrize("kmod,fn,call,opsmod", TRITON, ids=[f"{a}.{b}" for a, b, _, _ in TRITON])
def test_triton_launch_is_under_the_tensors_device(fake, monkeypatch, kmod, fn, call, opsmod):
    pytest.importorskip("triton")
    k = importlib.import_module(f"fastgan.kernels.{kmod}")
    seen = []
    monkeypatch.setattr(k, fn, lambda *a, **kw: seen.append(fake.current))
    call(importlib.import_module(opsmod))
    assert seen == [1], f"kernels.{kmod}.{fn} launched with cuda:{seen} current (tensors on cuda:1)"
    assert fake.current == 0


@pytest.mark.parametrize("fn", ["loss_forward", "loss_backward", "forward"])
def test_fused_gemm_denoiser_launch_is_guarded(fake, monkeypatch, fn):
    pytest.importorskip("triton")
    from fastgan.ops import denoiser_backends as DB, denoiser_net as DN
    seen = []

    class G:
        def __getattr__(self, name):
            def rec(*a, **kw):
                seen.append(fake.current)
                return (None, None, None) if name != "loss_backward" else (None,) * 6
            return rec

    monkeypatch.setenv(DB.TRITON_GEMM_ENV, "tl.dot")
    monkeypatch.setattr(DN, "_gemm", lambda dtype: G())
    monkeypatch.setattr(DN, "dot_precision", lambda t: None)
    h = FT(4, 6)
    if fn == "loss_forward":
        DN._loss_forward_impl(h, h, .1, [], [], [], [], [], [], True, .1, 1e-5, "triton")
    elif fn == "loss_backward":
        DN._loss_backward_impl(FT(4), h, .1, [], [], [], [], True, True, True, "triton")
    else:
        DN._forward_impl(h, [], [], [], [], [], [], True, True, .1, 1e-5, "triton")
    assert seen == [1]


def test_a_failed_stream_read_gives_the_callers_device_back(fake, monkeypatch):
    # __exit__ is not called when __enter__ raises: the guard entered there must be left there
    from fastgan.ops import denoiser_backends as D

    def broken(device):
        raise RuntimeError("no stream")

    monkeypatch.setattr(_ext, "stream_handle", broken)
    with pytest.raises(RuntimeError, match="no stream"):
        with D._launch("cuda", FT(4, 6)):
            pass
    assert fake.current == 0
