"""Rules for the jvp penalty's dual forward: normalizations, softmax-like functions, attention and the
parameterized linear ops, each with primal and tangent written in ordinary ops.

Each rule computes the primal and the tangent itself with ordinary ops (which reverse mode records and
differentiates exactly) and pairs them with make_dual. Besides fixing the norms, this is much cheaper than
torch's own forward AD for ops with a parameter operand: torch pairs the parameter with a zero tangent
(a ZeroTensor) that goes through a slow fallback and, for convolutions, even runs a convolution of zeros.
"""
from __future__ import annotations

import collections
import math

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad as fwAD
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map_only

from . import closed_form_maps
from ._checks import ForwardModeRefused


def _dual(t):
    p, d = fwAD.unpack_dual(t) if isinstance(t, torch.Tensor) else (t, None)
    return p, d


def _plain(*ts) -> bool:
    return all(t is None or _dual(t)[1] is None for t in ts)


def _linear_in_input(func):
    """Rule for ops linear in their input with (weight, bias) parameters: linear, conv*, conv_transpose*."""

    def rule(input, weight, bias=None, *rest, **kw):
        p, t = _dual(input)
        if t is None or not _plain(weight, bias):
            return NotImplemented
        return fwAD.make_dual(func(p, weight, bias, *rest, **kw), func(t, weight, None, *rest, **kw))

    return rule


def _affine(y, weight, bias, shape):
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _normalized(input, dims, eps, weight, bias, shape):
    """Normalization over dims with batch statistics, then the affine map; the tangent is written out:
    d xhat = rstd * (dx - mean(dx) - xhat * mean(xhat * dx)), all through ordinary (differentiable) ops."""
    p, t = _dual(input)
    if not _plain(weight, bias):
        p, t = input, None  # parameters with tangents: plain composite ops under forward AD
    dtype = p.dtype
    half = dtype in (torch.float16, torch.bfloat16)
    if half:
        # normalized in float32 and rounded once, as torch's kernels do: statistics and the tangent's cancellation in
        # half precision (autocast) put a BatchNorm D's jvp gradients up to 263x the double backward's error
        p, t = p.float(), (None if t is None else t.float())
    mean = p.mean(dims, keepdim=True)
    xc = p - mean
    rstd = torch.rsqrt((xc * xc).mean(dims, keepdim=True) + eps)
    xhat = xc * rstd
    if t is not None and weight is None and bias is None:
        # the primal apart from the xhat the tangent's backward saves: an in-place activation after an affine-free
        # norm (InstanceNorm2d, LeakyReLU(0.2, True)) overwrote it, and the D update's backward failed
        y = xc * rstd
    else:
        y = _affine(xhat, weight, bias, shape)
    if half and y.dtype != dtype:
        y = y.to(dtype)
    if t is None:
        return y
    dxhat = rstd * (t - t.mean(dims, keepdim=True) - xhat * (xhat * t).mean(dims, keepdim=True))
    return fwAD.make_dual(y, _affine(dxhat, weight, None, shape).to(y.dtype))


def _channel_shape(x):
    return [1, -1] + [1] * (x.dim() - 2)


def _batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                eps=1e-5):
    if not training and running_mean is not None and running_var is not None:
        p, t = _dual(input)
        if t is None or not _plain(weight, bias, running_mean, running_var):
            return NotImplemented
        weight, bias = closed_form_maps.dense_affine(weight, bias)
        y = F.batch_norm(p, running_mean, running_var, weight, bias, False, momentum, eps)
        scale = torch.rsqrt(running_var + eps)
        scale = scale if weight is None else scale * weight
        return fwAD.make_dual(y, t * scale.reshape(_channel_shape(t)))
    # running-stat updates are skipped: the dual forward works on throwaway buffer clones
    return _normalized(input, [0] + list(range(2, input.dim())), eps, weight, bias, _channel_shape(input))


def _instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                   momentum=0.1, eps=1e-5):
    if not use_input_stats:
        return _batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    return _normalized(input, list(range(2, input.dim())), eps, weight, bias, _channel_shape(input))


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return _normalized(input, list(range(input.dim() - k, input.dim())), eps, weight, bias,
                       list(input.shape[input.dim() - k:]))


def _group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    N, C = input.shape[:2]
    y = _normalized(input.reshape(N, num_groups, -1), [2], eps, None, None, None).reshape(input.shape)
    if weight is None and bias is None:
        return y
    if not _plain(weight, bias):
        return _affine(y, weight, bias, _channel_shape(input))
    p, t = _dual(y)
    out = _affine(p, weight, bias, _channel_shape(input))
    return out if t is None else fwAD.make_dual(out, _affine(t, weight, None, _channel_shape(input)))


def _shifted(input, dim, dtype):
    x = input if dtype is None else input.to(dtype)
    # the shift is a constant: softmax is invariant to it, so no tangent has to flow through it
    m = x.detach().amax(dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return x - m, m


def _softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        return NotImplemented  # legacy implicit dim: left to torch
    s, _ = _shifted(input, dim, dtype)
    e = s.exp()
    return e / e.sum(dim, keepdim=True)


def _log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        return NotImplemented
    s, _ = _shifted(input, dim, dtype)
    return s - s.exp().sum(dim, keepdim=True).log()


def _logsumexp(input, dim, keepdim=False):
    s, m = _shifted(input, dim, None)
    out = s.exp().sum(dim, keepdim=True).log() + m
    return out if keepdim else out.squeeze(dim)


def _method_softmax(self, dim, dtype=None):
    return _softmax(self, dim, dtype=dtype)


def _softmin(input, dim=None, _stacklevel=3, dtype=None):
    # F.softmin calls Tensor.softmax inside itself, where this mode is off: torch's softmax formula raised then
    if dim is None or _dual(input)[1] is None:
        return NotImplemented
    return _softmax(-input, dim, dtype=dtype)


def _glu(input, dim=-1):
    # torch's formula is the op glu_jvp, which has no derivative: the backward raised "derivative for
    # aten::glu_jvp is not implemented"
    if _dual(input)[1] is None or input.dim() == 0 or input.shape[dim] % 2:
        return NotImplemented  # (torch's own error for an odd or missing dimension)
    a, b = input.chunk(2, dim)
    return a * torch.sigmoid(b)


def _prelu(input, weight):
    """prelu with torch's forward-mode tangent where(x >= 0, t, a t), which the jvp penalty's backward
    differentiates, and one change where x == 0: there torch's backward kernel, which forms the penalized input
    gradient g, takes slope a (x > 0), and the tangent's derivative with respect to t is a as well, as in the double
    backward (a zero input: a bias-free convolution over a black image region; 15% of a layer's gradient off with
    torch's formula, a fuzz audit, 2026-12-07). The added term is 0 in value, and in its derivative with respect
    to a, so the tangent's value and the other derivatives stay those of the double backward (whose derivative
    with respect to a at x == 0, torch's, is 0, where the kernel's slope a would give t: torch's own mismatch)."""
    p, t = _dual(input)
    if t is None or not _plain(weight) or p.dim() == 0:
        return NotImplemented
    a = weight if weight.numel() == 1 or p.dim() < 2 else weight.reshape([1, -1] + [1] * (p.dim() - 2))
    tangent = torch.where(p >= 0, t, a * t)
    tangent = tangent + torch.where(p == 0, (a - 1) * (t - t.detach()), torch.zeros((), dtype=t.dtype))
    return fwAD.make_dual(F.prelu(p, weight), tangent)


def _fmax(input, other, *, out=None):
    """fmax with the tangent where(x >= y or y is NaN, dx, dy), the selection torch's backward kernel uses (the gradient
    goes to x at a tie). torch's forward-mode formula takes dy at a tie (x > y), so at x == y the jvp tangent's
    derivative went to the other operand: fmax(h, 0) at h == 0 (a bias-free convolution over a black border) put the
    layers' gradients 1-4% off the double backward's (a fuzz audit, 2026-12-07). Both are where-selections, so the
    tangent's value and its derivatives are those of the double backward everywhere."""
    if out is not None or not isinstance(input, torch.Tensor) or not isinstance(other, torch.Tensor):
        return NotImplemented
    (p, t), (q, u) = _dual(input), _dual(other)
    if t is None and u is None:
        return NotImplemented
    y = torch.fmax(p, q)
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    t = zero if t is None else t
    u = zero if u is None else u
    tangent = torch.where((p >= q) | q.isnan(), t, u).to(y.dtype).expand(y.shape)
    return fwAD.make_dual(y, tangent)


def _method_log_softmax(self, dim, dtype=None):
    return _log_softmax(self, dim, dtype=dtype)


def _attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """scaled_dot_product_attention in ordinary ops as torch's math kernel computes it (query and key each scaled by
    the root of the scale, a float mask in the scores' dtype, a row without any allowed key attending to nothing),
    its softmax through _softmax: torch's fused kernels have no usable forward-mode formula in reverse mode."""
    if _plain(query, key, value, attn_mask):
        return NotImplemented
    if dropout_p > 0:
        raise ForwardModeRefused("jvp penalty: scaled_dot_product_attention with dropout_p > 0 draws its mask "
                                 "inside the kernel, which the second forward cannot replay; use "
                                 "mode='double_backward'")
    L, S = query.shape[-2], key.shape[-2]
    if enable_gqa and key.dim() > 2 and key.shape[-3] != query.shape[-3]:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], -3)
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], -3)
    root = math.sqrt(1 / math.sqrt(query.shape[-1]) if scale is None else scale)
    # half-precision scores and softmax in float32 (an fp16 product of large values overflows where torch's do not)
    acc = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    scores = (query.to(acc) * root) @ (key.to(acc) * root).transpose(-2, -1)
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask.to(scores.dtype)
    # a row that allows no key gives 0, as torch's kernels do; its scores are replaced before the softmax so that
    # neither the values nor the gradients see the 0/0 of exp(-inf) summed
    attends = (~torch.isneginf(scores)).any(-1, keepdim=True)  # (a NaN row stays NaN, as in torch's kernels)
    p = _softmax(torch.where(attends, scores, torch.zeros_like(scores)), -1)
    p = torch.where(attends, p, torch.zeros_like(p))
    return p.to(value.dtype) @ value


_RULES = {
    F.scaled_dot_product_attention: _attention,
    F.batch_norm: _batch_norm,
    F.instance_norm: _instance_norm,
    F.layer_norm: _layer_norm,
    F.group_norm: _group_norm,
    F.softmax: _softmax,
    F.softmin: _softmin,
    F.glu: _glu,
    F.prelu: _prelu,  # torch.prelu itself
    torch.fmax: _fmax,
    torch.Tensor.fmax: _fmax,
    F.log_softmax: _log_softmax,
    torch.softmax: _method_softmax,
    torch.log_softmax: _method_log_softmax,
    torch.Tensor.softmax: _method_softmax,
    torch.Tensor.log_softmax: _method_log_softmax,
    torch.logsumexp: _logsumexp,
    torch.Tensor.logsumexp: _logsumexp,
}
for _f in (F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d):
    _RULES[_f] = _linear_in_input(_f)
# Called directly (not through the functionals above), these would bypass the rules.
_UNSUPPORTED = (torch.batch_norm, torch.instance_norm, torch.layer_norm, torch.native_batch_norm,
                torch.native_layer_norm)
# Refused where an argument carries a tangent: torch's forward-mode formula for these is wrong in reverse mode,
# silently (det/logdet/slogdet, solve, cholesky_inverse, householder_product: their formulas read the forward's LU
# or other factors as constants; parameter gradients 6-270% off, torch 2.13), or its backward raises torch's
# "modified by an inplace operation" (logcumsumexp, and cross_entropy and gumbel_softmax, which call torch's softmax
# inside themselves, where this mode is off)
_WRONG_IN_REVERSE = frozenset((
    torch.det, torch.logdet, torch.slogdet, torch.Tensor.det, torch.Tensor.logdet, torch.Tensor.slogdet,
    torch.linalg.det, torch.linalg.slogdet, torch.linalg.solve, torch.linalg.solve_ex, torch.cholesky_inverse,
    torch.Tensor.cholesky_inverse, torch.linalg.householder_product, torch.logcumsumexp, torch.Tensor.logcumsumexp,
    F.cross_entropy, F.gumbel_softmax))  # a set: every op D calls under the pass is looked up


def _any_dual(args, kwargs) -> bool:
    items = list(args) + list(kwargs.values())
    items += [e for a in items if isinstance(a, (list, tuple)) for e in a]
    return any(isinstance(a, torch.Tensor) and _dual(a)[1] is not None for a in items)


def _primals(a):
    """a with every tensor in it (in lists, tuples, named tuples and dicts) replaced by its primal. Not torch's
    tree_map_only: its tree_flatten builds a closure that refers to itself, cyclic garbage on every op a jvp
    replay runs under no_grad (84 objects a create_graph step, freed only by the cyclic GC)."""
    if isinstance(a, torch.Tensor):
        return fwAD.unpack_dual(a).primal
    t = type(a)
    if isinstance(a, (list, tuple)):  # torch.Size and fx's immutable_list too; named tuples take fields
        items = [_primals(e) for e in a]
        return t(*items) if hasattr(a, "_fields") else t(items)
    if t is dict or t is collections.OrderedDict:
        return t((k, _primals(v)) for k, v in a.items())
    if t is collections.defaultdict:
        return t(a.default_factory, {k: _primals(v) for k, v in a.items()})
    if isinstance(a, (dict, collections.deque)):  # other containers (fx's immutable_dict): torch's walk
        return tree_map_only(torch.Tensor, lambda x: fwAD.unpack_dual(x).primal, a)
    return a


class DualRules(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():
            # forward mode ignores no_grad, reverse mode does not: under no_grad (a statistic D keeps from its
            # activations) the tangents are dropped, so that the JVP is that of the function the double backward
            # differentiates
            args, kwargs = _primals(args), _primals(kwargs)
        if func in _UNSUPPORTED:
            raise ForwardModeRefused(f"jvp penalty: {func.__name__} called directly has a forward-mode formula "
                                     "that reverse mode differentiates wrongly; call torch.nn.functional's "
                                     "version or use mode='double_backward'")
        if func in _WRONG_IN_REVERSE and _any_dual(args, kwargs):
            name = getattr(func, "__name__", None) or repr(func)
            raise ForwardModeRefused(f"jvp penalty: torch's forward-mode formula of {name} is not differentiable "
                                     "correctly in reverse mode (wrong gradients, or an error in backward); use "
                                     "mode='double_backward'")
        rule = _RULES.get(func)
        if rule is not None:
            out = rule(*args, **kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)
