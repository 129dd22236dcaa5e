"""bench_denoiser.gemms_step runs the GEMMs of the fused denoiser's loss step and nothing else: bench_graph_step.py
divides the reference's time by its time to bound what the fused step can gain, which holds only while the two
run the same GEMMs. Checked on CPU, for the "cpu" backend and the "cuda" one (its kernels emulated; its GEMMs are
torch's, as on a GPU)."""
import pytest
import torch
from helpers import bench_module
from torch.utils._python_dispatch import TorchDispatchMode

from fastgan.ops import Denoiser

bd = bench_module("bench_denoiser", "bench_denoiser_for_gemms")
_GEMMS = {"aten.mm", "aten.addmm", "aten.bmm"}


class _Gemms(TorchDispatchMode):
    """(op, operands' shapes, operands' strides) of each GEMM run inside it, in order; the op without its overload
    (the cpu backend writes some products into given buffers, mm.out, where the cuda one takes a new one)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func._overloadpacket) in _GEMMS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            self.calls.append((str(func._overloadpacket), [tuple(t.shape) for t in tensors],
                               [t.stride() for t in tensors]))
        return func(*args, **(kwargs or {}))


def _recorded(step, monkeypatch):
    from fastgan.ops import denoiser_eager

    # the eager Functions, as a step runs them outside any dispatch mode (under one the custom ops would run)
    monkeypatch.setattr(denoiser_eager, "_custom_ops", lambda *tensors: False)
    step()  # warm-up, as the benchmarks'
    with _Gemms() as mode:
        step()
    return mode.calls


@pytest.mark.parametrize("backend", ["cpu", "cuda"])  # cuda: its C++ kernels emulated on CPU, its GEMMs torch's
@pytest.mark.parametrize("n_h,hidden,depth,B", [(16, None, 1, 8), (24, None, 3, 40), (12, 20, 2, 6)])
def test_gemms_step_runs_the_fused_loss_step_s_gemms(monkeypatch, n_h, hidden, depth, B, backend):
    torch.manual_seed(0)
    den = Denoiser(n_h, hidden, depth=depth, backend=backend)
    h, noise = torch.randn(B, n_h), torch.randn(B, n_h)
    fused = _recorded(lambda: bd.loss_step(backend, den, None, h, noise), monkeypatch)
    # a forward GEMM per layer, an input gradient per hidden layer, the weight gradients: on the cuda backend one
    # bmm when two or more weights share a shape (n_features == n_h: all of them), else (and on the cpu backend)
    # one GEMM each
    batched = depth + 1 if hidden is None and backend == "cuda" else 0
    assert len(fused) == (depth + 1) + depth + (depth + 1 - batched) + bool(batched)
    assert [c[0] for c in fused].count("aten.bmm") == bool(batched)
    assert _recorded(bd.gemms_step(den, h, backend), monkeypatch) == fused


def test_the_benchmark_setup_s_step_too(monkeypatch):
    den, net, h, noise = bd._setup("cpu", "cpu", 32, 2, 16)
    assert _recorded(bd.gemms_step(den, h), monkeypatch) == \
        _recorded(lambda: bd.loss_step("cpu", den, net, h, noise), monkeypatch)


def test_a_transposed_operand_is_told_apart():
    """Square weights: a transpose changes only the strides, which the record holds."""
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    with _Gemms() as a:
        torch.mm(x, w.t())
    with _Gemms() as b:
        torch.mm(x, w)
    assert a.calls != b.calls
