"""Triton kernels of the NTGAN noisy/clean batch (fastgan/ops/noise.py).

The noise is tl.randn4x(seed, offset + counter): Triton's Philox4x32-10 stream, which is also the stream of
csrc/include/fastgan/philox.h and fastgan/reference/noise.py (up to the float rounding of log/cos/sin).
(seed, offset) are loaded from a device tensor, and the last program to finish advances the offset
(a ticket counter in the state), so a captured CUDA graph draws new noise on each replay.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _emit(e, z, N, F, INNER, src0, dst0, xr_ptr, xf_ptr, eps_ptr, sig_ptr, sigma_value, outr_ptr, outf_ptr,
          sr_b, sr_f, sf_b, sf_f, se_b, se_f,
          HAS_R: tl.constexpr, HAS_F: tl.constexpr, GAUSS: tl.constexpr, HAS_SIG: tl.constexpr,
          HALF: tl.constexpr, ACC: tl.constexpr):
    mask = e < N
    i = e // F
    f = e - i * F
    if GAUSS:
        if HAS_SIG:
            s = tl.load(sig_ptr + f // INNER, mask=mask, other=0.0).to(ACC)
        else:
            s = tl.cast(sigma_value, ACC)
        ev = s * z.to(ACC)
    else:
        ev = tl.load(eps_ptr + i * se_b + f * se_f, mask=mask, other=0.0).to(ACC)
    if HAS_R:
        v = tl.load(xr_ptr + (src0 + i) * sr_b + f * sr_f, mask=mask, other=0.0)
        tl.store(outr_ptr + (dst0 + i) * F + f, (v.to(ACC) + ev).to(outr_ptr.dtype.element_ty), mask=mask)
        if not HALF:
            tl.store(outr_ptr + i * F + f, v, mask=mask)
    if HAS_F:
        v = tl.load(xf_ptr + (src0 + i) * sf_b + f * sf_f, mask=mask, other=0.0)
        tl.store(outf_ptr + (dst0 + i) * F + f, (v.to(ACC) + ev).to(outf_ptr.dtype.element_ty), mask=mask)
        if not HALF:
            tl.store(outf_ptr + i * F + f, v, mask=mask)


# Float scalars are annotated tl.float64 (an unannotated Python float arrives as fp32): see kernels/denoiser.py.
@triton.jit
def _forward_kernel(xr_ptr, xf_ptr, eps_ptr, sig_ptr, sigma_value: tl.float64, rng_ptr, used_ptr, outr_ptr, outf_ptr,
                    M, F, INNER, sr_b, sr_f, sf_b, sf_f, se_b, se_f,
                    HAS_R: tl.constexpr, HAS_F: tl.constexpr, GAUSS: tl.constexpr, HAS_SIG: tl.constexpr,
                    ADVANCE: tl.constexpr, HALF: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if HALF:
        n_clean = M // 2
        n_noisy = M - n_clean
        src0 = n_clean
        dst0 = n_clean
    else:
        n_clean = M
        n_noisy = M
        src0 = M * 0
        dst0 = M
    N = n_noisy * F
    G = (N + 3) // 4
    g = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    if GAUSS:
        seed = tl.load(rng_ptr)
        off = tl.load(rng_ptr + 1)
        if ADVANCE:
            first = pid == 0
            tl.store(used_ptr, seed, mask=first)
            tl.store(used_ptr + 1, off, mask=first)
        z0, z1, z2, z3 = tl.randn4x(seed, off + g)
    else:
        z0 = tl.zeros([BLOCK], dtype=tl.float32)
        z1 = z0
        z2 = z0
        z3 = z0
    e = g * 4
    _emit(e, z0, N, F, INNER, src0, dst0, xr_ptr, xf_ptr, eps_ptr, sig_ptr, sigma_value, outr_ptr, outf_ptr,
          sr_b, sr_f, sf_b, sf_f, se_b, se_f, HAS_R, HAS_F, GAUSS, HAS_SIG, HALF, ACC)
    _emit(e + 1, z1, N, F, INNER, src0, dst0, xr_ptr, xf_ptr, eps_ptr, sig_ptr, sigma_value, outr_ptr, outf_ptr,
          sr_b, sr_f, sf_b, sf_f, se_b, se_f, HAS_R, HAS_F, GAUSS, HAS_SIG, HALF, ACC)
    _emit(e + 2, z2, N, F, INNER, src0, dst0, xr_ptr, xf_ptr, eps_ptr, sig_ptr, sigma_value, outr_ptr, outf_ptr,
          sr_b, sr_f, sf_b, sf_f, se_b, se_f, HAS_R, HAS_F, GAUSS, HAS_SIG, HALF, ACC)
    _emit(e + 3, z3, N, F, INNER, src0, dst0, xr_ptr, xf_ptr, eps_ptr, sig_ptr, sigma_value, outr_ptr, outf_ptr,
          sr_b, sr_f, sf_b, sf_f, se_b, se_f, HAS_R, HAS_F, GAUSS, HAS_SIG, HALF, ACC)
    if HALF:
        c = pid * (4 * BLOCK) + tl.arange(0, 4 * BLOCK).to(tl.int64)
        cm = c < n_clean * F
        ci = c // F
        cf = c - ci * F
        if HAS_R:
            tl.store(outr_ptr + c, tl.load(xr_ptr + ci * sr_b + cf * sr_f, mask=cm), mask=cm)
        if HAS_F:
            tl.store(outf_ptr + c, tl.load(xf_ptr + ci * sf_b + cf * sf_f, mask=cm), mask=cm)
    if GAUSS:
        if ADVANCE:
            # every thread of this program has read the state; the ticket then proves all programs have
            tl.debug_barrier()
            ticket = tl.atomic_add(rng_ptr + 2, 1)
            last = ticket == tl.num_programs(0) - 1
            tl.store(rng_ptr + 1, off + G, mask=last)
            tl.store(rng_ptr + 2, ticket * 0, mask=last)


@triton.jit
def _backward_kernel(gr_ptr, gf_ptr, dxr_ptr, dxf_ptr, deps_ptr, dsig_ptr, rng_ptr,
                     M, F, C, INNER, NG, gr_b, gr_f, gf_b, gf_f,
                     HAS_R: tl.constexpr, HAS_F: tl.constexpr, DX_R: tl.constexpr, DX_F: tl.constexpr,
                     DEPS: tl.constexpr, DSIG: tl.constexpr, HALF: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr):
    if HALF:
        n_noisy = M - M // 2
        dst0 = M // 2
    else:
        n_noisy = M
        dst0 = M
    planes = n_noisy * C
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < planes
    i = p // C
    c = p - i * C
    start = i * F + c * INNER
    end = start + INNER
    g_first = start // 4
    if DSIG:
        seed = tl.load(rng_ptr)
        off = tl.load(rng_ptr + 1)
    acc = tl.zeros([BLOCK_P], dtype=ACC)
    for g0 in range(0, NG, BLOCK_G):
        gg = g_first[:, None] + g0 + tl.arange(0, BLOCK_G)[None, :]
        if DSIG:
            z0, z1, z2, z3 = tl.randn4x(seed, off + gg)
        for k in tl.static_range(4):
            e = gg * 4 + k
            m = pmask[:, None] & (e >= start[:, None]) & (e < end[:, None])
            f = e - i[:, None] * F
            ge = tl.zeros([BLOCK_P, BLOCK_G], dtype=ACC)
            if HAS_R:
                vr = tl.load(gr_ptr + (dst0 + i[:, None]) * gr_b + f * gr_f, mask=m, other=0.0).to(ACC)
                ge += vr
                if DX_R:
                    cr = tl.load(gr_ptr + i[:, None] * gr_b + f * gr_f, mask=m, other=0.0).to(ACC)
                    tl.store(dxr_ptr + i[:, None] * F + f, (cr + vr).to(dxr_ptr.dtype.element_ty), mask=m)
            if HAS_F:
                vf = tl.load(gf_ptr + (dst0 + i[:, None]) * gf_b + f * gf_f, mask=m, other=0.0).to(ACC)
                ge += vf
                if DX_F:
                    cf = tl.load(gf_ptr + i[:, None] * gf_b + f * gf_f, mask=m, other=0.0).to(ACC)
                    tl.store(dxf_ptr + i[:, None] * F + f, (cf + vf).to(dxf_ptr.dtype.element_ty), mask=m)
            if DEPS:
                tl.store(deps_ptr + i[:, None] * F + f, ge.to(deps_ptr.dtype.element_ty), mask=m)
            if DSIG:
                if k == 0:
                    z = z0
                elif k == 1:
                    z = z1
                elif k == 2:
                    z = z2
                else:
                    z = z3
                acc += tl.sum(tl.where(m, ge * z.to(ACC), 0.0), axis=1)
    if DSIG:
        tl.store(dsig_ptr + p, acc, mask=pmask)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _strides(t):
    return (t.stride(0), t.stride(1)) if t is not None else (0, 0)


def forward(x_real, x_fake, eps, sigma, sigma_value, rng, advance, used, out_real, out_fake, C, half):
    x0 = x_real if x_real is not None else x_fake
    M, F = x0.shape
    n_clean = M // 2 if half else M
    n_noisy = M - M // 2 if half else M
    G = (n_noisy * F + 3) // 4
    block = 256
    grid = (max(triton.cdiv(G, block), triton.cdiv(n_clean * F, 4 * block) if half else 0, 1),)
    dummy = x0
    sr, sf, se = _strides(x_real), _strides(x_fake), _strides(eps)
    gauss = eps is None
    _forward_kernel[grid](
        x_real if x_real is not None else dummy, x_fake if x_fake is not None else dummy,
        eps if eps is not None else dummy, sigma if sigma is not None else dummy, float(sigma_value),
        rng if rng is not None else used if used is not None else dummy, used if used is not None else dummy,
        out_real if out_real is not None else dummy, out_fake if out_fake is not None else dummy,
        M, F, F // C, sr[0], sr[1], sf[0], sf[1], se[0], se[1],
        HAS_R=x_real is not None, HAS_F=x_fake is not None, GAUSS=gauss, HAS_SIG=sigma is not None,
        ADVANCE=bool(advance and gauss), HALF=bool(half), ACC=_acc(x0.dtype), BLOCK=block)


def backward(g_real, g_fake, rng, dx_real, dx_fake, deps, dsig, M, C, half):
    g0 = g_real if g_real is not None else g_fake
    F = g0.shape[1]
    inner = F // C
    n_noisy = M - M // 2 if half else M
    ng = (inner + 2) // 4 + 1  # counters a plane of `inner` elements can overlap
    block_g = min(max(triton.next_power_of_2(ng), 2), 256)
    block_p = max(1, min(64, 1024 // block_g))
    grid = (triton.cdiv(n_noisy * C, block_p),)
    dummy = g0
    gr, gf = _strides(g_real), _strides(g_fake)
    _backward_kernel[grid](
        g_real if g_real is not None else dummy, g_fake if g_fake is not None else dummy,
        dx_real if dx_real is not None else dummy, dx_fake if dx_fake is not None else dummy,
        deps if deps is not None else dummy, dsig if dsig is not None else dummy,
        rng if rng is not None else dummy,
        M, F, C, inner, ng, gr[0], gr[1], gf[0], gf[1],
        HAS_R=g_real is not None, HAS_F=g_fake is not None, DX_R=dx_real is not None, DX_F=dx_fake is not None,
        DEPS=deps is not None, DSIG=dsig is not None, HALF=bool(half), ACC=_acc(g0.dtype),
        BLOCK_P=block_p, BLOCK_G=block_g)
