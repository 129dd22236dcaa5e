"""The closed-form penalties' per-sample terms in one kernel (fastgan.ops.penalty.terms, custom op
fastgan::grad_norm_penalty_terms): per = w ||g||^2, u = w' ||g||^2 / div, v = 2 w g / div, with js_penalty's real
rows and fake rows weighted in the same launch, in every backend against fastgan/reference/penalty.py."""
import pytest
import torch

from fastgan.ops import penalty as P
from fastgan.reference import penalty as ref
from helpers import assert_close_to_oracle, backend_calls, gpu_division

BACKENDS = ["reference", "cpu", "triton", "cuda"]
OP = "grad_norm_penalty_terms"
# (B, F, split): rows of the mixtures (F = 3, the CPU kernel's short-row path in blocks of 256 rows, split inside a
# block and on its edge), one row, an image-sized row (TPR = 256 on CUDA, chunks in Triton)
CASES = [(600, 3, 300), (600, 3, 256), (7, 1, 0), (7, 1, 7), (1, 5, 1), (33, 40, 20), (5, 3000, 2)]


def _inputs(B, F, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(B, F, generator=g, dtype=torch.float64)
    logits = 3 * torch.randn(B, generator=g, dtype=torch.float64)
    return grad.to(dtype), logits.to(torch.float64 if dtype == torch.float64 else torch.float32)


def _run(backend, grad, logits, w, w2, split, div):
    before = backend_calls(OP, backend)
    out = P.terms(grad, logits, P.WEIGHTS[w], P.WEIGHTS[w2], split, div, backend)
    assert backend_calls(OP, backend) == before + 1
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("w,w2", [("js_real", "js_fake"), ("one", "one"), ("js_fake", "js_real"), ("sigmoid", "exp"),
                                  ("exp", "sigmoid"), ("kl", "js_fake")])
@pytest.mark.parametrize("B,F,split", CASES)
@pytest.mark.parametrize("div", [1, 7])
def test_fp32_matches_the_reference(backend, w, w2, B, F, split, div):
    grad, logits = _inputs(B, F)
    per, u, v = _run(backend, grad, logits, w, w2, split, div)
    assert (per.dtype, u.dtype, v.dtype) == (torch.float32, torch.float32, torch.float32)
    assert v.shape == (B, F) and v.is_contiguous()
    low = ref.penalty_terms(grad, logits, w, w2, split, div)
    r64 = ref.penalty_terms(grad.double(), logits.double(), w, w2, split, div)
    for name, got, a, b in zip(("per", "u", "v"), (per, u, v), low, r64):
        assert_close_to_oracle(got, a, b, name=name)


@pytest.mark.parametrize("ulps", [-2, 2])
def test_fp32_with_a_gpus_division_triton(monkeypatch, ulps):
    """The terms with Triton's float32 `/` as a GPU rounds it (helpers.gpu_division): u = w'|g|^2 / div keeps the 2x
    rule through the div_rn-rounded 1 / (1 + e) (with `/` 2 ulp off, u missed it: 1.4e-7 > 9.4e-8)."""
    gpu_division(monkeypatch, ulps)
    for w, w2 in [("js_real", "js_fake"), ("js_fake", "js_real")]:
        for B, F, split in CASES:
            test_fp32_matches_the_reference("triton", w, w2, B, F, split, 7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,F,split", [(600, 3, 300), (33, 40, 20), (5, 3000, 2)])
def test_float64(backend, B, F, split):
    grad, logits = _inputs(B, F, torch.float64)
    got = _run(backend, grad, logits, "js_real", "js_fake", split, B)
    for a, b in zip(got, ref.penalty_terms(grad, logits, "js_real", "js_fake", split, B)):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage(backend, dtype):
    grad, logits = _inputs(33, 40, dtype)
    per, u, v = _run(backend, grad, logits, "js_real", "js_fake", 17, 1)
    assert (per.dtype, u.dtype, v.dtype) == (torch.float32, torch.float32, dtype)
    want = ref.penalty_terms(grad.float(), logits, "js_real", "js_fake", 17, 1)
    torch.testing.assert_close(per, want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u, want[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, want[2].to(dtype))  # one rounding of 2 w g to the storage dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(backend):
    base, logits2 = _inputs(40, 12)
    grad = base[::2, ::3]  # row and column strides
    logits = torch.stack([logits2[:20], logits2[:20]], 1)[:, 1]  # stride 2
    got = _run(backend, grad, logits, "js_real", "js_fake", 9, 20)
    want = ref.penalty_terms(grad.double(), logits.double(), "js_real", "js_fake", 9, 20)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    per, u, v = P.terms(torch.zeros(0, 3), torch.zeros(0), 1, 2, 0, 1, backend)
    assert per.shape == u.shape == (0,) and v.shape == (0, 3)


def test_matches_the_forward_and_backward_it_fuses():
    """per is the penalty op's forward, (v, u) its backward for the upstream 1 / div: the fused kernel replaces
    those two launches and the upstream's fill."""
    grad, logits = _inputs(50, 6)
    per, u, v = P.terms(grad, logits, 1, 1, 50, 50, "cpu")
    torch.testing.assert_close(per, P.grad_norm_penalty(grad, logits, "js_real", "none", backend="cpu"))
    dv, du = torch.ops.fastgan.grad_norm_penalty_backward(torch.full_like(logits, 1 / 50), grad, logits, 1, "cpu")
    torch.testing.assert_close(v, dv)
    torch.testing.assert_close(u, du)


G, L = torch.zeros(4, 3), torch.zeros(4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("args,exc,match", [
    ((G, L, 1, 2, 5, 1), ValueError, r"split must be in \[0, 4\], got 5"),
    ((G, L, 1, 2, -1, 1), ValueError, r"split must be in \[0, 4\], got -1"),
    ((G, L, 1, 2, 2, 0), ValueError, "div must be a positive integer, got 0"),
    ((G, L, 1, 2, 2, 2.5), ValueError, "div must be a positive integer, got 2.5"),
    ((G, L, 1, 7, 2, 1), ValueError, r"weight2 must be a weight code in \[0, 1, 2, 3, 4, 5\], got 7"),
    ((G, L, -1, 2, 2, 1), ValueError, r"weight must be a weight code in \[0, 1, 2, 3, 4, 5\], got -1"),
    ((G[None], L, 1, 2, 2, 1), ValueError, r"grad must have shape \(B, F\), got \(1, 4, 3\)"),
    ((G, L[:3], 1, 2, 2, 1), ValueError, r"logits must have shape \(4,\), got \(3,\)"),
    ((G, L.double(), 1, 2, 2, 1), TypeError, "logits must be torch.float32 for torch.float32 grad, got torch.float64"),
    ((G.double(), L, 1, 2, 2, 1), TypeError, "logits must be torch.float64 for torch.float64 grad"),
    ((G, L.to("meta"), 1, 2, 2, 1), ValueError, "logits is on meta but grad is on cpu"),
])
def test_bad_arguments(backend, args, exc, match):
    with pytest.raises(exc, match=match):
        P.terms(*args, backend)


def test_penalty_terms_takes_the_divisor_not_the_scale():
    from fastgan.ops.penalty_jvp import penalty_terms

    g, psi = torch.randn(4, 3), torch.randn(4)
    for weight in ("js_real", torch.sigmoid):
        with pytest.raises(ValueError, match="div must be a positive integer, got 0.25"):
            penalty_terms(g, psi, weight, 0.25, None)


def test_custom_op_and_fake():
    grad, logits = _inputs(6, 4)
    for backend in ("cpu", "reference"):
        torch.library.opcheck(torch.ops.fastgan.grad_norm_penalty_terms.default,
                              (grad, logits, 1, 2, 3, 6, backend))
    eager = P.terms(grad, logits, 1, 2, 3, 6, "cpu")
    op = torch.ops.fastgan.grad_norm_penalty_terms(grad, logits, 1, 2, 3, 6, "cpu")
    for a, b in zip(eager, op):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------ GPU (run where a device is present)

@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,F,split", [(1024, 3, 512), (128, 3072, 64), (1 << 20, 3, 1 << 19), (100, 37, 99)])
def test_gpu_backends_match_the_reference(backend, dtype, B, F, split):
    grad, logits = _inputs(B, F)
    grad, logits = grad.cuda().to(dtype), logits.cuda()
    got = _run(backend, grad, logits, "js_real", "js_fake", split, B)
    low = ref.penalty_terms(grad, logits.to(dtype), "js_real", "js_fake", split, B)
    r64 = ref.penalty_terms(grad.double(), logits.double(), "js_real", "js_fake", split, B)
    for name, a, b, c in zip(("per", "u", "v"), got, low, r64):
        assert_close_to_oracle(a, b, c, name=name)
