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
def _emit(z, f, mask, o_r, o_f, o_e, o_noisy, o_clean, INNER, xr_ptr, xf_ptr, eps_ptr, sig_ptr, sigma_value,
          outr_ptr, outf_ptr, HAS_R: tl.constexpr, HAS_F: tl.constexpr, GAUSS: tl.constexpr, HAS_SIG: tl.constexpr,
          HALF: tl.constexpr, ACC: tl.constexpr):
    # z, f, mask and the o_* offsets are [BLOCK, 4] tiles in element order
    if GAUSS:
        if HAS_SIG:
            s = tl.load(sig_ptr + f // INNER, mask=mask, other=0.0).to(ACC)
        else:
            s = tl.cast(sigma_value, ACC)
        ev = s * z.to(ACC)
    else:
        ev = tl.load(eps_ptr + o_e, mask=mask, other=0.0).to(ACC)
    if HAS_R:
        v = tl.load(xr_ptr + o_r, mask=mask, other=0.0)
        tl.store(outr_ptr + o_noisy, (v.to(ACC) + ev).to(outr_ptr.dtype.element_ty), mask=mask)
        if not HALF:
            tl.store(outr_ptr + o_clean, v, mask=mask)
    if HAS_F:
        v = tl.load(xf_ptr + o_f, mask=mask, other=0.0)
        tl.store(outf_ptr + o_noisy, (v.to(ACC) + ev).to(outf_ptr.dtype.element_ty), mask=mask)
        if not HALF:
            tl.store(outf_ptr + o_clean, v, mask=mask)


@triton.jit
def _at(i0, f0, wrap, k, F, s_b, s_f, VEC: tl.constexpr):
    # offsets, in an input of strides (s_b, s_f), of the tile whose row r starts at row i0[r], column f0[r];
    # wrap: rows the general path's elements moved on
    if VEC:
        # host-checked: s_f == 1, s_b % 4 == 0, F % 4 == 0 (so f0 % 4 == 0)
        return tl.multiple_of(i0 * s_b + f0, 4)[:, None] + k
    else:
        return (i0[:, None] + wrap) * s_b + (f0[:, None] + k - wrap * F) * s_f


@triton.jit
def _normals_tile(seed, counters, ROWS: tl.constexpr):
    # the four normals of each counter as a [ROWS, 4] tile in element order: join adds a last axis, so
    # [g, a, b] holds z_(2a+b) and the row-major reshape gives rows (z0, z1, z2, z3)
    z0, z1, z2, z3 = tl.randn4x(seed, counters)
    return tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), [ROWS, 4])


@triton.jit
def _side_backward(g_ptr, dx_ptr, o_noisy, o_clean, o_dx, mask, ACC: tl.constexpr, DX: tl.constexpr):
    # one batch's upstream gradient at the noisy elements (its share of deps) and, when DX, its dx: the
    # gradients of the clean copy and of the noisy one, added
    v = tl.load(g_ptr + o_noisy, mask=mask, other=0.0).to(ACC)
    if DX:
        c = tl.load(g_ptr + o_clean, mask=mask, other=0.0).to(ACC)
        tl.store(dx_ptr + o_dx, (c + v).to(dx_ptr.dtype.element_ty), mask=mask)
    return v


# Float scalars are annotated tl.float64 (an unannotated Python float arrives as fp32): see kernels/denoiser.py.
@triton.jit
def _forward_kernel(xr_ptr, xf_ptr, eps_ptr, sig_ptr, sigma_value: tl.float64, rng_ptr, used_ptr, outr_ptr, outf_ptr,
                    M, F, INNER, sr_b, sr_f, sf_b, sf_f, se_b, se_f,
                    HAS_R: tl.constexpr, HAS_F: tl.constexpr, GAUSS: tl.constexpr, HAS_SIG: tl.constexpr,
                    ADVANCE: tl.constexpr, HALF: tl.constexpr, ACC: tl.constexpr, VEC: tl.constexpr,
                    BLOCK: tl.constexpr, WIDE: tl.constexpr):
    # Counter g's four normals go to elements 4g..4g+3; a program handles them as a [BLOCK, 4] tile so every
    # access is contiguous (VEC: 4-element vectors, see vector_path).
    pid = tl.program_id(0)
    if WIDE:  # M and F arrive as i32: past 2**31 elements M * F would wrap (nothing written), so int64 sizes
        M = tl.cast(M, tl.int64)  # not M.to: a launch makes an M of 1 a constant, which has no .to
        pid = pid.to(tl.int64)
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
    k = tl.arange(0, 4)[None, :]
    if GAUSS:
        seed = tl.load(rng_ptr)
        off = tl.load(rng_ptr + 1)
        if ADVANCE:
            first = pid == 0
            tl.store(used_ptr, seed, mask=first)
            tl.store(used_ptr + 1, off, mask=first)
        z = _normals_tile(seed, off + g, BLOCK)
    else:
        z = tl.zeros([BLOCK, 4], dtype=tl.float32)
    g4 = g * 4
    i0 = g4 // F
    f0 = g4 - i0 * F
    e = g4[:, None] + k
    f = f0.to(tl.int32)[:, None] + k
    if VEC:
        # F % 4 == 0: a counter's 4 elements lie in one row
        wrap = 0
        mask = (g < G)[:, None]
        o_noisy = tl.multiple_of(dst0 * F + g4, 4)[:, None] + k
        o_clean = tl.multiple_of(g4, 4)[:, None] + k
    else:
        # f0 + k <= F + 2 wraps past the row end at most 3 times (F = 1); no division per element
        wrap = tl.zeros([BLOCK, 4], dtype=tl.int32)
        for _ in tl.static_range(3):
            w = (f >= F).to(tl.int32)
            wrap += w
            f -= w * F
        mask = e < N
        o_noisy = dst0 * F + e
        o_clean = e
    o_r = _at(src0 + i0, f0, wrap, k, F, sr_b, sr_f, VEC)
    o_f = _at(src0 + i0, f0, wrap, k, F, sf_b, sf_f, VEC)
    o_e = _at(i0, f0, wrap, k, F, se_b, se_f, VEC)
    _emit(z, f, mask, o_r, o_f, o_e, o_noisy, o_clean, INNER, xr_ptr, xf_ptr, eps_ptr, sig_ptr, sigma_value,
          outr_ptr, outf_ptr, HAS_R, HAS_F, GAUSS, HAS_SIG, HALF, ACC)
    if HALF:
        # clean element c = e sits at row i0 (+ wrap) of x; the grid covers the larger of the two counts
        if VEC:
            cm = (g < n_clean * (F // 4))[:, None]
        else:
            cm = e < n_clean * F
        if HAS_R:
            v = tl.load(xr_ptr + _at(i0, f0, wrap, k, F, sr_b, sr_f, VEC), mask=cm)
            tl.store(outr_ptr + o_clean, v, mask=cm)
        if HAS_F:
            v = tl.load(xf_ptr + _at(i0, f0, wrap, k, F, sf_b, sf_f, VEC), mask=cm)
            tl.store(outf_ptr + o_clean, v, mask=cm)
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
                     VEC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, WIDE: tl.constexpr):
    # A program owns BLOCK_P whole (noisy row, channel) planes, so each plane's dsigma sum is written once.
    if WIDE:  # as in the forward: n_noisy * C and the offsets past 2**31
        M = tl.cast(M, tl.int64)  # not M.to: a launch makes an M of 1 a constant, which has no .to
    if HALF:
        n_noisy = M - M // 2
        dst0 = M // 2
    else:
        n_noisy = M
        dst0 = M
    planes = n_noisy * C
    if DSIG:
        seed = tl.load(rng_ptr)
        off = tl.load(rng_ptr + 1)
    if VEC:
        # backward_vector_path: plane p covers exactly counters p*NG .. p*NG + NG - 1 (NG = INNER // 4), so the
        # program's planes x counters are a [BLOCK_P * BLOCK_G, 4] tile in element order, as in the forward
        r = tl.arange(0, BLOCK_P * BLOCK_G)
        p = tl.program_id(0).to(tl.int64) * BLOCK_P + r // BLOCK_G
        rg = r % BLOCK_G
        pmask = p < planes
        i = p // C
        f0 = (p - i * C) * INNER
        k = tl.arange(0, 4)[None, :]
        acc = tl.zeros([BLOCK_P * BLOCK_G, 4], dtype=ACC)
        for g0 in range(0, NG, BLOCK_G):
            gl = g0 + rg
            mask = (pmask & (gl < NG))[:, None]
            f = f0 + gl * 4
            o_out = tl.multiple_of(i * F + f, 4)[:, None] + k
            ge = tl.zeros([BLOCK_P * BLOCK_G, 4], dtype=ACC)
            if HAS_R:
                ge += _side_backward(gr_ptr, dxr_ptr, _at(dst0 + i, f, 0, k, F, gr_b, gr_f, True),
                                     _at(i, f, 0, k, F, gr_b, gr_f, True), o_out, mask, ACC, DX_R)
            if HAS_F:
                ge += _side_backward(gf_ptr, dxf_ptr, _at(dst0 + i, f, 0, k, F, gf_b, gf_f, True),
                                     _at(i, f, 0, k, F, gf_b, gf_f, True), o_out, mask, ACC, DX_F)
            if DEPS:
                tl.store(deps_ptr + o_out, ge.to(deps_ptr.dtype.element_ty), mask=mask)
            if DSIG:
                z = _normals_tile(seed, off + p * NG + gl, BLOCK_P * BLOCK_G)
                acc += tl.where(mask, ge * z.to(ACC), 0.0)
        if DSIG:
            s = tl.sum(tl.reshape(tl.sum(acc, axis=1), [BLOCK_P, BLOCK_G]), axis=1)
            pp = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
            tl.store(dsig_ptr + pp, s, mask=pp < planes)
    else:
        # general path: a plane's edges may cut a counter; NG counters cover any plane
        p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < planes
        i = p // C
        c = p - i * C
        start = i * F + c * INNER
        end = start + INNER
        g_first = start // 4
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
                    ge += _side_backward(gr_ptr, dxr_ptr, (dst0 + i[:, None]) * gr_b + f * gr_f,
                                         i[:, None] * gr_b + f * gr_f, i[:, None] * F + f, m, ACC, DX_R)
                if HAS_F:
                    ge += _side_backward(gf_ptr, dxf_ptr, (dst0 + i[:, None]) * gf_b + f * gf_f,
                                         i[:, None] * gf_b + f * gf_f, i[:, None] * F + f, m, ACC, DX_F)
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


def vector_path(F, *inputs):
    """The forward's VEC path: F % 4 == 0 and every input (x_real, x_fake, eps; None skipped) has feature
    stride 1 and a row stride that is a multiple of 4, so each counter's 4 elements are 4 adjacent values."""
    return F % 4 == 0 and all(t is None or (t.stride(1) == 1 and t.stride(0) % 4 == 0) for t in inputs)


# From this many elements (M * F) on, the kernels compute sizes and offsets in int64: a variant compiled only for such
# sizes, so the usual ones keep their i32 code and registers (tests lower it to run the wide variant)
WIDE_FROM = 2 ** 31 - 4096


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
        ADVANCE=bool(advance and gauss), HALF=bool(half), ACC=_acc(x0.dtype),
        VEC=vector_path(F, x_real, x_fake, eps), BLOCK=block, WIDE=M * F >= WIDE_FROM)


def backward_vector_path(F, C, *grads):
    """The backward's VEC path: F and the plane width F // C are multiples of 4 (no counter crosses a plane)
    and every upstream gradient (None skipped) has feature stride 1 and a row stride that is a multiple of 4;
    dx and deps are new contiguous (rows, F) tensors."""
    return (F % 4 == 0 and (F // C) % 4 == 0
            and all(t is None or (t.stride(1) == 1 and t.stride(0) % 4 == 0) for t in grads))


def backward(g_real, g_fake, rng, dx_real, dx_fake, deps, dsig, M, C, half):
    g0 = g_real if g_real is not None else g_fake
    F = g0.shape[1]
    inner = F // C
    n_noisy = M - M // 2 if half else M
    vec = backward_vector_path(F, C, g_real, g_fake)
    # counters per loop step: 4 a thread at 4 warps; 2 with dsigma, whose Philox doubles the registers (sm_90:
    # 44 / 96-123 registers at 512, 48-52 at 256), and for float64 (248 of 255 registers at 512 with the
    # generator's eps and both dx, compiled for sm_90: two blocks an SM). At 1024, triton 3.8's sm_90 code of the
    # scalar path spills 16-404 bytes (tests/test_triton_compile.py; 3.6 does not)
    tile = 256 if dsig is not None or g0.dtype == torch.float64 else 512
    if vec:
        ng = inner // 4  # the plane's own counters
        block_g = min(triton.next_power_of_2(ng), 256)
        block_p = max(1, tile // block_g)
    else:
        ng = (inner + 2) // 4 + 1  # counters a plane of `inner` elements can overlap
        block_g = min(max(triton.next_power_of_2(ng), 2), 256)
        block_p = max(1, min(64, tile // block_g))
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
        VEC=vec, BLOCK_P=block_p, BLOCK_G=block_g, WIDE=M * F >= WIDE_FROM)
