"""The CPU denoiser's allocation-free paths: BatchNorm written over its GEMM's output (out=y), its backward
over the incoming gradient (dy=dout), and the no-grad forward's two GEMM buffers used in turn. Sizes pass the
C++ kernels' threading threshold (B * N > 4096) and leave a partial 64-column chunk."""
import pytest
import torch

from fastgan.ops import denoiser_generator_loss
from fastgan.ops import _dispatch
from fastgan.ops import denoiser_backends as dk
from fastgan.ops import denoiser_net as dnet
from fastgan.reference import denoiser as ref

pytestmark = pytest.mark.threads(2)  # the kernels' threaded paths, also under pytest-xdist's one thread a worker
B, N = 64, 200  # 12800 elements: two threads; 200 = 3 * 64 + 8 columns


def _layer(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(B, N, generator=g, dtype=dtype) * 3 + 1
    gamma = torch.rand(N, generator=g, dtype=dtype) + 0.5
    bias, beta = torch.randn(N, generator=g, dtype=dtype), torch.randn(N, generator=g, dtype=dtype)
    rm, rv = torch.randn(N, generator=g, dtype=dtype), torch.rand(N, generator=g, dtype=dtype) + 0.5
    return y, bias, gamma, beta, rm, rv


def test_only_the_cpu_kernels_alias():
    assert dk._IN_PLACE == (dk._Cpu,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_bn_forward_in_place_equals_out_of_place(training, dtype):
    y, bias, gamma, beta, rm, rv = _layer(dtype=dtype)
    args = (bias, gamma, beta, rm, rv, training, training, 0.1, 1e-5, True)
    want = dnet._layer_forward(dk._Cpu, y, *args)
    y_in = y.clone()
    got = dnet._layer_forward(dk._Cpu, y_in, *args, out=y_in)
    assert got[0].data_ptr() == y_in.data_ptr()
    for a, b in zip(got, want):  # same arithmetic, element by element (running stats: None in eval mode)
        assert (a is None and b is None) or torch.equal(a, b)
    # and that arithmetic is batch norm + ReLU
    expect = torch.relu(torch.nn.functional.batch_norm(y + bias, rm.clone(), rv.clone(), gamma, beta, training,
                                                       0.1, 1e-5))
    torch.testing.assert_close(got[0], expect)


@pytest.mark.parametrize("training", [True, False])
def test_bn_backward_in_place_equals_out_of_place(training):
    y, bias, gamma, beta, rm, rv = _layer(seed=1)
    out, shift, invstd, _, _ = dnet._layer_forward(dk._Cpu, y, bias, gamma, beta, rm, rv, training, False, 0.1, 1e-5,
                                                   True)
    dout = torch.randn(B, N, generator=torch.Generator().manual_seed(2))
    want = dnet._layer_backward(dk._Cpu, dout, out, y, gamma, shift, invstd, training, True)
    d_in = dout.clone()
    got = dnet._layer_backward(dk._Cpu, d_in, out, y, gamma, shift, invstd, training, True, dy=d_in)
    assert got[0].data_ptr() == d_in.data_ptr()
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def _params(widths, seed=3):
    """Parameters of a functional denoiser whose hidden layers have the given (differing) widths."""
    g = torch.Generator().manual_seed(seed)
    F = widths[0]
    dims = list(widths) + [F]
    weights = [torch.randn(o, i, generator=g) / i ** 0.5 for i, o in zip(dims[:-1], dims[1:])]
    biases = [torch.randn(o, generator=g) for o in dims[1:]]
    gammas = [torch.rand(o, generator=g) + 0.5 for o in dims[1:-1]]
    betas = [torch.randn(o, generator=g) for o in dims[1:-1]]
    return weights, biases, gammas, betas


@pytest.mark.parametrize("widths", [(24, 200, 200, 200), (24, 200, 72, 136, 200), (24, 200)])
def test_generator_term_with_reused_buffers_matches_reference(widths):
    """Depth 3 with one width (the buffers alternate), depth 4 with three widths (each GEMM output shape differs
    from the buffer it would reuse) and depth 1 (one buffer)."""
    weights, biases, gammas, betas = _params(widths)
    h = torch.randn(B, widths[0], generator=torch.Generator().manual_seed(4))
    hf, hf_ref = h.clone().requires_grad_(), h.clone().requires_grad_()
    before = dict(_dispatch.counts)
    loss = denoiser_generator_loss(hf, weights, biases, gammas, betas, backend="cpu")
    loss.backward()
    assert _dispatch.counts[("denoiser_forward", "cpu")] == before.get(("denoiser_forward", "cpu"), 0) + 1
    with torch.no_grad():
        target = ref.functional_forward(h, weights, biases, gammas, betas, None, None, True)
    expected = (hf_ref - target).pow(2).sum(1).mean()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(hf.grad, hf_ref.grad)
    assert torch.equal(h, hf.detach())  # the input is never a buffer


def test_reused_buffers_do_not_alias_the_returned_output():
    weights, biases, gammas, betas = _params((24, 200, 200, 200))
    h = torch.randn(B, 24)
    r1 = dnet._forward_impl(h, weights, biases, gammas, betas, [], [], True, False, 0.0, 1e-5, "cpu")[0]
    keep = r1.clone()
    dnet._forward_impl(h * 2, weights, biases, gammas, betas, [], [], True, False, 0.0, 1e-5, "cpu")
    assert torch.equal(r1, keep)
