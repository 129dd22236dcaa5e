"""The weighted gradient-norm penalty op (issue: Foundation) in every backend runnable on this machine."""
import copy

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import fastgan
from fastgan.ops import BackendUnavailable, FallbackWarning, _dispatch
from fastgan.ops import penalty as P
from fastgan.reference import penalty as ref
import models_for_tests as models
from helpers import assert_close_to_oracle, backend_calls, gpu_division, gpu_exp


CPU_BACKENDS = ["reference", "cpu", "triton", "cuda"]
WEIGHTS = ["one", "js_real", "js_fake", "sigmoid", "exp", "kl"]
OP = "grad_norm_penalty"


def _inputs(B, shape, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(B, *shape, generator=g, dtype=torch.float64).to(dtype)
    logits = (scale * torch.randn(B, generator=g, dtype=torch.float64)).to(dtype)
    return grad, logits


# ------------------------------------------------------------------ gradcheck / gradgradcheck (float64)

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_gradcheck_and_gradgradcheck(backend, weight, reduction):
    grad, logits = _inputs(5, (3, 2), torch.float64)
    grad.requires_grad_(True)
    logits.requires_grad_(True)

    def f(g, l):
        return P.grad_norm_penalty(g, l, weight, reduction, backend=backend)

    assert gradcheck(f, (grad, logits))
    assert gradgradcheck(f, (grad, logits))


def test_third_order_through_backward_of_backward():
    """The backward of the backward is written in torch ops, so one more order must also be right."""
    grad, logits = _inputs(3, (2,), torch.float64)
    grad.requires_grad_(True)
    logits.requires_grad_(True)

    def first(g, l):
        out = P.grad_norm_penalty(g, l, "js_real", "sum", backend="cpu")
        return torch.autograd.grad(out, (g, l), create_graph=True)

    assert gradgradcheck(lambda g, l: first(g, l)[1], (grad, logits))


def test_js_penalty_gradcheck_small_d():
    torch.manual_seed(0)
    D = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    params = dict(D.named_parameters())
    names = list(params)
    x_real = torch.randn(4, 3, dtype=torch.float64)
    x_fake = torch.randn(4, 3, dtype=torch.float64)

    def f(*flat):
        p = dict(zip(names, flat))
        Df = lambda x: torch.func.functional_call(D, p, (x,))  # noqa: E731
        return fastgan.ops.js_penalty(Df, x_real, x_fake, backend="cpu")[0]

    inputs = tuple(v.detach().clone().requires_grad_(True) for v in params.values())
    assert gradcheck(f, inputs)
    assert gradgradcheck(f, inputs)


# ------------------------------------------------------------------ agreement with the reference

SHAPES = [(512, (3,)), (7, (1,)), (1, (5,)), (64, (3, 8, 8)), (4, (3, 64, 64))]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("B,shape", SHAPES)
def test_fp32_matches_reference(backend, weight, B, shape, scale=3.0):
    grad, logits = _inputs(B, shape, scale=scale)
    g32, l32 = grad.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    g64, l64 = grad.double().requires_grad_(True), logits.double().requires_grad_(True)
    gr, lr = grad.clone().requires_grad_(True), logits.clone().requires_grad_(True)

    out = P.grad_norm_penalty(g32, l32, weight, "none", backend=backend)
    r32 = ref.grad_norm_penalty(gr, lr, weight, "none")
    r64 = ref.grad_norm_penalty(g64, l64, weight, "none")
    assert out.dtype == torch.float32
    assert_close_to_oracle(out, r32, r64, name="forward")

    up = torch.randn(B, dtype=torch.float64).float().double()  # the truth's upstream is the float32 one
    d_impl = torch.autograd.grad(out, (g32, l32), up.float(), allow_unused=True)
    d_r32 = torch.autograd.grad(r32, (gr, lr), up.float(), allow_unused=True)
    d_r64 = torch.autograd.grad(r64, (g64, l64), up, allow_unused=True)
    assert_close_to_oracle(d_impl[0], d_r32[0], d_r64[0], name="dgrad")
    if weight != "one":
        assert_close_to_oracle(d_impl[1], d_r32[1], d_r64[1], name="dlogits")
    else:
        assert d_impl[1] is None or torch.all(d_impl[1] == 0)


@pytest.mark.parametrize("ulps", [-2, 2])
@pytest.mark.parametrize("weight", ["js_real", "js_fake", "sigmoid"])
def test_fp32_with_a_gpus_division_triton(monkeypatch, ulps, weight):
    """Triton's float32 `/` as a GPU rounds it (div.full, within 2 ulp; helpers.gpu_division): the JS weight's
    1 / (1 + e), rounded by div_rn, keeps the logit gradient within the 2x rule (with `/` 2 ulp off, dlogits missed
    it: 4.1e-6 > 4.0e-6)."""
    gpu_division(monkeypatch, ulps)
    for B, shape in SHAPES:
        test_fp32_matches_reference("triton", weight, B, shape)


@pytest.mark.parametrize("weight", WEIGHTS)
def test_fp32_with_a_gpus_exp_triton(monkeypatch, weight):
    """Triton's float32 tl.exp as a GPU lowers it (helpers.gpu_exp: ~30 ulp at |psi| ~ 60), logits to ~60: every
    non-constant weight missed the 2x rule (kl: 1.5e21 against a bound of 4.8e20; the JS and sigmoid weights through
    e^-|psi| for psi < 0) until the kernels formed their weights in float64."""
    gpu_exp(monkeypatch)
    for B, shape in SHAPES:
        test_fp32_matches_reference("triton", weight, B, shape, scale=20.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded_logits"])
def test_non_contiguous_inputs(backend, layout):
    base, logits = _inputs(16, (6, 5))
    if layout == "transposed":
        grad = base.transpose(1, 2)  # (16, 5, 6), not viewable as contiguous
        lg = logits
    elif layout == "sliced":
        grad = base[:, ::2, 1:]      # strided view
        lg = torch.stack([logits, logits], 1)[:, 0]  # stride 2
    else:
        grad = base
        lg = logits[:1].expand(16)   # stride 0
    assert not grad.is_contiguous() or not lg.is_contiguous()
    g = grad.clone().requires_grad_(True) if False else grad.detach().requires_grad_(True)
    out = P.grad_norm_penalty(g, lg, "js_fake", "sum", backend=backend)
    r64 = ref.grad_norm_penalty(grad.double(), lg.double(), "js_fake", "sum")
    r32 = ref.grad_norm_penalty(grad, lg, "js_fake", "sum")
    assert_close_to_oracle(out, r32, r64)
    (dg,) = torch.autograd.grad(out, g)
    g64 = grad.double().requires_grad_(True)
    (dg64,) = torch.autograd.grad(ref.grad_norm_penalty(g64, lg.double(), "js_fake", "sum"), g64)
    assert dg.shape == grad.shape
    torch.testing.assert_close(dg.double(), dg64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_and_float64_inputs(backend, dtype):
    grad, logits = _inputs(33, (3, 4, 4), dtype)
    g = grad.clone().requires_grad_(True)
    out = P.grad_norm_penalty(g, logits, "js_real", "none", backend=backend)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == acc
    # Same stored values, exact arithmetic: only accumulation order may differ.
    r64 = ref.grad_norm_penalty(grad.double(), logits.double(), "js_real", "none")
    r_acc = ref.grad_norm_penalty(grad.to(acc), logits.to(acc), "js_real", "none")
    assert_close_to_oracle(out, r_acc, r64)
    # and much closer to the truth than torch computing in the storage dtype
    r_low = ref.grad_norm_penalty(grad, logits, "js_real", "none")
    assert (out.double() - r64).abs().max() <= (r_low.double() - r64).abs().max() + 1e-12
    (dg,) = torch.autograd.grad(out.sum(), g)
    assert dg.dtype == dtype
    g64 = grad.double().requires_grad_(True)
    (dg64,) = torch.autograd.grad(ref.grad_norm_penalty(g64, logits.double(), "js_real", "sum"), g64)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(dg.double(), dg64, rtol=tol, atol=tol * dg64.abs().max().item())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_extreme_logits_stay_finite(backend):
    grad = torch.ones(4, 3)
    logits = torch.tensor([-100.0, -30.0, 30.0, 100.0], requires_grad=True)
    for w in ("js_real", "js_fake", "sigmoid"):
        out = P.grad_norm_penalty(grad, logits, w, "none", backend=backend)
        (dl,) = torch.autograd.grad(out.sum(), logits)
        assert torch.isfinite(out).all() and torch.isfinite(dl).all()


def test_large_batch_and_large_features_cpu():
    grad, logits = _inputs(1 << 20, (3,), seed=1)
    out = P.grad_norm_penalty(grad, logits, "js_real", "mean", backend="cpu")
    r64 = ref.grad_norm_penalty(grad.double(), logits.double(), "js_real", "mean")
    r32 = ref.grad_norm_penalty(grad, logits, "js_real", "mean")
    assert_close_to_oracle(out, r32, r64)
    grad, logits = _inputs(2, (3, 64, 64), seed=2)
    out = P.grad_norm_penalty(grad, logits, "one", "none", backend="cpu")
    assert_close_to_oracle(out, ref.grad_norm_penalty(grad, logits, "one", "none"),
                           ref.grad_norm_penalty(grad.double(), logits.double(), "one", "none"))


def test_large_batch_triton():
    grad, logits = _inputs(1 << 16, (3,), seed=3)
    out = P.grad_norm_penalty(grad, logits, "js_fake", "none", backend="triton")
    assert_close_to_oracle(out, ref.grad_norm_penalty(grad, logits, "js_fake", "none"),
                           ref.grad_norm_penalty(grad.double(), logits.double(), "js_fake", "none"))


def _grad_layout(B, F, layout, dtype, seed):
    """(grad (B, F) in the given memory layout, logits (B,) maybe strided), values independent of the layout."""
    grad, logits = _inputs(B, (F,), dtype, seed=seed)
    if layout == "column_slice":  # rows F+3 apart, the features a slice of them
        wide = torch.zeros(B, F + 3, dtype=dtype)
        wide[:, 1:F + 1] = grad
        grad = wide[:, 1:F + 1]
        logits = torch.stack([logits, logits], 1)[:, 0]
    elif layout == "transposed":  # feature-major: stride (1, B)
        grad = grad.t().contiguous().t()
    elif layout == "broadcast_row":  # stride (0, 1): every row the same
        grad = grad[:1].expand(B, F)
    return grad, logits


@pytest.mark.parametrize("F", [1, 2, 3, 4, 5, 6, 7, 8, 9, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "column_slice", "transposed", "broadcast_row"])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_short_rows_match_reference(backend, F, dtype, layout):
    """Short rows: Triton's one-tile path with many rows a program (B=1031 leaves a partial last program); the
    CPU's float32 short-row loops (F <= 4, rows F apart, F fixed at compile time) and its strided forward, over
    256-row blocks, the last one partial."""
    B = 1031
    grad, logits = _grad_layout(B, F, layout, dtype, seed=F)
    assert grad.is_contiguous() == (layout == "contiguous" or (layout == "transposed" and F == 1))
    up = torch.randn(B, generator=torch.Generator().manual_seed(100 + F), dtype=torch.float64).to(dtype).double()

    def check(impl, low, r64, name):
        if dtype == torch.float64:
            torch.testing.assert_close(impl, r64, rtol=1e-12, atol=1e-12 * r64.abs().max().item(), msg=name)
        else:
            assert_close_to_oracle(impl, low, r64, name=name)

    for weight in WEIGHTS:
        g, l = grad.detach().requires_grad_(True), logits.detach().requires_grad_(True)
        gl, ll = grad.detach().requires_grad_(True), logits.detach().requires_grad_(True)
        g64, l64 = grad.double().requires_grad_(True), logits.double().requires_grad_(True)
        out = P.grad_norm_penalty(g, l, weight, "none", backend=backend)
        r_low = ref.grad_norm_penalty(gl, ll, weight, "none")
        r64 = ref.grad_norm_penalty(g64, l64, weight, "none")
        assert out.dtype == dtype
        check(out, r_low, r64, f"{weight} forward")
        dg, dl = torch.autograd.grad(out, (g, l), up.to(dtype), allow_unused=True)
        dgl, dll = torch.autograd.grad(r_low, (gl, ll), up.to(dtype), allow_unused=True)
        dg64, dl64 = torch.autograd.grad(r64, (g64, l64), up, allow_unused=True)
        assert dg.shape == grad.shape
        check(dg, dgl, dg64, f"{weight} dgrad")
        if weight != "one":
            check(dl, dll, dl64, f"{weight} dlogits")
        else:
            assert dl is None or torch.all(dl == 0)


def test_triton_blocks_fit_rows():
    """No padding to 16 columns, a tile near 4K elements, and one tile (no loop) whenever a row fits."""
    from fastgan.kernels import penalty as k

    for F in range(1, 5001):
        block_b, block_f = k._blocks(F)
        assert block_f & (block_f - 1) == 0, (F, block_f)
        assert block_f >= min(F, 1024) and (F > 1024 or block_f < 2 * F), (F, block_f)
        assert 1 <= block_b and 1024 <= block_b * block_f <= 4096, (F, block_b, block_f)
        grid_rows, meta = k._launch(F)
        assert grid_rows == meta["BLOCK_B"] == block_b and meta["BLOCK_F"] == block_f
        assert meta["ONE_TILE"] == (F <= block_f)
    assert k._blocks(3) == (1024, 4) and k._blocks(3072) == (4, 1024)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_feature_and_batch(backend):
    out = P.grad_norm_penalty(torch.zeros(3, 0), torch.zeros(3), "js_real", "none", backend=backend)
    assert torch.equal(out, torch.zeros(3))
    out = P.grad_norm_penalty(torch.zeros(0, 4), torch.zeros(0), "one", "sum", backend=backend)
    assert out.item() == 0.0


def test_callable_weight_is_the_general_f_gan_form():
    grad, logits = _inputs(8, (3,), torch.float64)
    logits.requires_grad_(True)
    w = lambda psi: torch.exp(psi) / (1 + torch.exp(psi)) ** 2  # noqa: E731  f*'' for the JS f-GAN
    before = backend_calls(OP, "reference")
    out = P.grad_norm_penalty(grad, logits, w, "mean")
    assert backend_calls(OP, "reference") == before + 1
    expected = (w(logits) * grad.pow(2).sum(1)).mean()
    torch.testing.assert_close(out, expected)
    assert gradcheck(lambda l: P.grad_norm_penalty(grad, l, w, "mean"), (logits,))
    with pytest.raises(BackendUnavailable, match="callable weight"):
        P.grad_norm_penalty(grad, logits, w, backend="cpu")


# ------------------------------------------------------------------ the drop-in penalties on users' models

def _d_models():
    torch.manual_seed(0)
    return {
        "mlp": (models.mlp_d(3), lambda B: torch.randn(B, 3)),
        "conv_bn": (models.ConvBND(3, 8, 8), lambda B: torch.randn(B, 3, 8, 8)),
        "groupnorm_residual": (models.GroupNormResD(3, 8), lambda B: torch.randn(B, 3, 8, 8)),
    }


def _param_grads(D, loss):
    D.zero_grad(set_to_none=True)
    loss.backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in D.parameters()]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["mlp", "conv_bn", "groupnorm_residual"])
def test_js_penalty_param_grads_match_double_backward(backend, kind):
    D, make = _d_models()[kind]
    D = D.double()
    D_ref = copy.deepcopy(D)
    torch.manual_seed(1)
    x_real, x_fake = make(6).double(), make(6).double()
    gamma = 0.7

    pen, lr, lf = fastgan.ops.js_penalty(D, x_real, x_fake, backend=backend)
    loss = torch.nn.functional.softplus(-lr).mean() + torch.nn.functional.softplus(lf).mean() + gamma / 2 * pen
    pen_r, lr_r, lf_r = ref.js_penalty(D_ref, x_real, x_fake)
    loss_r = torch.nn.functional.softplus(-lr_r).mean() + torch.nn.functional.softplus(lf_r).mean() + gamma / 2 * pen_r

    torch.testing.assert_close(pen, pen_r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lr, lr_r)
    for a, b in zip(_param_grads(D, loss), _param_grads(D_ref, loss_r)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    for name, buf in D.named_buffers():  # BatchNorm running stats updated identically
        torch.testing.assert_close(buf, dict(D_ref.named_buffers())[name])


@pytest.mark.parametrize("kind", ["mlp", "conv_bn"])
def test_js_penalty_fp32_param_grads(kind):
    D, make = _d_models()[kind]
    D_ref, D64 = copy.deepcopy(D), copy.deepcopy(D).double()
    torch.manual_seed(2)
    x_real, x_fake = make(8), make(8)
    g_impl = _param_grads(D, fastgan.ops.js_penalty(D, x_real, x_fake, backend="cpu")[0])
    g32 = _param_grads(D_ref, ref.js_penalty(D_ref, x_real, x_fake)[0])
    g64 = _param_grads(D64, ref.js_penalty(D64, x_real.double(), x_fake.double())[0])
    for a, b, c in zip(g_impl, g32, g64):
        assert_close_to_oracle(a, b, c, floor=1e-6 * c.abs().max().item())


@pytest.mark.parametrize("fn", ["r1_penalty", "r2_penalty"])
def test_r1_r2_match_reference(fn):
    D, make = _d_models()["conv_bn"]
    D = D.double()
    D_ref = copy.deepcopy(D)
    x = make(5).double()
    pen, logits = getattr(fastgan.ops, fn)(D, x, backend="cpu")
    pen_r, logits_r = getattr(ref, fn)(D_ref, x)
    torch.testing.assert_close(pen, pen_r)
    for a, b in zip(_param_grads(D, pen), _param_grads(D_ref, pen_r)):
        torch.testing.assert_close(a, b)


def test_js_penalty_accepts_b1_logits_and_leaves_inputs_alone():
    D = models.mlp_d(3)
    x_real, x_fake = torch.randn(4, 3), torch.randn(4, 3, requires_grad=True)
    pen, lr, lf = fastgan.ops.js_penalty(D, x_real, x_fake)
    assert pen.shape == () and lr.shape == (4,) and lf.shape == (4,)
    pen.backward()
    assert x_fake.grad is None  # the penalty is a discriminator term: inputs are detached


# ------------------------------------------------------------------ backend selection: never silent

def test_auto_selects_cpu_kernel_and_records_it(monkeypatch):
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    grad, logits = _inputs(4, (3,))
    before, backward_before = backend_calls(OP, "cpu"), _dispatch.counts[(OP + "_backward", "cpu")]
    P.grad_norm_penalty(grad.requires_grad_(True), logits).backward()
    assert backend_calls(OP, "cpu") == before + 1
    assert _dispatch.counts[(OP + "_backward", "cpu")] == backward_before + 1


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_requested_backend_is_the_one_that_runs(backend):
    grad, logits = _inputs(4, (3,))
    before = {b: backend_calls(OP, b) for b in CPU_BACKENDS}
    P.grad_norm_penalty(grad, logits, backend=backend)
    after = {b: backend_calls(OP, b) for b in CPU_BACKENDS}
    assert {b: after[b] - before[b] for b in CPU_BACKENDS} == {b: int(b == backend) for b in CPU_BACKENDS}


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    before = backend_calls(OP, "reference")
    P.grad_norm_penalty(*_inputs(4, (3,)))
    assert backend_calls(OP, "reference") == before + 1


@pytest.mark.triton
def test_unavailable_backends_raise(monkeypatch):
    grad, logits = _inputs(4, (3,))
    with pytest.raises(BackendUnavailable, match="cuda"):
        P.grad_norm_penalty(grad, logits, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET"):
        P.grad_norm_penalty(grad, logits, backend="triton")


def test_triton_older_than_3_4_is_refused_with_the_reason(monkeypatch):
    """triton < 3.4 draws another Philox stream and rounds float64 scalars: the backend says so instead of
    running (torch 2.4-2.7 pin such versions)."""
    grad, logits = _inputs(4, (3,))
    monkeypatch.setattr(_dispatch, "triton_version", lambda: (3, 0))
    with pytest.raises(BackendUnavailable, match=r"triton 3\.0 is older than 3\.4.*backend='cuda'"):
        P.grad_norm_penalty(grad, logits, backend="triton")
    monkeypatch.setattr(_dispatch, "triton_version", lambda: (3, 4))
    before = backend_calls(OP, "triton")
    P.grad_norm_penalty(grad, logits, backend="triton")
    assert backend_calls(OP, "triton") == before + 1


def test_missing_extension_warns_then_runs_reference(monkeypatch):
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    monkeypatch.setattr(fastgan._ext, "available", lambda: (False, "pretend it failed to build"))
    monkeypatch.setattr(_dispatch, "_warned", set())
    with pytest.warns(FallbackWarning, match="pretend it failed to build") as caught:
        P.grad_norm_penalty(*_inputs(4, (3,)))
    assert [w.filename for w in caught] == [__file__]  # the caller's line, not the dispatcher's
    with pytest.raises(BackendUnavailable, match="pretend"):
        P.grad_norm_penalty(*_inputs(4, (3,)), backend="cpu")


# ------------------------------------------------------------------ torch.compile

def test_inside_torch_compile_fullgraph():
    torch._dynamo.reset()
    grad, logits = _inputs(16, (3, 4))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(g, l):
        return 0.5 * P.grad_norm_penalty(g, l, "js_real", "mean", backend="cpu") + g.sum() * 0

    g = grad.clone().requires_grad_(True)
    l = logits.clone().requires_grad_(True)
    before = backend_calls(OP, "cpu")
    out = f(g, l)
    out.backward()
    assert backend_calls(OP, "cpu") > before
    g2, l2 = grad.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    expected = 0.5 * ref.grad_norm_penalty(g2, l2, "js_real", "mean")
    expected.backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(g.grad, g2.grad)
    torch.testing.assert_close(l.grad, l2.grad)


def test_inside_torch_compile_inductor():
    torch._dynamo.reset()
    grad, logits = _inputs(8, (5,))
    f = torch.compile(lambda g, l: P.grad_norm_penalty(g, l, "js_fake", "sum", backend="cpu") * 2 + 1, fullgraph=True)
    torch.testing.assert_close(f(grad, logits), ref.grad_norm_penalty(grad, logits, "js_fake", "sum") * 2 + 1)


def test_opcheck():
    grad, logits = _inputs(6, (4,))
    for backend in ("cpu", "reference"):
        torch.library.opcheck(torch.ops.fastgan.grad_norm_penalty.default,
                              (grad.requires_grad_(True), logits.requires_grad_(True), 1, backend))


# ------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("call,exc,match", [
    (lambda: P.grad_norm_penalty([1.0], torch.zeros(1)), TypeError, "grad must be a torch.Tensor"),
    (lambda: P.grad_norm_penalty(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2)), TypeError, "grad must be a floating"),
    (lambda: P.grad_norm_penalty(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int32)), TypeError, "logits must be a floating"),
    (lambda: P.grad_norm_penalty(torch.zeros(()), torch.zeros(1)), ValueError, "grad must have at least 1"),
    (lambda: P.grad_norm_penalty(torch.zeros(2, 3), torch.zeros(3)), ValueError, "logits has batch size 3 but grad has batch size 2"),
    (lambda: P.grad_norm_penalty(torch.zeros(2, 3), torch.zeros(2, 2)), ValueError, r"logits must have shape \(B,\) or \(B, 1, \.\.\., 1\)"),
    (lambda: P.grad_norm_penalty(torch.zeros(2, 3), torch.zeros(2, device="meta")), ValueError, "logits is on meta"),
    (lambda: P.grad_norm_penalty(torch.zeros(2, 3), torch.zeros(2), "js"), ValueError, "weight must be one of"),
    (lambda: P.grad_norm_penalty(torch.zeros(2, 3), torch.zeros(2), reduction="avg"), ValueError, "reduction must be one of"),
    (lambda: P.grad_norm_penalty(torch.zeros(2, 3), torch.zeros(2), backend="tpu"), ValueError, "backend must be one of"),
    (lambda: fastgan.ops.js_penalty(models.mlp_d(3), torch.zeros(2, 3), torch.zeros(2, 4)), ValueError, r"x_real has sample shape \(3,\) but x_fake has \(4,\)"),
    (lambda: fastgan.ops.js_penalty(models.mlp_d(3), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), TypeError, "x_real must be a floating"),
    (lambda: fastgan.ops.r1_penalty(torch.nn.Linear(3, 2), torch.zeros(2, 3)), ValueError, r"logits of shape \(2,\) or \(2, 1, \.\.\., 1\)"),
    (lambda: fastgan.ops.r1_penalty(lambda x: (x, x), torch.zeros(2, 3)), TypeError, "D must return a tensor"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


class _Bias(torch.nn.Module):
    """Logits from a parameter alone: they require grad, but not through x."""

    def __init__(self):
        super().__init__()
        self.b = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.b.expand(x.shape[0])


@pytest.mark.parametrize("mode", ["double_backward", "jvp", "auto"])
@pytest.mark.parametrize("D,exc,match", [
    (lambda x: x.sum(1).round().long(), TypeError, "^D must return floating-point logits, got torch.int64"),
    (lambda x: x.detach().sum(1), ValueError, "^D's logits do not depend on its input x"),
    (_Bias(), ValueError, "^D's logits do not depend on its input x"),
], ids=["int", "detached", "parameter-only"])
def test_d_without_input_gradient_is_named(D, exc, match, mode):
    x = torch.randn(4, 3)
    for call in (lambda: fastgan.ops.r1_penalty(D, x, mode=mode), lambda: fastgan.ops.js_penalty(D, x, x, mode=mode)):
        with pytest.raises(exc, match=match):
            call()


# ------------------------------------------------------------------ GPU (run where a device is present)

@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,shape", [(512, (3,)), (256, (3, 32, 32)), (3, (3, 64, 64)), (1 << 20, (3,)), (100, (37,))])
def test_gpu_backends_match_reference(backend, dtype, B, shape):
    grad, logits = _inputs(B, shape)
    grad, logits = grad.cuda().to(dtype), logits.cuda()
    for weight in WEIGHTS:
        g = grad.clone().requires_grad_(True)
        l = logits.clone().requires_grad_(True)
        before = backend_calls(OP, backend)
        out = P.grad_norm_penalty(g, l, weight, "none", backend=backend)
        assert backend_calls(OP, backend) == before + 1
        r64 = ref.grad_norm_penalty(grad.double(), logits.double(), weight, "none")
        r_low = ref.grad_norm_penalty(grad, logits.to(dtype), weight, "none")
        assert_close_to_oracle(out, r_low, r64, name=f"{weight} forward")
        up = torch.rand(B, device="cuda")
        dg, dl = torch.autograd.grad(out, (g, l), up, allow_unused=True)
        g64 = grad.double().requires_grad_(True)
        l64 = logits.double().requires_grad_(True)
        dg64, dl64 = torch.autograd.grad(ref.grad_norm_penalty(g64, l64, weight, "none"), (g64, l64), up.double(),
                                         allow_unused=True)
        gl = grad.clone().requires_grad_(True)
        ll = logits.to(dtype).requires_grad_(True)
        dgl, dll = torch.autograd.grad(ref.grad_norm_penalty(gl, ll, weight, "none"), (gl, ll), up.to(dtype),
                                       allow_unused=True)
        assert_close_to_oracle(dg, dgl, dg64, name=f"{weight} dgrad")
        if weight != "one":
            assert_close_to_oracle(dl, dll, dl64, name=f"{weight} dlogits")


@pytest.mark.cuda
def test_gpu_auto_prefers_cuda_kernel_and_js_penalty_matches():
    torch.manual_seed(0)
    D = models.ConvBND(3, 8, 8).cuda()
    D_ref = copy.deepcopy(D)
    x_real, x_fake = torch.randn(16, 3, 8, 8, device="cuda"), torch.randn(16, 3, 8, 8, device="cuda")
    before = backend_calls(OP, "cuda")
    pen, _, _ = fastgan.ops.js_penalty(D, x_real, x_fake)
    assert backend_calls(OP, "cuda") == before + 2
    pen_r, _, _ = ref.js_penalty(D_ref, x_real, x_fake)
    torch.testing.assert_close(pen, pen_r, rtol=1e-4, atol=1e-6)
    for a, b in zip(_param_grads(D, pen), _param_grads(D_ref, pen_r)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("weight", ["js_real", "js_fake", "one", "sigmoid", "exp", "kl"])  # "one": Triton's was psi*0+1
def test_non_finite_and_far_negative_logits_match_the_reference(backend, weight):
    """The CPU's polynomial weights (poly_math.h) on NaN, +-inf and logits below -708, float64."""
    logits = torch.tensor([float("nan"), float("inf"), float("-inf"), -720.0, 720.0, -1e4, 0.0, 2.0],
                          dtype=torch.float64)
    grad = torch.linspace(-1, 1, logits.numel() * 3, dtype=torch.float64).reshape(-1, 3)

    def run(which):
        g, l = grad.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        out = P.grad_norm_penalty(g, l, weight, "none", backend=which)
        return [out, *torch.autograd.grad((out * torch.arange(1.0, 9.0, dtype=torch.float64)).sum(), (g, l))]

    for k, (got, want) in enumerate(zip(run(backend), run("reference"))):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-300, equal_nan=True, msg=f"output {k}")
