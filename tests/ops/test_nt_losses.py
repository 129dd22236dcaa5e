"""NTGAN's mu-weighted clean/noisy losses (issue 5): every backend against the reference, gradients to
third order, the formulas of Algorithm 1, the JS weights, bad inputs, backend selection, and both NTGAN ops
in a small training loop written the way a user would."""
import copy
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from fastgan.ops import BackendUnavailable, NoiseState, noisy_clean_batch, nt_losses
from fastgan.reference import nt_losses as ref
from fastgan.reference import penalty as ref_penalty
from helpers import assert_close_to_oracle, backend_calls, gpu_division

CPU_BACKENDS = ["reference", "cpu", "triton", "cuda"]
OP = "nt_losses"


def _logits(n_real, n_fake, dtype=torch.float32, seed=0, scale=3.0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    lr = (scale * torch.randn(n_real, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)
    lf = (scale * torch.randn(n_fake, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)
    return lr, lf


def _oracle(lr, lf, mu, loss, reduction, js):
    return ref.nt_losses(lr, lf, mu, loss, reduction, js)


def _to64(t):
    return t.detach().double().requires_grad_(True)


# ------------------------------------------------------------------ every backend vs the reference (fp32)

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("loss,js", [("d", False), ("d", True), ("g", False)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [2, 64, 1030])
def test_fp32_matches_reference(backend, loss, js, reduction, n):
    lr, lf = _logits(n, n, requires_grad=True)
    mu = 0.37
    gen = torch.Generator().manual_seed(1)
    up = [torch.tensor(1.3)] + ([torch.randn(n, generator=gen), torch.randn(n, generator=gen)] if js else [])

    def run(which, a, b):
        out = (_oracle(a, b, mu, loss, reduction, js) if which == "oracle"
               else nt_losses(a, b, mu, loss=loss, reduction=reduction, js_weights=js, backend=which))
        outs = list(out) if js else [out]
        total = sum((o * u.to(o.dtype)).sum() for o, u in zip(outs, up))
        leaves = (a, b) if loss == "d" else (b,)
        return outs + list(torch.autograd.grad(total, leaves))

    impl = run(backend, lr, lf)
    r32 = run("oracle", lr, lf)
    r64 = run("oracle", _to64(lr), _to64(lf))
    for k, (a, b, c) in enumerate(zip(impl, r32, r64)):
        assert a.dtype == torch.float32
        assert_close_to_oracle(a, b, c, name=f"{backend}-{loss}-{reduction}-output{k}")


@pytest.mark.parametrize("ulps", [-2, 2])
@pytest.mark.parametrize("loss,js", [("d", True), ("g", False)])
def test_fp32_with_a_gpus_division_triton(monkeypatch, ulps, loss, js):
    """On a GPU Triton's float32 `/` is div.full, within 2 ulp of the quotient, where the interpreter divides
    exactly: with every float32 quotient of the kernels 2 ulp off, the same way, the losses, JS weights and gradients
    still hold the 2x rule (the log1p's Newton step on e / (1 + e/2); the backward's 1 / (1 + e) rounded by div_rn
    where JS weights' slopes take it three times: 2 ulp low, the logit gradients missed the rule, 6.4e-7 > 6.3e-7)."""
    gpu_division(monkeypatch, ulps)
    test_fp32_matches_reference("triton", loss, js, "mean", 1030)


@pytest.mark.parametrize("backend,n,chunk", [("cpu", 20000, None), ("triton", 1030, 64), ("triton", 300, 512)])
@pytest.mark.parametrize("loss,js", [("d", True), ("g", False)])
def test_chunked_forward_matches_reference_and_is_deterministic(monkeypatch, backend, n, chunk, loss, js):
    """Inputs larger than one chunk: the CPU's fixed 512-logit partial sums (threaded above 16384 logits),
    Triton's two-pass reduction through a scratch buffer (the GPU path; its chunk lowered to reach it here)."""
    nt_mod = importlib.import_module("fastgan.ops.nt_losses")

    if chunk is not None:
        monkeypatch.setattr(nt_mod, "FWD_CHUNK", chunk)
    lr, lf = _logits(n, n + 2, requires_grad=True)
    mu = torch.tensor(0.61)

    def run(which, a, b):
        out = (_oracle(a, b, mu.to(a.dtype), loss, "mean", js) if which == "oracle"
               else nt_losses(a, b, mu, loss=loss, js_weights=js, backend=which))
        outs = list(out) if js else [out]
        total = sum(o.sum() * (k + 1) for k, o in enumerate(outs))
        return [o.detach() for o in outs] + list(torch.autograd.grad(total, (a, b) if loss == "d" else (b,)))

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # pytest-xdist workers run with one thread (tests/conftest.py)
        impl = run(backend, lr, lf)
        torch.set_num_threads(1)
        again = run(backend, lr, lf)
    finally:
        torch.set_num_threads(threads)
    for k, (a, b, c) in enumerate(zip(impl, run("oracle", lr, lf), run("oracle", _to64(lr), _to64(lf)))):
        assert_close_to_oracle(a, b, c, name=f"{backend}-{loss}-output{k}")
    assert all(torch.equal(a, b) for a, b in zip(impl, again)), "the loss must not depend on the thread count"


def test_triton_chunked_forward_uses_one_partial_per_chunk(monkeypatch):
    nt_mod = importlib.import_module("fastgan.ops.nt_losses")

    monkeypatch.setattr(nt_mod, "FWD_CHUNK", 100)
    lr, lf = torch.zeros(250), torch.zeros(101)
    assert nt_mod._partials(lr, lf, lf).shape == (3 + 2,)
    assert nt_mod._partials(torch.zeros(0), torch.zeros(100), lf) is None  # one chunk: one pass
    assert nt_mod._partials(torch.zeros(100), torch.zeros(100), lf) is None  # a batch of logits: one block


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_half_mode_with_odd_batches_and_tensor_mu(backend):
    lr, lf = _logits(7, 5, requires_grad=True)
    mu = torch.tensor([0.8])
    out = nt_losses(lr, lf, mu, mode="half", backend=backend)
    expected = ref.d_loss(lr, lf, mu.reshape(()))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(torch.autograd.grad(out, (lr, lf)), torch.autograd.grad(expected, (lr, lf)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(backend, dtype):
    lr, lf = _logits(16, 16, dtype)
    out = nt_losses(lr, lf, 0.5, backend=backend)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out, ref.d_loss(lr.to(out.dtype), lf.to(out.dtype), 0.5))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mu_dtype", [torch.float64, torch.float16])
def test_mus_dtype_does_not_set_the_results(backend, mu_dtype):
    """The results' dtype follows the logits, as the docs say: a float64 mu made float32 logits' loss and JS weights
    float64 (mu's dtype counted in the accumulation dtype; an outside user's audit), where plain torch keeps float32
    (a 0-d tensor does not promote) and the weights do not depend on mu at all."""
    lr, lf = _logits(16, 16)
    out, w_r, w_f = nt_losses(lr, lf, torch.tensor(0.3, dtype=mu_dtype), js_weights=True, backend=backend)
    assert (out.dtype, w_r.dtype, w_f.dtype) == (torch.float32,) * 3
    want = nt_losses(lr, lf, torch.tensor(0.3, dtype=mu_dtype).float(), js_weights=True, backend=backend)
    torch.testing.assert_close((out, w_r, w_f), want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_extreme_logits_stay_finite(backend):
    lr = torch.tensor([-200.0, 200.0, -90.0, 90.0], requires_grad=True)
    lf = torch.tensor([200.0, -200.0, 90.0, -90.0], requires_grad=True)
    out, wr, wf = nt_losses(lr, lf, 0.5, js_weights=True, backend=backend)
    grads = torch.autograd.grad(out + wr.sum() + wf.sum(), (lr, lf))
    assert torch.isfinite(out) and all(torch.isfinite(g).all() for g in grads)
    # -ln D(-200) = 200: the softplus form does not saturate
    torch.testing.assert_close(out, ref.d_loss(lr.double(), lf.double(), 0.5).float())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype,v", [(torch.float32, 20.0), (torch.float32, 30.0), (torch.float64, 40.0)])
def test_confident_logits_keep_their_small_loss(backend, dtype, v):
    """softplus(-v) ~ exp(-v) below the rounding of 1 + exp(-v): the loss of a confident D keeps its relative
    accuracy (log(1 + e) rounded it to 0; log1p does not)."""
    lr, lf = torch.full((8,), v, dtype=dtype), torch.full((8,), -v, dtype=dtype)
    out = nt_losses(lr, lf, 0.5, backend=backend)
    want = ref.d_loss(lr.double(), lf.double(), 0.5)
    assert out.item() > 0
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("loss", ["d", "g"])
@pytest.mark.parametrize("lo,hi", [(-0.5, 0.5), (-12.0, 12.0)])
def test_float64_loss_has_double_accuracy(backend, loss, lo, hi):
    """float64 logits get float64 accuracy: the CPU's float64 polynomials (poly_math.h: log1p's 16-term atanh
    series, exp's degree 12) promise a few ulp, its float32 ones ~1e-9 relative, which the default tolerances
    (1e-7) cannot tell apart: a float64 loss sent through the float32 series passed every other test. |psi| < 0.5
    is where the short series errs most."""
    x = torch.linspace(lo, hi, 64, dtype=torch.float64)
    lr, lf = x.clone().requires_grad_(True), x.flip(0).clone().requires_grad_(True)
    lr2, lf2 = x.clone().requires_grad_(True), x.flip(0).clone().requires_grad_(True)
    got = nt_losses(lr, lf, 0.3, loss=loss, backend=backend)
    want = ref.nt_losses(lr2, lf2, 0.3, loss)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    leaves, leaves2 = ((lr, lf), (lr2, lf2)) if loss == "d" else ((lf,), (lf2,))
    for g, w in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves2)):
        torch.testing.assert_close(g, w, rtol=1e-13, atol=0)


# ------------------------------------------------------------------ gradients (float64)

@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("loss,js", [("d", False), ("d", True), ("g", False)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_and_gradgradcheck(backend, loss, js, reduction):
    lr, lf = _logits(6, 4, torch.float64, requires_grad=True)

    def f(a, b):
        return nt_losses(a, b, 0.3, loss=loss, reduction=reduction, js_weights=js, mode="half", backend=backend)

    assert gradcheck(f, (lr, lf))
    assert gradgradcheck(f, (lr, lf))


def test_gradcheck_triton():
    """Random-projection checks keep the interpreted Triton kernels to a few calls."""
    lr, lf = _logits(6, 6, torch.float64, requires_grad=True)

    def f(a, b):
        return nt_losses(a, b, torch.tensor(0.6, dtype=torch.float64), js_weights=True, backend="triton")

    assert gradcheck(f, (lr, lf), fast_mode=True)
    assert gradgradcheck(f, (lr, lf), fast_mode=True)


def test_third_order():
    lr, lf = _logits(4, 4, torch.float64, requires_grad=True)

    def first(a, b):
        loss, wr, wf = nt_losses(a, b, 0.2, js_weights=True, backend="cpu")
        return torch.autograd.grad(loss + (wr * a).sum() + wf.pow(2).sum(), (a, b), create_graph=True)

    assert gradgradcheck(lambda a, b: first(a, b)[0], (lr, lf))


# ------------------------------------------------------------------ the formulas of Algorithm 1

def test_sum_reduction_is_algorithm_1():
    """reduction='sum' is -(L_D^r + L_D^f) and -L_G^f of NTGAN Algorithm 1, with D = sigmoid(psi)."""
    lr, lf = _logits(8, 8, torch.float64, scale=1.0)
    mu = 0.65
    D_r, D_f = torch.sigmoid(lr), torch.sigmoid(lf)
    L_r = (mu * torch.log(D_r[:4]) + (1 - mu) * torch.log(D_r[4:])).sum()
    L_f = (mu * torch.log(1 - D_f[:4]) + (1 - mu) * torch.log(1 - D_f[4:])).sum()
    L_g = (mu * torch.log(D_f[:4]) + (1 - mu) * torch.log(D_f[4:])).sum()
    torch.testing.assert_close(nt_losses(lr, lf, mu, reduction="sum", backend="cpu"), -(L_r + L_f))
    torch.testing.assert_close(nt_losses(None, lf, mu, loss="g", reduction="sum", backend="cpu"), -L_g)
    # the mean is the same with each part divided by its size (4 here)
    torch.testing.assert_close(nt_losses(lr, lf, mu, backend="cpu"), -(L_r + L_f) / 4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mu_selects_clean_or_noisy(backend):
    lr, lf = _logits(6, 6)
    clean_only = F.softplus(-lr[:3]).mean() + F.softplus(lf[:3]).mean()
    noisy_only = F.softplus(-lr[3:]).mean() + F.softplus(lf[3:]).mean()
    torch.testing.assert_close(nt_losses(lr, lf, 1.0, backend=backend), clean_only)
    torch.testing.assert_close(nt_losses(lr, lf, torch.tensor(0.0), backend=backend), noisy_only)


def test_single_sample_half_batch_has_no_clean_part():
    lr, lf = torch.tensor([0.5]), torch.tensor([-1.0])
    out = nt_losses(lr, lf, 0.9, mode="half", backend="cpu")
    torch.testing.assert_close(out, 0.1 * (F.softplus(-lr) + F.softplus(lf)).sum())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_js_weights_are_roth_weights(backend):
    lr, lf = _logits(10, 10, requires_grad=True)
    _, wr, wf = nt_losses(lr, lf, 0.5, js_weights=True, backend=backend)
    torch.testing.assert_close(wr, ref_penalty.weight_js_real(lr))
    torch.testing.assert_close(wf, ref_penalty.weight_js_fake(lf))
    got = torch.autograd.grad(wr.sum() + 2 * wf.sum(), (lr, lf))
    want = torch.autograd.grad(ref_penalty.weight_js_real(lr).sum() + 2 * ref_penalty.weight_js_fake(lf).sum(), (lr, lf))
    torch.testing.assert_close(got, want)


def test_b1_logits_accepted():
    lr, lf = _logits(4, 4)
    torch.testing.assert_close(nt_losses(lr[:, None], lf[:, None], 0.5, backend="cpu"),
                               nt_losses(lr, lf, 0.5, backend="cpu"))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("loss,js", [("d", False), ("d", True), ("g", False)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shapes", [("N", "N"), ("N1", "N1"), ("N1", "N"), ("N", "N1"), ("N111", "N111"),
                                    ("N", "N111")])
def test_output_shapes_and_values_are_the_references_for_n_and_n1_logits(backend, loss, js, reduction, shapes):
    """Every output in the reference's shape ((N, 1) logits give (N, 1) weights, each side its own; (N, 1, 1, 1),
    a D ending in a one-channel convolution, likewise), its values in float64, and the logits' gradients in the
    logits' shapes."""
    lr, lf = _logits(6, 8, torch.float64)
    lr, lf = [t.reshape(-1, *[1] * (len(s) - 1)).requires_grad_(True) for t, s in zip((lr, lf), shapes)]
    want = ref.nt_losses(lr, lf, 0.3, loss, reduction, js)
    got = nt_losses(lr, lf, 0.3, loss=loss, reduction=reduction, js_weights=js, backend=backend)
    want, got = (list(want), list(got)) if js else ([want], [got])
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    leaves = (lr, lf) if loss == "d" else (lf,)
    grads = torch.autograd.grad(sum(t.sum() * (k + 1) for k, t in enumerate(got)), leaves)
    grads_want = torch.autograd.grad(sum(t.sum() * (k + 1) for k, t in enumerate(want)), leaves)
    for g, w, leaf in zip(grads, grads_want, leaves):
        assert g.shape == leaf.shape
        torch.testing.assert_close(g, w)


# ------------------------------------------------------------------ backend selection, compile

def test_auto_selects_cpu_kernel_and_records_forward_and_backward(monkeypatch):
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    lr, lf = _logits(4, 4, requires_grad=True)
    fwd, bwd = backend_calls(OP, "cpu"), backend_calls(OP + "_backward", "cpu")
    nt_losses(lr, lf, 0.5).backward()
    assert backend_calls(OP, "cpu") == fwd + 1
    assert backend_calls(OP + "_backward", "cpu") == bwd + 1


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_requested_backend_is_the_one_that_runs(backend):
    before = {b: backend_calls(OP, b) for b in CPU_BACKENDS}
    nt_losses(*_logits(4, 4), 0.5, backend=backend)
    after = {b: backend_calls(OP, b) for b in CPU_BACKENDS}
    assert {b: after[b] - before[b] for b in CPU_BACKENDS} == {b: int(b == backend) for b in CPU_BACKENDS}


@pytest.mark.triton
def test_unavailable_backends_raise(monkeypatch):
    with pytest.raises(BackendUnavailable, match="cuda"):
        nt_losses(*_logits(4, 4), 0.5, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET"):
        nt_losses(*_logits(4, 4), 0.5, backend="triton")


def test_opcheck():
    lr, lf = _logits(6, 6, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgan.nt_losses.default, (lr, lf, None, 0.4, 0, 0, True, "cpu"))


def test_inside_torch_compile():
    torch._dynamo.reset()
    lr, lf = _logits(8, 8)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(a, b, mu):
        loss, wr, wf = nt_losses(a, b, mu, js_weights=True, backend="cpu")
        return loss + wr.mean()

    a, b = lr.clone().requires_grad_(True), lf.clone().requires_grad_(True)
    out = f(a, b, torch.tensor(0.4))
    out.backward()
    a2, b2 = lr.clone().requires_grad_(True), lf.clone().requires_grad_(True)
    expected = ref.d_loss(a2, b2, 0.4) + ref.js_weights(a2, b2)[0].mean()
    expected.backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close((a.grad, b.grad), (a2.grad, b2.grad))


# ------------------------------------------------------------------ bad inputs

_L = torch.zeros(4)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: nt_losses(_L, [0.0], 0.5), TypeError, "logits_fake must be a torch.Tensor"),
    (lambda: nt_losses(_L, _L.long(), 0.5), TypeError, "logits_fake must be a floating"),
    (lambda: nt_losses(_L.int(), _L, 0.5), TypeError, "logits_real must be a floating"),
    (lambda: nt_losses(_L, torch.zeros(4, 2), 0.5), ValueError, r"logits_fake must have shape \(N,\) or \(N, 1, \.\.\., 1\)"),
    (lambda: nt_losses(torch.zeros(3), _L, 0.5), ValueError, "logits_real has 3 logits, but mode='double'"),
    (lambda: nt_losses(_L, torch.zeros(0), 0.5, mode="half"), ValueError, "logits_fake is empty"),
    (lambda: nt_losses(None, _L, 0.5), ValueError, "logits_real is None but loss='d'"),
    (lambda: nt_losses(_L, torch.zeros(4, device="meta"), 0.5), ValueError, "logits_real is on cpu but logits_fake"),
    (lambda: nt_losses(_L, _L, "0.5"), TypeError, "mu must be a float or a one-element tensor"),
    (lambda: nt_losses(_L, _L, torch.zeros(2)), ValueError, "mu must have one element"),
    (lambda: nt_losses(_L, _L, torch.tensor(0.5, requires_grad=True)), ValueError, "mu must not require grad"),
    (lambda: nt_losses(_L, _L, torch.tensor(0.5, device="meta")), ValueError, "mu is on meta"),
    (lambda: nt_losses(_L, _L, 0.5, loss="w"), ValueError, "loss must be one of"),
    (lambda: nt_losses(_L, _L, 0.5, mode="x"), ValueError, "mode must be one of"),
    (lambda: nt_losses(_L, _L, 0.5, reduction="none"), ValueError, "reduction must be one of"),
    (lambda: nt_losses(None, _L, 0.5, loss="g", js_weights=True), ValueError, "js_weights=True needs loss='d'"),
    (lambda: nt_losses(_L, _L, 0.5, backend="tpu"), ValueError, "backend must be one of"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------ CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("loss,js", [("d", True), ("g", False)])
@pytest.mark.parametrize("n", [64, 5000, 300000])
def test_cuda_matches_reference(backend, loss, js, n):
    lr, lf = (t.cuda().requires_grad_(True) for t in _logits(n, n))
    up = [torch.tensor(0.7, device="cuda")] + ([torch.randn(n, device="cuda"), torch.randn(n, device="cuda")] if js else [])

    def run(which, a, b):
        out = (_oracle(a, b, 0.4, loss, "mean", js) if which == "oracle"
               else nt_losses(a, b, torch.tensor(0.4, device="cuda"), loss=loss, js_weights=js, backend=which))
        outs = list(out) if js else [out]
        total = sum((o * u.to(o.dtype)).sum() for o, u in zip(outs, up))
        return outs + list(torch.autograd.grad(total, (a, b) if loss == "d" else (b,)))

    before = backend_calls(OP, backend)
    impl = run(backend, lr, lf)
    assert backend_calls(OP, backend) == before + 1
    for a, b, c in zip(impl, run("oracle", lr, lf), run("oracle", _to64(lr), _to64(lf))):
        assert_close_to_oracle(a, b, c, name=f"{backend}-{loss}")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss,js", [("d", True), ("g", False)])
def test_cuda_kernels_give_the_same_bits_for_any_layout(dtype, loss, js):
    """The CUDA forward and backward read contiguous aligned logits in 16-byte packs, others one at a time, each
    thread owning the same logits (csrc/cuda/nt_losses.cu): loss, JS weights and gradients are equal bit for bit
    (the emulator checks it on CPU, tests/ops/test_cuda_emulated.py; this checks what nvcc made of it)."""
    n = 3 * 4096 + 10  # two passes, a chunk tail that is no multiple of a pack
    lr, lf = (t.to("cuda", dtype) for t in _logits(n, n))
    up = [torch.randn(n, device="cuda", dtype=dtype) for _ in range(2)]
    outs = []
    for layout in ("packed", "unaligned", "strided"):
        if layout == "packed":
            a, b = lr.clone(), lf.clone()
        elif layout == "unaligned":
            a, b = (torch.cat([t.new_zeros(1), t])[1:] for t in (lr, lf))
        else:
            a, b = (torch.stack([t, t], 1)[:, 0] for t in (lr, lf))
        a.requires_grad_(True)
        b.requires_grad_(True)
        out = nt_losses(a, b, 0.3, loss=loss, js_weights=js, backend="cuda")
        out = list(out) if js else [out]
        total = 0.7 * out[0] + (sum((w * u).sum() for w, u in zip(out[1:], up)) if js else 0)
        outs.append(out + list(torch.autograd.grad(total, (a, b) if loss == "d" else (b,))))
    for other in outs[1:]:
        for x, y in zip(other, outs[0]):
            assert torch.equal(x, y)


# ------------------------------------------------------------------ a user's training loop

class Gen(nn.Module):
    def __init__(self, z_dim=4, out=2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, 32), nn.ReLU(), nn.Linear(32, out))

    def forward(self, z):
        return self.net(z)


class NoiseNet(nn.Module):
    """NTGAN's noise generator: 2 * tanh output."""

    def __init__(self, z_dim=4, out=2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, 8), nn.ReLU(), nn.Linear(8, out))

    def forward(self, z):
        return 2 * torch.tanh(self.net(z))


@pytest.mark.parametrize("noise_kind", ["learned_sigma", "noise_net"])
@pytest.mark.parametrize("mode", ["double", "half"])
def test_ntgan_training_loop_like_a_user(noise_kind, mode):
    torch.manual_seed(0)
    G, D = Gen(), nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    noise_net = NoiseNet()
    log_sigma = torch.zeros((), requires_grad=True)
    noise_params = [log_sigma] if noise_kind == "learned_sigma" else list(noise_net.parameters())
    opt_d = torch.optim.Adam(D.parameters(), 1e-3, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), 1e-3, betas=(0.5, 0.999))
    opt_n = torch.optim.Adam(noise_params, 1e-2)
    state = NoiseState(seed=1234)
    lam, m = 0.1, 32
    start = {name: [p.detach().clone() for p in mod] for name, mod in
             (("G", G.parameters()), ("D", D.parameters()), ("N", noise_params))}
    n_noisy = m if mode == "double" else m - m // 2

    def noise_and_reg(z):
        if noise_kind == "learned_sigma":
            sigma = log_sigma.exp()
            return sigma, sigma ** 2
        eps = noise_net(z[:n_noisy])  # same z as G, as the public NTGAN code does
        return eps, eps.pow(2).sum(1).mean()

    for _ in range(3):
        x_real = torch.randn(m, 2) * 0.1 + torch.tensor([1.0, -1.0])
        z = torch.randn(m, 4)
        mu = torch.rand(())
        # discriminator + noise step (same iteration, Algorithm 1)
        noise, reg = noise_and_reg(z)
        real_b, fake_b = noisy_clean_batch(x_real, G(z).detach(), noise, mode, state=state)
        logits_r, logits_f = D(real_b).squeeze(1), D(fake_b).squeeze(1)
        loss_d, w_r, w_f = nt_losses(logits_r, logits_f, mu, mode=mode, js_weights=True)
        opt_d.zero_grad()
        opt_n.zero_grad()
        d_params = list(D.parameters())
        grads_d = torch.autograd.grad(loss_d, d_params, retain_graph=True)
        (-loss_d + lam * reg).backward()  # the noise minimises D's objective, i.e. maximises loss_d
        for p, g in zip(d_params, grads_d):
            p.grad = g
        opt_d.step()
        opt_n.step()
        # generator step
        noise, _ = noise_and_reg(z)
        noise = noise.detach()
        _, fake_b = noisy_clean_batch(None, G(z), noise, mode, state=state)
        loss_g = nt_losses(None, D(fake_b), torch.rand(()), loss="g", mode=mode)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        assert torch.isfinite(loss_d) and torch.isfinite(loss_g)
        assert torch.isfinite(w_r).all() and torch.isfinite(w_f).all() and w_r.shape == logits_r.shape

    for name, params in (("G", G.parameters()), ("D", D.parameters()), ("N", noise_params)):
        moved = [not torch.equal(a, b) for a, b in zip(start[name], params)]
        assert any(moved), f"{name}'s parameters did not change"
    assert state.offset > 0 or noise_kind == "noise_net"


def test_roth_penalty_with_nt_weights_matches_js_penalty():
    """The JS weights from nt_losses, used with per-sample gradient norms, give Roth's regularizer."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    x_real, x_fake = torch.randn(6, 3), torch.randn(6, 3)
    xr, xf = x_real.clone().requires_grad_(True), x_fake.clone().requires_grad_(True)
    lr, lf = D(xr).squeeze(1), D(xf).squeeze(1)
    _, w_r, w_f = nt_losses(lr, lf, 0.5, js_weights=True, backend="cpu")
    (gr,) = torch.autograd.grad(lr.sum(), xr, create_graph=True)
    (gf,) = torch.autograd.grad(lf.sum(), xf, create_graph=True)
    omega = (w_r * gr.pow(2).sum(1)).mean() + (w_f * gf.pow(2).sum(1)).mean()
    expected, _, _ = ref_penalty.js_penalty(copy.deepcopy(D), x_real, x_fake)
    torch.testing.assert_close(omega, expected)


# ------------------------------------------------------------------ eager path vs custom ops

NT = importlib.import_module("fastgan.ops.nt_losses")  # the module (fastgan.ops.nt_losses is also the function)

@pytest.mark.parametrize("loss,js", [("d", False), ("d", True), ("g", False)])
@pytest.mark.parametrize("mu_kind", ["float", "tensor"])
def test_eager_path_matches_custom_op_path(monkeypatch, loss, js, mu_kind):
    """Outside compile the kernels run through plain autograd.Functions (fastgan/ops/_eager.py); forcing the
    torch.library ops instead must give bit-identical values and gradients, to third order."""
    def run():
        lr, lf = _logits(8, 8, requires_grad=True)
        mu = 0.3 if mu_kind == "float" else torch.tensor(0.3)
        out = nt_losses(lr, lf, mu, loss=loss, js_weights=js, backend="cpu")
        value, w_r, w_f = out if js else (out, None, None)
        total = value + ((w_r * lr).sum() + (w_f ** 2).sum() if js else 0)
        g = torch.autograd.grad(total, (lr, lf), create_graph=True, allow_unused=True)
        g = tuple(t if t is not None else torch.zeros(8) for t in g)
        gg = torch.autograd.grad((g[0] ** 2).sum() + (g[1] ** 2).sum(), (lr, lf), create_graph=True,
                                 allow_unused=True)
        gg = tuple(t if t is not None else torch.zeros(8) for t in gg)
        ggg = torch.autograd.grad(sum(t.sum() for t in gg if t.requires_grad) + lr.sum(), (lr, lf),
                                  allow_unused=True)
        return value, (value, w_r, w_f, g, gg, ggg)

    value, eager = run()
    assert type(value.grad_fn).__name__ == "_EagerNTBackward"
    monkeypatch.setattr(NT._eager, "ok", lambda *tensors: False)
    value, op = run()
    assert "nt_losses" in type(value.grad_fn).__name__
    for a, b in zip(torch.utils._pytree.tree_leaves(eager), torch.utils._pytree.tree_leaves(op)):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


def test_eager_path_records_the_same_dispatch_counts(monkeypatch):
    def step():
        before = backend_calls(OP, "cpu"), backend_calls(OP + "_backward", "cpu")
        nt_losses(*_logits(4, 4, requires_grad=True), 0.5, backend="cpu").backward()
        return backend_calls(OP, "cpu") - before[0], backend_calls(OP + "_backward", "cpu") - before[1]

    eager = step()
    monkeypatch.setattr(NT._eager, "ok", lambda *tensors: False)
    assert eager == step() == (1, 1)


def test_fake_tensors_take_the_custom_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        lr = torch.empty(6)
        loss, w_r, w_f = nt_losses(lr, lr, 0.2, js_weights=True, backend="cpu")
    assert loss.shape == () and w_r.shape == (6,) and type(loss).__name__ == "FakeTensor"


def test_under_compile_the_custom_ops_run_not_the_eager_path(monkeypatch):
    torch._dynamo.reset()

    def refuse(*args, **kwargs):
        raise AssertionError("eager path used under torch.compile")

    monkeypatch.setattr(NT, "_eager_forward", refuse)
    monkeypatch.setattr(NT, "_eager_backward", refuse)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    @torch.compile(fullgraph=True, backend=backend)
    def f(a, b, mu):
        loss, wr, wf = nt_losses(a, b, mu, js_weights=True, backend="cpu")
        return loss + wr.mean() + wf.sum()

    a, b = _logits(8, 8, requires_grad=True)
    before = backend_calls(OP + "_backward", "cpu")
    f(a, b, torch.tensor(0.4)).backward()
    assert backend_calls(OP + "_backward", "cpu") == before + 1
    targets = {str(n.target) for gm in graphs for n in gm.graph.nodes}
    assert "fastgan.nt_losses" in targets
    assert a.grad is not None and b.grad is not None


EXTREME = [float("nan"), float("inf"), float("-inf"), -720.0, 720.0, -1e4, 1e4, 0.0, 3.0, -40.0]


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_and_far_negative_logits_match_the_reference(backend, dtype):
    """NaN stays NaN where the reference has it, +-inf gives the reference's limits, and logits below -708
    (where the CPU's polynomial exp holds e^x at e^-708) stay within 1e-300 of the reference."""
    lr = torch.tensor(EXTREME, dtype=dtype)
    lf = lr.flip(0)

    def run(which):
        a, b = lr.clone().requires_grad_(True), lf.clone().requires_grad_(True)
        loss, w_r, w_f = nt_losses(a, b, 0.3, js_weights=True, reduction="sum", backend=which)
        d = torch.autograd.grad(loss + (w_r * 1.5).sum() + w_f.sum(), (a, b))
        return [loss, w_r, w_f, *d]

    for k, (got, want) in enumerate(zip(run(backend), run("reference"))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-300, equal_nan=True, msg=f"output {k}")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_two_pass_forward_replays_in_a_cuda_graph(backend):
    """Above a chunk the GPU forward allocates its scratch and runs two kernels: both inside a captured graph,
    whose replay on new inputs gives the eager result bit for bit (the reduction order is fixed)."""
    nt_mod = importlib.import_module("fastgan.ops.nt_losses")
    n = 3 * nt_mod.FWD_CHUNK + 6  # mode="double": even sizes, [clean; noisy] halves ragged against the chunk
    lr, lf = (t.cuda() for t in _logits(n, n + 2))
    mu = torch.tensor(0.3, device="cuda")

    def step():
        return nt_losses(lr, lf, mu, js_weights=True, backend=backend)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        captured = step()
    lr.mul_(0.5)
    mu.fill_(0.7)
    g.replay()
    torch.cuda.synchronize()
    for k, (a, b) in enumerate(zip(captured, step())):
        assert torch.equal(a, b), f"output {k}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype,v", [(torch.float32, 20.0), (torch.float32, 30.0), (torch.float64, 40.0)])
def test_confident_logits_keep_their_small_gradients(backend, dtype, v):
    """The gradients at confident logits (about e^-v) to relative accuracy, not rounded to 0: sigmoid(x) for x << 0
    as e / (1 + e), not 1 - 1 / (1 + e) (mutation testing: the emulated CUDA kernels' shared header could make it
    so and pass every test, whose absolute tolerance took 2e-9 for 0)."""
    lr = torch.full((8,), v, dtype=dtype, requires_grad=True)
    lf = torch.full((8,), -v, dtype=dtype, requires_grad=True)
    got = torch.autograd.grad(nt_losses(lr, lf, 0.5, backend=backend), (lr, lf))
    a, b = (t.detach().double().requires_grad_() for t in (lr, lf))
    want = torch.autograd.grad(ref.d_loss(a, b, 0.5), (a, b))
    for g, w in zip(got, want):
        assert (g != 0).all()
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
@pytest.mark.parametrize("dtype,v", [(torch.float32, 20.0), (torch.float64, 40.0)])
def test_saturated_js_weights_keep_their_relative_accuracy(backend, dtype, v):
    """The JS weights sigmoid(-psi)^2 and sigmoid(psi)^2 at saturated logits to relative accuracy (sigmoid(-psi) as
    e * r, not 1 - sigmoid(psi), which is 0 there; the oracle is torch.sigmoid in float64: the reference's
    (1 - sigmoid)^2 cancels to 0 itself at psi = 40)."""
    lr = torch.tensor([v, -v, 3.0, v / 2], dtype=dtype)
    lf = -lr
    _, wr, wf = nt_losses(lr, lf, 0.5, js_weights=True, backend=backend)
    torch.testing.assert_close(wr.double(), torch.sigmoid(-lr.double()) ** 2, rtol=1e-5, atol=0)
    torch.testing.assert_close(wf.double(), torch.sigmoid(lf.double()) ** 2, rtol=1e-5, atol=0)


def _one_logit_losses(psi, backend):
    """G's loss of a pair of fake logits both psi, mu = 1/2, summed: softplus(-psi) alone (two exact halves), a call
    per psi, so that each logit's term is seen to its own accuracy."""
    return torch.stack([nt_losses(None, p.expand(2), 0.5, loss="g", reduction="sum",
                                  backend=backend) for p in psi]).double()


def _eps_off(got, want, dtype):
    return ((got - want).abs() / (torch.finfo(dtype).eps * want.abs())).max().item()


def _fp32_one_logit_error(backend):
    psi = torch.cat([torch.linspace(0.0, 1.5, 97), torch.linspace(1.5, 6.0, 31)[1:]]).float()
    return _eps_off(_one_logit_losses(psi, backend), torch.log1p(torch.exp(-psi.double())), torch.float32)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_fp32_softplus_of_one_logit_within_a_few_ulps(backend):
    """Each float32 logit's loss term to a few ulps, not only a batch's sum (whose floor of 4 eps times the total hid
    a wrong series coefficient: csrc's nt::log1p_unit with 1/2048 for 1/2304 was ~24 ulp off near psi = 0 and
    passed). For psi >= 0, softplus(-psi) = log1p(exp(-psi)); the truth is float64 math on the float32 psi. Budget,
    in eps times the value: the series' 3.2 ulp (nt_losses_math.h) and float32 exp's rounding; measured 0.5 (cpu),
    1.3 (cuda), 1.4 (triton)."""
    err = _fp32_one_logit_error(backend)
    assert err <= 4.0, f"{backend}: a logit's loss is {err:.1f} eps-relative off log1p(exp(-psi))"


@pytest.mark.parametrize("ulps", [-2, 2])
def test_fp32_softplus_of_one_logit_with_a_gpus_division_triton(monkeypatch, ulps):
    """The same with every float32 quotient 2 ulp off (div.full, helpers.gpu_division): kernels/nt_losses.py's
    _log1p refines t = e / (1 + e/2) by one Newton step. Measured 1.4 (-2 ulp) and 1.7 (+2) eps times the value;
    without the Newton step 2.6 and 3.3 (1.7 with exact division), which the batch tests' sums did not see."""
    gpu_division(monkeypatch, ulps)
    err = _fp32_one_logit_error("triton")
    assert err <= 2.5, f"a logit's loss is {err:.1f} eps-relative off log1p(exp(-psi)) with a GPU's division"


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_fp64_softplus_of_one_logit_within_a_few_ulps(backend):
    """float64: each logit's term softplus(-psi) = log1p(exp(-psi)) to a few ulps up to psi = 36, where exp(-psi) is
    far below 1's rounding: Triton's log(u) * e / (u - 1) (Goldberg) without its correction e / (u - 1), log(1 + e),
    was up to 5e-8 relative off at psi = 20 (25% near 36) and passed the float64 sums (their |psi| terms dwarf it)."""
    psi = torch.linspace(0.0, 36.0, 145, dtype=torch.float64)
    err = _eps_off(_one_logit_losses(psi, backend), torch.log1p(torch.exp(-psi)), torch.float64)
    assert err <= 8.0, f"{backend}: a float64 logit's loss is {err:.1f} eps-relative off log1p(exp(-psi))"
