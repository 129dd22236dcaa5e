"""Triton kernels of the fused DFM denoiser's single-layer ops (fastgan/ops/denoiser_ops.py: ``bn_relu``, used by
``Denoiser.forward``, and ``recon_loss``, the generator's term); the formulas mirror csrc/include/fastgan/bn_math.h.
The Triton backend's whole-network loss and forward run these kernels (and ``corrupt``) around torch's GEMMs, or
with FASTGAN_DENOISER_TRITON_GEMM=tl.dot kernels/denoiser_gemm.py, with the GEMMs fused.

Per-feature kernels give each program BLOCK_N contiguous features and walk all B rows in BLOCK_B tiles
(coalesced along the features): BatchNorm forward = mean pass, centred-variance pass, normalise pass;
backward = one pass for the two sums, one pass for dy.
Reductions accumulate in float64 (as the CPU kernels do; fp32 accumulation measured ~2x the reference's
fp32 error); element-wise math runs in the storage dtype. All 2-D tensors are contiguous (B, N).
"""
import torch
import triton
import triton.language as tl


# Float scalars are annotated tl.float64: Triton passes an unannotated Python float as fp32, which is
# too coarse for float64 tensors (seen on an H100: BatchNorm running stats off by 1e-9 relative).
@triton.jit
def _bn_forward_kernel(y_ptr, bias_ptr, gamma_ptr, beta_ptr, rm_ptr, rv_ptr, out_ptr, shift_ptr, invstd_ptr,
                       rmo_ptr, rvo_ptr, count_ptr, B, N, momentum: tl.float64, eps: tl.float64,
                       HAS_BIAS: tl.constexpr, TRAINING: tl.constexpr, TRACK: tl.constexpr, RELU: tl.constexpr,
                       COUNT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    T = y_ptr.dtype.element_ty
    if COUNT:  # the layer's num_batches_tracked, counted here rather than by a launch of its own
        if tl.program_id(0) == 0:
            tl.atomic_add(count_ptr, 1)  # a scalar atomic: one thread of the program
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    zero = tl.zeros([BLOCK_N], dtype=tl.float64)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
    else:
        bias = zero
    if TRAINING:
        s = zero
        for r0 in range(0, tl.cast(B, tl.int64), BLOCK_B):  # int64 counters: an i32 one wraps within a block of 2**31
            rows = (r0 + tl.arange(0, BLOCK_B)).to(tl.int64)
            m = (rows[:, None] < B) & cmask[None, :]
            s += tl.sum(tl.load(y_ptr + rows[:, None] * N + cols[None, :], mask=m, other=0.0).to(tl.float64), axis=0)
        mean = s / B
        q = zero
        for r0 in range(0, tl.cast(B, tl.int64), BLOCK_B):
            rows = (r0 + tl.arange(0, BLOCK_B)).to(tl.int64)
            m = (rows[:, None] < B) & cmask[None, :]
            d = tl.load(y_ptr + rows[:, None] * N + cols[None, :], mask=m, other=0.0).to(tl.float64) - mean[None, :]
            d = tl.where(m, d, 0.0)
            q += tl.sum(d * d, axis=0)
        shift = mean
        invstd = 1.0 / tl.sqrt(q / B + eps)
        if TRACK:
            rm = tl.load(rm_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
            rv = tl.load(rv_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
            unbiased = q / tl.maximum(B - 1, 1)
            tl.store(rmo_ptr + cols, ((1.0 - momentum) * rm + momentum * (mean + bias)).to(T), mask=cmask)
            tl.store(rvo_ptr + cols, ((1.0 - momentum) * rv + momentum * unbiased).to(T), mask=cmask)
    else:
        rm = tl.load(rm_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
        rv = tl.load(rv_ptr + cols, mask=cmask, other=1.0).to(tl.float64)
        shift = rm - bias
        invstd = 1.0 / tl.sqrt(rv + eps)
    scale = (tl.load(gamma_ptr + cols, mask=cmask, other=0.0).to(tl.float64) * invstd).to(T)
    shift = shift.to(T)
    tl.store(shift_ptr + cols, shift, mask=cmask)
    tl.store(invstd_ptr + cols, invstd.to(T), mask=cmask)
    beta = tl.load(beta_ptr + cols, mask=cmask, other=0.0)
    for r0 in range(0, tl.cast(B, tl.int64), BLOCK_B):
        rows = (r0 + tl.arange(0, BLOCK_B)).to(tl.int64)
        m = (rows[:, None] < B) & cmask[None, :]
        offs = rows[:, None] * N + cols[None, :]
        z = (tl.load(y_ptr + offs, mask=m, other=0.0) - shift[None, :]) * scale[None, :] + beta[None, :]
        if RELU:
            z = tl.where(z <= 0.0, 0.0, z)  # NaN propagates, as in torch.relu
        tl.store(out_ptr + offs, z, mask=m)


@triton.jit
def _masked_grad(dout_ptr, out_ptr, offs, m, RELU: tl.constexpr):
    """The upstream gradient through the ReLU (zero where the output was clamped); both backward passes use it."""
    dz = tl.load(dout_ptr + offs, mask=m, other=0.0)
    if RELU:
        dz = tl.where(tl.load(out_ptr + offs, mask=m, other=0.0) <= 0.0, 0.0, dz)
    return dz


@triton.jit
def _bn_backward_kernel(dout_ptr, out_ptr, y_ptr, gamma_ptr, shift_ptr, invstd_ptr, dy_ptr, dgamma_ptr, dbeta_ptr,
                        dbias_ptr, B, N, TRAINING: tl.constexpr, RELU: tl.constexpr, BLOCK_B: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    T = y_ptr.dtype.element_ty
    shift = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
    invstd = tl.load(invstd_ptr + cols, mask=cmask, other=0.0)
    scale = tl.load(gamma_ptr + cols, mask=cmask, other=0.0) * invstd
    s1 = tl.zeros([BLOCK_N], dtype=tl.float64)
    s2 = tl.zeros([BLOCK_N], dtype=tl.float64)
    for r0 in range(0, tl.cast(B, tl.int64), BLOCK_B):
        rows = (r0 + tl.arange(0, BLOCK_B)).to(tl.int64)
        m = (rows[:, None] < B) & cmask[None, :]
        offs = rows[:, None] * N + cols[None, :]
        dz = _masked_grad(dout_ptr, out_ptr, offs, m, RELU)
        xhat = (tl.load(y_ptr + offs, mask=m, other=0.0) - shift[None, :]) * invstd[None, :]
        s1 += tl.sum(dz.to(tl.float64), axis=0)
        s2 += tl.sum(tl.where(m, dz * xhat, 0.0).to(tl.float64), axis=0)
    tl.store(dbeta_ptr + cols, s1.to(T), mask=cmask)
    tl.store(dgamma_ptr + cols, s2.to(T), mask=cmask)
    if TRAINING:
        tl.store(dbias_ptr + cols, tl.zeros_like(s1).to(T), mask=cmask)  # not s1 * 0: NaN where s1 is
    else:
        tl.store(dbias_ptr + cols, (scale.to(tl.float64) * s1).to(T), mask=cmask)
    m1 = (s1 / B).to(T)
    m2 = (s2 / B).to(T)
    for r0 in range(0, tl.cast(B, tl.int64), BLOCK_B):
        rows = (r0 + tl.arange(0, BLOCK_B)).to(tl.int64)
        m = (rows[:, None] < B) & cmask[None, :]
        offs = rows[:, None] * N + cols[None, :]
        dz = _masked_grad(dout_ptr, out_ptr, offs, m, RELU)
        if TRAINING:
            xhat = (tl.load(y_ptr + offs, mask=m, other=0.0) - shift[None, :]) * invstd[None, :]
            dy = scale[None, :] * (dz - m1[None, :] - xhat * m2[None, :])
        else:
            dy = scale[None, :] * dz
        tl.store(dy_ptr + offs, dy, mask=m)


@triton.jit
def _recon_forward_kernel(y_ptr, bias_ptr, t_ptr, out_ptr, B, N, HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    rmask = rows < B
    acc = tl.zeros([BLOCK_B], dtype=tl.float64)
    for c0 in range(0, tl.cast(N, tl.int64), BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        cmask = cols < N
        m = rmask[:, None] & cmask[None, :]
        offs = rows[:, None] * N + cols[None, :]
        d = tl.load(y_ptr + offs, mask=m, other=0.0)
        if HAS_BIAS:  # (y + b) - t, in the order of the reference and the C++ kernels (recon::diff)
            d += tl.load(bias_ptr + cols, mask=cmask, other=0.0)[None, :]
        d = tl.where(m, d - tl.load(t_ptr + offs, mask=m, other=0.0), 0.0)
        acc += tl.sum((d * d).to(tl.float64), axis=1)
    tl.store(out_ptr + rows, acc.to(out_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _recon_backward_kernel(go_ptr, y_ptr, bias_ptr, t_ptr, dy_ptr, dbias_ptr, B, N, go_div,
                           HAS_BIAS: tl.constexpr, WANT_DBIAS: tl.constexpr, SHARED_GO: tl.constexpr,
                           RECIP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=cmask, other=0.0)
    else:
        bias = tl.zeros([BLOCK_N], dtype=y_ptr.dtype.element_ty)
    g_all = shared_go(go_ptr, go_div, SHARED_GO, RECIP)
    acc = tl.zeros([BLOCK_N], dtype=tl.float64)
    for r0 in range(0, tl.cast(B, tl.int64), BLOCK_B):
        rows = (r0 + tl.arange(0, BLOCK_B)).to(tl.int64)
        rmask = rows < B
        m = rmask[:, None] & cmask[None, :]
        offs = rows[:, None] * N + cols[None, :]
        d = tl.load(y_ptr + offs, mask=m, other=0.0) + bias[None, :] - tl.load(t_ptr + offs, mask=m, other=0.0)
        if SHARED_GO:
            g = tl.where(m, 2.0 * g_all * d, 0.0)
        else:
            go = tl.load(go_ptr + rows, mask=rmask, other=0.0)
            g = tl.where(m, 2.0 * go[:, None] * d, 0.0)
        tl.store(dy_ptr + offs, g.to(dy_ptr.dtype.element_ty), mask=m)
        acc += tl.sum(g.to(tl.float64), axis=0)
    if WANT_DBIAS:
        tl.store(dbias_ptr + cols, acc.to(dbias_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def shared_go(go_ptr, go_div, SHARED_GO: tl.constexpr, RECIP: tl.constexpr):
    """Where SHARED_GO, every row's gradient go[0] / go_div (the loss's mean: go_div = B; its sum: 1) with the bits of
    autograd's MeanBackward on the tensors' device (recon::shared_go): a quotient on the CPU, the product with the
    rounded reciprocal on a GPU (RECIP); else unused (0). Also the fused GEMMs' loss gradient
    (kernels/denoiser_gemm.py)."""
    if SHARED_GO:
        g = tl.load(go_ptr)
        if RECIP:
            if g.dtype == tl.float32:  # float32 `/` is div.full, within 2 ulp
                # not .to(): a go_div of 1 is specialized to a constant
                g = g * tl.math.div_rn(tl.full([], 1.0, tl.float32), go_div * 1.0)
            else:
                g = g * (tl.full([], 1.0, tl.float64) / go_div)
        elif g.dtype == tl.float32:
            g = tl.math.div_rn(g, go_div * 1.0)
        else:
            g = g / go_div
    else:
        g = 0.0
    return g


def reciprocal_go(t) -> bool:
    """shared_go's RECIP for kernels on t's device: torch divides by a number as a product with its reciprocal on
    a GPU (ATen's div_true_kernel_cuda), and exactly on the CPU (where the interpreter runs)."""
    return t.device.type != "cpu"


@triton.jit
def corrupted(hv, ev, sigma, T: tl.constexpr):
    """h + sigma * noise in the storage dtype T, sigma (a float64 scalar) rounded to float32 first below float64, as
    torch.add(h, noise, alpha=sigma) and the C++ kernels take it; also the fused GEMMs' prologue
    (kernels/denoiser_gemm.py)."""
    if T == tl.float64:
        return hv + sigma * ev
    return (hv + tl.cast(sigma, tl.float32) * ev).to(T)


@triton.jit
def _corrupt_kernel(h_ptr, noise_ptr, out_ptr, sigma: tl.float64, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    hv = tl.load(h_ptr + offs, mask=m, other=0.0)
    ev = tl.load(noise_ptr + offs, mask=m, other=0.0)
    tl.store(out_ptr + offs, corrupted(hv, ev, sigma, out_ptr.dtype.element_ty), mask=m)


def _col_blocks(B: int, N: int, device: torch.device):
    """(BLOCK_B, BLOCK_N) of the per-feature kernels. On a GPU, narrow feature blocks give N / 16 programs
    (the batch is walked inside a program); untuned: no GPU was available when these were written. Under
    the CPU interpreter, few wide programs run fastest."""
    if device.type == "cuda":
        block_n = 16 if N < 2048 else 32
        return 64, block_n
    block_n = min(max(triton.next_power_of_2(max(N, 1)), 16), 64)
    block_b = max(1, min(triton.next_power_of_2(max(B, 1)), 4096 // block_n))
    return block_b, block_n


def _col_warps(device: torch.device) -> int:
    """Warps of a per-feature program. On a GPU 8: at 4, ptxas spilled 16 bytes on sm_75 for the float64 BatchNorm
    backward at 64 x 16 (71 registers), and 64 x 32 took 96-123 registers a thread on sm_75-90; at 8, 58-68 and no
    spill (tests/test_triton_compile.py, 2026-12-04; speed not measured). The interpreter ignores it."""
    return 8 if device.type == "cuda" else 4


def _dummy(t: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return other if t is None else t


def bn_forward(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, training, track, momentum, eps,
               relu, count=None):
    """count: an int64 tensor the launch adds 1 to (the layer's num_batches_tracked), or None."""
    B, N = y.shape
    if N == 0:
        if count is not None:
            raise ValueError("bn_relu: a batch count needs features (N > 0)")
        return
    block_b, block_n = _col_blocks(B, N, y.device)
    grid = (triton.cdiv(N, block_n),)
    _bn_forward_kernel[grid](y, _dummy(bias, gamma), gamma, beta, _dummy(rm, gamma), _dummy(rv, gamma), out, shift,
                             invstd, _dummy(rm_out, shift), _dummy(rv_out, invstd), _dummy(count, shift), B, N,
                             float(momentum), float(eps), HAS_BIAS=bias is not None, TRAINING=bool(training),
                             TRACK=bool(track), RELU=bool(relu), COUNT=count is not None, BLOCK_B=block_b,
                             BLOCK_N=block_n, num_warps=_col_warps(y.device))


def bn_backward(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, training, relu):
    B, N = y.shape
    if N == 0:
        return
    block_b, block_n = _col_blocks(B, N, y.device)
    grid = (triton.cdiv(N, block_n),)
    _bn_backward_kernel[grid](dout, _dummy(out, dout), y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, B, N,
                              TRAINING=bool(training), RELU=bool(relu), BLOCK_B=block_b, BLOCK_N=block_n,
                              num_warps=_col_warps(y.device))


def recon_forward(y, bias, target, out):
    B, N = y.shape
    if B == 0:
        return
    block_n = min(max(triton.next_power_of_2(max(N, 1)), 16), 1024)
    block_b = max(1, min(64, 4096 // block_n))
    grid = (triton.cdiv(B, block_b),)
    _recon_forward_kernel[grid](y, _dummy(bias, y), target, out, B, N, HAS_BIAS=bias is not None,
                                BLOCK_B=block_b, BLOCK_N=block_n)


def recon_backward(go, y, bias, target, dy, dbias, go_div=0):
    """go_div 0: go holds a gradient per row; > 0: every row's is go[0] / go_div (the mean's backward: B)."""
    B, N = y.shape
    if N == 0:
        return
    block_b, block_n = _col_blocks(B, N, y.device)
    grid = (triton.cdiv(N, block_n),)
    _recon_backward_kernel[grid](go, y, _dummy(bias, y), target, dy, _dummy(dbias, dy), B, N, max(go_div, 1),
                                 HAS_BIAS=bias is not None, WANT_DBIAS=dbias is not None, SHARED_GO=go_div > 0,
                                 RECIP=reciprocal_go(y), BLOCK_B=block_b, BLOCK_N=block_n,
                                 num_warps=_col_warps(y.device))


CORRUPT_BLOCK = 1024


def corrupt(h, noise, sigma, out):
    """out = h + sigma * noise (the denoiser's input), elementwise over contiguous tensors."""
    n = h.numel()
    if n == 0:
        return
    # one block size on every device: the CPU tests' launches are then the ones tests/test_triton_compile.py compiles
    _corrupt_kernel[(triton.cdiv(n, CORRUPT_BLOCK),)](h, noise, out, float(sigma), n, BLOCK=CORRUPT_BLOCK)
