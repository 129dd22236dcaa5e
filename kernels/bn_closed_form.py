"""Triton kernels of the BatchNorm (batch statistics) passes of the penalty's closed form
(fastgan/ops/bn_closed_form.py); the formulas mirror csrc/include/fastgan/bn_closed_form_math.h.

One program per channel walks the channel's B * S elements of a contiguous (B, C, S) tensor in BLOCK chunks:
a reduction pass (two for the statistics), the per-channel coefficients, then the element-wise pass.
Reductions accumulate in float64 and form their products of two inputs there (exact for float32 inputs), as the CPU
and CUDA kernels do; element-wise math runs in the storage dtype.
Untuned: written without a GPU to measure on.
"""
import triton
import triton.language as tl


@triton.jit
def _chunk(i0, c, C, S, n, BLOCK: tl.constexpr):
    """Offsets and mask of elements i0 .. i0 + BLOCK - 1 (of n) of channel c."""
    i = i0 + tl.arange(0, BLOCK).to(tl.int64)
    b = i // S
    return (b * C + c) * S + (i - b * S), i < n


# eps is annotated tl.float64: compiled kernels then take it in double (an unannotated float arrives as fp32); the
# interpreter still passes fp32, which moves rstd by < 1e-12 relative. No other float crosses from the host.
@triton.jit
def _low_part(s, hi):
    """s - hi in float64 (hi = s rounded to the storage dtype), 0 for an infinite s (inf - inf's NaN would replace
    x - inf): the low part of bncf::split_shift (csrc/include/fastgan/bn_closed_form_math.h)."""
    d = s - hi.to(tl.float64)
    return tl.where(d == d, d, 0.0)


@triton.jit
def _stats_kernel(h_ptr, xhat_ptr, rstd_ptr, C, S, n, eps: tl.float64, BLOCK: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    T = h_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for i0 in range(0, tl.cast(n, tl.int64), BLOCK):  # int64: an i32 counter wraps within BLOCK of 2**31
        o, m = _chunk(i0, c, C, S, n, BLOCK)
        acc += tl.load(h_ptr + o, mask=m, other=0.0).to(tl.float64)
    mean = tl.sum(acc, axis=0) / n
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for i0 in range(0, tl.cast(n, tl.int64), BLOCK):  # int64: an i32 counter wraps within BLOCK of 2**31
        o, m = _chunk(i0, c, C, S, n, BLOCK)
        d = tl.load(h_ptr + o, mask=m, other=0.0).to(tl.float64) - mean
        acc += tl.where(m, d * d, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n + eps)
    tl.store(rstd_ptr + c, rstd.to(T))
    cx = rstd.to(T)
    # subtracted before scaling (rstd * h - rstd * mean cancels terms of size |mean| / std), in two parts: T(mean)
    # alone errs by half its ulp (bncf::split_shift in csrc/include/fastgan/bn_closed_form_math.h)
    sx = mean.to(T)
    sx_lo = _low_part(mean, sx).to(T)
    for i0 in range(0, tl.cast(n, tl.int64), BLOCK):  # int64: an i32 counter wraps within BLOCK of 2**31
        o, m = _chunk(i0, c, C, S, n, BLOCK)
        tl.store(xhat_ptr + o, cx * ((tl.load(h_ptr + o, mask=m, other=0.0) - sx) - sx_lo), mask=m)


@triton.jit
def _centered_kernel(xhat_ptr, t_ptr, rstd_ptr, gamma_ptr, out_ptr, mt_ptr, q_ptr, C, S, n,
                     HAS_GAMMA: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    T = t_ptr.dtype.element_ty
    s_t = tl.zeros([BLOCK], dtype=tl.float64)
    s_xt = tl.zeros([BLOCK], dtype=tl.float64)
    for i0 in range(0, tl.cast(n, tl.int64), BLOCK):  # int64: an i32 counter wraps within BLOCK of 2**31
        o, m = _chunk(i0, c, C, S, n, BLOCK)
        tv = tl.load(t_ptr + o, mask=m, other=0.0)
        s_t += tv.to(tl.float64)
        s_xt += tl.load(xhat_ptr + o, mask=m, other=0.0).to(tl.float64) * tv.to(tl.float64)
    scale = tl.load(rstd_ptr + c).to(tl.float64)
    if HAS_GAMMA:
        scale = scale * tl.load(gamma_ptr + c).to(tl.float64)
    mt = tl.sum(s_t, axis=0) / n
    q = tl.sum(s_xt, axis=0) / n
    tl.store(mt_ptr + c, mt.to(T))
    tl.store(q_ptr + c, q.to(T))
    cx = (-scale * q).to(T)
    ct = scale.to(T)
    st = mt.to(T)
    st_lo = _low_part(mt, st).to(T)
    for i0 in range(0, tl.cast(n, tl.int64), BLOCK):  # int64: an i32 counter wraps within BLOCK of 2**31
        o, m = _chunk(i0, c, C, S, n, BLOCK)
        v = cx * tl.load(xhat_ptr + o, mask=m, other=0.0) + ct * ((tl.load(t_ptr + o, mask=m, other=0.0) - st) - st_lo)
        tl.store(out_ptr + o, v, mask=m)


@triton.jit
def _vjp_kernel(rho_ptr, lam_ptr, xhat_ptr, t_ptr, rstd_ptr, gamma_ptr, mt_ptr, q_ptr, dh_ptr, dgamma_ptr, dbeta_ptr,
                C, S, n, HAS_GAMMA: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    T = xhat_ptr.dtype.element_ty
    s_r = tl.zeros([BLOCK], dtype=tl.float64)
    s_rx = tl.zeros([BLOCK], dtype=tl.float64)
    s_l = tl.zeros([BLOCK], dtype=tl.float64)
    s_lx = tl.zeros([BLOCK], dtype=tl.float64)
    s_lt = tl.zeros([BLOCK], dtype=tl.float64)  # of lam (t - mt): sum(lam t) - mt sum(lam) would cancel
    mt_t = tl.load(mt_ptr + c).to(tl.float64)
    for i0 in range(0, tl.cast(n, tl.int64), BLOCK):  # int64: an i32 counter wraps within BLOCK of 2**31
        o, m = _chunk(i0, c, C, S, n, BLOCK)
        r = tl.load(rho_ptr + o, mask=m, other=0.0).to(tl.float64)
        lv = tl.load(lam_ptr + o, mask=m, other=0.0).to(tl.float64)
        x = tl.load(xhat_ptr + o, mask=m, other=0.0).to(tl.float64)
        s_r += r
        s_rx += r * x
        s_l += lv
        s_lx += lv * x
        s_lt += tl.where(m, lv * (tl.load(t_ptr + o, mask=m, other=0.0).to(tl.float64) - mt_t), 0.0)
    sr = tl.sum(s_r, axis=0)
    srx = tl.sum(s_rx, axis=0)
    sl = tl.sum(s_l, axis=0)
    slx = tl.sum(s_lx, axis=0)
    slt = tl.sum(s_lt, axis=0)
    rstd = tl.load(rstd_ptr + c).to(tl.float64)
    mt = tl.load(mt_ptr + c).to(tl.float64)
    q = tl.load(q_ptr + c).to(tl.float64)
    g = rstd * 0.0 + 1.0
    if HAS_GAMMA:
        g = tl.load(gamma_ptr + c).to(tl.float64)
        tl.store(dgamma_ptr + c, (srx + rstd * (slt - q * slx)).to(T))
    tl.store(dbeta_ptr + c, sr.to(T))
    inv = 1.0 / (sr * 0.0 + n)  # in float64: 1.0 / n divides in float32, and so would a float argument
    r2 = rstd * rstd
    p = g * slx * inv
    cc = g * slt * inv
    cr = (rstd * g).to(T)
    cx = (-rstd * g * srx * inv - r2 * (cc - 3.0 * p * q)).to(T)
    cl = (-r2 * q * g).to(T)
    ct = (-r2 * p).to(T)  # on t - mt
    st = mt.to(T)
    # rho and lam centred before scaling, in two parts (bncf::vjp_coefs: a constant rstd g mean(rho) - r2 q g mean(lam)
    # cancelled terms of size rstd g |mean(rho)| in the storage dtype)
    mr = sr * inv
    ml = sl * inv
    sr_hi = mr.to(T)
    sr_lo = _low_part(mr, sr_hi).to(T)
    sl_hi = ml.to(T)
    sl_lo = _low_part(ml, sl_hi).to(T)
    for i0 in range(0, tl.cast(n, tl.int64), BLOCK):  # int64: an i32 counter wraps within BLOCK of 2**31
        o, m = _chunk(i0, c, C, S, n, BLOCK)
        v = cx * tl.load(xhat_ptr + o, mask=m, other=0.0) + ct * (tl.load(t_ptr + o, mask=m, other=0.0) - st) \
            + cr * ((tl.load(rho_ptr + o, mask=m, other=0.0) - sr_hi) - sr_lo) \
            + cl * ((tl.load(lam_ptr + o, mask=m, other=0.0) - sl_hi) - sl_lo)
        tl.store(dh_ptr + o, v, mask=m)


def _block(n: int, device) -> int:
    """Elements per step of a program: 1024 on a GPU (untuned); under the CPU interpreter the whole channel in
    one step where it fits, since each step costs the interpreter a Python-level loop iteration."""
    cap = 1024 if device.type == "cuda" else 16384
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))


def stats(h, xhat, rstd, B, C, S, eps):
    if C == 0:
        return
    n = B * S
    _stats_kernel[(C,)](h, xhat, rstd, C, S, n, float(eps), BLOCK=_block(n, h.device))


def centered(xhat, t, rstd, gamma, out, mt, q, B, C, S):
    if C == 0:
        return
    n = B * S
    _centered_kernel[(C,)](xhat, t, rstd, rstd if gamma is None else gamma, out, mt, q, C, S, n,
                           HAS_GAMMA=gamma is not None, BLOCK=_block(n, t.device))


def vjp(rho, lam, xhat, t, rstd, gamma, mt, q, dh, dgamma, dbeta, B, C, S):
    if C == 0:
        return
    n = B * S
    _vjp_kernel[(C,)](rho, lam, xhat, t, rstd, rstd if gamma is None else gamma, mt, q, dh,
                      dbeta if dgamma is None else dgamma, dbeta, C, S, n, HAS_GAMMA=gamma is not None,
                      BLOCK=_block(n, xhat.device))
