"""torch.library.opcheck for every fastgan::* custom op, on the "cpu" and "triton" backends (Triton on CPU tensors
through the interpreter: tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported), each op in float32 and
float64 (one dtype per case, the op's cases covering both), on its default layout and on non-default ones (batch 1,
odd feature counts, one channel, strided inputs, missing optional tensors, eval mode, other depths).

Each case runs
  * opcheck: test_schema (no undeclared mutation, no undeclared aliasing), test_autograd_registration,
    test_faketensor (the fake kernel's outputs against the real ones), test_aot_dispatch_dynamic (eager against
    AOTAutograd with dynamic shapes, gradients included where an input requires grad);
  * the real outputs' metadata (shape, strides, storage offset, dtype, device) against the fake kernel's under
    FakeTensorMode and on the meta device;
  * no output sharing memory with an input or another output, checked on every leaf (Tensor[] outputs included);
  * only the arguments the schema marks written change (running statistics come back as new tensors; the Philox
    state is the one declared mutation), and two calls on copies of the arguments agree bit for bit.

The opcheck cases of tests/ops/test_{noise,penalty,penalty_terms,bn_closed_form,nt_losses,denoiser}.py (cpu and
reference backends on their default shapes) are not repeated here.
"""
from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensorMode

# importing these modules registers every fastgan:: op
import fastgan.ops
import fastgan.ops.bn_closed_form
import fastgan.ops.denoiser
import fastgan.ops.noise as N
import fastgan.ops.nt_losses
import fastgan.ops.penalty  # noqa: F401

OPS = torch.ops.fastgan
BACKENDS = ["cpu", "triton"]
DTYPES = [torch.float32, torch.float64]
ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
# fastgan::noisy_batch_draw mutates its Philox state, and torch.library refuses register_autograd on an op whose
# schema is not functional (CustomOpDef.register_autograd: "Cannot register autograd formula for non-functional
# operator"), so its autograd is the autograd.Function noise._Draw around it (checked in
# test_draw_autograd_function_matches_the_eager_path below). With inputs that require grad, opcheck's AOT check
# backpropagates through the bare op and hits the "no autograd formula" error by design: that sub-check is skipped
# for those cases only; the same draw without grad runs every check, AOT included.
DRAW_WITH_GRAD_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")


class _Gen:
    """Seeded inputs in the style of the ops' own tests: drawn in float64, then cast."""

    def __init__(self, dtype, seed=0):
        self.g = torch.Generator().manual_seed(seed)
        self.dtype = dtype

    def __call__(self, *shape, grad=False, positive=False):
        t = torch.randn(*shape, generator=self.g, dtype=torch.float64)
        if positive:
            t = t.abs() + 0.5
        return t.to(self.dtype).requires_grad_(grad)


# ---------------------------------------------------------------- argument builders: (args, test_utils)
# Each takes (r: _Gen, backend) and builds the arguments as the public functions pass them.

def _bn_relu_train(r, backend):
    # B=2, N=7, no Linear bias, running statistics tracked (the new ones come back as outputs 3 and 4)
    y, gamma, beta = r(2, 7, grad=True), r(7, grad=True), r(7, grad=True)
    return (y, None, gamma, beta, r(7), r(7, positive=True), True, 0.3, 1e-3, True, backend), None


def _bn_relu_eval(r, backend):
    # eval mode on one sample, with a bias, no ReLU
    y, bias, gamma, beta = r(1, 3, grad=True), r(3, grad=True), r(3, grad=True), r(3, grad=True)
    return (y, bias, gamma, beta, r(3), r(3, positive=True), False, 0.1, 1e-5, False, backend), None


def _bn_relu_backward(training, relu, B, N):
    def build(r, backend):
        y, bias, gamma, beta = r(B, N), r(N), r(N), r(N)
        rm, rv = r(N), r(N, positive=True)
        out, shift, invstd, _, _ = OPS.bn_relu(y, bias, gamma, beta, rm, rv, training, 0.1, 1e-5, relu, backend)
        return (r(B, N), out, y, gamma, shift, invstd, training, relu, backend), None
    return build


def _recon_loss_bias(r, backend):
    return (r(3, 5, grad=True), r(5, grad=True), r(3, 5, grad=True), backend), None


def _recon_loss_no_bias(r, backend):
    # the generator's target loss: no bias, one sample, an odd feature count
    return (r(1, 7, grad=True), None, r(1, 7), backend), None


def _recon_loss_backward_dbias(r, backend):
    return (r(3), r(3, 5), r(5), r(3, 5), True, backend), None


def _recon_loss_backward_no_bias(r, backend):
    return (r(1), r(1, 7), None, r(1, 7), False, backend), None


def _denoiser_params(r, F, hidden, grad):
    dims = [F, *hidden, F]
    ws = [r(dims[i + 1], dims[i], grad=grad) for i in range(len(dims) - 1)]
    bs = [r(dims[i + 1], grad=grad) for i in range(len(dims) - 1)]
    gs = [r(H, grad=grad) for H in hidden]
    bes = [r(H, grad=grad) for H in hidden]
    return ws, bs, gs, bes, [r(H) for H in hidden], [r(H, positive=True) for H in hidden]


# (B, F, hidden widths, training): two hidden layers of different widths in training mode with running statistics;
# one sample in eval mode through a width-1 layer; no hidden layer at all
DENOISER_NETS = {"d2-train": (4, 5, [3, 6], True), "d2-eval-B1": (1, 3, [5, 1], False), "d0-train": (3, 5, [], True)}


def _denoiser_loss(net):
    def build(r, backend):
        B, F, hidden, training = DENOISER_NETS[net]
        ws, bs, gs, bes, rms, rvs = _denoiser_params(r, F, hidden, grad=True)
        h, noise = r(B, F, grad=True), r(B, F, grad=net != "d2-train")
        return (h, noise, 0.7, ws, bs, gs, bes, rms, rvs, training, 0.1, 1e-5, backend), None
    return build


def _denoiser_loss_backward(net, need_h, need_noise):
    def build(r, backend):
        B, F, hidden, training = DENOISER_NETS[net]
        ws, bs, gs, bes, rms, rvs = _denoiser_params(r, F, hidden, grad=False)
        h, noise = r(B, F), r(B, F)
        _, saved, _ = OPS.denoiser_loss(h, noise, 0.7, ws, bs, gs, bes, rms, rvs, training, 0.1, 1e-5, backend)
        return (r(B), h, 0.7, ws, bs, gs, saved, training, need_h, need_noise, backend), None
    return build


def _denoiser_forward(net, track):
    def build(r, backend):
        B, F, hidden, training = DENOISER_NETS[net]
        ws, bs, gs, bes, rms, rvs = _denoiser_params(r, F, hidden, grad=False)
        return (r(B, F), ws, bs, gs, bes, rms, rvs, training, track, 0.1, 1e-5, backend), None
    return build


def _bn_cf_stats(shape):
    def build(r, backend):
        return (r(*shape), 1e-3, backend), None
    return build


def _bn_cf_centered(shape, gamma):
    def build(r, backend):
        xhat, rstd = OPS.bn_cf_stats(r(*shape), 1e-5, backend)
        return (xhat, r(*shape), rstd, r(shape[1]) if gamma else None, backend), None
    return build


def _bn_cf_vjp(shape, gamma):
    def build(r, backend):
        xhat, rstd = OPS.bn_cf_stats(r(*shape), 1e-5, backend)
        t, g = r(*shape), (r(shape[1]) if gamma else None)
        _, mt, q = OPS.bn_cf_centered(xhat, t, rstd, g, backend)
        return (r(*shape), r(*shape), xhat, t, rstd, g, mt, q, backend), None
    return build


def _nt_losses_d(r, backend):
    # mode="half" sizes (odd, one fake logit), mu a 0-d tensor, reduction "sum", with the JS weights
    mu = torch.tensor(0.3, dtype=r.dtype)
    return (r(3, grad=True), r(1, grad=True), mu, 0.0, 0, 1, True, backend), None


def _nt_losses_g(r, backend):
    # the generator's loss: logits_real empty (as nt_losses passes it), mean, no weights
    return (r(0), r(5, grad=True), None, 0.7, 1, 0, False, backend), None


def _nt_losses_backward_d(r, backend):
    return (r((), grad=True), r(6, grad=True), r(6, grad=True), r(6, grad=True), r(6, grad=True), None, 0.4, 0, 0,
            backend), None


def _nt_losses_backward_g(r, backend):
    mu = torch.tensor(0.6, dtype=r.dtype)
    return (r((), grad=True), None, r(1, grad=True), r(0), r(1, grad=True), mu, 0.0, 1, 1, backend), None


def _penalty_b1(r, backend):
    return (r(1, 1, grad=True), r(1, grad=True), 2, backend), None


def _penalty_strided(r, backend):
    # a transposed (5, 7) gradient, as reshape leaves a view for the kernels' 2-D strides
    return (r(7, 5).t().requires_grad_(), r(5, grad=True), 1, backend), None


def _penalty_backward(r, backend):
    return (r(5, grad=True), r(5, 7, grad=True), r(5, grad=True), 1, backend), None


def _penalty_backward_strided(r, backend):
    return (r(3, grad=True), r(5, 3).t().requires_grad_(), r(3, grad=True), 2, backend), None


def _terms_b1(r, backend):
    return (r(1, 3), r(1), 0, 1, 0, 1, backend), None


def _terms_strided(r, backend):
    return (r(4, 3).t(), r(6)[::2], 2, 0, 3, 3, backend), None


def _draw_double(r, backend):
    # float sigma, both batches, no grad: every check runs, the AOT one included (opcheck clones the state for
    # each run, so eager and compiled draw from the same [seed, offset])
    return (r(5, 3), r(5, 3), None, 0.3, torch.tensor([7, 4, 0], dtype=torch.int64), False, backend), None


def _draw_half_grad(r, backend):
    # per-channel sigma (C=3 channels of 2 values), x_real only, mode "half" with an odd batch
    args = (r(3, 6, grad=True), None, r(3, grad=True, positive=True), 0.0, torch.tensor([11, 0, 0], dtype=torch.int64),
            True, backend)
    return args, DRAW_WITH_GRAD_CHECKS


def _apply_eps_half(r, backend):
    return (r(5, 3, grad=True), r(5, 3, grad=True), None, 0.0, r(3, 3, grad=True), None, True, backend), None


def _apply_replay_channels(r, backend):
    # the replay of a recorded draw with a per-channel sigma, x_fake only
    used = torch.tensor([11, 4], dtype=torch.int64)
    return (None, r(3, 6, grad=True), r(3, grad=True, positive=True), 0.0, None, used, False, backend), None


def _noise_backward_eps(r, backend):
    return (r(10, 3, grad=True), r(10, 3, grad=True), None, 5, 1, True, True, True, False, False, backend), None


def _noise_backward_sigma_half(r, backend):
    used = torch.tensor([11, 4], dtype=torch.int64)
    return (r(3, 6, grad=True), None, used, 3, 3, False, False, False, True, True, backend), None


def _noise_backward_nothing(r, backend):
    # nothing wanted: three empty outputs
    return (r(2, 1, grad=True), None, torch.tensor([1, 0], dtype=torch.int64), 1, 1, False, False, False, False,
            False, backend), None


F32, F64 = torch.float32, torch.float64
# op -> {case: (builder, dtype)}: each op's cases between them run float32 and float64, on both backends (one dtype per
# case keeps the file's runtime down: the full product doubled it for the same code paths)
CASES = {
    "bn_relu": {"train-B2N7": (_bn_relu_train, F32), "eval-B1": (_bn_relu_eval, F64)},
    "bn_relu_backward": {"train-relu": (_bn_relu_backward(True, True, 3, 5), F64),
                         "eval-B1N1": (_bn_relu_backward(False, False, 1, 1), F32)},
    "recon_loss": {"bias": (_recon_loss_bias, F32), "no-bias-B1": (_recon_loss_no_bias, F64)},
    "recon_loss_backward": {"dbias": (_recon_loss_backward_dbias, F64),
                            "no-bias-B1": (_recon_loss_backward_no_bias, F32)},
    "denoiser_loss": {"d2-train": (_denoiser_loss("d2-train"), F32),
                      "d2-eval-B1": (_denoiser_loss("d2-eval-B1"), F64)},
    "denoiser_loss_backward": {"d2-train-h-noise": (_denoiser_loss_backward("d2-train", True, True), F64),
                               "d0-train-h": (_denoiser_loss_backward("d0-train", True, False), F32),
                               "d2-eval-B1-params": (_denoiser_loss_backward("d2-eval-B1", False, False), F32)},
    "denoiser_forward": {"d2-train-track": (_denoiser_forward("d2-train", True), F32),
                         "d2-eval-B1": (_denoiser_forward("d2-eval-B1", False), F64),
                         "d0-train": (_denoiser_forward("d0-train", True), F64)},
    "bn_cf_stats": {"B1C3S5": (_bn_cf_stats((1, 3, 5)), F32), "C1-4d": (_bn_cf_stats((2, 1, 3, 3)), F64)},
    "bn_cf_centered": {"gamma-C1-4d": (_bn_cf_centered((2, 1, 3, 3), True), F32),
                       "no-gamma-B1": (_bn_cf_centered((1, 4, 1), False), F64)},
    "bn_cf_vjp": {"gamma-B1": (_bn_cf_vjp((1, 3, 5), True), F64),
                  "no-gamma-C1-4d": (_bn_cf_vjp((2, 1, 3, 3), False), F32)},
    "nt_losses": {"d-odd-js-sum": (_nt_losses_d, F64), "g": (_nt_losses_g, F32)},
    "nt_losses_backward": {"d-weights": (_nt_losses_backward_d, F32), "g-one-fake": (_nt_losses_backward_g, F64)},
    "grad_norm_penalty": {"B1F1": (_penalty_b1, F32), "strided": (_penalty_strided, F64)},
    "grad_norm_penalty_backward": {"default": (_penalty_backward, F64), "strided": (_penalty_backward_strided, F32)},
    "grad_norm_penalty_terms": {"B1-split0": (_terms_b1, F64), "strided": (_terms_strided, F32)},
    "noisy_batch_draw": {"double": (_draw_double, F32), "half-channels-grad": (_draw_half_grad, F64)},
    "noisy_batch": {"eps-half": (_apply_eps_half, F64), "replay-channels": (_apply_replay_channels, F32)},
    "noisy_batch_backward": {"dx-eps": (_noise_backward_eps, F32), "dsigma-half": (_noise_backward_sigma_half, F64),
                             "nothing": (_noise_backward_nothing, F32)},
}
CASE_PARAMS = [pytest.param(op, name, id=f"{op}-{name}-{'f32' if dtype == F32 else 'f64'}")
               for op, cases in CASES.items() for name, (_, dtype) in cases.items()]


# ---------------------------------------------------------------- checks beyond opcheck

def _copy(args):
    return pytree.tree_map_only(torch.Tensor, lambda t: t.detach().clone().requires_grad_(t.requires_grad), args)


def _tensors(tree):
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _written_args(op) -> set:
    return {a.name for a in op._schema.arguments if a.alias_info is not None and a.alias_info.is_write}


def _check_metadata(op, args, real):
    """The fake kernel's outputs (under FakeTensorMode, and on the meta device) against the real ones."""
    copies = _copy(args)
    with FakeTensorMode() as mode:
        fake = op(*pytree.tree_map_only(torch.Tensor, mode.from_tensor, copies))
    meta = op(*pytree.tree_map_only(
        torch.Tensor, lambda t: t.detach().to("meta").requires_grad_(t.requires_grad), args))
    real, fake, meta = _tensors(real), _tensors(fake), _tensors(meta)
    assert len(fake) == len(meta) == len(real), (len(real), len(fake), len(meta))
    for i, (a, f, m) in enumerate(zip(real, fake, meta)):
        want = (tuple(a.shape), a.stride(), a.storage_offset(), a.dtype)
        assert (tuple(f.shape), f.stride(), f.storage_offset(), f.dtype) == want, f"output {i}: fake vs real"
        assert (tuple(m.shape), m.stride(), m.storage_offset(), m.dtype) == want, f"output {i}: meta vs real"
        assert f.device == a.device and m.device.type == "meta", f"output {i}: device"


def _check_real_call(op, args):
    """Outputs alias neither the inputs nor each other (Tensor[] outputs included); only the arguments the schema
    declares written change; a second call on copies of the arguments gives the same bits. Returns the outputs."""
    call_args = _copy(args)
    before = {a.name: [t.detach().clone() for t in _tensors(v)] for a, v in zip(op._schema.arguments, call_args)}
    out = op(*call_args)
    written = _written_args(op)
    for a, v in zip(op._schema.arguments, call_args):
        if a.name not in written:
            for t0, t1 in zip(before[a.name], _tensors(v)):
                assert torch.equal(t0, t1.detach()), f"argument {a.name} changed but is not declared mutable"
    inputs = {t.untyped_storage().data_ptr() for t in _tensors(call_args) if t.numel()}
    seen: dict = {}
    for i, t in enumerate(_tensors(out)):
        if not t.numel():
            continue
        ptr = t.untyped_storage().data_ptr()
        assert ptr not in inputs, f"output {i} aliases an input"
        assert ptr not in seen, f"output {i} aliases output {seen.get(ptr)}"
        seen[ptr] = i
    again = op(*_copy(args))
    for i, (a, b) in enumerate(zip(_tensors(out), _tensors(again))):
        assert torch.equal(a.detach(), b.detach()), f"output {i} differs between two calls on the same arguments"
    return out


# ---------------------------------------------------------------- the tests

def test_every_registered_op_has_cases():
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastgan::")}
    assert registered == set(CASES), f"ops without opcheck cases: {registered - set(CASES)}"


def test_every_op_runs_both_dtypes():
    for op_name, cases in CASES.items():
        assert {dtype for _, dtype in cases.values()} == set(DTYPES), op_name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op_name,case", CASE_PARAMS)
def test_opcheck(op_name, case, backend):
    op = getattr(OPS, op_name).default
    build, dtype = CASES[op_name][case]
    args, test_utils = build(_Gen(dtype), backend)
    torch.library.opcheck(op, args, test_utils=test_utils or ALL_CHECKS)
    real = _check_real_call(op, args)
    _check_metadata(op, args, real)


@pytest.mark.parametrize("backend", BACKENDS)
def test_draw_mutates_only_its_declared_state(backend):
    """noisy_batch_draw's schema declares `state` written (Tensor(a!)): the draw reads [seed, offset], returns
    them as `used` and advances the offset in place; the same state replayed through noisy_batch gives the same
    batch."""
    op = OPS.noisy_batch_draw.default
    assert _written_args(op) == {"state"}
    assert all(not _written_args(getattr(OPS, n).default) for n in CASES if n != "noisy_batch_draw")
    r = _Gen(torch.float32)
    x, state = r(5, 3), torch.tensor([7, 4, 0], dtype=torch.int64)
    out_r, out_f, used = op(x, None, None, 0.3, state, False, backend)
    assert used.tolist() == [7, 4] and out_f.numel() == 0
    assert state[0] == 7 and state[1] > 4 and state[2] == 0
    replay, _ = OPS.noisy_batch(x, None, torch.tensor([0.3]), 0.0, None, used, False, backend)
    torch.testing.assert_close(replay, out_r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_draw_autograd_function_matches_the_eager_path(backend):
    """The draw's gradients under torch.compile come from noise._Draw (the autograd.Function around the op, see
    DRAW_WITH_GRAD_CHECKS): its values and gradients equal the eager path's for the same state (float64 and the
    triton backend here; tests/ops/test_noise.py::test_eager_path_matches_custom_op_path has cpu in float32)."""
    r = _Gen(torch.float64)
    xr, xf = r(3, 3, 2, grad=True), r(3, 3, 2, grad=True)
    sigma = r(3, 1, grad=True, positive=True)
    state = torch.tensor([11, 8, 0], dtype=torch.int64)
    eager = N.noisy_clean_batch(xr, xf, sigma, "half", state=state.clone(), backend=backend)
    xr2, xf2, sigma2 = (t.detach().clone().requires_grad_() for t in (xr, xf, sigma))
    st2 = state.clone()
    via_op = N._Draw.apply(xr2.reshape(3, 6), xf2.reshape(3, 6), sigma2.reshape(3), 0.0, st2, True, backend)
    assert st2[1] > state[1]
    for a, b in zip(eager, via_op):
        torch.testing.assert_close(a.reshape(b.shape), b, rtol=1e-12, atol=1e-14)
    up = [r(*t.shape) for t in via_op]
    g_eager = torch.autograd.grad([t.reshape(b.shape) for t, b in zip(eager, via_op)], [xr, xf, sigma], up)
    g_op = torch.autograd.grad(list(via_op), [xr2, xf2, sigma2], up)
    for a, b in zip(g_eager, g_op):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """t's values in a non-contiguous view (every other element of a buffer twice as wide in the last dim), a
    leaf requiring grad as t does; 0-d, empty and one-element tensors are returned as they are (no layout)."""
    if t.dim() == 0 or t.numel() <= 1:
        return t
    buf = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    view = buf[..., ::2]
    view.copy_(t.detach())
    assert not view.is_contiguous()
    return view.requires_grad_(t.requires_grad)


STRIDED_BACKENDS = ["reference", "cpu", "cuda", "triton"]  # "cuda": the emulated kernels (tests/conftest.py)


@pytest.mark.parametrize("backend", STRIDED_BACKENDS)
@pytest.mark.parametrize("op_name,case", CASE_PARAMS)
def test_strided_arguments_give_the_contiguous_results(op_name, case, backend):
    """Every tensor argument it only reads (list elements and integer Philox offsets included) in a non-contiguous
    view gives the outputs of the same call on contiguous tensors; an argument it writes (the draw's Philox state)
    must be contiguous and is refused naming it otherwise. The kernels take pointers: a strided view read as a
    dense array silently gave other values (the public functions pass dense tensors; torch.ops.fastgan.* did not
    check)."""
    op = getattr(OPS, op_name).default
    build, dtype = CASES[op_name][case]
    args, _ = build(_Gen(dtype), backend)
    written = _written_args(op)
    dense = _copy(args)
    strided = [v if a.name in written else pytree.tree_map_only(torch.Tensor, _strided, v)
               for a, v in zip(op._schema.arguments, _copy(args))]
    want, got = op(*dense), op(*strided)
    for i, (a, b) in enumerate(zip(_tensors(want), _tensors(got))):
        torch.testing.assert_close(b.detach(), a.detach(), msg=lambda m: f"output {i}: {m}")
        assert b.stride() == a.stride(), f"output {i}: strides {b.stride()} for strided inputs, {a.stride()} else"
    for a, b in zip(_tensors(dense), _tensors(strided)):
        assert torch.equal(a.detach(), b.detach()), "a written argument changed differently"
    for a, v in zip(op._schema.arguments, args):
        if a.name in written:
            with pytest.raises(ValueError, match=f"{a.name} must be contiguous"):
                op(*[_strided(x) if b.name == a.name else x for b, x in zip(op._schema.arguments, _copy(args))])
