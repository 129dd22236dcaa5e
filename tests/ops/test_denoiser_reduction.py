"""The denoiser's loss reduced inside its eager Functions: autograd hands their backward the mean's (or sum's)
gradient, and the loss kernel's backward divides it by B itself (go_div), where autograd's MeanBackward would
launch a division: the same bits as that division followed by the per-row kernel, on every backend, with the
division's rounding of the device each kernel runs on (torch on a GPU multiplies by the rounded reciprocal)."""
import pytest
import torch

from fastgan import _ext
from fastgan.ops import Denoiser, _dispatch, denoiser_backends as dk
from fastgan.reference import denoiser as ref

from denoiser_helpers import delta, make_pair, mean_backward_rows, state

BACKENDS = ["reference", "cpu", "cuda", pytest.param("triton", marks=pytest.mark.triton)]  # cuda: emulated


def _operands(B, N, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype) for s in ((B, N), (N,), (B, N))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B", [1, 7, 37])
def test_a_shared_gradient_gives_the_bits_of_its_per_row_division(backend, dtype, B):
    """recon_bwd(go, ..., go_div) against recon_bwd(MeanBackward's rows, ..., 0): equal, for B (mean) and 1 (sum),
    B = 7 and 37 being where go / B is inexact and go * (1 / B) differs from it. The emulated CUDA kernels divide as
    torch does on a GPU."""
    _assert_shared_equals_per_row(dk._KERNELS[backend], *_operands(B, 45, dtype), on_gpu=backend == "cuda")


def _assert_shared_equals_per_row(kern, y, bias, target, on_gpu):
    B, N = y.shape
    go = torch.tensor(0.37, dtype=y.dtype, device=y.device)
    for go_div in (B, 1):
        got, want = (torch.empty_like(y) for _ in range(2))
        db_got, db_want = (y.new_empty(N) for _ in range(2))
        kern.recon_bwd(go, y, bias, target, got, db_got, go_div)
        kern.recon_bwd(mean_backward_rows(go, go_div, B, on_gpu), y, bias, target, want, db_want)
        assert torch.equal(got, want) and torch.equal(db_got, db_want), (go_div, (got - want).abs().max())


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B", [7, 37])
def test_the_gpu_rounding_under_the_interpreter_triton(monkeypatch, dtype, B):
    """The product with the rounded reciprocal the Triton kernel takes on a GPU (RECIP), run by the interpreter."""
    from fastgan.kernels import denoiser as layers

    monkeypatch.setattr(layers, "reciprocal_go", lambda t: True)
    _assert_shared_equals_per_row(dk._KERNELS["triton"], *_operands(B, 45, dtype), on_gpu=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_divides_a_gradient_by_a_number_as_mean_backward_rows_says(dtype):
    """The premise of the bits above, on the CPU: MeanBackward's rows are go / B, and B = 7 tells the GPU's rounding
    (go times the rounded 1 / B) apart from it in both dtypes."""
    x = torch.zeros(7, dtype=dtype, requires_grad=True)
    go = torch.tensor(0.37, dtype=dtype)
    rows, = torch.autograd.grad(x.mean(), x, go)
    assert torch.equal(rows, mean_backward_rows(go, 7, 7, on_gpu=False))
    assert not torch.equal(rows, mean_backward_rows(go, 7, 7, on_gpu=True))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_on_a_gpu_torch_divides_a_gradient_by_a_number_as_mean_backward_rows_says(dtype):
    """The GPU's premise (ATen's div_true_kernel_cuda: a CPU-scalar divisor becomes a product with its reciprocal):
    if a torch release changed it, this names the cause of the bit tests' failures."""
    x = torch.zeros(37, dtype=dtype, device="cuda", requires_grad=True)
    go = torch.tensor(0.37, dtype=dtype, device="cuda")
    for B in (7, 37):
        rows, = torch.autograd.grad(x[:B].mean(), x, go)
        assert torch.equal(rows[:B], mean_backward_rows(go, B, B, on_gpu=True)), B


def test_a_negative_go_div_is_refused():
    y, bias, target = _operands(3, 4, torch.float32)
    with pytest.raises(ValueError, match="go_div must be >= 0"):
        _ext.C().recon_loss_backward_cpu(*dk._ptrs(torch.ones(1), y, bias, target, torch.empty_like(y), None),
                                         _ext.DTYPE_CODES[torch.float32], 3, 4, -1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_reduction_matches_the_reference(backend, reduction):
    den, net = make_pair(n=12, hidden=16, depth=2, backend=backend, seed=9)
    h = torch.randn(11, 12, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(11, 12, dtype=torch.float64)
    h2 = h.detach().clone().requires_grad_(True)
    go = torch.rand(11, dtype=torch.float64) if reduction == "none" else None
    before = dict(_dispatch.counts)
    loss = den.loss(h, noise, detach=False, reduction=reduction)
    loss.backward(go)
    assert delta(before) == {("denoiser_loss", backend): 1, ("denoiser_loss_backward", backend): 1}
    per = ref.denoiser_loss(net, h2, noise, reduction="none")
    want = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    want.backward(go)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-9, atol=1e-11)
    expected = state(net)
    for k, v in state(den.net).items():
        torch.testing.assert_close(v, expected[k], rtol=1e-9, atol=1e-11, msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_an_empty_batch_in_eval_mode(backend, reduction):
    """B = 0 (eval mode): the mean is NaN as torch's, the gradients empty; the mean's shared gradient is go / 1
    there (no row reads it), not a per-row gradient the 0-d go cannot give."""
    den, _ = make_pair(n=12, hidden=16, depth=2, backend=backend, training=False, seed=2)
    h = torch.empty(0, 12, dtype=torch.float64, requires_grad=True)
    loss = den.loss(h, detach=False, reduction=reduction)
    (loss.sum() if reduction == "none" else loss).backward()
    assert loss.shape == ((0,) if reduction == "none" else ())
    assert (loss.isnan() if reduction == "mean" else loss.sum() == 0).all()
    assert h.grad.shape == (0, 12) and all(p.grad is not None for p in den.parameters())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_generator_term_reduces_in_its_function_too(reduction):
    den = Denoiser(12, 16, 2, dtype=torch.float64, backend="cpu")
    h = torch.randn(9, 12, dtype=torch.float64, requires_grad=True)
    h2 = h.detach().clone().requires_grad_(True)
    den.generator_loss(h, reduction=reduction).backward()
    per = den.generator_loss(h2, reduction="none")
    (per.mean() if reduction == "mean" else per.sum()).backward()
    assert torch.equal(h.grad, h2.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_second_order_through_a_reduced_loss(reduction):
    """create_graph=True backwards widen the shared gradient to a row each (differentiably) for the torch
    recomputation: a gradient penalty on the denoiser's parameters matches the reference's."""
    den, net = make_pair(n=6, hidden=8, depth=1, backend="cpu", seed=4)
    h = torch.randn(5, 6, dtype=torch.float64)
    noise = torch.randn(5, 6, dtype=torch.float64)
    outs = []
    for module, loss in ((den.net, lambda: den.loss(h, noise, reduction=reduction)),
                         (net, lambda: ref.denoiser_loss(net, h, noise, reduction=reduction))):
        grads = torch.autograd.grad(loss(), list(module.parameters()), create_graph=True)
        outs.append(torch.autograd.grad(sum(g.pow(2).sum() for g in grads), list(module.parameters())))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_on_a_gpu_a_shared_gradient_gives_the_bits_of_its_per_row_division(backend, dtype):
    for B in (7, 37):
        _assert_shared_equals_per_row(dk._KERNELS[backend], *(t.cuda() for t in _operands(B, 300, dtype)),
                                      on_gpu=True)
