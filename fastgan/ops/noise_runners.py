"""The kernels of ``noisy_clean_batch`` (fastgan/ops/noise.py) per backend, and the runners that allocate their
outputs and call them, without autograd: shared by the custom ops (torch.compile, fake tensors) and the eager
autograd.Functions of noise.py."""
from __future__ import annotations

import contextlib

import torch

from .. import _ext
from ..reference import noise as ref
from . import _checks, _dispatch
from ._locks import ForkSafeLock

OP = "noisy_clean_batch"
OP_BACKWARD = OP + "_backward"


# ---------------------------------------------------------------- backend implementations (no autograd)
# Tensors here are 2-D: x (m, F), eps (n_noisy, F), outputs (rows_out, F) contiguous; sigma: C contiguous
# values in the accumulation dtype (the eager path keeps the caller's shape, e.g. (C, 1, 1));
# rng int64 [seed, offset, ticket] (or the 2-element `used` of a recorded draw).

def _fwd_reference(xr, xf, eps, sigma, sigma_value, rng, advance, used, out_r, out_f, C, half):
    x0 = xr if xr is not None else xf
    m, F = x0.shape
    mode = "half" if half else "double"
    if eps is None:
        _, n_noisy = ref.split(m, mode)
        if advance:
            used.copy_(rng[:2])
        s = sigma.view(C, 1) if sigma is not None else sigma_value
        eps = ref.gaussian_noise(s, (C, F // C), n_noisy, rng, advance, dtype=x0.dtype).reshape(n_noisy, F)
    r, f = ref.add_noise(xr, xf, eps, mode)
    if r is not None:
        out_r.copy_(r)
    if f is not None:
        out_f.copy_(f)


def _bwd_reference(gr, gf, rng, dxr, dxf, deps, dsig, m, C, half):
    g0 = gr if gr is not None else gf
    F = g0.shape[1]
    acc = _checks.acc_dtype(g0.dtype)
    n_clean, n_noisy = ref.split(m, "half" if half else "double")
    dst0 = n_clean if half else m
    ge = torch.zeros(n_noisy, F, dtype=acc, device=g0.device)
    if gr is not None:
        ge += gr[dst0:].to(acc)
    if gf is not None:
        ge += gf[dst0:].to(acc)
    if deps is not None:
        deps.copy_(ge)
    if dsig is not None:
        z = ref.philox_normal(int(rng[0]), int(rng[1]), n_noisy * F, g0.device).to(acc)
        dsig.copy_((ge * z.view(n_noisy, F)).view(n_noisy, C, F // C).sum(2))
    if dxr is not None:
        dxr.copy_(gr[:m].to(acc) + gr[m:].to(acc))
    if dxf is not None:
        dxf.copy_(gf[:m].to(acc) + gf[m:].to(acc))


_NO_STRIDES = (0, 0)


def _forward_args(xr, xf, eps, sigma, sigma_value, rng, advance, used, out_r, out_f, C, half):
    # per-call hot path: a tuple in NoisyForwardArgs' field order (the bindings unpack it by position)
    x0 = xr if xr is not None else xf
    sr_b, sr_f = xr.stride() if xr is not None else _NO_STRIDES
    sf_b, sf_f = xf.stride() if xf is not None else _NO_STRIDES
    se_b, se_f = eps.stride() if eps is not None else _NO_STRIDES
    m, F = x0.shape
    return (xr.data_ptr() if xr is not None else 0, xf.data_ptr() if xf is not None else 0, sr_b, sr_f, sf_b,
            sf_f, eps.data_ptr() if eps is not None else 0, se_b, se_f,
            sigma.data_ptr() if sigma is not None else 0, sigma_value, C,
            rng.data_ptr() if rng is not None else 0, advance, used.data_ptr() if used is not None else 0,
            out_r.data_ptr() if out_r is not None else 0, out_f.data_ptr() if out_f is not None else 0,
            _ext.DTYPE_CODES[x0.dtype], m, F, half)


def _backward_args(gr, gf, rng, dxr, dxf, deps, dsig, m, C, half):
    # a tuple in NoisyBackwardArgs' field order
    g0 = gr if gr is not None else gf
    gr_b, gr_f = gr.stride() if gr is not None else _NO_STRIDES
    gf_b, gf_f = gf.stride() if gf is not None else _NO_STRIDES
    return (gr.data_ptr() if gr is not None else 0, gf.data_ptr() if gf is not None else 0, gr_b, gr_f, gf_b,
            gf_f, dxr.data_ptr() if dxr is not None else 0, dxf.data_ptr() if dxf is not None else 0,
            deps.data_ptr() if deps is not None else 0, dsig.data_ptr() if dsig is not None else 0,
            rng.data_ptr() if rng is not None else 0, C, _ext.DTYPE_CODES[g0.dtype], m, g0.shape[1], half)


def _fwd_cpu(*args):
    # the custom op's cpu calls (the eager path's, and a draw that keeps its normals, go through _batches_cpu)
    _ext.C().noisy_forward_cpu(_forward_args(*args), 0)


def _bwd_cpu(*args):
    # dsigma gets the kernel's C sums over the rows (total=True), not the n_noisy x C partials the other backends
    # leave (see _run_backward)
    _ext.C().noisy_backward_cpu(_backward_args(*args), 0, True)


def _fwd_cuda(*args):
    a = _forward_args(*args)
    dev = (args[0] if args[0] is not None else args[1]).device
    with torch.cuda.device(dev):
        _ext.C().noisy_forward_cuda(a, _ext.stream_handle(dev))


def _bwd_cuda(*args):
    a = _backward_args(*args)
    dev = (args[0] if args[0] is not None else args[1]).device
    with torch.cuda.device(dev):
        _ext.C().noisy_backward_cuda(a, _ext.stream_handle(dev))


def _fwd_triton(xr, xf, eps, sigma, sigma_value, rng, advance, used, out_r, out_f, C, half):
    from ..kernels import noise as k

    x0 = xr if xr is not None else xf
    if eps is None and sigma is None and x0.dtype == torch.float64:
        # triton passes float arguments as float32
        sigma = torch.full((1,), sigma_value, dtype=torch.float64, device=x0.device)
    with _dispatch.on_device(x0):
        k.forward(xr, xf, eps, sigma, sigma_value, rng, advance, used, out_r, out_f, C, half)


def _bwd_triton(gr, gf, rng, dxr, dxf, deps, dsig, m, C, half):
    from ..kernels import noise as k

    with _dispatch.on_device(gr if gr is not None else gf):
        k.backward(gr, gf, rng, dxr, dxf, deps, dsig, m, C, half)


_FORWARD = {"reference": _fwd_reference, "cpu": _fwd_cpu, "cuda": _fwd_cuda, "triton": _fwd_triton}
_BACKWARD = {"reference": _bwd_reference, "cpu": _bwd_cpu, "cuda": _bwd_cuda, "triton": _bwd_triton}


# ---------------------------------------------------------------- kernel runners (no autograd)
# Shared by the custom ops (torch.compile, fake tensors) and the eager autograd.Functions below.

def _rows_out(m: int, half: bool) -> int:
    return m if half else 2 * m


def _empty_outputs(xr, xf, half):
    # sizes as separate ints: new_empty parses them faster than a tuple
    x0 = xr if xr is not None else xf
    m, F = x0.shape
    rows = m if half else 2 * m
    out_r = x0.new_empty(rows, F) if xr is not None else x0.new_empty(0)
    out_f = x0.new_empty(rows, F) if xf is not None else x0.new_empty(0)
    return out_r, out_f


def _channels(sigma) -> int:
    return sigma.shape[0] if sigma is not None else 1


def _n_noisy(m: int, half: bool) -> int:
    return m - m // 2 if half else m


_CPU_DRAW_LOCK = ForkSafeLock()


def _draw_lock(state: torch.Tensor):
    """What a draw from `state` holds while it reads and advances the offset: on CPU the kernels run with the GIL
    released, so two threads drawing from one state would draw the same noise. CUDA kernels advance it on the
    device, in stream order."""
    return _CPU_DRAW_LOCK if state.device.type == "cpu" else contextlib.nullcontext()


def _run_draw(x_real, x_fake, sigma, sigma_value, state, half, backend):
    """(out_real, out_fake, used): the draw and its [seed, offset] in `used`, for a backward that draws again."""
    used = state.new_empty(2)
    C = sigma.numel() if sigma is not None else 1
    if backend == "cpu":
        m, F = (x_real if x_real is not None else x_fake).shape
        return (*_batches_cpu(x_real, x_fake, sigma, sigma_value, state, half, m, F, C, used.data_ptr()), used)
    out_r, out_f = _empty_outputs(x_real, x_fake, half)
    args = (x_real, x_fake, None, sigma, sigma_value, state, True, used,
            out_r if x_real is not None else None, out_f if x_fake is not None else None, C, half)
    with _draw_lock(state):
        _FORWARD[backend](*args)
    _dispatch.record(OP, backend)
    return out_r, out_f, used


def _batches_cpu(x_real, x_fake, sigma, sigma_value, state, half, m, F, C, used_ptr=0, z_ptr=0, eps=None):
    """The cpu backend's batches, with the caller's sizes: (out_real, out_fake; an empty tensor for a side not
    given). A draw from `state` (eps None) writes its [seed, offset] at `used_ptr` (two int64) and its float32
    normals at `z_ptr` where given (the eager path keeps them only for a backward that reads them: dsigma's); else
    the noise generator's eps (n_noisy, F) is added. The argument tuple is built here, not by _forward_args: each
    question skipped is ~0.1 us of a ~55 us call."""
    x0 = x_real if x_real is not None else x_fake
    rows = m if half else 2 * m
    if x_real is not None:
        out_r = x0.new_empty(rows, F)
        (sr_b, sr_f), pr, por = x_real.stride(), x_real.data_ptr(), out_r.data_ptr()
    else:
        out_r, sr_b, sr_f, pr, por = x0.new_empty(0), 0, 0, 0, 0
    if x_fake is not None:
        out_f = x0.new_empty(rows, F)
        (sf_b, sf_f), pf, pof = x_fake.stride(), x_fake.data_ptr(), out_f.data_ptr()
    else:
        out_f, sf_b, sf_f, pf, pof = x0.new_empty(0), 0, 0, 0, 0
    if eps is not None:
        (se_b, se_f) = eps.stride()
        _ext.C().noisy_forward_cpu((pr, pf, sr_b, sr_f, sf_b, sf_f, eps.data_ptr(), se_b, se_f, 0, 0.0, 1, 0, False,
                                    0, por, pof, _ext.DTYPE_CODES[x0.dtype], m, F, half), 0)
    else:
        args = (pr, pf, sr_b, sr_f, sf_b, sf_f, 0, 0, 0, sigma.data_ptr() if sigma is not None else 0, sigma_value,
                C, state.data_ptr(), True, used_ptr, por, pof, _ext.DTYPE_CODES[x0.dtype], m, F, half)
        with _CPU_DRAW_LOCK.plain:  # 0.3 us of a ~50 us call at the 2-d mixture's sizes
            _ext.C().noisy_forward_cpu(args, z_ptr)
    _dispatch.record(OP, "cpu")
    return out_r, out_f


def _z_buffer(x0, n):
    """(buffer, n_pad): one float32 allocation for a cpu draw's n normals and, 8-byte aligned after them at
    float index n_pad, its [seed, offset] (`_used_of`): one tensor to allocate and save instead of two."""
    n_pad = n + (n & 1)
    size = n_pad + 4
    return (x0.new_empty(size) if x0.dtype is torch.float32 else x0.new_empty(size, dtype=torch.float32)), n_pad


def _used_of(zbuf, n_pad):
    """The int64 [seed, offset] that _z_buffer's draw wrote after its normals."""
    return zbuf[n_pad:].view(torch.int64)


def _grads_cpu(g_real, g_fake, want_r, want_f, m, half, want_eps=False, zbuf=None, n_pad=0, C=1,
               sigma_shape=None):
    """(dx_real, dx_fake, dnoise) on the cpu backend in one kernel call, for the upstream gradients it reads (None:
    not read) and dx where wanted (else None): dnoise is eps's gradient (want_eps), sigma's (zbuf: a draw's kept
    normals, _z_buffer; the kernel sums it over the rows; sigma_shape: its shape, None for (C,)) or None."""
    g0 = g_real if g_real is not None else g_fake
    if g0 is None:
        return None, None, None
    F = g0.shape[1]
    dxr = dxf = dnoise = None
    if not half:
        dxr = g0.new_empty(m, F) if want_r else None
        dxf = g0.new_empty(m, F) if want_f else None
    zp = 0
    if want_eps:
        dnoise = g0.new_empty(_n_noisy(m, half), F)
    elif zbuf is not None:
        shape = sigma_shape if sigma_shape is not None else (C,)
        dt = g0.dtype
        # new_empty's dtype keyword alone costs ~0.5 us
        dnoise = g0.new_empty(shape) if dt is torch.float32 or dt is torch.float64 else \
            g0.new_empty(shape, dtype=torch.float32)
        zp = zbuf.data_ptr()
    if dxr is not None or dxf is not None or dnoise is not None:
        (gr_b, gr_f) = g_real.stride() if g_real is not None else _NO_STRIDES
        (gf_b, gf_f) = g_fake.stride() if g_fake is not None else _NO_STRIDES
        pn = dnoise.data_ptr() if dnoise is not None else 0
        args = (g_real.data_ptr() if g_real is not None else 0, g_fake.data_ptr() if g_fake is not None else 0,
                gr_b, gr_f, gf_b, gf_f, dxr.data_ptr() if dxr is not None else 0,
                dxf.data_ptr() if dxf is not None else 0, pn if want_eps else 0, pn if zp else 0,
                zp + 4 * n_pad if zp else 0, C, _ext.DTYPE_CODES[g0.dtype], m, F, half)
        _ext.C().noisy_backward_cpu(args, zp, zp != 0)
        _dispatch.record(OP_BACKWARD, "cpu")
    if half:  # the clean rows are x's, the noisy ones x's plus noise: dx is the upstream gradient itself
        return (g_real if want_r else None), (g_fake if want_f else None), dnoise
    return dxr, dxf, dnoise


def _run_apply(x_real, x_fake, sigma, sigma_value, eps, used, half, backend):
    out_r, out_f = _empty_outputs(x_real, x_fake, half)
    _FORWARD[backend](x_real, x_fake, eps, sigma, sigma_value, used, False, None,
                      out_r if x_real is not None else None, out_f if x_fake is not None else None,
                      sigma.numel() if sigma is not None else 1, half)
    _dispatch.record(OP, backend)
    return out_r, out_f


def _run_backward(g_real, g_fake, used, m, C, want_dx_real, want_dx_fake, want_deps, want_dsigma, half, backend,
                  sigma_shape=None):
    """The noise drawn again from `used` where dsigma is wanted. sigma_shape: the shape of dsigma, when not (C,)."""
    g0 = g_real if g_real is not None else g_fake
    F = g0.shape[1]
    n_noisy = _n_noisy(m, half)
    dxr = g0.new_empty(m, F) if want_dx_real else None
    dxf = g0.new_empty(m, F) if want_dx_fake else None
    deps = g0.new_empty(n_noisy, F) if want_deps else None
    # the cpu kernel sums dsigma over the rows itself (as _grads_cpu's call does: the same bits); the
    # others leave per-row partial sums, reduced here so the result does not depend on their thread layout
    total = backend == "cpu"
    if want_dsigma:
        acc = torch.float64 if g0.dtype is torch.float64 else torch.float32
        rows = (C,) if total else (n_noisy, C)
        part = g0.new_empty(rows) if g0.dtype is acc else g0.new_empty(rows, dtype=acc)
    else:
        part = None
    if want_dx_real or want_dx_fake or want_deps or want_dsigma:
        _BACKWARD[backend](g_real, g_fake, used, dxr, dxf, deps, part, m, C, half)
        _dispatch.record(OP_BACKWARD, backend)
    # (for one channel, sum() equals sum(0) bit for bit and saves a view to a 0-d sigma's shape)
    if want_deps:
        dnoise = deps
    elif not want_dsigma:
        dnoise = None
    elif total:
        dnoise = part if sigma_shape is None else part.view(sigma_shape)
    elif sigma_shape is None:
        dnoise = part.sum(0)
    elif len(sigma_shape) == 0:
        dnoise = part.sum()
    else:
        dnoise = part.sum(0).view(sigma_shape)
    return dxr, dxf, dnoise


def _filled(g0, outs):
    # custom ops and autograd.Function outputs are tensors: the outputs not wanted come back empty
    return tuple(t if t is not None else g0.new_empty(0) for t in outs)
