"""The pieces the closed-form penalties (mlp_penalty, mlp_penalty_bn) compose for inputs of any rank: a layer
linear in its input (Linear, or Conv1d/2d/3d with zero padding) with its forward, input gradient and weight
gradient, and the per-channel broadcasting BatchNorm1d/2d/3d needs on (B, C, *spatial) tensors.

A Linear keeps its GEMMs (d @ W, d^T h); a convolution runs aten.convolution_backward with only the output it
needs, i.e. the same kernels as torch's own backward of that convolution."""
from __future__ import annotations

import functools

import torch
from torch import nn

_aten = torch.ops.aten
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Devices where the closed forms contract over the batch in blocks. MKL's GEMV (a bias gradient d^T a) and its
# GEMMs with at most 8 columns (the first Linear's weight gradient d^T h for a 3-d input) add the batch's rows one
# after another into the result, so their float32 error grows with B (10 units of rounding of the result at B=512,
# 20 at 4096, where the double backward's bias gradient, a torch.sum, is pairwise: about 1), and so does a sum over
# (B, C, H, W) but C. In blocks of 64 rows with their partial results added pairwise the error stays near 1.5
# units; the narrow GEMMs get faster too (B=1024, 128x3: 42 us against 160). A bias gradient is the products'
# torch.sum instead (as fast as the blocks, 22 us at 1024x128; the blocks' 64 sequential adds still failed where
# its terms cancel: bias_grad). cuBLAS and torch's CUDA sums reduce in trees, so CUDA keeps one kernel each
# (bench/costs.py counts that sequence), one per batch in js_penalty's one pass over both (_apart, any device).
BLOCKED_SUM_DEVICES = {"cpu"}
_BLOCK = 64
_NARROW = 8
_BLOCKED_DTYPES = (torch.float32, torch.float64)


def _blocked(t) -> bool:
    """Whether contractions over the batch of t run in blocks: float32/float64 on BLOCKED_SUM_DEVICES (half types
    are left alone: their GEMMs and sums accumulate in float32 already, and rounding each block's result to the
    half type would add error)."""
    return t.device.type in BLOCKED_SUM_DEVICES and t.dtype in _BLOCKED_DTYPES


def _apart(rows, t) -> bool:
    """Whether a contraction over the batch of t takes each block of `rows` (js_penalty's real then fake rows in one
    pass) apart, as the double backward's two passes do: where there are several blocks, float32/float64 on any
    device (the blocks' sums cancel as exactly as the double backward's, whatever order a device adds in; half
    types as _blocked)."""
    return rows is not None and len(rows) > 1 and t.dtype in _BLOCKED_DTYPES


def _sum_apart(fn, rows, *ts):
    """fn of each block of `rows` of the tensors ts (split along the batch), added."""
    return functools.reduce(torch.Tensor.add_, [fn(*block) for block in zip(*(t.split(rows) for t in ts))])


class LinearMap:
    """Layer m as h -> m(h) with its weight and bias passed in (they may be parametrized or recomputed)."""

    def __init__(self, m: nn.Module):
        self.conv = isinstance(m, CONVS)
        if self.conv:
            n = len(m.kernel_size)
            self.args = (list(m.stride), list(m.padding), list(m.dilation), False, [0] * n, m.groups)

    def __call__(self, h, W, b):
        if not self.conv:
            return torch.nn.functional.linear(h, W, b)
        return _aten.convolution(h, W, b, *self.args)

    def input_grad(self, d, W, h):
        """d * dm(h)/dh; h only gives the input's shape."""
        if not self.conv:
            return d @ W
        return _aten.convolution_backward(d, h, W, None, *self.args, [True, False, False])[0]

    def weight_grad(self, d, h, W, rows=None):
        """sum over samples (and positions) of d * dm(h)/dW. rows: sizes of consecutive row blocks of d and h
        (js_penalty's real then fake rows in one pass), contracted apart where _blocked(d), as the double backward's
        two passes: the real rows' partial sum is cancelled by the fake rows' (their D-loss adjoints have opposite
        signs). oneDNN's weight gradient adds the samples one after another: over both batches up to 56 units of
        rounding against the double backward's 20 (the test convnet, 64 + 64 rows; apart, at most 1.5x its error);
        one GEMM over both left a Tanh MLP's hidden weight gradient 1.6x (64 + 200 rows) and 2.2x (1 + 255) past
        the 2x rule (a review; apart, a median 1.00x the double backward's error over 30 seeds). A call more per
        block, paid only by the one-pass form (penalty_jvp.joint_pass: on CPU, MLPs only by default)."""
        if _apart(rows, d):
            return _sum_apart(lambda d_, h_: self.weight_grad(d_, h_, W), rows, d, h)
        if not self.conv:
            return batch_contract(d, h)
        return _aten.convolution_backward(d, h, W, None, *self.args, [False, True, False])[1]

    def weight_grad2(self, d1, h1, d2, h2, W, rows=None):
        """weight_grad(d1, h1) + weight_grad(d2, h2): one GEMM accumulating into the other's output (not where
        _blocked(d1): MKL's narrow addmm adds the rows into the larger term, 36 units of rounding against 5 for two
        products added), or two weight convolutions. Not one convolution over both batches concatenated: the two copies cost more than the
        second launch, and oneDNN's weight gradient over the doubled batch can be far slower (2 CPU threads, a
        DCGAN32-like first layer at B=256: 12.9 ms concatenated, 2.0 ms as two calls). rows: as weight_grad's."""
        if not self.conv and not _blocked(d1):
            if _apart(rows, d1):
                return _sum_apart(lambda *blocks: self.weight_grad2(*blocks, W), rows, d1, h1, d2, h2)
            return torch.addmm(d1.t() @ h1, d2.t(), h2)
        return self.weight_grad(d1, h1, W, rows).add_(self.weight_grad(d2, h2, W, rows))


def dense_affine(gamma, beta) -> tuple:
    """BatchNorm's gamma and beta as dense (C,) tensors (None stays None): the closed-form kernels read them
    densely, and torch's batch_norm backward misreads a strided weight (torch 2.13 CPU), e.g. a view of a larger
    tensor. The copy's gradient reaches the parameter."""
    return tuple(None if v is None else v.contiguous() for v in (gamma, beta))


def batch_contract(d, h):
    """d^T h = sum_n d_n h_n^T (d: (B, C), h: (B, K)): a Linear's weight gradient. Where _blocked(d), with
    K <= _NARROW: blocks of _BLOCK rows in one batched product, their (K, C) results added pairwise."""
    B, K = h.shape
    if not _blocked(d) or K > _NARROW or B < 2 * _BLOCK:
        return d.t() @ h
    n = B - B % _BLOCK
    s = torch.matmul(h[:n].reshape(-1, _BLOCK, K).transpose(1, 2), d[:n].reshape(-1, _BLOCK, d.shape[1])).sum(0)
    s = s if n == B else s + h[n:].t() @ d[n:]
    return s.t().contiguous()  # the layout torch's own weight gradients have (hooks may view it flat)


def bias_grad(d, a, rows=None):
    """sum_n a_n d_n (d: (B, C), a: (B,)): a Linear's bias gradient (where not _blocked(d), one GEMV). Where
    _blocked(d), the products summed by torch.sum, as autograd does (the 64-row blocks of batch_contract add their
    rows one after another: where a's terms +-1/B of a WGAN-style loss cancel over a batch sharing D's activation
    pattern, 5.6x the double backward's error, 2.8x past the 2x rule), each block of `rows` (the joint pass's real
    then fake rows) apart, as the double backward's two passes: their sums then cancel as exactly as its do."""
    if _apart(rows, d):
        return _sum_apart(bias_grad, rows, d, a)
    if not _blocked(d):
        return d.t() @ a
    return (d * a.unsqueeze(1)).sum(0)


def batch_total(a, rows=None, keepdim=False):
    """a.sum(0): the output Linear's bias and weight gradients, whose terms (the logits' adjoints) cancel where a
    WGAN-style loss gives the batches -1/B_real and +1/B_fake. Where _blocked(a), each block of `rows` (the joint
    pass's real then fake rows) is summed apart, as the double backward's two passes do, so their sums cancel as
    exactly as its do (one sum over both: 3.5x the double backward's error for a convolutional D, 128 + 128 rows;
    in float64, the rounding of 1/100 and 1/156 left 2e-8 where the exact gradient is ~0)."""
    if _apart(rows, a):
        return _sum_apart(lambda p: p.sum(0, keepdim=keepdim), rows, a)
    return a.sum(0, keepdim=keepdim)


def channel_sum(d, rows=None):
    """sum of d over every dim but the channel (dim 1): a bias's gradient. Where _blocked(d) the positions are
    summed first (contiguous, pairwise), then the batch; each block of `rows` (the joint pass's batches) apart."""
    if _apart(rows, d):
        return _sum_apart(channel_sum, rows, d)
    if d.dim() == 2:
        return d.sum(0)
    spatial = list(range(2, d.dim()))
    if _blocked(d):
        return d.sum(spatial).sum(0)
    return d.sum([0] + spatial)


def reduce_dims(h) -> list:
    """The dims BatchNorm's statistics run over: the batch and every spatial dim."""
    return [0] + list(range(2, h.dim()))


def per_channel(v, like):
    """A (C,) vector shaped to broadcast over like's channel dim; None stays None."""
    if v is None or like.dim() == 2:
        return v
    return v.reshape([1, -1] + [1] * (like.dim() - 2))


def per_sample(a, like):
    """A (B,) or (B, 1) vector shaped to broadcast over like's sample dim."""
    return a.reshape([like.shape[0]] + [1] * (like.dim() - 1))
