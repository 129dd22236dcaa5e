"""NTGAN noisy/clean batches (Noise-Tempered GAN, Algorithm 1 and Sec. 2.3) built in one kernel:
``noisy_clean_batch(x_real, x_fake, noise, mode)`` returns the discriminator's real and fake batches
[x; x + eps] ("double") or [x[:m//2]; x[m//2:] + eps] ("half"), with the same eps for real and fake.

Noise: a fixed sigma (float), a learned sigma (tensor, shared or per-channel) with eps = sigma * z, or the
noise generator's output eps. z comes from a counter-based Philox4x32-10 stream whose (seed, offset) live in
a device tensor (``NoiseState``): the kernel reads them and advances the offset on the device, so results
are reproducible from a seed and a captured CUDA graph draws new noise on each replay. The CPU and CUDA
kernels draw the same z (csrc/include/fastgan/philox.h); Triton draws the same stream up to float rounding.

Custom ops: ``fastgan::noisy_batch_draw`` (mutates the state; autograd through ``_Draw``),
``fastgan::noisy_batch`` (eps, or a replay of a recorded draw; functional, with register_autograd) and
``fastgan::noisy_batch_backward`` (differentiable: its backward is noisy_batch on the cotangents). The kernels
per backend and their runners are in noise_runners.py.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch
from torch.autograd import forward_ad as _fwAD

from ..reference import noise as ref
from . import _checks, _dispatch, _eager, _library
from .noise_runners import (_CPU_DRAW_LOCK, OP, OP_BACKWARD, _channels,  # noqa: F401  (_CPU_DRAW_LOCK: for tests)
                            _batches_cpu, _draw_lock, _empty_outputs, _filled, _grads_cpu, _n_noisy, _rows_out,
                            _run_apply, _run_backward, _run_draw, _used_of, _z_buffer)
from .noise_state import NoiseState, _check_state_values, _default_state_tensor

MODES = ("double", "half")

NoiseArg = Union[float, torch.Tensor]


# ---------------------------------------------------------------- custom ops

def _batch_args(op, x_real, x_fake, sigma, eps=None, half=False):
    """(m, F) of the op's (m, F) batches, checked to agree in shape and dtype, with sigma a (C,) vector in their
    accumulation dtype with C dividing F, and eps (given) their noisy rows in their dtype."""
    if x_real is None and x_fake is None:
        raise ValueError(f"fastgan::{op}: x_real and x_fake are both None")
    name0, x0 = ("x_real", x_real) if x_real is not None else ("x_fake", x_fake)
    _checks.op_shapes(op, (name0, x0, (None, None)))
    m, F = x0.shape
    _checks.op_shapes(op, ("x_fake", x_fake, (m, F)), ("sigma", sigma, (None,)), ("eps", eps, (_n_noisy(m, half), F)))
    if sigma is not None and (sigma.shape[0] < 1 or F % sigma.shape[0]):
        raise ValueError(f"fastgan::{op}: sigma's {sigma.shape[0]} channels must divide the rows' {F} features")
    _checks.op_dtypes(op, (name0, x0), ("x_fake", x_fake), ("eps", eps))
    _checks.op_dtypes(op, (name0, x0), ("sigma", sigma), want=_checks.acc_dtype(x0.dtype),
                      why=f"the accumulation dtype of {name0}'s {x0.dtype}")
    return m, F


def _counters(op, name, t):
    """state (seed, offset, ...) / used (seed, offset): read and written as int64."""
    _checks.op_dtypes(op, (name, t), allowed=(torch.int64,))


@_library.custom_op("fastgan::noisy_batch_draw", mutates_args=("state",))
def _draw(x_real: Optional[torch.Tensor], x_fake: Optional[torch.Tensor], sigma: Optional[torch.Tensor],
          sigma_value: float, state: torch.Tensor, half: bool,
          backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian draw: reads (seed, offset) from `state`, advances its offset; returns (real, fake, used)
    with used = the [seed, offset] the draw read (for the backward). A missing side gives an empty tensor."""
    _batch_args("noisy_batch_draw", x_real, x_fake, sigma)
    _checks.op_shapes("noisy_batch_draw", ("state", state, (3,)))
    _counters("noisy_batch_draw", "state", state)
    return _run_draw(x_real, x_fake, sigma, sigma_value, state, half, backend)


@_draw.register_fake
def _draw_fake(x_real, x_fake, sigma, sigma_value, state, half, backend):
    out_r, out_f = _empty_outputs(x_real, x_fake, half)
    return out_r, out_f, state.new_empty(2)


@_library.custom_op("fastgan::noisy_batch", mutates_args=())
def _apply(x_real: Optional[torch.Tensor], x_fake: Optional[torch.Tensor], sigma: Optional[torch.Tensor],
           sigma_value: float, eps: Optional[torch.Tensor], used: Optional[torch.Tensor], half: bool,
           backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """eps given: add it; else replay the Gaussian draw recorded in `used` ([seed, offset]) with sigma."""
    _batch_args("noisy_batch", x_real, x_fake, sigma, eps, half)
    _checks.op_shapes("noisy_batch", ("used", used, (2,)))
    if used is not None:
        _counters("noisy_batch", "used", used)
    return _run_apply(x_real, x_fake, sigma, sigma_value, eps, used, half, backend)


@_apply.register_fake
def _apply_fake(x_real, x_fake, sigma, sigma_value, eps, used, half, backend):
    return _empty_outputs(x_real, x_fake, half)


@_library.custom_op("fastgan::noisy_batch_backward", mutates_args=())
def _backward_op(g_real: Optional[torch.Tensor], g_fake: Optional[torch.Tensor], used: Optional[torch.Tensor],
                 m: int, C: int, want_dx_real: bool, want_dx_fake: bool, want_deps: bool, want_dsigma: bool,
                 half: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx_real (m, F), dx_fake (m, F), dnoise) for upstream (rows_out, F) gradients; dx only in double mode
    (in half mode dx = g); dnoise = deps (n_noisy, F) or dsigma (C,) in the accumulation dtype. Outputs not
    wanted are empty."""
    rows = _rows_out(m, half)
    _checks.op_shapes("noisy_batch_backward", ("g_real", g_real, (rows, None)), ("used", used, (2,)))
    _checks.op_shapes("noisy_batch_backward", ("g_fake", g_fake, (rows, None) if g_real is None else g_real.shape))
    g0 = g_real if g_real is not None else g_fake
    if g0 is not None and (C < 1 or g0.shape[1] % C):
        raise ValueError(f"fastgan::noisy_batch_backward: C must divide the rows' {g0.shape[1]} features, got {C}")
    if g0 is not None:
        _checks.op_dtypes("noisy_batch_backward", ("g_real" if g_real is not None else "g_fake", g0),
                          ("g_fake", g_fake))
    if used is not None:
        _counters("noisy_batch_backward", "used", used)
    dx_r, dx_f, dnoise = _run_backward(g_real, g_fake, used, m, C, want_dx_real and not half,
                                       want_dx_fake and not half, want_deps, want_dsigma, half, backend)
    if half:
        # the kernels write dx in double mode only (the autograd paths take g itself there): every row is x's own,
        # dx = g (a None upstream: zeros), where this op returned uninitialized memory when asked for it
        def dx(g, want):
            if not want:
                return None
            return g.clone(memory_format=torch.contiguous_format) if g is not None else g0.new_zeros(m, g0.shape[1])
        dx_r, dx_f = dx(g_real, want_dx_real), dx(g_fake, want_dx_fake)
    return _filled(g0, (dx_r, dx_f, dnoise))


@_backward_op.register_fake
def _backward_op_fake(g_real, g_fake, used, m, C, want_dx_real, want_dx_fake, want_deps, want_dsigma, half,
                      backend):
    g0 = g_real if g_real is not None else g_fake
    F = g0.shape[1]
    n_noisy = _n_noisy(m, half)
    dxr = g0.new_empty(m, F) if want_dx_real else g0.new_empty(0)
    dxf = g0.new_empty(m, F) if want_dx_fake else g0.new_empty(0)
    if want_deps:
        dnoise = g0.new_empty(n_noisy, F)
    elif want_dsigma:
        dnoise = g0.new_empty(C, dtype=_checks.acc_dtype(g0.dtype))
    else:
        dnoise = g0.new_empty(0)
    return dxr, dxf, dnoise


# ---------------------------------------------------------------- autograd (shared by both paths)
# ctx.eager says which path built the node: its backward (and the backward's backward) stay on that path.

def _noise_grads(g_r, g_f, used, has_r, has_f, need_r, need_f, need_eps, need_sigma, m, C, half, backend, eager,
                 sigma_shape=None):
    """Gradients (dx_real, dx_fake, dnoise) of a noisy batch for upstream (g_real, g_fake) (None = zero).
    sigma_shape: see _run_backward (the eager path's; dnoise comes back in sigma_shape)."""
    g_r = g_r if has_r else None
    g_f = g_f if has_f else None
    if g_r is None and g_f is None:
        return None, None, None
    want_r = need_r and g_r is not None
    want_f = need_f and g_f is not None
    args = (g_r, g_f, used, m, C, want_r and not half, want_f and not half, need_eps, need_sigma, half, backend)
    if eager and not _needs_graph(g_r, g_f):
        dx_r, dx_f, dnoise = _run_backward(*args, sigma_shape)
    elif eager:
        dx_r, dx_f, dnoise = _eager_backward(*args)
        if need_sigma and sigma_shape is not None:  # not asked for, dnoise is an empty placeholder
            dnoise = dnoise.view(sigma_shape)
    else:
        dx_r, dx_f, dnoise = torch.ops.fastgan.noisy_batch_backward(*args)
    if half:
        dx_r, dx_f = (g_r if want_r else None), (g_f if want_f else None)
    else:
        dx_r, dx_f = (dx_r if want_r else None), (dx_f if want_f else None)
    return dx_r, dx_f, (dnoise if need_eps or need_sigma else None)


def _save_used(ctx, used) -> None:
    # nothing saved where there is no draw state (eps given): a saved None is freed with the graph all the same, and a
    # second backward through the node (errD_real.backward(), then errD_fake.backward()) raised where torch's ops run
    ctx.has_used = used is not None
    if ctx.has_used:
        ctx.save_for_backward(used)


def _saved_used(ctx):
    return ctx.saved_tensors[0] if ctx.has_used else None


def _save_forward(ctx, x_real, x_fake, sigma, used, half, backend, eager):
    # _EagerDraw.forward sets the same fields
    x0 = x_real if x_real is not None else x_fake
    _save_used(ctx, used)
    ctx.has_r, ctx.has_f = x_real is not None, x_fake is not None
    ctx.m, ctx.C, ctx.half, ctx.backend, ctx.eager = x0.shape[0], _channels(sigma), half, backend, eager


def _setup_apply(ctx, inputs, output):
    x_real, x_fake, sigma, sigma_value, eps, used, half, backend = inputs
    _save_forward(ctx, x_real, x_fake, sigma, used, half, backend, False)


def _backward_apply(ctx, g_r, g_f):
    used = _saved_used(ctx)
    need = ctx.needs_input_grad
    dx_r, dx_f, dnoise = _noise_grads(g_r, g_f, used, ctx.has_r, ctx.has_f, need[0], need[1], need[4], need[2],
                                      ctx.m, ctx.C, ctx.half, ctx.backend, ctx.eager)
    d_sigma = dnoise if need[2] else None
    d_eps = dnoise if need[4] else None
    return dx_r, dx_f, d_sigma, None, d_eps, None, None, None


_apply.register_autograd(_backward_apply, setup_context=_setup_apply)


def _save_backward(ctx, g_real, g_fake, used, m, C, wants, half, backend, eager):
    _save_used(ctx, used)
    g0 = g_real if g_real is not None else g_fake
    ctx.shape, ctx.has_r, ctx.has_f = (m, g0.shape[1]), g_real is not None, g_fake is not None
    ctx.wants = wants
    ctx.C, ctx.half, ctx.backend, ctx.eager = C, half, backend, eager
    ctx.dtype, ctx.device = g0.dtype, g0.device


def _setup_backward_op(ctx, inputs, output):
    g_real, g_fake, used, m, C, want_dx_real, want_dx_fake, want_deps, want_dsigma, half, backend = inputs
    _save_backward(ctx, g_real, g_fake, used, m, C, (want_dx_real, want_dx_fake, want_deps, want_dsigma), half,
                   backend, False)


def _backward_backward(ctx, a_dxr, a_dxf, a_noise):
    # The backward is linear in (g_real, g_fake): its adjoint is the forward map applied to the cotangents
    # (x <- a_dx, noise <- a_noise), with the same recorded z.
    used = _saved_used(ctx)
    want_dxr, want_dxf, want_deps, want_dsig = ctx.wants
    apply = _eager_apply if ctx.eager else _apply

    def zeros(*shape):
        return torch.zeros(shape, dtype=ctx.dtype, device=ctx.device)

    def x_of(a, want):
        return a.contiguous() if (want and a is not None) else zeros(*ctx.shape)

    # cotangents come in any layout (a .sum() gives a stride-0 one); the kernels read contiguous rows and sigma
    a_noise = a_noise.contiguous() if a_noise is not None else None

    xr = x_of(a_dxr, want_dxr) if ctx.has_r else None
    xf = x_of(a_dxf, want_dxf) if ctx.has_f else None
    if want_dsig and a_noise is not None:
        out_r, out_f = apply(xr, xf, a_noise, 0.0, None, used, ctx.half, ctx.backend)
    else:
        eps = a_noise if (want_deps and a_noise is not None) else None
        if eps is None:
            eps = zeros(_n_noisy(ctx.shape[0], ctx.half), ctx.shape[1])
        out_r, out_f = apply(xr, xf, None, 0.0, eps, None, ctx.half, ctx.backend)
    return (out_r if ctx.has_r else None, out_f if ctx.has_f else None, None, None, None, None, None, None,
            None, None, None)


_backward_op.register_autograd(_backward_backward, setup_context=_setup_backward_op)


@_eager.function
class _Draw(torch.autograd.Function):
    """Autograd for the state-mutating draw through torch.ops.fastgan.noisy_batch_draw (torch.library refuses
    register_autograd on mutating ops); the eager path has _EagerDraw."""

    @staticmethod
    def forward(ctx, x_real, x_fake, sigma, sigma_value, state, half, backend):
        out_r, out_f, used = torch.ops.fastgan.noisy_batch_draw(x_real, x_fake, sigma, sigma_value, state, half,
                                                                backend)
        _save_forward(ctx, x_real, x_fake, sigma, used, half, backend, False)
        return out_r, out_f

    @staticmethod
    def backward(ctx, g_r, g_f):
        (used,) = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx_r, dx_f, d_sigma = _noise_grads(g_r, g_f, used, ctx.has_r, ctx.has_f, need[0], need[1], False,
                                           need[2], ctx.m, ctx.C, ctx.half, ctx.backend, ctx.eager)
        return dx_r, dx_f, d_sigma, None, None, None, None


# ---------------------------------------------------------------- eager path
# Outside tracing (_eager.ok) the kernels run through these plain autograd.Functions, skipping the custom-op
# dispatcher's ~100 us a call; same runners, same backward formulas, same dispatch counts.

@_eager.function
class _EagerApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_real, x_fake, sigma, sigma_value, eps, used, half, backend):
        _save_forward(ctx, x_real, x_fake, sigma, used, half, backend, True)
        return _run_apply(x_real, x_fake, sigma, sigma_value, eps, used, half, backend)

    backward = staticmethod(_backward_apply)


@_eager.function
class _EagerBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g_real, g_fake, used, m, C, want_dx_real, want_dx_fake, want_deps, want_dsigma, half, backend):
        _save_backward(ctx, g_real, g_fake, used, m, C, (want_dx_real, want_dx_fake, want_deps, want_dsigma), half,
                       backend, True)
        return _filled(g_real if g_real is not None else g_fake,
                       _run_backward(g_real, g_fake, used, m, C, want_dx_real, want_dx_fake, want_deps,
                                     want_dsigma, half, backend))

    backward = staticmethod(_backward_backward)


@_eager.function
class _EagerDraw(torch.autograd.Function):
    """_Draw's eager counterpart. sigma keeps the caller's shape (no reshape node in the graph). What the backward
    reads is kept only where it needs it: for sigma's gradient the draw's state (`used`) and, on the cpu backend,
    its normals z in the same buffer (drawing them again costs more than storing them), which the backward's one
    kernel call reads; else nothing, and the backward forms dx alone, no noise read."""

    @staticmethod
    def forward(ctx, x_real, x_fake, sigma, params):
        # the non-tensor arguments in one tuple (Function.apply costs per argument), with the sizes the caller
        # already has (each .shape or .numel() is ~0.1 us, the whole op ~50 us at the 2-d mixture's sizes)
        sigma_value, state, half, backend, m, F, C, sigma_shape = params
        keep = ctx.needs_input_grad[2]
        n_pad = 0
        if backend != "cpu":
            out_r, out_f, used = _run_draw(x_real, x_fake, sigma, sigma_value, state, half, backend)
            if keep:
                ctx.save_for_backward(used)
        elif keep:
            zbuf, n_pad = _z_buffer(x_real if x_real is not None else x_fake, _n_noisy(m, half) * F)
            zp = zbuf.data_ptr()
            out_r, out_f = _batches_cpu(x_real, x_fake, sigma, sigma_value, state, half, m, F, C, zp + 4 * n_pad, zp)
            ctx.save_for_backward(zbuf)
        else:
            out_r, out_f = _batches_cpu(x_real, x_fake, sigma, sigma_value, state, half, m, F, C)
        # one ctx field: each costs ~0.05 us to set and to read
        ctx.p = (x_real is not None, x_fake is not None, m, C, half, backend, sigma_shape, keep, n_pad)
        return out_r, out_f

    @staticmethod
    def backward(ctx, g_r, g_f):
        has_r, has_f, m, C, half, backend, sigma_shape, keep, n_pad = ctx.p
        need = ctx.needs_input_grad
        if backend == "cpu" and not _needs_graph(g_r, g_f):
            want_r, want_f = has_r and need[0] and g_r is not None, has_f and need[1] and g_f is not None
            if not keep:  # dx alone, no noise read
                dx_r, dx_f, _ = _grads_cpu(g_r if want_r else None, g_f if want_f else None, want_r, want_f, m, half)
                return dx_r, dx_f, None, None
            if (g_r is not None or not has_r) and (g_f is not None or not has_f):
                dx_r, dx_f, d_sigma = _grads_cpu(g_r if has_r else None, g_f if has_f else None, want_r, want_f, m,
                                                 half, zbuf=ctx.saved_tensors[0], n_pad=n_pad, C=C,
                                                 sigma_shape=sigma_shape)
                return dx_r, dx_f, d_sigma, None
        used = None
        if keep:
            (used,) = ctx.saved_tensors
            if backend == "cpu":
                used = _used_of(used, n_pad)
        dx_r, dx_f, d_sigma = _noise_grads(g_r, g_f, used, has_r, has_f, need[0], need[1], False, need[2], m, C,
                                           half, backend, True, sigma_shape)
        return dx_r, dx_f, d_sigma, None


@_eager.function
class _EagerEps(torch.autograd.Function):
    """_EagerApply for the noise generator's eps on the plain path (_plain_call): the non-tensor arguments in one
    tuple and one ctx field (Function.apply and each ctx attribute cost per item, at a call of ~40 us)."""

    @staticmethod
    def forward(ctx, x_real, x_fake, eps, params):
        half, backend, m, F = params
        ctx.p = (half, backend, m, x_real is not None, x_fake is not None)
        if backend == "cpu":
            return _batches_cpu(x_real, x_fake, None, 0.0, None, half, m, F, 1, eps=eps)
        return _run_apply(x_real, x_fake, None, 0.0, eps, None, half, backend)

    @staticmethod
    def backward(ctx, g_r, g_f):
        half, backend, m, has_r, has_f = ctx.p
        need = ctx.needs_input_grad
        if (backend == "cpu" and not _needs_graph(g_r, g_f) and (g_r is not None or not has_r)
                and (g_f is not None or not has_f)):
            dx_r, dx_f, d_eps = _grads_cpu(g_r if has_r else None, g_f if has_f else None, has_r and need[0],
                                           has_f and need[1], m, half, want_eps=need[2])
            return dx_r, dx_f, d_eps, None
        dx_r, dx_f, d_eps = _noise_grads(g_r, g_f, None, has_r, has_f, need[0], need[1], need[2], False, m, 1, half,
                                         backend, True)
        return dx_r, dx_f, d_eps, None


_eager_apply = _eager.apply_of(_EagerApply)
_eager_eps = _eager.apply_of(_EagerEps)
_eager_draw = _eager.apply_of(_EagerDraw)
_eager_backward = _eager.apply_of(_EagerBackward)
_needs_graph = _eager.needs_graph
_resolve_cpu = _dispatch.resolve_cpu


# ---------------------------------------------------------------- public API

_FLOAT_DTYPES = frozenset(_checks.FLOAT_DTYPES)
_STRIDED = torch.strided


def _sample_info(x_real, x_fake):
    # per-call hot path: one combined test for valid inputs; the checks below give the errors
    x0 = x_real if x_real is not None else x_fake
    if isinstance(x0, torch.Tensor) and x0.dtype in _FLOAT_DTYPES and x0.layout is _STRIDED:
        shape = x0.shape
        other = x_fake if x0 is x_real else None
        if (len(shape) >= 1 and shape[0] > 0 and (other is None or (
                isinstance(other, torch.Tensor) and other.dtype is x0.dtype and other.shape == shape
                and other.layout is _STRIDED and (x0.is_cpu and other.is_cpu or x0.device == other.device)))):
            F = shape[1] if len(shape) == 2 else math.prod(shape[1:])
            if F > 0:
                return x0, shape[0], F
    if x_real is None and x_fake is None:
        raise ValueError("x_real and x_fake are both None; give at least one batch")
    if x_real is not None:
        _checks.tensor("x_real", x_real, min_dim=1)
    if x_fake is not None:
        _checks.tensor("x_fake", x_fake, min_dim=1)
    if x_real is not None and x_fake is not None:
        _checks.same_device(x_real=x_real, x_fake=x_fake)
        if x_real.dtype != x_fake.dtype:
            raise TypeError(f"x_fake has dtype {x_fake.dtype} but x_real has {x_real.dtype}; they must match")
        if x_real.shape != x_fake.shape:
            raise ValueError(f"x_fake has shape {tuple(x_fake.shape)} but x_real has {tuple(x_real.shape)}: the "
                             "same eps is added to both, so their batch size and sample shape must match")
    x0 = x_real if x_real is not None else x_fake
    name = "x_real" if x_real is not None else "x_fake"
    if x0.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch")
    F = math.prod(x0.shape[1:])
    if F == 0:
        raise ValueError(f"{name} has an empty sample shape {tuple(x0.shape[1:])}")
    return x0, x0.shape[0], F


def _parse_noise(noise, x0, n_noisy, mode):
    """('sigma', value | tensor (C,), C) or ('eps', tensor (n_noisy, F), 1)."""
    # hot path for the common valid arguments; the general checks below give the errors
    if type(noise) is float:
        if _checks.finite(noise) and noise >= 0:
            return "sigma", noise, 1
    elif (isinstance(noise, torch.Tensor) and noise.dtype in _FLOAT_DTYPES and noise.layout is _STRIDED
          and (noise.is_cpu and x0.is_cpu or noise.device == x0.device)):
        nd, xd = noise.dim(), x0.dim()
        if nd < xd and noise.numel() == 1:
            return "sigma", noise, 1
        if nd == xd and noise.shape[0] == n_noisy and noise.shape[1:] == x0.shape[1:]:
            return "eps", noise, 1
    S = tuple(x0.shape[1:])
    if isinstance(noise, bool) or not isinstance(noise, (numbers.Real, torch.Tensor)):
        raise TypeError("noise must be a float sigma, a sigma tensor or the noise generator's output eps, "
                        f"got {type(noise).__name__}")
    if not isinstance(noise, torch.Tensor):
        value = float(noise)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"noise (sigma) must be finite, got {value}")
        if value < 0:  # a tensor sigma is not read (a host sync): its sign does not change eps's distribution
            raise ValueError(f"noise (sigma) must be >= 0, got {value}")
        return "sigma", value, 1
    _checks.tensor("noise", noise)
    _checks.same_device(x=x0, noise=noise)
    per_channel = (S[0],) + (1,) * (len(S) - 1) if S else ()  # a per-channel sigma's shape
    if noise.dim() == x0.dim():
        want = (n_noisy, *S)
        if tuple(noise.shape) != want:
            hint = (f"; a sigma tensor has fewer dimensions than x ({x0.dim()}), e.g. shape () or (1,)"
                    if noise.numel() == 1 else
                    f"; a per-channel sigma has x's sample dimensions without the batch's: shape {per_channel}"
                    if noise.shape[0] == 1 and tuple(noise.shape[1:]) == per_channel else "")
            raise ValueError(f"noise (eps) must have shape {want} (the noisy rows of mode {mode!r}), got "
                             f"{tuple(noise.shape)}{hint}")
        return "eps", noise, 1
    if noise.dim() < x0.dim():
        if noise.numel() == 1:
            return "sigma", noise, 1
        if len(S) >= 1 and tuple(noise.shape) == per_channel:
            return "sigma", noise, S[0]
        raise ValueError(f"noise (sigma) must have one element or the per-channel shape {per_channel}, got "
                         f"{tuple(noise.shape)}; the noise generator's eps has x's dimensions, shape "
                         f"{(n_noisy, *S)} here")
    raise ValueError(f"noise has {noise.dim()} dimensions but the batches have {x0.dim()}: give sigma "
                     f"(fewer dimensions) or eps of shape {(n_noisy, *S)}")


def _state_tensor(state, device) -> torch.Tensor:
    if state is None:
        return _default_state_tensor(device)
    t = state.tensor if type(state) is NoiseState else state
    if (type(t) is torch.Tensor and t.dtype is torch.int64 and t.shape == (3,) and t.is_contiguous()
            and t.device == device):
        # a raw tensor's values are checked where reading them costs no synchronization (not a NoiseState's:
        # its methods keep them valid)
        if t is state and t.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_state_values(t)
        return t
    t = state.tensor if isinstance(state, NoiseState) else state
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"state must be a NoiseState or an int64 tensor, got {type(state).__name__}")
    if t.dtype != torch.int64 or tuple(t.shape) != (3,) or not t.is_contiguous():
        raise ValueError(f"state must be a contiguous int64 tensor of shape (3,) [seed, offset, 0], got "
                         f"{t.dtype} of shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"state is on {t.device} but the batches are on {device}; create the NoiseState there")
    return t


_Tensor = torch.Tensor


def _plain_call(x_real, x_fake, noise, mode, state, backend):
    """noisy_clean_batch's result for the common call, or None for the general path: (m, F) batches of
    torch.Tensor where _eager.ok allows the eager path (no tracing, dispatch mode or functorch transform; not meta),
    outside any dual level, with eps of x's dtype and shape or a one-element sigma (float, or tensor in the
    accumulation dtype). Its tests imply the general path's checks (the others share x's device: not meta either)
    and it runs the same kernels through the same runners: at the 2-d mixture's sizes the general path's checks
    and argument passing were a tenth of a ~40 us forward+backward call, plain torch's ops then slightly faster."""
    x0 = x_real if x_real is not None else x_fake
    other = x_fake if x0 is x_real else None
    if (type(x0) is not _Tensor or (other is not None and type(other) is not _Tensor) or _fwAD._current_level >= 0
            or not _eager.ok(x0)):
        return None
    shape, dt = x0.shape, x0.dtype
    if len(shape) != 2 or dt not in _FLOAT_DTYPES or x0.layout is not _STRIDED or (other is not None and (
            other.shape != shape or other.dtype is not dt or other.layout is not _STRIDED
            or not (x0.is_cpu and other.is_cpu or x0.device == other.device))):
        return None
    m, F = shape
    if m == 0 or F == 0 or type(mode) is not str:  # not a str: the general path names it (see _checks.choice)
        return None
    if mode == "double":
        half, n_noisy = False, m
    elif mode == "half":
        half, n_noisy = True, _n_noisy(m, True)
    else:
        return None
    if type(noise) is _Tensor and noise.dim() == 2:
        if noise.dtype is not dt or noise.shape != (n_noisy, F) or noise.layout is not _STRIDED or not (
                noise.is_cpu and x0.is_cpu or noise.device == x0.device):
            return None
        chosen = _resolve_cpu(OP, backend) if x0.is_cpu else _dispatch.resolve(OP, x0.device, backend)
        if _needs_graph(x_real, x_fake, noise):
            out_r, out_f = _eager_eps(x_real, x_fake, noise, (half, chosen, m, F))
        else:
            out_r, out_f = _run_apply(x_real, x_fake, None, 0.0, noise, None, half, chosen)
    else:
        if type(noise) is float:
            if not (_checks.finite(noise) and noise >= 0):
                return None
            sigma, sigma_value = None, noise
        elif (type(noise) is _Tensor and noise.dim() < 2 and noise.numel() == 1
              and noise.dtype is _checks.acc_dtype(dt) and noise.layout is _STRIDED
              and (noise.is_cpu and x0.is_cpu or noise.device == x0.device)):
            sigma, sigma_value = noise, 0.0
        else:
            return None
        chosen = _resolve_cpu(OP, backend) if x0.is_cpu else _dispatch.resolve(OP, x0.device, backend)
        st = _state_tensor(state, x0.device)
        if type(st) is not _Tensor:
            return None
        if _needs_graph(x_real, x_fake, sigma):
            # a 0-d sigma's shape as (): new_empty takes it faster than a torch.Size
            nd = sigma.dim() if sigma is not None else 1
            out_r, out_f = _eager_draw(x_real, x_fake, sigma, (
                sigma_value, st, half, chosen, m, F, 1, None if nd == 1 else () if nd == 0 else sigma.shape))
        else:
            out_r, out_f, _ = _run_draw(x_real, x_fake, sigma, sigma_value, st, half, chosen)
    return (out_r if x_real is not None else None), (out_f if x_fake is not None else None)


def noisy_clean_batch(x_real: Optional[torch.Tensor], x_fake: Optional[torch.Tensor], noise: NoiseArg,
                      mode: str = "double", *, state: Union[NoiseState, torch.Tensor, None] = None,
                      backend: Optional[str] = None):
    """NTGAN's discriminator batches, built in one kernel: returns (real_batch, fake_batch).

    mode="double": [x_1..x_m, x_1 + eps_1, .., x_m + eps_m] (2m rows each).
    mode="half":   [x_1..x_h, x_{h+1} + eps_1, .., x_m + eps_{m-h}] with h = m // 2 (m rows each).
    The same eps is added to real and fake. x_real and x_fake: (m, ...) with equal shape and dtype; either
    may be None (its batch is then None), e.g. x_real=None for the generator step.

    noise:
      - float sigma: eps = sigma * z, z ~ N(0, 1) from the Philox stream of `state`;
      - sigma tensor (fewer dimensions than x) with one element, or per-channel of shape (C, 1, .., 1) with
        C = x.shape[1]: the same, differentiable w.r.t. sigma (NTGAN's learned sigma);
      - eps tensor (n_noisy, ...) = the noise generator's output (n_noisy = m, or m - m // 2 for "half"),
        cast to x's dtype, differentiable w.r.t. eps.
    state: NoiseState (or its int64 tensor) on the batches' device; read and advanced on the device. None uses
    ``default_noise_state(device)``. The noisy rows are computed in float32 (float64 for float64 inputs)
    and rounded once; gradients flow to x_real, x_fake and the noise, to any order.
    backend: None (best available), "reference", "cpu", "cuda" or "triton".
    """
    plain = _plain_call(x_real, x_fake, noise, mode, state, backend)
    if plain is not None:
        return plain
    _checks.no_differentiating_transform(x_real, x_fake, noise)
    x0, m, F = _sample_info(x_real, x_fake)
    if not isinstance(mode, str) or (mode != "double" and mode != "half"):
        _checks.choice("mode", mode, MODES)
    half = mode == "half"
    n_noisy = _n_noisy(m, half)
    kind, value, C = _parse_noise(noise, x0, n_noisy, mode)
    chosen = _dispatch.resolve(OP, x0.device, backend)
    # already (m, F): skip the reshapes (a few us each at the mixtures' sizes); under compile they stay, as
    # Dynamo's autograd.Function tracing refuses one tensor passed as two inputs (x_real is x_fake)
    flat = x0.dim() == 2 and not torch.compiler.is_compiling()
    xr2 = x_real if flat or x_real is None else x_real.reshape(m, F)
    xf2 = x_fake if flat or x_fake is None else x_fake.reshape(m, F)
    if kind == "eps":
        eps2 = value if value.dtype is x0.dtype else value.to(x0.dtype)  # .to() costs ~0.7 us even as a no-op
        eps2 = eps2 if flat else eps2.reshape(n_noisy, F)
        if not _eager.ok(xr2, xf2, eps2):
            out_r, out_f = torch.ops.fastgan.noisy_batch(xr2, xf2, None, 0.0, eps2, None, half, chosen)
        elif _needs_graph(xr2, xf2, eps2):
            out_r, out_f = _eager_apply(xr2, xf2, None, 0.0, eps2, None, half, chosen)
        else:
            out_r, out_f = _run_apply(xr2, xf2, None, 0.0, eps2, None, half, chosen)
    else:
        if _checks.transforms_active():
            raise NotImplementedError(
                "noisy_clean_batch's random draw (a sigma given as noise) cannot run under torch.func transforms "
                "such as vmap: it reads and advances one counter state a call, not one a sample (vmap failed with "
                "torch's own error about .item() or setup_context); draw eps outside the transform, e.g. sigma * "
                "torch.randn_like(x), and pass it as noise (an eps tensor), which vmap takes")
        st = _state_tensor(state, x0.device)
        eager = _eager.ok(xr2, xf2, value if isinstance(value, torch.Tensor) else None, st)
        if isinstance(value, torch.Tensor):
            acc = torch.float64 if x0.dtype is torch.float64 else torch.float32
            sigma, sigma_value = (value if value.dtype is acc else value.to(acc)), 0.0
            # the kernels read C contiguous values; the eager path keeps sigma's shape, saving a view node
            if not eager:
                sigma = sigma.reshape(C)
            if not sigma.is_contiguous():
                sigma = sigma.contiguous()
        else:
            sigma, sigma_value = None, value
        if not eager:
            out_r, out_f = _Draw.apply(xr2, xf2, sigma, sigma_value, st, half, chosen)
        elif _needs_graph(xr2, xf2, sigma):
            out_r, out_f = _eager_draw(xr2, xf2, sigma, (sigma_value, st, half, chosen, m, F, C,
                                                         None if sigma is None or sigma.dim() == 1 else sigma.shape))
        else:
            out_r, out_f, _ = _run_draw(xr2, xf2, sigma, sigma_value, st, half, chosen)
    if x_real is None:
        out_r = None
    if x_fake is None:
        out_f = None
    if flat:
        return out_r, out_f
    shape = (_rows_out(m, half), *x0.shape[1:])
    return (out_r.view(shape) if out_r is not None else None, out_f.view(shape) if out_f is not None else None)


def philox_normal(state: Union[NoiseState, torch.Tensor], n: int) -> torch.Tensor:
    """The next n float32 standard normals of the stream (reference implementation; advances the offset the
    way a draw of n noise elements does). For inspecting the stream, not for speed."""
    t = _state_tensor(state, state.device if isinstance(state, torch.Tensor) else state.tensor.device)
    with _draw_lock(t):
        z = ref.philox_normal(int(t[0]), int(t[1]), n, t.device)
        t[1] += ref.counters_for(n)
    return z
