"""The DFM denoiser's whole loss and forward with the GEMMs in Triton (``tl.dot``) and everything around them
fused into their prologues and epilogues: the Triton backend of fastgan/ops/denoiser_net.py's network-level paths.

One kernel per GEMM, none between them (torch's GEMMs need a BatchNorm kernel after every layer):
  * forward, layer i: y_i = A @ W_iᵀ, where the prologue forms A while loading it: h + σ·ε for the first layer,
    ReLU(BatchNorm(y_{i-1})) for the others, with the statistics combined from the previous GEMM's per-tile
    partials (mean and centred sum of squares of each row tile: Chan's combination, no cancellation);
    the epilogue writes y_i and this layer's partials, or, for the output layer, z and the per-sample loss
    ||z + b - h||² summed over its column tile. The programs of the first column tile also store A (x0, or the
    previous layer's ReLU output, which the backward reads); program (0, 0) stores the previous layer's
    shift, 1/std and updated running statistics, and adds the batch to its num_batches_tracked.
  * backward: per layer, dW = dYᵀ @ X and dX = dY @ W, with dY formed in the prologue from the stored masked
    upstream gradient and the column sums (BatchNorm backward; for the output layer 2·go·(z + b - h), go a value
    per row or, for a reduced loss, go[0] / go_div divided in each program); the dX
    epilogue applies the next layer down's ReLU mask and writes its two column-sum partials (Σ dz, Σ dz·x̂).
The formulas and rounding points are those of kernels/denoiser.py (per-feature statistics in float64,
element-wise math in the storage dtype). float32 GEMMs use IEEE fp32 (tf32 when torch allows it for CUDA
matmuls, as cuBLAS would); float64 ones fp64.
Tile sizes are chosen by shape, not tuned: no GPU was lent when this was written.
"""
import torch
import triton
import triton.language as tl

from .denoiser import corrupted, reciprocal_go, shared_go

# Kernel modes: constexpr globals (the only globals a kernel may read); launchers pass their .value.
PRO_PLAIN, PRO_CORRUPT, PRO_BN = (tl.constexpr(v) for v in range(3))  # how a forward GEMM forms its left operand
EPI_STORE, EPI_STATS, EPI_RECON, EPI_BIAS = (tl.constexpr(v) for v in range(4))  # what it does with its tile
G_RECON, G_BN = tl.constexpr(0), tl.constexpr(1)  # how a backward GEMM forms dY
D_MASK_STATS, D_INPUT = tl.constexpr(0), tl.constexpr(1)  # what the dX GEMM does with its tile


@triton.jit
def _recip(x):
    """1/x in float64 without a division (an fp64 division is a PTX subroutine whose saved registers ptxas spills
    when many are live): an fp32 seed refined by two Newton steps, within an ulp or two of 1/x."""
    r = (1.0 / x.to(tl.float32)).to(tl.float64)
    r = r * (2.0 - x * r)
    return r * (2.0 - x * r)


@triton.jit
def _rsqrt(x):
    """1/sqrt(x) in float64: the hardware's approximation refined by two Newton steps (within an ulp or two)."""
    r = tl.math.rsqrt(x)
    r2 = r * (1.5 - 0.5 * x * r * r)
    # rsqrt(inf) = 0 as torch's, where the Newton step's inf * 0 is NaN (an infinite running variance); no
    # finite float64 has a zero rsqrt
    return tl.where(r == 0.0, r, r2 * (1.5 - 0.5 * x * r2 * r2))


@triton.jit
def _reciprocals(B, pid_m, BM: tl.constexpr):
    """1/B, 1/(B-1) and 1/(rows of this row tile), float64 (the interpreter would pass host-computed ones as fp32).
    B = 0 occurs in eval mode only, where they are unused."""
    return _recip(tl.maximum(B, 1).to(tl.float64)), _recip(tl.maximum(B - 1, 1).to(tl.float64)), \
        _recip(tl.maximum(tl.minimum(BM, B - pid_m * BM), 1).to(tl.float64))


@triton.jit
def _out_tile(M, N, BM: tl.constexpr, BN: tl.constexpr):
    """This program's rows (int64) and columns of an M x N output, with their masks."""
    rows = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    return rows, rows < M, cols, cols < N


@triton.jit
def _bn_coeffs(ks, kmask, pmean_ptr, pm2_ptr, T, TILE, B, inv_b, H, bias_ptr, rm_ptr, rv_ptr, eps,
               TRAINING: tl.constexpr):
    """(shift, 1/std, mean, centred sum of squares) of features ks, float64: from the T row tiles' partials in
    training mode, else from the running statistics (shift = running mean - bias)."""
    zero = tl.zeros(ks.shape, dtype=tl.float64)
    if TRAINING:
        mean = zero
        for t in range(T):
            n_t = tl.minimum(TILE, B - t * TILE).to(tl.float64)
            mean += n_t * tl.load(pmean_ptr + t * H + ks, mask=kmask, other=0.0)
        mean = mean * inv_b
        m2 = zero
        for t in range(T):
            n_t = tl.minimum(TILE, B - t * TILE).to(tl.float64)
            d = tl.load(pmean_ptr + t * H + ks, mask=kmask, other=0.0) - mean
            m2 += tl.load(pm2_ptr + t * H + ks, mask=kmask, other=0.0) + n_t * d * d
        return mean, _rsqrt(m2 * inv_b + eps), mean, m2
    else:
        bias = tl.load(bias_ptr + ks, mask=kmask, other=0.0).to(tl.float64)
        rm = tl.load(rm_ptr + ks, mask=kmask, other=0.0).to(tl.float64)
        rv = tl.load(rv_ptr + ks, mask=kmask, other=1.0).to(tl.float64)
        return rm - bias, _rsqrt(rv + eps), zero, zero


@triton.jit
def _recon_grad(go_ptr, go_stride, go_all, z_ptr, bias_ptr, h_ptr, rows, cols, m, B, N, SHARED_GO: tl.constexpr):
    """dl/dz = 2·go·(z + b - h) on a tile, in the storage dtype (kernels/denoiser.py's recon backward); go: go_all
    (shared_go's) in every row where SHARED_GO, else a value per row."""
    offs = rows[:, None] * N + cols[None, :]
    d = tl.load(z_ptr + offs, mask=m, other=0.0) + tl.load(bias_ptr + cols, mask=cols < N, other=0.0)[None, :] \
        - tl.load(h_ptr + offs, mask=m, other=0.0)
    if SHARED_GO:
        g = 2.0 * go_all * d
    else:
        go = tl.load(go_ptr + rows * go_stride, mask=rows < B, other=0.0)
        g = 2.0 * go[:, None] * d
    return tl.where(m, g, 0.0)


@triton.jit
def _bn_grad_coeffs(cols, cmask, gamma_ptr, shift_ptr, invstd_ptr, ps1_ptr, ps2_ptr, T, inv_b, H):
    """(scale, shift, 1/std, mean dz, mean dz·x̂, Σ dz, Σ dz·x̂) of a hidden layer's features, for its dY."""
    s1 = tl.zeros(cols.shape, dtype=tl.float64)
    s2 = tl.zeros(cols.shape, dtype=tl.float64)
    for t in range(T):
        s1 += tl.load(ps1_ptr + t * H + cols, mask=cmask, other=0.0)
        s2 += tl.load(ps2_ptr + t * H + cols, mask=cmask, other=0.0)
    shift = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
    invstd = tl.load(invstd_ptr + cols, mask=cmask, other=0.0)
    scale = tl.load(gamma_ptr + cols, mask=cmask, other=0.0) * invstd
    T_ = shift.dtype
    return scale, shift, invstd, (s1 * inv_b).to(T_), (s2 * inv_b).to(T_), s1, s2


@triton.jit
def _bn_grad(dzm_ptr, y_ptr, rows, cols, m, H, scale, shift, invstd, m1, m2, TRAINING: tl.constexpr):
    """A hidden layer's dY on a tile from its masked upstream gradient (BatchNorm backward)."""
    offs = rows[:, None] * H + cols[None, :]
    dz = tl.load(dzm_ptr + offs, mask=m, other=0.0)
    if TRAINING:
        xhat = (tl.load(y_ptr + offs, mask=m, other=0.0) - shift[None, :]) * invstd[None, :]
        g = scale[None, :] * (dz - m1[None, :] - xhat * m2[None, :])
    else:
        g = scale[None, :] * dz
    return tl.where(m, g, 0.0)


@triton.jit
def _forward_gemm(a_ptr, noise_ptr, w_ptr, y_ptr,
                  pmean_in, pm2_in, T_in, TILE_in, bias_in_ptr, gamma_ptr, beta_ptr, rm_ptr, rv_ptr,
                  a_store_ptr, shift_ptr, invstd_ptr, rmo_ptr, rvo_ptr,
                  pmean_out, pm2_out, bias_out_ptr, target_ptr, loss_ptr, count_ptr,
                  B, N, K, sigma: tl.float64, momentum: tl.float64, eps: tl.float64,
                  PRO: tl.constexpr, EPI: tl.constexpr, TRAINING: tl.constexpr, TRACK: tl.constexpr,
                  STORE_A: tl.constexpr, COUNT: tl.constexpr, PREC: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """y (B, N) = A (B, K) @ W (N, K)ᵀ with A formed by PRO and the tile finished by EPI (module docstring)."""
    T = w_ptr.dtype.element_ty
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if COUNT:  # the layer below's num_batches_tracked, counted here rather than by a launch of its own
        if pid_m + pid_n == 0:
            tl.atomic_add(count_ptr, 1)  # a scalar atomic: one thread of program (0, 0)
    inv_b, inv_bm1, inv_tile = _reciprocals(B, pid_m, BM)
    rows, rmask, cols, nmask = _out_tile(B, N, BM, BN)
    acc = tl.zeros([BM, BN], dtype=tl.float64 if T == tl.float64 else tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        am = rmask[:, None] & kmask[None, :]
        offs = rows[:, None] * K + ks[None, :]
        if PRO == PRO_CORRUPT:  # h + sigma * noise, torch's opmath
            a = corrupted(tl.load(a_ptr + offs, mask=am, other=0.0), tl.load(noise_ptr + offs, mask=am, other=0.0),
                          sigma, T)
        elif PRO == PRO_BN:  # ReLU(BatchNorm(previous y))
            shift, invstd, mean, m2 = _bn_coeffs(ks, kmask, pmean_in, pm2_in, T_in, TILE_in, B, inv_b, K,
                                                 bias_in_ptr, rm_ptr, rv_ptr, eps, TRAINING)
            scale = (tl.load(gamma_ptr + ks, mask=kmask, other=0.0).to(tl.float64) * invstd).to(T)
            beta = tl.load(beta_ptr + ks, mask=kmask, other=0.0)
            a = (tl.load(a_ptr + offs, mask=am, other=0.0) - shift.to(T)[None, :]) * scale[None, :] + beta[None, :]
            a = tl.where(a <= 0.0, 0.0, a)  # NaN propagates, as in torch.relu
            first = kmask & ((ks * 0 + pid_m + pid_n) == 0)  # program (0, 0); a block mask: triton 3.9's
            tl.store(shift_ptr + ks, shift.to(T), mask=first)  # interpreter refuses a scalar-combined one
            tl.store(invstd_ptr + ks, invstd.to(T), mask=first)
            if TRACK:
                bias = tl.load(bias_in_ptr + ks, mask=kmask, other=0.0).to(tl.float64)
                rm = tl.load(rm_ptr + ks, mask=kmask, other=0.0).to(tl.float64)
                rv = tl.load(rv_ptr + ks, mask=kmask, other=0.0).to(tl.float64)
                unbiased = m2 * inv_bm1
                tl.store(rmo_ptr + ks, ((1.0 - momentum) * rm + momentum * (mean + bias)).to(T), mask=first)
                tl.store(rvo_ptr + ks, ((1.0 - momentum) * rv + momentum * unbiased).to(T), mask=first)
        else:
            a = tl.load(a_ptr + offs, mask=am, other=0.0)
        if STORE_A:
            tl.store(a_store_ptr + offs, a, mask=am & ((ks * 0 + pid_n) == 0)[None, :])
        a = tl.where(am, a, 0.0)
        wt = tl.load(w_ptr + cols[None, :] * K + ks[:, None], mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = tl.dot(a, wt, acc, input_precision=PREC, out_dtype=acc.dtype)
    om = rmask[:, None] & nmask[None, :]
    y_offs = rows[:, None] * N + cols[None, :]
    if EPI == EPI_BIAS:  # torch.addmm rounds once
        y = (acc + tl.load(bias_out_ptr + cols, mask=nmask, other=0.0).to(acc.dtype)[None, :]).to(T)
    else:
        y = acc.to(T)
    tl.store(y_ptr + y_offs, y, mask=om)
    if EPI == EPI_STATS:  # this tile's per-feature mean and centred sum of squares
        yv = tl.where(om, y.to(tl.float64), 0.0)
        mean_t = tl.sum(yv, axis=0) * inv_tile
        d = tl.where(om, yv - mean_t[None, :], 0.0)
        tl.store(pmean_out + pid_m * N + cols, mean_t, mask=nmask)
        tl.store(pm2_out + pid_m * N + cols, tl.sum(d * d, axis=0), mask=nmask)
    if EPI == EPI_RECON:  # per-sample ||z + b - h||² over this column tile
        d = y + tl.load(bias_out_ptr + cols, mask=nmask, other=0.0)[None, :] \
            - tl.load(target_ptr + y_offs, mask=om, other=0.0)
        d = tl.where(om, d, 0.0)
        part = tl.sum((d * d).to(tl.float64), axis=1)
        tl.store(loss_ptr + rows * tl.num_programs(1) + pid_n, part.to(T), mask=rmask)


@triton.jit
def _dx_gemm(go_ptr, go_stride, go_div, z_ptr, bias_ptr, h_ptr,
             dzm_ptr, y_ptr, gamma_ptr, shift_ptr, invstd_ptr, ps1_ptr, ps2_ptr, T_in,
             w_ptr, out_ptr,
             prev_out_ptr, prev_y_ptr, prev_shift_ptr, prev_invstd_ptr, ps1_out, ps2_out,
             dh_ptr, dnoise_ptr, sigma: tl.float64,
             B, N, K,
             G: tl.constexpr, D: tl.constexpr, TRAINING: tl.constexpr, NEED_H: tl.constexpr,
             NEED_NOISE: tl.constexpr, SHARED_GO: tl.constexpr, RECIP: tl.constexpr, PREC: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """dX (B, K) = dY (B, N) @ W (N, K): dY formed by G, the tile finished by D (module docstring)."""
    T = w_ptr.dtype.element_ty
    pid_m = tl.program_id(0)
    inv_b = _reciprocals(B, 0, 1)[0]
    go_all = shared_go(go_ptr, go_div, SHARED_GO, RECIP)
    rows, rmask, cols, cmask = _out_tile(B, K, BM, BN)
    acc = tl.zeros([BM, BN], dtype=tl.float64 if T == tl.float64 else tl.float32)
    for n0 in range(0, N, BK):
        ns = n0 + tl.arange(0, BK)
        nmask = ns < N
        gm = rmask[:, None] & nmask[None, :]
        if G == G_RECON:
            g = _recon_grad(go_ptr, go_stride, go_all, z_ptr, bias_ptr, h_ptr, rows, ns, gm, B, N, SHARED_GO)
        else:
            scale, shift, invstd, m1, m2, s1, s2 = _bn_grad_coeffs(ns, nmask, gamma_ptr, shift_ptr, invstd_ptr,
                                                                   ps1_ptr, ps2_ptr, T_in, inv_b, N)
            g = _bn_grad(dzm_ptr, y_ptr, rows, ns, gm, N, scale, shift, invstd, m1, m2, TRAINING)
        w = tl.load(w_ptr + ns[:, None] * K + cols[None, :], mask=nmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(g.to(T), w, acc, input_precision=PREC, out_dtype=acc.dtype)
    om = rmask[:, None] & cmask[None, :]
    offs = rows[:, None] * K + cols[None, :]
    dx = acc.to(T)
    if D == D_MASK_STATS:  # the layer below: through its ReLU, and its two column-sum partials
        dz = tl.where(tl.load(prev_out_ptr + offs, mask=om, other=0.0) <= 0.0, 0.0, dx)
        dz = tl.where(om, dz, 0.0)
        tl.store(out_ptr + offs, dz, mask=om)
        shift = tl.load(prev_shift_ptr + cols, mask=cmask, other=0.0)
        invstd = tl.load(prev_invstd_ptr + cols, mask=cmask, other=0.0)
        xhat = (tl.load(prev_y_ptr + offs, mask=om, other=0.0) - shift[None, :]) * invstd[None, :]
        tl.store(ps1_out + pid_m * K + cols, tl.sum(dz.to(tl.float64), axis=0), mask=cmask)
        tl.store(ps2_out + pid_m * K + cols, tl.sum(tl.where(om, dz * xhat, 0.0).to(tl.float64), axis=0),
                 mask=cmask)
    else:  # the corrupted input's gradient: into h (also the target) and into the noise
        if NEED_H:
            dz_out = _recon_grad(go_ptr, go_stride, go_all, z_ptr, bias_ptr, h_ptr, rows, cols, om, B, K,
                                 SHARED_GO)
            tl.store(dh_ptr + offs, dx - dz_out, mask=om)
        if NEED_NOISE:
            if T == tl.float64:
                dn = dx * sigma
            else:
                dn = (dx * tl.cast(sigma, tl.float32)).to(T)
            tl.store(dnoise_ptr + offs, dn, mask=om)


@triton.jit
def _dw_gemm(go_ptr, go_stride, go_div, z_ptr, bias_ptr, h_ptr,
             dzm_ptr, y_ptr, gamma_ptr, shift_ptr, invstd_ptr, ps1_ptr, ps2_ptr, T_in,
             x_ptr, dw_ptr, db_ptr, dgamma_ptr, dbeta_ptr,
             B, N, K,
             G: tl.constexpr, TRAINING: tl.constexpr, SHARED_GO: tl.constexpr, RECIP: tl.constexpr,
             PREC: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """dW (N, K) = dY (B, N)ᵀ @ X (B, K), dY formed by G; the programs of the first column tile also write
    the layer's bias (and BatchNorm gamma / beta) gradients."""
    T = x_ptr.dtype.element_ty
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    inv_b = _reciprocals(B, 0, 1)[0]
    go_all = shared_go(go_ptr, go_div, SHARED_GO, RECIP)
    ns = pid_m * BM + tl.arange(0, BM)
    nmask = ns < N
    ks = pid_n * BN + tl.arange(0, BN)
    kmask = ks < K
    lead = nmask & ((ns * 0 + pid_n) == 0)  # the first column tile's programs (a block mask, as above)
    if G == G_BN:
        scale, shift, invstd, m1, m2, s1, s2 = _bn_grad_coeffs(ns, nmask, gamma_ptr, shift_ptr, invstd_ptr,
                                                               ps1_ptr, ps2_ptr, T_in, inv_b, N)
    acc = tl.zeros([BM, BN], dtype=tl.float64 if T == tl.float64 else tl.float32)
    db = tl.zeros([BM], dtype=tl.float64)
    for b0 in range(0, B, BK):
        bs = (b0 + tl.arange(0, BK)).to(tl.int64)
        bmask = bs < B
        gm = bmask[:, None] & nmask[None, :]
        if G == G_RECON:
            g = _recon_grad(go_ptr, go_stride, go_all, z_ptr, bias_ptr, h_ptr, bs, ns, gm, B, N, SHARED_GO)
            db += tl.sum(g.to(tl.float64), axis=0)
        else:
            g = _bn_grad(dzm_ptr, y_ptr, bs, ns, gm, N, scale, shift, invstd, m1, m2, TRAINING)
        x = tl.load(x_ptr + bs[:, None] * K + ks[None, :], mask=bmask[:, None] & kmask[None, :], other=0.0)
        acc = tl.dot(tl.trans(g.to(T)), x, acc, input_precision=PREC, out_dtype=acc.dtype)
    tl.store(dw_ptr + ns[:, None] * K + ks[None, :], acc.to(T), mask=nmask[:, None] & kmask[None, :])
    if G == G_RECON:
        tl.store(db_ptr + ns, db.to(T), mask=lead)
    else:
        tl.store(dbeta_ptr + ns, s1.to(T), mask=lead)
        tl.store(dgamma_ptr + ns, s2.to(T), mask=lead)
        if TRAINING:  # the Linear bias cancels in the batch statistics
            tl.store(db_ptr + ns, tl.zeros_like(s1).to(T), mask=lead)  # not s1 * 0: NaN where s1 is
        else:
            tl.store(db_ptr + ns, (scale.to(tl.float64) * s1).to(T), mask=lead)


# ---------------------------------------------------------------- launchers
# saved (as fastgan/ops/denoiser_net.py keeps it): [x0, (y_i, out_i, shift_i, invstd_i) per hidden layer, z].

_GPUS: dict = {}  # device -> (SMs, compute capability major)
TILES = None  # (BM, BN, BK[, warps]) for every GEMM when set: tests cover many-tile grids with small shapes, the
# tile sweep (bench/bench_denoiser_tiles.py) times each configuration


def _halvings(bm: int, bn: int):
    """(bm, bn), then BM and BN halved in turn (the larger first, BM on ties) down to 16 x 16."""
    yield bm, bn
    while bm > 16 or bn > 16:
        if bm >= bn and bm > 16:
            bm //= 2
        else:
            bn //= 2
        yield bm, bn


def first_tiles(major: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """The tiles a GPU of compute capability `major`.x starts from. float32 on sm_80 and later: 64 x 64 x 32, at 4
    warps (an H200's sweeps, bench/results/h200-2026-12-04.json: 64 x 64 x 32 ran n_h=2048, B=512 1.78x faster than
    the earlier 32 x 64 x 16, and 1.41x faster at 4 warps, where ptxas spills 160 bytes, than at 8 without spills;
    K-steps of 32 won at every tile size; sm_8x runs that tile at 8 warps, gpu_warps). sm_75 keeps 32 x 64 x 16
    (64 x 64 x 32 spills 696 bytes there, and no Turing GPU measured it), float64 32 x 32 x 16 (unmeasured)."""
    if dtype == torch.float64:
        return 32, 32, 16
    return (64, 64, 32) if major >= 8 else (32, 64, 16)


def gpu_warps(major: int, bm: int, bn: int) -> int:
    """Warps a program of a BM x BN tile runs with on a GPU of compute capability `major`.x: 4, or 8 for 64 x 64 on
    sm_8x, where 4 warps spill (compiled for sm_80, triton 3.6: up to 164 bytes, the forward GEMM; triton 3.8, torch
    2.14's: 5572 bytes in the weight-gradient GEMM; at 8 warps at most 8 bytes in either). sm_90 keeps 4, which an
    H200 ran 1.41x faster than 8 at that tile. No sm_8x GPU has measured either."""
    return 8 if major == 8 and bm * bn >= 64 * 64 else 4


def gpu_tiles(major: int, dtype: torch.dtype) -> set:
    """Every (BM, BN, BK, warps) `_tiles` can launch on such a GPU (tests/test_triton_compile.py holds them to a
    spill budget there)."""
    bm, bn, bk = first_tiles(major, dtype)
    return {(m, n, bk, gpu_warps(major, m, n)) for m, n in _halvings(bm, bn)}


def _tiles(M: int, N: int, t: torch.Tensor):
    """(BM, BN, BK, warps) of a GEMM with an M x N output. On a GPU: `first_tiles`, BM and BN halved while the grid
    is under a quarter of the SMs, down to 16 (at n_h=512, B=64 on the H200 that picks 16 x 32 x 32 for the forward
    GEMMs, 64 x 64 x 32 for the weight gradients, and ran, at 8 warps for the 64 x 64 tiles then, as fast as
    16 x 32 x 32 everywhere, the sweep's best there, 1.36x the earlier rule). Under the CPU interpreter: few wide programs, which run fastest there."""
    if TILES is not None:
        return (*TILES, 4) if len(TILES) == 3 else tuple(TILES)
    if t.device.type != "cuda":
        return (min(max(triton.next_power_of_2(max(M, 1)), 16), 64),
                min(max(triton.next_power_of_2(max(N, 1)), 16), 64), 32, 4)
    if t.device not in _GPUS:
        props = torch.cuda.get_device_properties(t.device)
        _GPUS[t.device] = props.multi_processor_count, props.major
    return gpu_rule(M, N, *_GPUS[t.device], t.dtype)


def gpu_rule(M: int, N: int, sms: int, major: int, dtype: torch.dtype):
    """_tiles' choice on a GPU of `sms` SMs and compute capability `major`.x (bench/costs_denoiser.py counts the
    launches a GPU's tiles make)."""
    bm, bn, bk = first_tiles(major, dtype)
    for bm, bn in _halvings(bm, bn):
        if triton.cdiv(M, bm) * triton.cdiv(N, bn) * 4 >= sms:
            break
    return bm, bn, bk, gpu_warps(major, bm, bn)


def _precision(t: torch.Tensor) -> str:
    if t.dtype == torch.float32 and t.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _grid(M: int, N: int, bm: int, bn: int):
    return max(triton.cdiv(M, bm), 1), triton.cdiv(N, bn)  # one row of programs for B = 0 (eval mode)


INT32_ELEMENTS = 2 ** 31  # the kernels' offsets (rows * K, cols * K) are int32
GRID_Y = 65535  # CUDA's limit on a grid's second dimension


def _check_offsets(B: int, weights) -> None:
    # every tensor a GEMM indexes is (B, N), (B, K) or (N, K): refuse rather than wrap and read out of bounds
    for i, W in enumerate(weights):
        N, K = W.shape
        if max(B * N, B * K, N * K) >= INT32_ELEMENTS:
            raise ValueError(f"backend='triton': layer {i} ({K} -> {N} features) at batch {B} indexes a tensor of "
                             f"{max(B * N, B * K, N * K)} elements; the Triton denoiser kernels take fewer than 2**31 "
                             f"(use backend='cuda', or a smaller batch)")
        if max(N, K) > GRID_Y * 16:  # features run along the grid's second axis, in tiles of 16 or more
            raise ValueError(f"backend='triton': layer {i} ({K} -> {N} features) has more than {GRID_Y * 16} "
                             f"features, beyond what the Triton denoiser kernels' grid covers (use backend='cuda')")


def _layers_forward(x, weights, biases, gammas, betas, rms, rvs, training, track, momentum, eps, *, noise=None,
                    sigma=0.0, target=None, keep=False, running_in_place=False, precision=None, counts=None):
    """Runs every layer; returns (last GEMM's output, saved hidden tensors, new running stats, loss partials).
    With `target` the last GEMM writes z and the loss partials, else r(x) = z + b. running_in_place: the running
    statistics are updated in their own tensors and no new ones returned (in training mode only program (0, 0)
    uses a running statistic, reading each element before it writes it). counts: the hidden layers'
    num_batches_tracked, each added 1 to by the GEMM above its layer (None or empty: none counted)."""
    B = x.shape[0]
    depth = len(weights) - 1
    _check_offsets(B, weights)
    f64 = x.new_empty(0, dtype=torch.float64)
    prec = precision or _precision(x)
    hidden, new_running = [], []
    prev = None  # the layer below: (y, pmean, pm2, T, TILE)
    a_src = x
    for i in range(depth + 1):
        W = weights[i].contiguous()  # indexed as a dense (N, K) array; a module's weight may be a strided view
        N, K = W.shape
        last = i == depth
        bm, bn, bk, warps = _tiles(B, N, W)
        gm, gn = _grid(B, N, bm, bn)
        y = x.new_empty(B, N)
        pmean = pm2 = f64
        if not last and training:
            pmean, pm2 = x.new_empty(gm, N, dtype=torch.float64), x.new_empty(gm, N, dtype=torch.float64)
        loss = x.new_empty(B, gn) if last and target is not None else y
        epi = (EPI_RECON if target is not None else EPI_BIAS) if last else (EPI_STATS if training else EPI_STORE)
        if i == 0:
            pro = PRO_CORRUPT if noise is not None else PRO_PLAIN
            a_store = x.new_empty(B, K) if (keep and noise is not None) else y
            hid_args = (f64, f64, 0, 1, y, y, y, y, y)
            bn_out = (y, y, y, y)
        else:
            pro = PRO_BN
            j = i - 1
            a_store = x.new_empty(B, K) if keep else y
            rm = rms[j] if rms else y
            rv = rvs[j] if rvs else y
            hid_args = (prev[1], prev[2], prev[3], prev[4], biases[j], gammas[j], betas[j], rm, rv)
            shift, invstd = x.new_empty(K), x.new_empty(K)
            rmo, rvo = ((rm, rv) if running_in_place else (x.new_empty(K), x.new_empty(K))) if track else (y, y)
            bn_out = (shift, invstd, rmo, rvo)
        count = counts[i - 1] if counts and pro is PRO_BN else None
        _forward_gemm[(gm, gn)](
            a_src, noise if noise is not None else a_src, W, y, *hid_args, a_store, *bn_out, pmean, pm2, biases[i],
            target if target is not None else y, loss, count if count is not None else f64, B, N, K, float(sigma),
            float(momentum), float(eps), PRO=pro.value, EPI=epi.value, TRAINING=bool(training),
            TRACK=bool(track) and pro is PRO_BN, STORE_A=bool(keep) and pro is not PRO_PLAIN,
            COUNT=count is not None, PREC=prec, BM=bm, BN=bn, BK=bk, num_warps=warps)
        if i == 0 and keep:
            hidden.append(a_store)
        if pro is PRO_BN:
            if keep:
                hidden += [prev[0], a_store, shift, invstd]
            if track and not running_in_place:
                new_running += [rmo, rvo]
        prev = (y, pmean, pm2, gm, bm)
        a_src = y
    return y, hidden, new_running, loss


def loss_forward(h, noise, sigma, weights, biases, gammas, betas, rms, rvs, training, track, momentum, eps,
                 running_in_place=False, precision=None, counts=None):
    """(per-sample ||h - r(h + σ·noise)||² (B,), saved, new running stats or [] with running_in_place).
    precision: tl.dot's input_precision, or None for _precision's rule; counts as _layers_forward takes them
    (here and below)."""
    z, hidden, new_running, loss = _layers_forward(h, weights, biases, gammas, betas, rms, rvs, training, track,
                                                   momentum, eps, noise=noise, sigma=sigma, target=h, keep=True,
                                                   running_in_place=running_in_place, precision=precision,
                                                   counts=counts)
    per_sample = loss.view(-1) if loss.shape[1] == 1 else loss.sum(1)
    return per_sample, hidden + [z], new_running


def forward(h, weights, biases, gammas, betas, rms, rvs, training, track, momentum, eps, running_in_place=False,
            precision=None, counts=None):
    """(r(h), new running stats or [] with running_in_place); nothing kept for a backward."""
    r, _, new_running, _ = _layers_forward(h, weights, biases, gammas, betas, rms, rvs, training, track, momentum,
                                           eps, running_in_place=running_in_place, precision=precision,
                                           counts=counts)
    return r, new_running


def loss_backward(go, h, sigma, weights, biases, gammas, saved, training, need_h, need_noise, precision=None,
                  go_div=0):
    """(dh or None, dnoise or None, dweights, dbiases, dgammas, dbetas) of sum_n go_n l_n; go_div as the layer
    kernels' recon_bwd takes it (0: go holds a value per row; > 0: every row's is go[0] / go_div, the loss's mean
    (B) or sum (1), divided in the kernels where autograd's MeanBackward would launch a division)."""
    B = h.shape[0]
    depth = len(weights) - 1
    z = saved[-1]
    f64 = h.new_empty(0, dtype=torch.float64)
    prec = precision or _precision(h)
    go_stride = go.stride(0) if go.dim() == 1 and go.shape[0] > 1 else 0
    shared, recip = go_div > 0, reciprocal_go(h)
    dweights, dbiases = [None] * (depth + 1), [None] * (depth + 1)
    dgammas, dbetas = [None] * depth, [None] * depth
    dh = dnoise = None
    recon = (go, go_stride, max(go_div, 1), z, biases[-1], h)
    grad = None  # the layer being differentiated: (dzm, y, gamma, shift, invstd, ps1, ps2, T)
    for i in reversed(range(depth + 1)):
        W = weights[i].contiguous()
        N, K = W.shape
        x_in = saved[0] if i == 0 else saved[4 * i - 2]
        g_args = (z, z, z, z, z, f64, f64, 0) if grad is None else grad
        G = G_RECON if grad is None else G_BN
        dW, db = h.new_empty(N, K), h.new_empty(N)  # written dense
        dgamma, dbeta = (h.new_empty(N), h.new_empty(N)) if G is G_BN else (db, db)
        bm, bn, bk, warps = _tiles(N, K, W)
        _dw_gemm[(triton.cdiv(N, bm), triton.cdiv(K, bn))](
            *recon, *g_args, x_in, dW, db, dgamma, dbeta, B, N, K, G=G.value, TRAINING=bool(training),
            SHARED_GO=shared, RECIP=recip, PREC=prec, BM=bm, BN=bn, BK=bk, num_warps=warps)
        dweights[i], dbiases[i] = dW, db
        if G is G_BN:
            dgammas[i], dbetas[i] = dgamma, dbeta
        if i == 0 and not (need_h or need_noise):
            break
        bm, bn, bk, warps = _tiles(B, K, W)
        gm, gn = _grid(B, K, bm, bn)
        if i > 0:
            j = i - 1
            y_j, out_j, shift_j, invstd_j = saved[1 + 4 * j: 5 + 4 * j]
            dzm = h.new_empty(B, K)
            ps1, ps2 = h.new_empty(gm, K, dtype=torch.float64), h.new_empty(gm, K, dtype=torch.float64)
            below = (out_j, y_j, shift_j, invstd_j, ps1, ps2)
            dh_, dn_ = dzm, dzm
        else:
            dzm = h.new_empty(0)
            below = (z, z, z, z, f64, f64)
            dh_ = h.new_empty(B, K) if need_h else z
            dn_ = h.new_empty(B, K) if need_noise else z
        _dx_gemm[(gm, gn)](
            *recon, *g_args, W, dzm, *below, dh_, dn_, float(sigma), B, N, K, G=G.value,
            D=(D_MASK_STATS if i > 0 else D_INPUT).value,
            TRAINING=bool(training), NEED_H=bool(need_h), NEED_NOISE=bool(need_noise), SHARED_GO=shared,
            RECIP=recip, PREC=prec, BM=bm, BN=bn, BK=bk, num_warps=warps)
        if i > 0:
            grad = (dzm, y_j, gammas[j], shift_j, invstd_j, ps1, ps2, gm)
        else:
            dh = dh_ if need_h else None
            dnoise = dn_ if need_noise else None
    return dh, dnoise, dweights, dbiases, dgammas, dbetas
