"""Triton kernels of the NTGAN mu-weighted clean/noisy losses (fastgan/ops/nt_losses.py); the math mirrors
csrc/include/fastgan/nt_losses_math.h. The forward runs one program per chunk of a side; with one chunk (a
batch of logits) it writes the loss, otherwise each program writes a partial sum to a scratch buffer and a
one-program second pass adds them in order, so the loss is deterministic (csrc/cuda/nt_losses.cu likewise).
"""
import torch
import triton
import triton.language as tl

from .logistic import _js, _logistic


@triton.jit
def _log1p(e):
    """log(1 + e) for e = exp(-|psi|) in [0, 1], without losing a small e to the rounding of 1 + e (tl has no
    log1p; libdevice is CUDA-only). float32: csrc's nt::log1p_unit, 2 atanh(e / (2 + e)) as t = e / (1 + e/2) times
    a series in t^2 (sm_90: the forward's loops 61 -> 45 instructions a logit with JS weights, tl.log's inlined
    logf and a division gone); float64: log(u) * e / (u - 1) with u = 1 + e rounded, exact to a few ulps
    (Goldberg 1991, Theorem 4)."""
    if e.dtype == tl.float32:
        d = 1.0 + 0.5 * e
        q = 1.0 / d  # div.full on a GPU (within 2 ulp): one Newton step on e * q gives t within ~1 ulp, as
        t0 = e * q  # csrc's e * (1 / d) rounded twice; div_rn cost 7 instructions and 24 registers more
        t = t0 + (e - t0 * d) * q
        t2 = t * t
        p = 1.0 / 245760.0  # 1 / ((2k + 1) 4^k), k = 7 .. 0
        p = p * t2 + 1.0 / 53248.0
        p = p * t2 + 1.0 / 11264.0
        p = p * t2 + 1.0 / 2304.0
        p = p * t2 + 1.0 / 448.0
        p = p * t2 + 1.0 / 80.0
        p = p * t2 + 1.0 / 12.0
        p = p * t2 + 1.0
        return t * p
    u = 1.0 + e
    d = u - 1.0
    small = d == 0.0
    return tl.where(small, e, tl.log(u) * (e / tl.where(small, 1.0, d)))


@triton.jit
def _coef(k, N, mu, MEAN: tl.constexpr):
    n_clean = N // 2
    clean = k < n_clean
    if MEAN:
        c = tl.where(clean, mu / tl.maximum(n_clean, 1), (1.0 - mu) / tl.maximum(N - n_clean, 1))
    else:
        c = tl.where(clean, mu, 1.0 - mu)
    return c


@triton.jit
def _side_forward(l_ptr, w_ptr, k_start, k_end, N, stride, mu, SIGN: tl.constexpr, REAL: tl.constexpr,
                  MEAN: tl.constexpr, JS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """Loss terms of logits [k_start, k_end) of a side of N, summed; its JS weights stored when JS."""
    total = tl.zeros([BLOCK], dtype=ACC)
    for k0 in range(k_start, k_end, BLOCK):
        if WIDE:  # the interpreter's loop variable is a Python int: an int32 arange would wrap past 2**31 there
            k = k0 + tl.arange(0, BLOCK).to(tl.int64)
        else:
            k = k0 + tl.arange(0, BLOCK)
        m = k < k_end
        psi = tl.load(l_ptr + k * stride, mask=m, other=0.0).to(ACC)
        e, s, q = _logistic(psi, False)
        if SIGN != 0:  # softplus(SIGN * psi), whose exp(-|SIGN * psi|) is e
            total += tl.where(m, _coef(k, N, mu, MEAN) * (tl.maximum(SIGN * psi, 0.0) + _log1p(e)), 0.0)
        if JS:
            w, dw = _js(s, q, REAL)
            tl.store(w_ptr + k, w, mask=m)
    return tl.sum(total, axis=0)


# Float scalars are annotated tl.float64 (an unannotated Python float arrives as fp32): see kernels/denoiser.py.
@triton.jit
def _forward_kernel(lr_ptr, lf_ptr, mu_ptr, mu_value: tl.float64, loss_ptr, part_ptr, wr_ptr, wf_ptr, NR, NF,
                    sr, sf, CHUNK, GEN: tl.constexpr, MEAN: tl.constexpr, HAS_MU: tl.constexpr, JS: tl.constexpr,
                    PARTIAL: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    pid = tl.program_id(0)
    if WIDE:  # pid * CHUNK and k0 + CHUNK in int32 wrap past 2**31 logits: int64 indices (see _wide)
        pid = pid.to(tl.int64)
    if HAS_MU:
        mu = tl.load(mu_ptr).to(ACC)
    else:
        mu = tl.cast(mu_value, ACC)
    if PARTIAL:
        # programs [0, real_programs) cover the real logits, the rest the fake ones
        real_programs = tl.cdiv(NR, CHUNK)
        if pid < real_programs:
            k0 = pid * CHUNK
            if GEN:  # G's loss has no real-side term (CPU/CUDA: real_sign(kGenerator) = 0)
                total = tl.sum(tl.zeros([BLOCK], dtype=ACC), axis=0)
            else:
                total = _side_forward(lr_ptr, wr_ptr, k0, tl.minimum(k0 + CHUNK, NR), NR, sr, mu, -1, True, MEAN,
                                      JS, ACC, BLOCK, WIDE)
        else:
            k0 = (pid - real_programs) * CHUNK
            k1 = tl.minimum(k0 + CHUNK, NF)
            if GEN:
                total = _side_forward(lf_ptr, wf_ptr, k0, k1, NF, sf, mu, -1, False, MEAN, False, ACC, BLOCK, WIDE)
            else:
                total = _side_forward(lf_ptr, wf_ptr, k0, k1, NF, sf, mu, 1, False, MEAN, JS, ACC, BLOCK, WIDE)
        tl.store(part_ptr + pid, total)
    else:
        if GEN:
            total = _side_forward(lf_ptr, wf_ptr, 0, NF, NF, sf, mu, -1, False, MEAN, False, ACC, BLOCK, WIDE)
        else:
            total = _side_forward(lr_ptr, wr_ptr, 0, NR, NR, sr, mu, -1, True, MEAN, JS, ACC, BLOCK, WIDE)
            total += _side_forward(lf_ptr, wf_ptr, 0, NF, NF, sf, mu, 1, False, MEAN, JS, ACC, BLOCK, WIDE)
        tl.store(loss_ptr, total)


@triton.jit
def _sum_partials_kernel(part_ptr, n, loss_ptr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    total = tl.zeros([BLOCK], dtype=ACC)
    for i0 in range(0, n, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        total += tl.load(part_ptr + i, mask=i < n, other=0.0)
    tl.store(loss_ptr, tl.sum(total, axis=0))


@triton.jit
def _side_backward(l_ptr, gw_ptr, d_ptr, k, N, stride, mu, go, SIGN: tl.constexpr, REAL: tl.constexpr,
                   MEAN: tl.constexpr, JS: tl.constexpr, ACC: tl.constexpr):
    m = k < N
    psi = tl.load(l_ptr + k * stride, mask=m, other=0.0).to(ACC)
    e, s, q = _logistic(psi, JS)
    v = go * _coef(k, N, mu, MEAN) * (SIGN * (s if SIGN > 0 else q))  # SIGN * sigmoid(SIGN * psi)
    if JS:
        w, dw = _js(s, q, REAL)
        v += tl.load(gw_ptr + k, mask=m, other=0.0).to(ACC) * dw
    tl.store(d_ptr + k, v, mask=m)


@triton.jit
def _backward_kernel(lr_ptr, lf_ptr, mu_ptr, mu_value: tl.float64, go_ptr, gwr_ptr, gwf_ptr, dr_ptr, df_ptr, NR, NF,
                     sr, sf, GEN: tl.constexpr, MEAN: tl.constexpr, HAS_MU: tl.constexpr, JS_R: tl.constexpr,
                     JS_F: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    if HAS_MU:
        mu = tl.load(mu_ptr).to(ACC)
    else:
        mu = tl.cast(mu_value, ACC)
    go = tl.load(go_ptr).to(ACC)
    real_programs = tl.cdiv(NR, BLOCK)
    if pid < real_programs:
        k = pid * BLOCK + tl.arange(0, BLOCK)
        if GEN:
            tl.store(dr_ptr + k, tl.zeros([BLOCK], dtype=ACC), mask=k < NR)
        else:
            _side_backward(lr_ptr, gwr_ptr, dr_ptr, k, NR, sr, mu, go, -1, True, MEAN, JS_R, ACC)
    else:
        k = (pid - real_programs) * BLOCK + tl.arange(0, BLOCK)
        if GEN:
            _side_backward(lf_ptr, gwf_ptr, df_ptr, k, NF, sf, mu, go, -1, False, MEAN, JS_F, ACC)
        else:
            _side_backward(lf_ptr, gwf_ptr, df_ptr, k, NF, sf, mu, go, 1, False, MEAN, JS_F, ACC)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# The kernels index logits with k * stride in int32: widened to int64 they spilled registers (triton 3.9,
# tests/test_triton_compile.py), for offsets no batch of logits reaches but a strided view of a huge tensor can.
# A side whose last offset reaches this is read from a contiguous copy instead (tests lower it).
DENSE_FROM = 2 ** 31


def _in_reach(logits):
    n = logits.numel()
    return logits if n < 2 or (n - 1) * logits.stride(0) < DENSE_FROM else logits.contiguous()


# Logits a side may have before the kernels' int32 indices (pid * CHUNK, k0 + CHUNK, pid * BLOCK + arange) could
# pass 2**31 - 1: from there the int64 variant (WIDE), which only sides of 8 GiB of float32 need.
WIDE_FROM = 2 ** 31 - 2 * 4096


def _wide(NR, NF):
    return max(NR, NF) >= WIDE_FROM


def forward(logits_real, logits_fake, mu, mu_value, generator, mean, loss, w_real, w_fake, partials, chunk):
    """partials: None (one program does everything) or scratch of one element per chunk of each side."""
    logits_real, logits_fake = _in_reach(logits_real), _in_reach(logits_fake)
    NR, NF = logits_real.numel(), logits_fake.numel()
    span = chunk if partials is not None else max(NR, NF, 1)
    block = min(max(triton.next_power_of_2(span), 16), 1024)
    grid = (partials.numel() if partials is not None else 1,)
    _forward_kernel[grid](
        logits_real, logits_fake, mu if mu is not None else loss, float(mu_value), loss,
        partials if partials is not None else loss,
        w_real if w_real is not None else loss, w_fake if w_fake is not None else loss,
        NR, NF, logits_real.stride(0) if NR else 1, logits_fake.stride(0) if NF else 1, chunk,
        GEN=bool(generator), MEAN=bool(mean), HAS_MU=mu is not None, JS=w_real is not None,
        PARTIAL=partials is not None, ACC=_acc(loss.dtype), BLOCK=block, WIDE=_wide(NR, NF))
    if partials is not None:
        _sum_partials_kernel[(1,)](partials, partials.numel(), loss, ACC=_acc(loss.dtype),
                                   BLOCK=min(triton.next_power_of_2(partials.numel()), 1024))


# Logits a backward program: at 1024 (4 warps) each thread reads 8 logits and 8 weights' gradients as two 16-byte
# loads each (sm_90 SASS, 32 registers); at 256 it read 2 (8 bytes) of each.
BACKWARD_BLOCK = 1024


def backward(go, gw_real, gw_fake, logits_real, logits_fake, mu, mu_value, generator, mean, d_real, d_fake):
    block = BACKWARD_BLOCK
    logits_real, logits_fake = _in_reach(logits_real), _in_reach(logits_fake)
    NR, NF = logits_real.numel(), logits_fake.numel()
    grid = (max(triton.cdiv(NR, block) + triton.cdiv(NF, block), 1),)
    _backward_kernel[grid](
        logits_real, logits_fake, mu if mu is not None else go, float(mu_value), go,
        gw_real if gw_real is not None else go, gw_fake if gw_fake is not None else go, d_real, d_fake,
        NR, NF, logits_real.stride(0) if NR else 1, logits_fake.stride(0) if NF else 1,
        GEN=bool(generator), MEAN=bool(mean), HAS_MU=mu is not None, JS_R=gw_real is not None,
        JS_F=gw_fake is not None, ACC=_acc(go.dtype), BLOCK=block, WIDE=_wide(NR, NF))
