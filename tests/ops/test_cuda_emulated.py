"""fastgan's CUDA C++ kernels run on the CPU through the emulator of tools/cuda_emu, on the shapes, strides and
dtypes that select each kernel variant (rows per thread group, vectorised or scalar access, one or two passes,
block sizes), against the cpu backend (float64: the same math headers, so equal to rounding) and the reference.
Inputs sit inside NaN-filled buffers, so a read past a tensor's end shows up as NaN. The last test checks that
these cases launch every kernel launch site in csrc/cuda, so a new kernel cannot go untested here.

Each case runs twice: threads and blocks in index order, then in reverse order, so a race between the threads of a
block shows whichever of them writes first.

The op-level test modules also run their CPU cases with backend="cuda" in the emulator (tests/conftest.py)."""
from __future__ import annotations

import importlib

import pytest
import torch

from fastgan.ops import Denoiser, NoiseState, bn_closed_form as K, grad_norm_penalty, noisy_clean_batch, nt_losses

from helpers import backend_calls, cuda_emu_build, emulate_cuda

PAD = 16  # elements of NaN on either side of every input; a multiple of 4 keeps vector paths aligned


@pytest.fixture(params=["forward", "reverse"])
def emulated(request, monkeypatch, cuda_emu_module):
    """The emulated module, its threads and blocks run in index order, then in reverse: a race between two threads
    of a block (a read of what another thread writes, no barrier between) reads the stale value under one order."""
    emulate_cuda(monkeypatch, cuda_emu_module)
    cuda_emu_module.emu_set_schedule(request.param)
    yield cuda_emu_module
    cuda_emu_module.emu_set_schedule("forward")


def padded(t: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """A copy of t (contiguous) living inside a NaN-filled buffer, starting `offset` elements past the padding."""
    buf = torch.full((t.numel() + 2 * PAD + offset,), float("nan"), dtype=t.dtype)
    out = buf[PAD + offset:PAD + offset + t.numel()].view(t.shape)
    out.copy_(t)
    return out


def _close(a, b, dtype, tol=None):
    tol = tol or {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)


# Philox normals are float32 in every backend (fastgan/philox.h), from each platform's log/sin/cos: equal to
# float32 rounding, not to float64's
NORMALS_TOL = 1e-6


# ---------------------------------------------------------------- weighted gradient-norm penalty

def _penalty_case(B, F, dtype, layout, weight="js_real"):
    g = torch.Generator().manual_seed(B * 1000 + F)
    grad = torch.randn(B, F, generator=g, dtype=torch.float64).to(dtype)
    logits = (3 * torch.randn(B, generator=g, dtype=torch.float64)).to(torch.float64 if dtype == torch.float64
                                                                       else torch.float32)
    if layout == "strided":  # feature stride 2: the scalar path
        wide = padded(torch.randn(B, 2 * F, dtype=torch.float64).to(dtype))
        wide[:, ::2] = grad
        grad = wide[:, ::2]
    else:  # "aligned": vectorised when F allows; "offset": one element off alignment, scalar
        grad = padded(grad, offset=1 if layout == "offset" else 0)
    return grad, padded(logits), weight


def _penalty_run(backend, grad, logits, weight):
    grad = grad.detach().requires_grad_(True)
    logits = logits.detach().requires_grad_(True)
    per = grad_norm_penalty(grad, logits, weight, reduction="none", backend=backend)
    go = torch.linspace(-1, 2, per.shape[0], dtype=per.dtype)
    dg, dl = torch.autograd.grad((per * go).sum(), (grad, logits))
    return per, dg, dl


# F = 3 / 40 / 300 / 3000 choose 1 / 8 / 32 / 256 threads a row
@pytest.mark.parametrize("B,F", [(37, 3), (5, 4), (37, 40), (9, 300), (3, 3000)])
@pytest.mark.parametrize("layout", ["aligned", "offset", "strided"])
def test_penalty_variants_float64(emulated, B, F, layout):
    case = _penalty_case(B, F, torch.float64, layout)
    before = backend_calls("grad_norm_penalty", "cuda")
    got = _penalty_run("cuda", *case)
    assert backend_calls("grad_norm_penalty", "cuda") == before + 1
    for a, b in zip(got, _penalty_run("cpu", *case)):
        assert not a.isnan().any()
        _close(a, b, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,F", [(37, 40), (4, 3000)])
def test_penalty_storage_dtypes(emulated, dtype, B, F):
    case = _penalty_case(B, F, dtype, "aligned")
    for a, b in zip(_penalty_run("cuda", *case), _penalty_run("cpu", *case)):
        _close(a, b, dtype)


# the closed forms' terms (the backward kernel with go null and per written, real and fake rows in one launch)
@pytest.mark.parametrize("B,F", [(37, 3), (37, 40), (9, 300), (3, 3000)])
@pytest.mark.parametrize("layout", ["aligned", "offset", "strided"])
def test_penalty_terms_variants_float64(emulated, B, F, layout):
    from fastgan.ops import penalty as P

    grad, logits, _ = _penalty_case(B, F, torch.float64, layout)
    before = backend_calls("grad_norm_penalty_terms", "cuda")
    got = P.terms(grad, logits, 1, 2, B // 2, B, "cuda")
    assert backend_calls("grad_norm_penalty_terms", "cuda") == before + 1
    for a, b in zip(got, P.terms(grad, logits, 1, 2, B // 2, B, "cpu")):
        assert not a.isnan().any()
        _close(a, b, torch.float64)


@pytest.mark.parametrize("weight", ["sigmoid", "exp", "kl"])
@pytest.mark.parametrize("B,F", [(37, 3), (9, 300)])
def test_penalty_f_gan_weights(emulated, weight, B, F):
    """The f-GAN weights (penalty_math.h's kSigmoid, kExp and kKl) in the forward, the backward and the terms (each
    beside a JS weight in one launch), against the cpu kernels."""
    from fastgan.ops import penalty as P

    for dtype in (torch.float64, torch.float32):
        grad, logits, _ = _penalty_case(B, F, dtype, "aligned")
        for a, b in zip(_penalty_run("cuda", grad, logits, weight), _penalty_run("cpu", grad, logits, weight)):
            assert torch.isfinite(a).all()
            _close(a, b, dtype)
        code = P.WEIGHTS[weight]
        for w, w2 in ((code, P.WEIGHTS["js_fake"]), (P.WEIGHTS["js_real"], code)):
            want = P.terms(grad, logits, w, w2, B // 2, B, "cpu")
            for a, b in zip(P.terms(grad, logits, w, w2, B // 2, B, "cuda"), want):
                _close(a, b, dtype)


# ---------------------------------------------------------------- noisy / clean batch

def _noise_case(kind, m, shape, mode, dtype, layout):
    g = torch.Generator().manual_seed(m)
    xr = torch.randn(m, *shape, generator=g, dtype=torch.float64).to(dtype)
    xf = torch.randn(m, *shape, generator=g, dtype=torch.float64).to(dtype)
    n_noisy = m - m // 2 if mode == "half" else m
    if kind == "float":
        noise = 0.7
    elif kind == "sigma":
        noise = torch.tensor(0.6, dtype=dtype)
    elif kind == "channel":
        noise = (0.5 + torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=g, dtype=torch.float64)).to(dtype)
    else:
        noise = torch.randn(n_noisy, *shape, generator=g, dtype=torch.float64).to(dtype)
    # "offset": x_real one element off 16-byte alignment, so F % 4 == 0 still takes the scalar path
    xr, xf = padded(xr, offset=1 if layout == "offset" else 0), padded(xf)
    if isinstance(noise, torch.Tensor) and noise.dim() == xr.dim():
        noise = padded(noise)
    return xr, xf, noise


def _noise_run(backend, xr, xf, noise, mode):
    xr = xr.detach().requires_grad_(True)
    xf = xf.detach().requires_grad_(True)
    leaves = [xr, xf]
    if isinstance(noise, torch.Tensor):
        noise = noise.detach().requires_grad_(True)
        leaves.append(noise)
    state = NoiseState(5) if not (isinstance(noise, torch.Tensor) and noise.dim() == xr.dim()) else None
    br, bf = noisy_clean_batch(xr, xf, noise, mode, state=state, backend=backend)
    up_r, up_f = torch.randn(br.shape, generator=torch.Generator().manual_seed(3)).to(br.dtype), torch.ones_like(bf)
    grads = torch.autograd.grad((br * up_r).sum() + (bf * up_f).sum(), leaves)
    return [br, bf, *grads] + ([state.get_state()] if state is not None else [])


# F = 75 (scalar) / 48 (vectorised, 4-element per-channel planes); C inner sizes pick 1 / 8 / 32 / 256 threads
@pytest.mark.parametrize("shape", [(3, 5, 5), (3, 4, 4), (2, 60), (1, 700), (1, 5000)],
                         ids=["F75", "F48-vec", "C2x60", "C1x700", "C1x5000"])
@pytest.mark.parametrize("kind", ["float", "sigma", "channel", "eps"])
@pytest.mark.parametrize("mode", ["double", "half"])
def test_noise_variants_float64(emulated, shape, kind, mode):
    case = _noise_case(kind, 7, shape, mode, torch.float64, "aligned")
    for a, b in zip(_noise_run("cuda", *case, mode), _noise_run("cpu", *case, mode)):
        assert not a.isnan().any()
        _close(a, b, torch.float64, tol=NORMALS_TOL if kind != "eps" else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_noise_storage_dtypes_vector_and_scalar(emulated, dtype):
    for layout in ("aligned", "offset"):
        case = _noise_case("sigma", 6, (3, 4, 4), "double", dtype, layout)
        for a, b in zip(_noise_run("cuda", *case, "double"), _noise_run("cpu", *case, "double")):
            _close(a, b, dtype)


# ---------------------------------------------------------------- mu-weighted clean / noisy losses

@pytest.mark.parametrize("n_real,n_fake", [(100, 100), (5000, 300), (9000, 9000)])  # one pass; two passes
@pytest.mark.parametrize("loss,js", [("d", True), ("g", False)])
def test_nt_losses_one_and_two_pass(emulated, n_real, n_fake, loss, js):
    g = torch.Generator().manual_seed(n_real)
    lr = padded(3 * torch.randn(n_real, generator=g, dtype=torch.float64))
    lf = padded(3 * torch.randn(n_fake, generator=g, dtype=torch.float64))

    def run(backend):
        a, b = lr.detach().requires_grad_(True), lf.detach().requires_grad_(True)
        out = nt_losses(a, b, 0.3, loss=loss, js_weights=js, backend=backend)
        outs = list(out) if js else [out]
        total = sum(o.sum() * (k + 1) for k, o in enumerate(outs))
        return outs + list(torch.autograd.grad(total, (a, b) if loss == "d" else (b,)))

    for a, b in zip(run("cuda"), run("cpu")):
        assert not a.isnan().any()
        _close(a, b, torch.float64)


def _nt_site(kernel: str, packed: bool) -> str:
    """The launch site ("nt_losses.cu:line") of the forward's or backward's packed (16-byte accesses) or scalar
    variant."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "csrc" / "cuda" / "nt_losses.cu").read_text()
    lines = [i + 1 for i, line in enumerate(text.splitlines())
             if f"{kernel}_kernel<A, {'true' if packed else 'false'}><<<" in line]
    assert len(lines) == 1, lines
    return f"nt_losses.cu:{lines[0]}"


def _nt_forward_layout(values: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "packed":  # contiguous, 16-byte aligned
        return padded(values)
    if layout == "unaligned":  # contiguous, one element past an aligned address
        return padded(values, offset=1)
    wide = padded(torch.zeros(2 * values.numel(), dtype=values.dtype))  # stride 2
    wide[::2] = values
    return wide[::2]


def _order_sensitive(n_real, n_fake, dtype, g):
    """Logits whose every loss term is exactly 0 (psi = +-800) but the first thread's: its real logits' terms are
    2^24 (2^53 in float64) and numbers near 1, which that ulp swallows or not by the order they are added in. The
    loss is then that thread's sum alone: a variant adding them in another order gives other bits."""
    vr = torch.full((n_real,), 800.0, dtype=torch.float64)
    vf = torch.full((n_fake,), -800.0, dtype=torch.float64)
    V = 16 // (torch.finfo(dtype).bits // 8)  # a pack: 4 floats, 2 doubles
    own = [p * 256 * V + j for p in range(4) for j in range(V)]  # thread 0's logits in block 0's first round
    own = [k for k in own if k < n_real]
    vr[own] = 2 * torch.rand(len(own), generator=g, dtype=torch.float64) - 1
    vr[own[len(own) // 2]] = -(2.0 ** (24 if dtype == torch.float32 else 53))  # softplus(-psi) = -psi
    return vr.to(dtype), vf.to(dtype)


# one pass (without, with a full round); two passes; sides (even: [clean; noisy]) that are no multiple of a float
# pack (4); a side shorter than one round of packs; a last backward round whose fourth pack alone passes the side's
# end (3500 floats, 1800 doubles: a round is 4096 floats, 2048 doubles), a read and write past it if taken as full
@pytest.mark.parametrize("n_real,n_fake", [(1002, 38), (4096, 3002), (9002, 4098), (2, 8194), (2, 4096),
                                           (3500, 1800)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("values", ["random", "order"])
def test_nt_losses_packed_and_scalar_variants_agree_bit_for_bit(emulated, n_real, n_fake, dtype, values):
    """The forward and backward read contiguous aligned logits in 16-byte packs and others one at a time; a thread
    owns the same logits, and adds their terms in the same order, either way: loss, JS weights and gradients are
    equal bit for bit (with "order" values, a sum in another order is not), and the cpu backend's to rounding."""
    g = torch.Generator().manual_seed(n_real + n_fake)
    if values == "order":
        vr, vf = _order_sensitive(n_real, n_fake, dtype, g)
    else:
        vr = (3 * torch.randn(n_real, generator=g, dtype=torch.float64)).to(dtype)
        vf = (3 * torch.randn(n_fake, generator=g, dtype=torch.float64)).to(dtype)
    up = [torch.randn(n, generator=g, dtype=torch.float64).to(dtype) for n in (n_real, n_fake)]

    def run(a, b, backend):
        a, b = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
        loss, wr, wf = nt_losses(a, b, 0.3, loss="d", js_weights=True, backend=backend)
        grads = torch.autograd.grad(0.7 * loss + (wr * up[0]).sum() + (wf * up[1]).sum(), (a, b))
        return [loss, wr, wf, *grads]

    outs = {}
    # (real, fake): one side strided and the other packable is read one logit at a time too (a packed read of the
    # strided side, its stride taken for 1, survived every test that strided both)
    layouts = [("packed", "packed"), ("unaligned", "unaligned"), ("strided", "strided"), ("strided", "packed"),
               ("packed", "strided")]
    for layout in layouts:
        emulated.emu_reset_launches()
        outs[layout] = run(_nt_forward_layout(vr, layout[0]), _nt_forward_layout(vf, layout[1]), "cuda")
        sites = {site for site, _ in emulated.emu_launches()}
        for kernel in ("forward", "backward"):
            packed = layout == ("packed", "packed")
            assert _nt_site(kernel, packed) in sites and _nt_site(kernel, not packed) not in sites, (kernel, sites)
    for layout in layouts[1:]:
        for a, b in zip(outs[layout], outs[("packed", "packed")]):
            assert torch.equal(a, b), layout
    for a, b in zip(outs[("packed", "packed")], run(vr, vf, "cpu")):
        _close(a, b, dtype)


@pytest.mark.parametrize("offsets", [(1, 1), (1, 0), (0, 1)], ids=["both", "real", "fake"])
def test_nt_losses_forward_unaligned_weights_take_the_scalar_variant(emulated, offsets):
    """JS weights are written in packs too: weights at an unaligned address (torch's allocator never gives one),
    either side's, send the forward to the scalar variant, with the same values."""
    module = importlib.import_module("fastgan.ops.nt_losses")  # fastgan.ops.nt_losses is also the function
    vr, vf = torch.randn(5000, dtype=torch.float32), torch.randn(300, dtype=torch.float32)

    def run(offset_real, offset_fake):
        loss = torch.empty((), dtype=torch.float32)
        wr, wf = padded(torch.zeros(5000), offset_real), padded(torch.zeros(300), offset_fake)
        emulated.emu_reset_launches()
        module._fwd_cuda(vr, vf, None, 0.3, 0, 0, loss, wr, wf)
        return {site for site, _ in emulated.emu_launches()}, (loss, wr, wf)

    sites, want = run(0, 0)
    assert _nt_site("forward", True) in sites, sites
    sites, got = run(*offsets)
    assert _nt_site("forward", False) in sites and _nt_site("forward", True) not in sites, sites
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("side", ["both", "real", "fake"])
def test_nt_losses_backward_unaligned_weight_gradients_take_the_scalar_variant(emulated, side):
    """The weights' gradients arrive as the caller's tensors (contiguous, maybe at any address: a slice of
    torch.cat([w_real, w_fake]) is one); unaligned ones, either side's, send the backward to its scalar variant, with
    the same bits as aligned copies of them give in the packed one."""
    g = torch.Generator().manual_seed(3)
    a, b = ((3 * torch.randn(n, generator=g)).requires_grad_(True) for n in (5004, 1002))
    up = torch.randn(5004 + 1002 + 1, generator=g)
    gwr, gwf = up[1:5005], up[5005:6007]  # 4 bytes past 16-byte boundaries
    gwr, gwf = (gwr.clone() if side == "fake" else gwr), (gwf.clone() if side == "real" else gwf)

    def grads(gwr, gwf):
        loss, wr, wf = nt_losses(a, b, 0.3, loss="d", js_weights=True, backend="cuda")
        emulated.emu_reset_launches()
        out = torch.autograd.grad((loss, wr, wf), (a, b), (torch.tensor(0.7), gwr, gwf))
        return {site for site, _ in emulated.emu_launches()}, out

    sites, want = grads(gwr.clone(), gwf.clone())
    assert _nt_site("backward", True) in sites, sites
    sites, got = grads(gwr, gwf)
    assert _nt_site("backward", False) in sites and _nt_site("backward", True) not in sites, sites
    for x, y in zip(got, want):
        assert torch.equal(x, y)


@pytest.mark.parametrize("packed", [True, False])
def test_nt_losses_kernel_paths_python_never_takes(emulated, packed):
    """G's loss with real logits (Python passes none: G's real side is outside the loss) and JS weights (Python
    asks them of D only) through the kernels' entry points: the forward writes the real side's weights without
    a loss term, the backward its gradient (the weights' alone; zero without them), as the cpu kernels do."""
    module = importlib.import_module("fastgan.ops.nt_losses")
    g = torch.Generator().manual_seed(4)
    lr, lf = (3 * torch.randn(n, generator=g) for n in (5002, 1002))
    if not packed:
        lr, lf = padded(lr, 1), padded(lf, 1)

    def forward(run, weights):
        loss = torch.empty(())
        wr, wf = (torch.zeros(5002), torch.zeros(1002)) if weights else (None, None)
        run(lr, lf, None, 0.3, 1, 0, loss, wr, wf)  # kind 1: G
        return [loss] + ([wr, wf] if weights else [])

    def backward(run, weights):
        gwr, gwf = (torch.randn(5002, generator=torch.Generator().manual_seed(5)),
                    torch.randn(1002, generator=torch.Generator().manual_seed(6))) if weights else (None, None)
        dr, df = torch.full((5002,), float("nan")), torch.full((1002,), float("nan"))
        run(torch.tensor(0.7), gwr, gwf, lr, lf, None, 0.3, 1, 0, dr, df)
        return [dr, df]

    emulated.emu_reset_launches()
    for weights in (True, False):
        for a, b in zip(forward(module._fwd_cuda, weights), forward(module._fwd_cpu, weights)):
            _close(a, b, torch.float32)
        got, want = backward(module._bwd_cuda, weights), backward(module._bwd_cpu, weights)
        for a, b in zip(got, want):
            _close(a, b, torch.float32)
        if not weights:
            assert torch.equal(got[0], torch.zeros(5002))
    sites = {site for site, _ in emulated.emu_launches()}
    assert {_nt_site("forward", packed), _nt_site("backward", packed)} <= sites, sites


# ---------------------------------------------------------------- BatchNorm passes of the closed form

@pytest.mark.parametrize("shape", [(6, 5, 7), (2, 3, 20, 20), (3, 130, 2)], ids=["C5", "C3-S400", "C130"])
@pytest.mark.parametrize("gamma", [True, False])
def test_bn_closed_form_passes(emulated, shape, gamma):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: padded(torch.randn(*s, generator=g, dtype=torch.float64))  # noqa: E731
    h, t, rho, lam = r(*shape), r(*shape), r(*shape), r(*shape)
    gm = r(shape[1]) if gamma else None

    def chain(backend):
        xhat, rstd = K.stats(h, 1e-5, backend)
        out, mt, q = K.centered(xhat, t, rstd, gm, backend)
        return [xhat, rstd, out, mt, q, *K.vjp(rho, lam, xhat, t, rstd, gm, mt, q, backend)]

    for a, b in zip(chain("cuda"), chain("cpu")):
        if a is not None:
            assert not a.isnan().any()
            _close(a, b, torch.float64)


# ---------------------------------------------------------------- denoiser layers

def _denoiser_pair(n, hidden, depth, training):
    out = []
    for backend in ("cuda", "cpu"):
        torch.manual_seed(0)
        den = Denoiser(n, hidden, depth, backend=backend, dtype=torch.float64)
        with torch.no_grad():
            for p in den.parameters():
                p.add_(0.1 * torch.randn_like(p))
        out.append(den.train(training))
    return out


@pytest.mark.parametrize("training,reduction", [(True, "mean"), (False, "mean"), (True, "sum"), (True, "none")])
def test_denoiser_loss_forward_and_backward(emulated, training, reduction):
    # 70 hidden features: three column blocks of 32, the last partial; B = 37 rows: ragged over 16 row lanes.
    # The reductions: the loss kernel's backward reads go[0] / B, go[0] / 1 or a value per row
    pair = _denoiser_pair(20, 70, 2, training)
    h = padded(torch.randn(37, 20, dtype=torch.float64))
    noise = padded(torch.randn(37, 20, dtype=torch.float64))
    go = torch.rand(37, dtype=torch.float64) if reduction == "none" else None
    results = []
    for den in pair:
        hh = h.detach().requires_grad_(True)
        loss = den.loss(hh, noise, detach=False, reduction=reduction)
        loss.backward(go)
        r = den(h.detach()) if not training else None
        results.append([loss, hh.grad, *(p.grad for p in den.parameters()), *den.buffers()]
                       + ([r] if r is not None else []))
    for a, b in zip(*results):
        _close(a, b, torch.float64)


def test_denoiser_generator_term(emulated):
    h = padded(torch.randn(19, 33, dtype=torch.float64))
    results = []
    for den in _denoiser_pair(33, 40, 1, True):
        hh = h.detach().requires_grad_(True)
        loss = den.generator_loss(hh)
        loss.backward()
        results.append([loss, hh.grad, *den.buffers()])
    for a, b in zip(*results):
        _close(a, b, torch.float64)


# ---------------------------------------------------------------- every launch site runs

def test_every_kernel_launch_site_runs(emulated):
    """The cases above, smallest first, launch every `<<<...>>>` in csrc/cuda at least once."""
    emulated.emu_reset_launches()
    for F, layout in [(3, "aligned"), (40, "aligned"), (40, "offset"), (300, "strided"), (3000, "aligned")]:
        _penalty_run("cuda", *_penalty_case(3, F, torch.float32, layout))
    for shape in [(3, 5, 5), (3, 4, 4)]:
        for kind in ("float", "eps", "channel"):
            _noise_run("cuda", *_noise_case(kind, 4, shape, "double", torch.float32, "aligned"), "double")
    for n in (10, 5000):
        a = torch.randn(n, dtype=torch.float64, requires_grad=True)
        b = torch.randn(n, dtype=torch.float64, requires_grad=True)
        sum(o.sum() for o in nt_losses(a, b, 0.3, loss="d", js_weights=True, backend="cuda")).backward()
        a32, b32 = a.detach().float().requires_grad_(True), b.detach().float().requires_grad_(True)
        nt_losses(a32, b32, 0.3, loss="g", backend="cuda").backward()
        # the scalar variants (strided logits)
        a5, b5 = a.detach()[::5].requires_grad_(True), b.detach()[::5].requires_grad_(True)
        nt_losses(a5, b5, 0.3, loss="d", backend="cuda").backward()
    test_bn_closed_form_passes(emulated, (2, 3, 4), True)
    for training in (True, False):
        for dtype in (torch.float32, torch.float64):
            den = Denoiser(6, 8, 1, backend="cuda", dtype=dtype).train(training)
            h = torch.randn(5, 6, dtype=dtype)
            den.loss(h.requires_grad_(True)).backward()
            den.generator_loss(h.detach().requires_grad_(True)).backward()
            den(h.detach())
    launched = {site for site, _ in emulated.emu_launches()}
    missing = cuda_emu_build().launch_sites() - launched
    assert not missing, f"kernel launches never run in the emulator: {sorted(missing)}"


def test_launch_rewrite_keeps_statements_and_lines():
    rewrite = cuda_emu_build().rewrite_launches
    src = ("if (v)\n  k<T, A, 4, true><<<grid, kThreads, 0, st>>>(\n      f(a, b), reinterpret_cast<const T*>(g));\n"
           "else\n  ns::k2<float><<<dim3(n), dim3(32, 16), 0, st>>>(a);\n")
    out = rewrite(src, "x.cu")
    assert out.count("\n") == src.count("\n")
    assert ('::emu::Launch(grid, kThreads, 0, st).run("x.cu:2", __PRETTY_FUNCTION__, [&] { k<T, A, 4, true>('
            "\n      f(a, b), reinterpret_cast<const T*>(g)); });") in out
    assert ('::emu::Launch(dim3(n), dim3(32, 16), 0, st).run("x.cu:5", __PRETTY_FUNCTION__, [&] { ns::k2<float>(a); })'
            in out)


def test_shared_declarations_are_marked_for_poisoning():
    src = ("  __shared__ unsigned long long s_seed, s_off;\n  __shared__ double red[TY][TX + 1];\n"
           "  __shared__ T a[TX], b[TX];\n  int x = 0;\n")
    out = cuda_emu_build().mark_shared(src)
    assert out.count("\n") == src.count("\n")
    for name in ("s_seed", "s_off", "red", "a", "b"):
        assert f"::emu::shared_region(&{name}, sizeof({name}));" in out
    assert out.splitlines()[3] == "  int x = 0;"
