"""The CPU benchmarks' arms do the same work: each pair goals.py compares (fused / baseline) computes the same
gradients from the same inputs, on small sizes, the timing left out; and the eager penalty op's bytes_moved counts
the tensors its step reads and writes."""
import pytest
import torch

from denoiser_helpers import state
from helpers import bench_module


class _Once:
    """A stand-in for pytest-benchmark's fixture: runs the step once, times nothing."""

    stats = None

    def __init__(self):
        self.extra_info = {}

    def __call__(self, fn):
        fn()


def _nbytes(ts):
    return sum(t.numel() * t.element_size() for t in ts)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("B,shape", [(64, (3,)), (4, (3, 8, 8))])
def test_penalty_op_bytes_moved_counts_what_the_step_reads_and_writes(monkeypatch, backend, B, shape):
    """The forward reads g and the logits, the backward reads them again and writes their gradients (the mean is a
    scalar): at F = 3 the logits' three passes are a quarter of the traffic, which bytes_moved left out."""
    bp = bench_module("bench_penalty", "arms_bench_penalty")
    seen = []
    real = torch.autograd.grad

    def grad(outputs, inputs, *a, **k):
        out = real(outputs, inputs, *a, **k)
        seen.append((inputs, out))
        return out

    monkeypatch.setattr(torch.autograd, "grad", grad)
    b = _Once()
    bp.test_op_forward_backward(b, "cpu", backend, B, shape)
    (inputs, grads), = seen
    assert b.extra_info["bytes_moved"] == 2 * _nbytes(inputs) + _nbytes(grads)


def _grads(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters()}


def _close(a: dict, b: dict, skip=()):
    assert a.keys() == b.keys()
    for n in a:
        if n not in skip:
            torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("arch,B", [("mlp", 16), ("dcgan32", 4)])
def test_d_update_arms_compute_the_same_gradients(monkeypatch, arch, B):
    """bench_penalty.d_update_step: the fused js_penalty's update and the reference's (optimizer step left out:
    Adam would turn the round-off in the zero gradients of conv biases before BatchNorm into steps of lr)."""
    bp = bench_module("bench_penalty", "arms_bench_penalty")
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: None)
    grads = {}
    for backend in ("reference", "cpu"):
        step = bp.d_update_step("cpu", arch, B, backend)
        D = next(c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, torch.nn.Module))
        step()
        grads[backend] = _grads(D)
    before_bn = {f"{i}.bias" for i in (2, 5)} if arch == "dcgan32" else set()
    _close(grads["cpu"], grads["reference"], skip=before_bn)


def test_denoiser_loss_step_arms_compute_the_same_gradients():
    bd = bench_module("bench_denoiser", "arms_bench_denoiser")
    out = {}
    for impl in ("reference", "cpu"):
        den, net, h, noise = bd._setup("cpu", impl, 16, 2, 8)
        bd.loss_step(impl, den, net, h, noise)
        out[impl] = state(net if impl == "reference" else den.net)  # every gradient and buffer
    _close(out["cpu"], out["reference"])


def test_nt_losses_arms_compute_the_same_gradients():
    """bench_noise.py's A/B steps: the fused nt_losses and the plain-torch one, the same loss, weights' gradients."""
    bn = bench_module("bench_noise", "arms_bench_noise")
    out = {}
    for impl in ("torch", "cpu"):
        step = bn._loss_step(impl, 64, True)
        cells = [c.cell_contents for c in step.__closure__]
        lr, lf = (t for t in cells if isinstance(t, torch.Tensor) and t.requires_grad)
        seen = []
        real = torch.autograd.grad
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.autograd, "grad", lambda o, i, *a, **k: seen.append(real(o, i, *a, **k)))
            step()
        out[impl] = seen[0]
    for a, b in zip(out["cpu"], out["torch"]):
        torch.testing.assert_close(a, b)
