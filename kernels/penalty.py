"""Triton kernels of the weighted gradient-norm penalty p_n = w(psi_n) * ||g_n||^2 and its backward.

A program owns BLOCK_B rows and walks the features in BLOCK_F chunks, or loads them as one tile when a row fits;
the weight math mirrors csrc/include/fastgan/penalty_math.h (1 - sigmoid(psi) computed as sigmoid(-psi)).
"""
import torch
import triton
import triton.language as tl

from .logistic import _js, _logistic

# WEIGHT codes, penalty_math.h's table: 0 one, 1 js_real, 2 js_fake, 3 sigmoid, 4 exp, 5 kl


@triton.jit
def _weight_and_slope(psi, WEIGHT: tl.constexpr):
    # in float64 (one exponential a row): a GPU's float32 tl.exp is ex2.approx of psi * log2(e) rounded to float32,
    # ~30 ulp off at |psi| ~ 60, which an exponential weight (e^psi, a JS weight's e = e^-|psi| for psi < 0) carries
    # whole: past the 2x rule (tests' helpers.gpu_exp); libdevice's float64 exp is within an ulp
    w, dw = _weight_and_slope_f64(psi.to(tl.float64), WEIGHT)
    return w.to(psi.dtype), dw.to(psi.dtype)


@triton.jit
def _weight_and_slope_f64(psi, WEIGHT: tl.constexpr):
    if WEIGHT == 1 or WEIGHT == 2:
        e, s, q = _logistic(psi, True)
        w, dw = _js(s, q, WEIGHT == 1)
    elif WEIGHT == 3:
        e, s, q = _logistic(psi, True)
        w = s
        dw = s * q
    elif WEIGHT == 4:
        w = tl.exp(psi)
        dw = w
    elif WEIGHT == 5:
        w = tl.exp(psi - 1.0)
        dw = w
    else:
        # not psi * 0 + 1: an infinite or NaN logit must not make R1/R2's constant weight NaN (CPU/CUDA give 1, 0)
        w = tl.full(psi.shape, 1.0, psi.dtype)
        dw = tl.zeros(psi.shape, psi.dtype)
    return w, dw


@triton.jit
def _tile(g_ptr, rows, rmask, f0, F, sb, sf, ACC: tl.constexpr, BLOCK_F: tl.constexpr):
    cols = f0 + tl.arange(0, BLOCK_F).to(tl.int64)
    m = rmask[:, None] & (cols[None, :] < F)
    x = tl.load(g_ptr + rows[:, None] * sb + cols[None, :] * sf, mask=m, other=0.0).to(ACC)
    return x, cols, m


@triton.jit
def _sum_sq(g_ptr, rows, rmask, f0, F, sb, sf, ACC: tl.constexpr, BLOCK_F: tl.constexpr):
    x, cols, m = _tile(g_ptr, rows, rmask, f0, F, sb, sf, ACC, BLOCK_F)
    return tl.sum(x * x, axis=1)


@triton.jit
def _sum_sq_and_dgrad(g_ptr, dg_ptr, rows, rmask, f0, F, sb, sf, scale, ACC: tl.constexpr, BLOCK_F: tl.constexpr):
    x, cols, m = _tile(g_ptr, rows, rmask, f0, F, sb, sf, ACC, BLOCK_F)
    tl.store(dg_ptr + rows[:, None] * F + cols[None, :], (scale[:, None] * x).to(dg_ptr.dtype.element_ty), mask=m)
    return tl.sum(x * x, axis=1)


# ONE_TILE (the row fits in BLOCK_F): no loop, so no row pointers or per-row values stay live across iterations;
# ptxas (sm_90) then needs about half the registers.
@triton.jit
def _forward_kernel(g_ptr, l_ptr, out_ptr, B, F, sb, sf, sl,
                    WEIGHT: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr,
                    ONE_TILE: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    if ONE_TILE:
        acc = _sum_sq(g_ptr, rows, rmask, 0, F, sb, sf, ACC, BLOCK_F)
    else:
        # the chunks' sums added in float64: in float32 a row of millions of features (3 x 1024 x 1024) erred
        # 6-7 ulp, past twice the reference's error; one add a row a chunk
        acc = tl.zeros([BLOCK_B], dtype=tl.float64)
        for f0 in range(0, tl.cast(F, tl.int64), BLOCK_F):  # int64: an i32 counter wraps within a block of 2**31
            acc += _sum_sq(g_ptr, rows, rmask, f0, F, sb, sf, ACC, BLOCK_F).to(tl.float64)
        acc = acc.to(ACC)
    psi = tl.load(l_ptr + rows * sl, mask=rmask, other=0.0).to(ACC)
    w, dw = _weight_and_slope(psi, WEIGHT)
    tl.store(out_ptr + rows, w * acc, mask=rmask)


@triton.jit
def _backward_kernel(go_ptr, go_div, g_ptr, l_ptr, dg_ptr, dl_ptr, per_ptr, B, F, sb, sf, sl, split,
                     WEIGHT: tl.constexpr, WEIGHT2: tl.constexpr, HAS_GO: tl.constexpr, HAS_PER: tl.constexpr,
                     ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, ONE_TILE: tl.constexpr):
    # HAS_GO: the backward for upstream go; else the closed forms' terms for the upstream 1 / go_div (an integer:
    # the interpreter passes a float argument as fp32 even annotated tl.float64), with HAS_PER also writing
    # per = w ||g||^2. Rows from `split` on take weight WEIGHT2.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    psi = tl.load(l_ptr + rows * sl, mask=rmask, other=0.0).to(ACC)
    if HAS_GO:
        go = tl.load(go_ptr + rows, mask=rmask, other=0.0).to(ACC)
    else:
        go = (tl.zeros([BLOCK_B], dtype=ACC) + 1.0) / go_div  # go_div may arrive as a constexpr 1
    w, dw = _weight_and_slope(psi, WEIGHT)
    if WEIGHT2 != WEIGHT:
        w2, dw2 = _weight_and_slope(psi, WEIGHT2)
        w = tl.where(rows < split, w, w2)
        dw = tl.where(rows < split, dw, dw2)
    scale = w * (2.0 * go)  # w last, as penalty_math.h's grad_scale: 2 w overflows for e^psi past 1.7e38
    if ONE_TILE:
        acc = _sum_sq_and_dgrad(g_ptr, dg_ptr, rows, rmask, 0, F, sb, sf, scale, ACC, BLOCK_F)
    else:
        acc = tl.zeros([BLOCK_B], dtype=tl.float64)  # as the forward's
        for f0 in range(0, tl.cast(F, tl.int64), BLOCK_F):  # int64: an i32 counter wraps within a block of 2**31
            acc += _sum_sq_and_dgrad(g_ptr, dg_ptr, rows, rmask, f0, F, sb, sf, scale, ACC, BLOCK_F).to(tl.float64)
        acc = acc.to(ACC)
    # dw = 0 (weight "one", a saturated weight) gives 0 even where acc overflowed to inf (0 * inf = nan); dw last,
    # as penalty_math.h's logit_grad
    tl.store(dl_ptr + rows, tl.where(dw == 0.0, 0.0, dw * (acc * go)), mask=rmask)
    if HAS_PER:
        tl.store(per_ptr + rows, w * acc, mask=rmask)


def _blocks(F: int):
    # no 16-column minimum: a short row padded to 16 leaves most lanes of every load masked off
    block_f = min(triton.next_power_of_2(max(F, 1)), 1024)
    # keep a program's tile near 4K elements: many short rows per program, or one long row in chunks
    block_b = max(1, min(1024, 4096 // block_f))
    return block_b, block_f


def _launch(F: int):
    """(grid rows per program, kernel meta-parameters) for rows of F features."""
    block_b, block_f = _blocks(F)
    one_tile = F <= block_f
    # 8 warps: 16 elements a thread keeps a one-tile backward near 100 registers (about 200 at 4 warps, ptxas sm_90);
    # rows in chunks keep the 4 warps they measured well with
    return block_b, dict(BLOCK_B=block_b, BLOCK_F=block_f, ONE_TILE=one_tile, num_warps=8 if one_tile else 4)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def forward(grad: torch.Tensor, logits: torch.Tensor, out: torch.Tensor, weight: int) -> None:
    B, F = grad.shape
    if B == 0:
        return
    block_b, meta = _launch(F)
    grid = (triton.cdiv(B, block_b),)
    _forward_kernel[grid](grad, logits, out, B, F, grad.stride(0), grad.stride(1), logits.stride(0),
                          WEIGHT=weight, ACC=_acc(grad.dtype), **meta)


def backward(go: torch.Tensor, grad: torch.Tensor, logits: torch.Tensor, dgrad: torch.Tensor,
             dlogits: torch.Tensor, weight: int) -> None:
    _backward(go, 1, grad, logits, dgrad, dlogits, None, weight, weight, grad.shape[0])


def terms(grad: torch.Tensor, logits: torch.Tensor, per: torch.Tensor, dgrad: torch.Tensor, dlogits: torch.Tensor,
          weight: int, weight2: int, split: int, div: int) -> None:
    """per = w ||g||^2, dlogits = w' ||g||^2 / div, dgrad = 2 w g / div; rows from split on weighted by weight2."""
    _backward(None, div, grad, logits, dgrad, dlogits, per, weight, weight2, split)


def _backward(go, go_div, grad, logits, dgrad, dlogits, per, weight, weight2, split) -> None:
    B, F = grad.shape
    if B == 0:
        return
    block_b, meta = _launch(F)
    grid = (triton.cdiv(B, block_b),)
    # an unused pointer argument gets a real tensor: the interpreter and the compiled launcher both want one
    _backward_kernel[grid](dlogits if go is None else go, go_div, grad, logits, dgrad, dlogits,
                           dlogits if per is None else per, B, F, grad.stride(0), grad.stride(1), logits.stride(0),
                           split, WEIGHT=weight, WEIGHT2=weight2, HAS_GO=go is not None, HAS_PER=per is not None,
                           ACC=_acc(grad.dtype), **meta)
