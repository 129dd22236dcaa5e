"""The Triton per-feature denoiser kernels' loops over row tiles, run as a GPU runs them. Under the CPU interpreter
they take up to 256 rows a tile, so with the tests' batches each loop ran once; a GPU takes 64. Found by mutation
testing: a BatchNorm backward that kept only its last tile's sums passed every other test. Here the tiles are 8
rows by 16 features, so the loops run several times with ragged last tiles, against the cpu kernels in float64."""
from __future__ import annotations

import pytest
import torch

import fastgan.ops.denoiser  # noqa: F401  (registers torch.ops.fastgan.recon_loss_backward)
from fastgan.ops import bn_relu


@pytest.fixture
def small_steps(monkeypatch):
    from fastgan.kernels import denoiser as kd

    monkeypatch.setattr(kd, "_col_blocks", lambda B, N, device: (8, 16))


def _rand(g, *shape, positive=False):
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    return t.abs() + 0.5 if positive else t


@pytest.mark.triton
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [True, False])
def test_bn_relu_rows_over_several_tiles(small_steps, training, relu):
    """B = 37: five row tiles of 8, the last of 5; N = 20: two feature programs of 16, the last of 4."""
    g = torch.Generator().manual_seed(0)
    B, N = 37, 20
    y, bias, gamma, beta = (_rand(g, *s).requires_grad_() for s in ((B, N), (N,), (N,), (N,)))
    rm, rv, go = _rand(g, N), _rand(g, N, positive=True), _rand(g, B, N)
    got = {}
    for backend in ("cpu", "triton"):
        stats = rm.clone(), rv.clone()
        out = bn_relu(y, bias, gamma, beta, *stats, training=training, relu=relu, backend=backend)
        got[backend] = [out, *stats, *torch.autograd.grad((out * go).sum(), (y, bias, gamma, beta))]
    for a, b in zip(got["triton"], got["cpu"]):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.triton
@pytest.mark.parametrize("with_bias", [True, False])
def test_recon_loss_backward_rows_over_several_tiles(small_steps, with_bias):
    """The reconstruction loss's backward (the generator term's, and the layer op's under torch.compile), whose
    output-bias gradient sums over the row tiles."""
    g = torch.Generator().manual_seed(1)
    B, N = 37, 20
    go, y, target = _rand(g, B), _rand(g, B, N), _rand(g, B, N)
    bias = _rand(g, N) if with_bias else None
    cpu, triton = (torch.ops.fastgan.recon_loss_backward(go, y, bias, target, with_bias, backend)
                   for backend in ("cpu", "triton"))
    for a, b in zip(triton, cpu):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
