"""What the Triton backend's fused-GEMM path (FASTGAN_DENOISER_TRITON_GEMM=tl.dot) does inside its GEMMs that a torch
op launched for before: each hidden layer's num_batches_tracked, added by program (0, 0) of the GEMM above the layer
(was a _foreach_add_), and the reduced loss's gradient go[0] / go_div, divided in the backward GEMMs' loss-gradient
prologue (was autograd's MeanBackward division into a row each): the counts nn.BatchNorm1d keeps and the bits of
that division on the device's rounding, over grids of many programs. (Test names end in _triton: on a machine
with a GPU, the CPU-tensor cases skip, the interpreter not running there: tests/conftest.py.)"""
import copy

import pytest
import torch

from fastgan.ops import _dispatch

from denoiser_helpers import delta, make_pair, mean_backward_rows
from ops.test_denoiser_batch_count import _counts, _foreach_adds
from ops.test_denoiser_gemm import no_layer_kernels, small_tiles, tl_dot_gemms  # noqa: F401  (fixtures)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
def test_the_gemms_count_each_batch_once_triton(monkeypatch, device, small_tiles, no_layer_kernels):  # noqa: F811
    """16 x 16 tiles: every layer's GEMM runs 3 x 3 programs (B = 37, 40 features), one of which counts."""
    den, net = make_pair(n=20, hidden=40, depth=3, backend="triton", seed=1)
    den, net = den.to(device), net.to(device)
    adds = _foreach_adds(monkeypatch)
    h = torch.randn(37, 20, dtype=torch.float64, device=device)
    before = dict(_dispatch.counts)
    den.loss(h).backward()
    with torch.no_grad():
        den(h)  # the whole-network GEMM forward
    den.eval()
    den.loss(h)
    with torch.no_grad():
        den(h)
    assert delta(before)[("denoiser_loss", "triton")] == 2
    monkeypatch.undo()
    with torch.no_grad():
        for _ in range(2):
            net(h)
    assert _counts(den.net) == _counts(net) == [2, 2, 2]
    assert adds == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_a_reduced_loss_gives_the_bits_of_its_per_row_division_triton(device, dtype, reduction,
                                                                      small_tiles):  # noqa: F811
    """den.loss(reduction=...).backward() against the per-sample loss reduced by torch (MeanBackward divides go into
    a row each, the GEMMs read those rows): every gradient bit for bit, h's too (the input GEMM's loss gradient).
    B = 37: go / B is inexact."""
    def by_torch(per, go):
        (per.mean() if reduction == "mean" else per.sum()).backward(go)

    _assert_reduced_matches_per_sample(device, dtype, 37, reduction, by_torch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_gpu_rounding_of_the_shared_gradient_under_the_interpreter_triton(monkeypatch, dtype,
                                                                              small_tiles):  # noqa: F811
    """On a GPU the GEMMs take go times the rounded 1 / B (RECIP), as torch's MeanBackward there: forced here, the
    gradients equal those of the per-sample loss backpropagated with those rows (B = 7: 1 ulp off go / B)."""
    from fastgan.kernels import denoiser_gemm

    monkeypatch.setattr(denoiser_gemm, "reciprocal_go", lambda t: True)
    _assert_reduced_matches_per_sample("cpu", dtype, 7, "mean",
                                       lambda per, go: per.backward(mean_backward_rows(go, 7, 7, on_gpu=True)))


def _assert_reduced_matches_per_sample(device, dtype, B, reduction, backward_per_sample):
    """den.loss(reduction=...).backward(go) against a twin's per-sample loss taken back by
    backward_per_sample(per, go): every gradient, h's too (the input GEMM's loss gradient), bit for bit."""
    den, _ = make_pair(n=20, hidden=40, depth=2, dtype=dtype, backend="triton", seed=6)
    den = den.to(device)
    twin = copy.deepcopy(den)
    g = torch.Generator().manual_seed(2)
    h = torch.randn(B, 20, generator=g, dtype=dtype).to(device).requires_grad_()
    noise = torch.randn(B, 20, generator=g, dtype=dtype).to(device)
    h2 = h.detach().clone().requires_grad_()
    go = torch.tensor(0.37, dtype=dtype, device=device)  # not 1: go * (1 / B) would give go / B's bits
    den.loss(h, noise, detach=False, reduction=reduction).backward(go)
    backward_per_sample(twin.loss(h2, noise, detach=False, reduction="none"), go)
    assert torch.equal(h.grad, h2.grad)
    for (k, p), p2 in zip(den.named_parameters(), twin.parameters()):
        assert torch.equal(p.grad, p2.grad), k
