"""The BatchNorm layers' num_batches_tracked, counted by each layer's BatchNorm kernel on the eager paths (no launch of
its own), by one _foreach_add_ where the kernels do not (the custom ops under torch.compile, which may not mutate
their inputs): after any sequence of calls, the counts nn.BatchNorm1d keeps (Triton's tl.dot GEMMs count in their
own kernels: test_denoiser_gemm_folds.py)."""
import importlib

import pytest
import torch
from torch import nn

from fastgan.ops import denoiser_backends as dk, denoiser_eager, denoiser_net
from fastgan.reference import denoiser as ref

from denoiser_helpers import make_pair

BACKENDS = ["reference", "cpu", "cuda", pytest.param("triton", marks=pytest.mark.triton)]  # cuda: emulated


def _foreach_adds(monkeypatch) -> list:
    """The length of each count list that count_batches adds 1 to (in one _foreach_add_), patched where it is called.
    Replacing torch._foreach_add_ itself (until 2026-12-05) made a later compile in the same process fail ("Attempted
    to call function marked as skipped": test_denoiser.py's test_torch_compile_fullgraph after this file): Dynamo
    keeps torch's functions by identity, listed once per process, and a list made while one was replaced leaves the
    real one out."""
    calls = []

    def counted(counts):
        if counts:
            calls.append(len(counts))
        return denoiser_net.count_batches(counts)

    for module in (importlib.import_module("fastgan.ops.denoiser"), denoiser_eager):
        monkeypatch.setattr(module, "count_batches", counted)
    return calls


def _counts(module) -> list:
    return [int(m.num_batches_tracked) for m in module.modules() if isinstance(m, nn.BatchNorm1d)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("custom_ops", [False, True], ids=["eager", "custom-ops"])
def test_every_call_counts_as_nn_batchnorm1d_does(monkeypatch, backend, custom_ops):
    den, net = make_pair(n=12, hidden=16, depth=3, backend=backend, seed=1)
    if custom_ops:
        monkeypatch.setattr(denoiser_eager, "_compiling", lambda: True)
    adds = _foreach_adds(monkeypatch)
    h = torch.randn(9, 12, dtype=torch.float64)
    x = h.clone().requires_grad_(True)
    den.loss(h).backward()  # the training loss
    den(x).sum().backward()  # r(h) with gradients
    with torch.no_grad():
        den(h)  # r(h) without
    den.generator_loss(h)  # counts nothing: r's statistics are left as they were
    den.eval()
    den.loss(h)
    den(h)
    monkeypatch.undo()
    with torch.no_grad():
        for _ in range(3):
            net(h)
    assert _counts(den.net) == _counts(net) == [3, 3, 3]
    assert adds == ([3, 3, 3] if custom_ops else []), adds


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cumulative_average_reads_the_count_before_the_batch(backend):
    """momentum=None: the factor is 1 / (batches counted before this one + 1), as nn.BatchNorm1d's: the running
    statistics after three steps equal the reference's."""
    den, net = make_pair(n=6, hidden=8, depth=2, backend=backend, seed=3)
    for m in [*den.net.modules(), *net.modules()]:
        if isinstance(m, nn.BatchNorm1d):
            m.momentum = None
    den = type(den).from_sequential(den.net, backend=backend)  # adopts the layers' momentum
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        h, noise = (torch.randn(5, 6, dtype=torch.float64, generator=g) for _ in range(2))
        den.loss(h, noise)
        ref.denoiser_loss(net, h, noise)
    assert _counts(den.net) == _counts(net) == [3, 3]
    for a, b in zip(den.net.buffers(), net.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=pytest.mark.triton)])
def test_a_count_without_features_is_refused(backend):
    y = torch.empty(4, 0)
    e = torch.empty(0)
    count = torch.zeros((), dtype=torch.int64)
    with pytest.raises(ValueError, match="batch count needs features"):
        dk._KERNELS[backend].bn_fwd(y, None, e, e, None, None, torch.empty_like(y), e, e.clone(), None, None, True,
                                    False, 0.1, 1e-5, True, count)
    assert int(count) == 0


def test_the_cpu_kernel_counts_once_however_many_threads():
    """The CPU forward splits a wide layer across threads; the count is added once, outside them."""
    y = torch.randn(64, 8192)
    n = y.shape[1]
    gamma, beta = torch.ones(n), torch.zeros(n)
    count = torch.zeros((), dtype=torch.int64)
    out, shift, invstd = torch.empty_like(y), torch.empty(n), torch.empty(n)
    dk._Cpu.bn_fwd(y, None, gamma, beta, None, None, out, shift, invstd, None, None, True, False, 0.1, 1e-5, True,
                   count)
    assert int(count) == 1


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_on_a_gpu_the_kernels_count_each_batch_once(monkeypatch, backend):
    """The CUDA kernel's one thread of the grid and Triton's scalar atomic in program 0, on a device: several blocks
    (300 features) and programs, a count of exactly 1 a call."""
    den, _ = make_pair(n=300, hidden=300, depth=2, backend=backend, dtype=torch.float32, seed=4)
    den = den.cuda()
    adds = _foreach_adds(monkeypatch)
    h = torch.randn(64, 300, device="cuda")
    for _ in range(3):
        den.loss(h).backward()
    with torch.no_grad():
        den(h)
    assert _counts(den.net) == [4, 4] and adds == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_wide_layers_count_once_whatever_their_programs(backend):
    """Layers of 200 features, more than one program or block of a BatchNorm kernel (Triton: 64 features a program
    on CPU tensors, 16 or 32 on a GPU; CUDA: a block a column tile): each call still counts once (the 16-feature
    layers above run in one program, where a count in every program passed)."""
    den, net = make_pair(n=12, hidden=200, depth=2, backend=backend, seed=2)
    h = torch.randn(5, 12, dtype=torch.float64)
    den.loss(h).backward()
    with torch.no_grad():
        den(h)
        for _ in range(2):
            net(h)
    assert _counts(den.net) == _counts(net) == [2, 2]
