"""Per-sample weighted gradient-norm penalty w(psi_n) * ||g_n||^2 (Roth et al. 2017) and the drop-in
discriminator penalties built on it (js_penalty, r1_penalty, r2_penalty, gradient_penalty).

The fused op is ``torch.ops.fastgan.grad_norm_penalty`` (custom_op with fake and autograd); its backward is
``torch.ops.fastgan.grad_norm_penalty_backward``, whose own backward is written in torch ops, so the op is
differentiable to any order. Accumulation is float32 (float64 for float64 inputs); the per-sample values
and the reduced penalty come back in that accumulation dtype.
"""
from __future__ import annotations

import math
import sys
from typing import Callable, Union

import torch

from .. import _ext
from ..reference import penalty as ref
from . import _checks, _dispatch, _eager, _library
from .compiled_d import eager_compiled_code, uncompiled

OP = "grad_norm_penalty"
# Same table as csrc/include/fastgan/penalty_math.h and kernels/penalty.py
WEIGHTS = {"one": 0, "js_real": 1, "js_fake": 2, "sigmoid": 3, "exp": 4, "kl": 5}
_WEIGHT_NAMES = {v: k for k, v in WEIGHTS.items()}
_LOGISTIC_CODES = (WEIGHTS["js_real"], WEIGHTS["js_fake"], WEIGHTS["sigmoid"])  # penalty_math.h's is_logistic_weight
REDUCTIONS = ("mean", "sum", "none")

WeightArg = Union[str, Callable[[torch.Tensor], torch.Tensor]]


# ---------------------------------------------------------------- backend implementations (no autograd)

def _weight_derivatives(code: int, psi: torch.Tensor):
    """w, w', w'' in torch ops (differentiable), for the backward of the backward."""
    if code in (WEIGHTS["exp"], WEIGHTS["kl"]):
        e = torch.exp(psi - 1 if code == WEIGHTS["kl"] else psi)
        return e, e, e
    if code not in _LOGISTIC_CODES:  # "one": no sigmoids (R1/R2's double backward runs this every step)
        zero = torch.zeros_like(psi)
        return torch.ones_like(psi), zero, zero
    s = torch.sigmoid(psi)
    q = torch.sigmoid(-psi)
    if code == WEIGHTS["sigmoid"]:
        return s, s * q, s * q * (q - s)
    if code == WEIGHTS["js_real"]:
        return q * q, -2 * s * q * q, -2 * s * q * q * (1 - 3 * s)
    return s * s, 2 * s * s * q, 2 * s * s * q * (2 - 3 * s)  # js_fake


def _fwd_reference(g, l, w, out):
    out.copy_(ref.grad_norm_penalty(g.to(out.dtype), l.to(out.dtype), _WEIGHT_NAMES[w], "none"))


def _zero_or(factor: torch.Tensor, product: torch.Tensor) -> torch.Tensor:
    """product, 0 where its factor is: a zero slope (weight "one", a saturated weight) times an overflowed ||g||^2
    gives 0, not 0 * inf = nan, as the kernels' logit_grad."""
    return torch.where(factor == 0, 0.0, product)


def _bwd_reference(go, g, l, w, dg, dl):
    # Autograd is off inside a custom op's implementation, so the reference backward is written out.
    acc = dl.dtype
    wt, dw, _ = _weight_derivatives(w, l.to(acc))
    ga = g.to(acc)
    dg.copy_((wt * (2 * go))[:, None] * ga)  # w last, as penalty_math.h's grad_scale
    dl.copy_(_zero_or(dw, dw * (ga.pow(2).sum(1) * go)))  # dw last, as penalty_math.h's logit_grad


def _fwd_cpu(g, l, w, out):
    B, F = g.shape
    _ext.C().penalty_forward_cpu(g.data_ptr(), _ext.DTYPE_CODES[g.dtype], l.data_ptr(), out.data_ptr(),
                                 B, F, g.stride(0), g.stride(1), l.stride(0), w)


def _bwd_cpu(go, g, l, w, dg, dl):
    B, F = g.shape
    _ext.C().penalty_backward_cpu(go.data_ptr(), g.data_ptr(), _ext.DTYPE_CODES[g.dtype], l.data_ptr(),
                                  dg.data_ptr(), dl.data_ptr(), B, F, g.stride(0), g.stride(1), l.stride(0), w)


def _fwd_cuda(g, l, w, out):
    B, F = g.shape
    with torch.cuda.device(g.device):
        _ext.C().penalty_forward_cuda(g.data_ptr(), _ext.DTYPE_CODES[g.dtype], l.data_ptr(), out.data_ptr(),
                                      B, F, g.stride(0), g.stride(1), l.stride(0), w,
                                      _ext.stream_handle(g.device))


def _bwd_cuda(go, g, l, w, dg, dl):
    B, F = g.shape
    with torch.cuda.device(g.device):
        _ext.C().penalty_backward_cuda(go.data_ptr(), g.data_ptr(), _ext.DTYPE_CODES[g.dtype], l.data_ptr(),
                                       dg.data_ptr(), dl.data_ptr(), B, F, g.stride(0), g.stride(1),
                                       l.stride(0), w, _ext.stream_handle(g.device))


def _fwd_triton(g, l, w, out):
    from ..kernels import penalty as k

    with _dispatch.on_device(g):
        k.forward(g, l, out, w)


def _bwd_triton(go, g, l, w, dg, dl):
    from ..kernels import penalty as k

    with _dispatch.on_device(g):
        k.backward(go, g, l, dg, dl, w)


# The closed forms' per-sample terms in one kernel: per = w ||g||^2, u = w' ||g||^2 / div and v = 2 w g / div
# (the backward's dlogits and dgrad for the upstream 1 / div), rows [0, split) weighted by code w, the rest by w2.

def _terms_reference(g, l, w, w2, split, div, per, u, v):
    acc = u.dtype
    la, ga = l.to(acc), g.to(acc)
    first = torch.arange(la.shape[0], device=la.device) < split
    wt, dw = (torch.where(first, a, b) for a, b in zip(_weight_derivatives(w, la)[:2], _weight_derivatives(w2, la)[:2]))
    s = ga.pow(2).sum(1)
    per.copy_(wt * s)
    u.copy_(_zero_or(dw, dw * (s / div)))
    v.copy_((wt * (2.0 / div))[:, None] * ga)


def _terms_cpu(g, l, w, w2, split, div, per, u, v):
    B, F = g.shape
    _ext.C().penalty_terms_cpu(g.data_ptr(), _ext.DTYPE_CODES[g.dtype], l.data_ptr(), per.data_ptr(), v.data_ptr(),
                               u.data_ptr(), B, F, g.stride(0), g.stride(1), l.stride(0), w, w2, split, 1.0 / div)


def _terms_cuda(g, l, w, w2, split, div, per, u, v):
    B, F = g.shape
    with torch.cuda.device(g.device):
        _ext.C().penalty_terms_cuda(g.data_ptr(), _ext.DTYPE_CODES[g.dtype], l.data_ptr(), per.data_ptr(),
                                    v.data_ptr(), u.data_ptr(), B, F, g.stride(0), g.stride(1), l.stride(0), w, w2,
                                    split, 1.0 / div, _ext.stream_handle(g.device))


def _terms_triton(g, l, w, w2, split, div, per, u, v):
    from ..kernels import penalty as k

    with _dispatch.on_device(g):
        k.terms(g, l, per, v, u, w, w2, split, div)


_FORWARD = {"reference": _fwd_reference, "cpu": _fwd_cpu, "cuda": _fwd_cuda, "triton": _fwd_triton}
_BACKWARD = {"reference": _bwd_reference, "cpu": _bwd_cpu, "cuda": _bwd_cuda, "triton": _bwd_triton}
_TERMS = {"reference": _terms_reference, "cpu": _terms_cpu, "cuda": _terms_cuda, "triton": _terms_triton}


# ---------------------------------------------------------------- custom ops

def _op_args(op, grad, logits, go=None, weights=()):
    _checks.op_shapes(op, ("grad", grad, (None, None)))
    _checks.op_shapes(op, ("logits", logits, (grad.shape[0],)), ("go", go, (grad.shape[0],)))
    acc = _checks.acc_dtype(grad.dtype)
    _checks.op_dtypes(op, ("grad", grad), ("logits", logits), ("go", go), want=acc,
                      why=f"the accumulation dtype of grad's {grad.dtype}")
    for name, code in weights:
        _checks.op_code(op, name, code, _WEIGHT_NAMES)


@_library.custom_op("fastgan::grad_norm_penalty", mutates_args=(), strided=("grad", "logits"))
def _penalty(grad: torch.Tensor, logits: torch.Tensor, weight: int, backend: str) -> torch.Tensor:
    """grad (B, F) any float dtype, any strides; logits (B,) in the accumulation dtype -> (B,) per-sample."""
    _op_args("grad_norm_penalty", grad, logits, weights=[("weight", weight)])
    return _run_forward(grad, logits, weight, backend)


@_penalty.register_fake
def _penalty_fake(grad, logits, weight, backend):
    return grad.new_empty(grad.shape[0], dtype=logits.dtype)


@_library.custom_op("fastgan::grad_norm_penalty_backward", mutates_args=(), strided=("grad", "logits"))
def _penalty_backward(go: torch.Tensor, grad: torch.Tensor, logits: torch.Tensor, weight: int,
                      backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dgrad (B, F) contiguous in grad's dtype, dlogits (B,)) for upstream per-sample gradient go."""
    _op_args("grad_norm_penalty_backward", grad, logits, go, weights=[("weight", weight)])
    return _run_backward(go, grad, logits, weight, backend)


@_penalty_backward.register_fake
def _penalty_backward_fake(go, grad, logits, weight, backend):
    return grad.new_empty(grad.shape), go.new_empty(go.shape)


@_library.custom_op("fastgan::grad_norm_penalty_terms", mutates_args=(), strided=("grad", "logits"))
def _terms_op(grad: torch.Tensor, logits: torch.Tensor, weight: int, weight2: int, split: int, div: int,
              backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per (B,), u (B,), v (B, F) contiguous in grad's dtype), see _terms_reference; no autograd (the closed
    forms' kernels run inside their own autograd.Functions)."""
    _op_args("grad_norm_penalty_terms", grad, logits)
    _terms_codes("fastgan::grad_norm_penalty_terms: ", grad.shape[0], weight, weight2, split, div)
    return _run_terms(grad, logits, weight, weight2, split, div, backend)


@_terms_op.register_fake
def _terms_fake(grad, logits, weight, weight2, split, div, backend):
    B = grad.shape[0]
    return logits.new_empty(B), logits.new_empty(B), grad.new_empty(grad.shape)


def _setup(ctx, inputs, output):
    grad, logits, weight, backend = inputs
    ctx.save_for_backward(grad, logits)
    ctx.weight, ctx.backend = weight, backend


def _backward(ctx, go):
    grad, logits = ctx.saved_tensors
    dgrad, dlogits = _penalty_backward(go.contiguous(), grad, logits, ctx.weight, ctx.backend)
    return dgrad, dlogits, None, None


_penalty.register_autograd(_backward, setup_context=_setup)


def _setup_backward(ctx, inputs, output):
    go, grad, logits, weight, backend = inputs
    ctx.save_for_backward(go, grad, logits)
    ctx.weight = weight


def _backward_backward(ctx, g_dgrad, g_dlogits):
    go, grad, logits = ctx.saved_tensors
    acc = logits.dtype
    w, dw, d2w = _weight_derivatives(ctx.weight, logits)
    g = grad.to(acc)
    s = (g * g).sum(1)
    if g_dgrad is None:
        g_dgrad = torch.zeros_like(g)
    if g_dlogits is None:
        g_dlogits = torch.zeros_like(go)
    G = g_dgrad.to(acc)
    dot = (G * g).sum(1)
    # the second-order terms as the first-order one (_zero_or): the penalty does not depend on the logits there
    # the weight's factors last, as the first-order ones (an exponential weight near float32's top)
    d_go = w * (2 * dot) + _zero_or(dw, dw * (g_dlogits * s))
    d_grad = (w * (2 * go))[:, None] * G + (dw * (2 * g_dlogits * go))[:, None] * g
    d_logits = _zero_or(dw, dw * (2 * go * dot)) + _zero_or(d2w, d2w * (g_dlogits * go * s))
    return d_go, d_grad.to(grad.dtype), d_logits, None, None


_penalty_backward.register_autograd(_backward_backward, setup_context=_setup_backward)


# ---------------------------------------------------------------- eager path
# The custom-op dispatcher costs ~100 us a call in Python, more than the kernel at the mixtures' sizes.
# Outside torch.compile/tracing (fastgan/ops/_eager.py decides) the same kernels and the same backward formulas
# run through plain autograd.Functions; otherwise the custom ops above are used.

def _run_forward(grad, logits, weight, backend):
    out = torch.empty(grad.shape[0], dtype=logits.dtype, device=grad.device)
    _FORWARD[backend](grad, logits, weight, out)
    _dispatch.record(OP, backend)
    return out


def _run_backward(go, grad, logits, weight, backend):
    dgrad = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
    dlogits = torch.empty_like(go)
    _BACKWARD[backend](go, grad, logits, weight, dgrad, dlogits)
    _dispatch.record(OP + "_backward", backend)
    return dgrad, dlogits


def _run_terms(grad, logits, weight, weight2, split, div, backend):
    B = grad.shape[0]
    per = torch.empty(B, dtype=logits.dtype, device=grad.device)
    u = torch.empty(B, dtype=logits.dtype, device=grad.device)
    v = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
    _TERMS[backend](grad, logits, weight, weight2, split, div, per, u, v)
    _dispatch.record(OP + "_terms", backend)
    return per, u, v


def _terms_codes(prefix: str, B, weight, weight2, split, div):
    for name, code in (("weight", weight), ("weight2", weight2)):
        if code not in _WEIGHT_NAMES:
            raise ValueError(f"{prefix}{name} must be a weight code in {sorted(_WEIGHT_NAMES)}, got {code!r}")
    if not 0 <= split <= B:
        raise ValueError(f"{prefix}split must be in [0, {B}], got {split}")
    if not isinstance(div, (int, torch.SymInt)) or div < 1:  # SymInt: a batch size under dynamic shapes
        raise ValueError(f"{prefix}div must be a positive integer, got {div!r}")


def terms(grad: torch.Tensor, logits: torch.Tensor, weight: int, weight2: int, split: int, div: int, backend: str):
    """(per, u, v) of grad (B, F) and logits (B,) in the accumulation dtype, without autograd: per = w ||g||^2,
    u = w' ||g||^2 / div, v = 2 w g / div, rows [0, split) with weight code `weight`, the rest `weight2`.
    backend: a resolved backend name."""
    if grad.dim() != 2:
        raise ValueError(f"grad must have shape (B, F), got {tuple(grad.shape)}")
    B = grad.shape[0]
    if logits.shape != (B,):
        raise ValueError(f"logits must have shape ({B},), got {tuple(logits.shape)}")
    if logits.device != grad.device:
        raise ValueError(f"logits is on {logits.device} but grad is on {grad.device}")
    acc = _checks.acc_dtype(grad.dtype)
    if logits.dtype != acc:  # the kernels read logits and write per and u in the accumulation dtype
        raise TypeError(f"logits must be {acc} for {grad.dtype} grad, got {logits.dtype}")
    _terms_codes("", B, weight, weight2, split, div)
    if _eager.ok(grad, logits):
        return _run_terms(grad, logits, weight, weight2, split, div, backend)
    return torch.ops.fastgan.grad_norm_penalty_terms(grad, logits, weight, weight2, split, div, backend)


@_eager.function
class _EagerPenalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, logits, weight, backend):
        ctx.save_for_backward(grad, logits)
        ctx.weight, ctx.backend = weight, backend
        return _run_forward(grad, logits, weight, backend)

    @staticmethod
    def backward(ctx, go):
        grad, logits = ctx.saved_tensors
        go = go.contiguous()
        if _eager.needs_graph(go, grad, logits):  # create_graph=True: the backward is differentiated in turn
            dgrad, dlogits = _EagerPenaltyBackward.apply(go, grad, logits, ctx.weight, ctx.backend)
        else:  # a plain .backward(): the kernel alone, without a Function's bookkeeping (a D update runs two)
            dgrad, dlogits = _run_backward(go, grad, logits, ctx.weight, ctx.backend)
        return dgrad, dlogits, None, None


@_eager.function
class _EagerPenaltyBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, go, grad, logits, weight, backend):
        ctx.save_for_backward(go, grad, logits)
        ctx.weight = weight
        return _run_backward(go, grad, logits, weight, backend)

    @staticmethod
    def backward(ctx, g_dgrad, g_dlogits):
        return _backward_backward(ctx, g_dgrad, g_dlogits)


_eager_penalty = _eager.apply_of(_EagerPenalty)


def _per_sample(grad, logits, weight: int, backend: str):
    if _eager.ok(grad, logits):
        return _eager_penalty(grad, logits, weight, backend)
    return torch.ops.fastgan.grad_norm_penalty(grad, logits, weight, backend)


# ---------------------------------------------------------------- public API

class SampleWeighted:
    """psi -> coef_n * scale * w(psi_n) for a named weight w: a per-sample weighted expectation as one penalty weight
    (jvp takes a scalar reduction only; NTGAN's mu-weighted rows). A callable, as every mode takes one; the penalty
    (_penalty_of) and jvp's terms (penalty_jvp.penalty_terms) run it on the fused kernels (the named weight's values,
    then the factors), where a plain callable's weight runs on the reference backend."""
    __slots__ = ("name", "coef", "scale")

    def __init__(self, name: str, coef: torch.Tensor, scale: float = 1.0):
        if name not in WEIGHTS:
            raise ValueError(f"SampleWeighted: weight must be one of {tuple(WEIGHTS)}, got {name!r}")
        self.name, self.coef, self.scale = name, coef.detach(), float(scale)

    def __call__(self, psi: torch.Tensor) -> torch.Tensor:
        return self.coef.to(psi.dtype) * (self.scale * ref.WEIGHT_FNS[self.name](psi))

    def factors(self, B: int, dtype: torch.dtype) -> torch.Tensor:
        """coef_n * scale, (B,): what the named weight's per-sample values are multiplied by."""
        return self.coef.to(dtype).reshape(B) * self.scale


def _check_weight(weight) -> None:
    if callable(weight):
        return
    if not isinstance(weight, str) or weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {tuple(WEIGHTS)} or a callable psi -> w(psi), got {weight!r}")


def _check_inputs(grad, logits, weight, reduction):
    _checks.tensor("grad", grad, min_dim=1)
    _checks.tensor("logits", logits)
    _checks.same_device(grad=grad, logits=logits)
    B = grad.shape[0]
    if not _checks.one_per_sample(logits):
        raise ValueError(f"logits must have shape (B,) or (B, 1, ..., 1), got {tuple(logits.shape)}")
    if logits.shape[0] != B:
        raise ValueError(f"logits has batch size {logits.shape[0]} but grad has batch size {B}")
    _check_weight(weight)
    _checks.choice("reduction", reduction, REDUCTIONS)


def grad_norm_penalty(grad: torch.Tensor, logits: torch.Tensor, weight: WeightArg = "one",
                      reduction: str = "mean", backend: str | None = None) -> torch.Tensor:
    """Per-sample w(psi_n) * ||grad_n||^2 over all non-batch dims, reduced with `reduction`.

    grad: (B, ...) gradients of the logits w.r.t. the inputs; logits: (B,) or (B, 1, ..., 1).
    weight: "one" (R1/R2), "js_real" ((1 - sigma)^2), "js_fake" (sigma^2), "sigmoid" (sigma: the GAN and JS
    f-divergences' weight, Roth et al. eq. 19), "exp" (e^psi: half of squared Hellinger's 2 e^psi), "kl"
    (e^(psi - 1): KL's), or a callable psi -> w(psi) (runs on the reference path; any other weighting).
    Differentiable w.r.t. grad and logits, to any order. Returns float32 (float64 when an input is float64).
    backend: None (best available), "reference", "cpu", "cuda" or "triton"; a named backend that cannot
    run raises ``BackendUnavailable``.
    """
    _checks.no_differentiating_transform(grad, logits)
    _check_inputs(grad, logits, weight, reduction)
    return _penalty_of(grad, logits, weight, reduction, backend)


def weight_values(w, B: int) -> torch.Tensor:
    """w, what a callable weight returned for B logits, if it is a (B,) tensor (a (B, 1) one would broadcast
    against the (B,) squared norms into a (B, B) penalty)."""
    if not isinstance(w, torch.Tensor) or w.shape != (B,):
        raise ValueError(f"weight(psi) must return a tensor of shape ({B},), got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    return w


def weight_vjp(w: torch.Tensor, psi: torch.Tensor, upstream: torch.Tensor):
    """upstream · dw/dpsi for a callable weight's values w of psi (a vector-Jacobian product, so weights that couple
    samples are handled too); None when w does not depend on psi (R1's ones, a constant f-GAN weight: no graph,
    w' = 0), where autograd.grad would raise."""
    if not w.requires_grad:
        return None
    return torch.autograd.grad(w, psi, grad_outputs=upstream, allow_unused=True)[0]


def _penalty_of(grad, logits, weight, reduction, backend):
    """grad_norm_penalty on arguments already checked (gradient_penalty's own grad and logits)."""
    acc = _checks.acc_dtype(grad.dtype, logits.dtype)
    B = grad.shape[0]
    # a view whenever the strides allow (the kernels take any 2-D strides); none where the shape is already right: each
    # view is a node in the graph that the D update's backward runs twice (its double backward's too)
    g2 = grad if grad.dim() == 2 else grad.reshape(B, math.prod(grad.shape[1:]))
    if g2.dtype != acc and acc == torch.float64:
        g2 = g2.to(acc)
    psi = logits if logits.dim() == 1 else logits.reshape(B)
    if psi.dtype != acc:
        psi = psi.to(acc)
    if isinstance(weight, SampleWeighted) and backend != "reference":
        return _reduced(_penalty_of(g2, psi, weight.name, "none", backend) * weight.factors(B, acc), reduction)
    if callable(weight):
        callable_weight_backend(backend)
        _dispatch.record(OP, "reference")
        return ref.grad_norm_penalty(g2.to(acc), psi, lambda p: weight_values(weight(p), B), reduction)
    chosen = _dispatch.resolve_cpu(OP, backend) if grad.is_cpu else _dispatch.resolve(OP, grad.device, backend)
    return _reduced(_per_sample(g2, psi, WEIGHTS[weight], chosen), reduction)


def _reduced(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def logits_of(D, x: torch.Tensor) -> torch.Tensor:
    with eager_compiled_code():
        logits = D(x)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"D must return a tensor of logits, got {type(logits).__name__}")
    B = x.shape[0]
    if not _checks.one_per_sample(logits, B):
        raise ValueError(f"D must map a batch of {B} to logits of shape ({B},) or ({B}, 1, ..., 1), got "
                         f"{tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"D must return floating-point logits, got {logits.dtype}")
    # logits already (B,) pass as they are: a no-op reshape is a view node the update's backward runs twice
    return logits if logits.dim() == 1 else logits.reshape(B)


def input_grad(logits: torch.Tensor, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """grad_x of logits.sum(); a D whose logits do not depend on x raises a ValueError saying so (torch's own error
    there, "does not require grad" or "not used in the graph", names neither D nor x)."""
    return input_grads((logits,), (x,), create_graph)[0]


def input_grads(logits: tuple, xs: tuple, create_graph: bool = False) -> tuple:
    """input_grad of each (logits, x) pair, in one autograd.grad call: one run of the engine for the batches."""
    gs = (None,)
    if all(l.requires_grad for l in logits):
        gs = torch.autograd.grad(tuple(l.sum() for l in logits), xs, create_graph=create_graph, allow_unused=True)
    if any(g is None for g in gs):
        raise ValueError("D's logits do not depend on its input x: no gradient flows from D(x) back to x (a D "
                         "that detaches or ignores its input has no input gradient to penalize)")
    return gs


PENALTY_MODES = ("double_backward", "jvp", "mlp", "auto")


def check_D(D) -> None:
    """TypeError naming D when it cannot be called: "double_backward", "jvp" and "auto" raised Python's own
    "'NoneType' object is not callable" from inside the penalty, naming no argument, and penalty_mode answered
    for it."""
    if not callable(D):
        raise TypeError(f"D must be an nn.Module or a callable mapping a batch to logits, got {type(D).__name__}")


def callable_weight_backend(backend) -> None:
    """A callable weight (a function of psi) runs on the reference backend only: another explicit backend is refused
    (before D runs, in check_backend; and where the per-sample terms are formed)."""
    if backend not in (None, "reference"):
        raise _dispatch.BackendUnavailable(f"{OP}: a callable weight runs on the reference backend only, "
                                           f"got backend={backend!r}")


def check_backend(backend, device: torch.device, weight: WeightArg = "one") -> None:
    """BackendUnavailable (or ValueError for an unknown name) before D runs, where the penalty's kernel could not
    run on `device`: raised from inside the penalty, after D's forward, it left D's BatchNorm running statistics,
    spectral-norm u and v and the random-number state advanced by a call that returned nothing (a fuzz audit,
    2026-12-07). A plain callable weight runs on the reference backend only (callable_weight_backend, which
    _penalty_of and penalty_jvp.penalty_terms call too); a use_backend block or FASTGAN_BACKEND, which such a
    weight ignores, is not checked here. The same resolution as the kernels' own, so the same errors and messages."""
    if callable(weight) and not isinstance(weight, SampleWeighted):
        callable_weight_backend(backend)
        return
    if backend is None and _dispatch.requested_backend()[0] is None:  # the best usable: always one (or a fallback)
        return
    _dispatch.resolve(OP, device, backend)  # resolve_cpu is its fast path for CPU tensors: the same answer and errors


def refuse_static_graph(D) -> None:
    """ValueError for a DistributedDataParallel(static_graph=True) D. Every mode takes an input gradient through D's
    forward (torch.autograd.grad) before the loss's backward, and with static_graph=True DDP then averages wrong
    gradients, silently, in every iteration (the parameters' gradients 17-90% off the mean of the ranks' in an
    audit, 2026-12-07; plain torch, a D and one autograd.grad w.r.t. its input, does the same)."""
    if isinstance(D, torch.nn.parallel.DistributedDataParallel) and getattr(D, "static_graph", False):
        raise ValueError("D is DistributedDataParallel(static_graph=True), which averages wrong gradients when "
                         "torch.autograd.grad runs through its forward, as every penalty mode does (the input "
                         "gradient); construct it with static_graph=False (the default)")


def gradient_penalty(D, x: torch.Tensor, weight: WeightArg = "one", *, reduction: str = "mean",
                     backend: str | None = None, mode: str = "double_backward"):
    """(penalty, logits) for any module D mapping a batch to logits (B,) or (B, 1, ..., 1).

    penalty = reduction over n of w(psi_n) * ||d psi_n / d x_n||^2, differentiable w.r.t. D's parameters:
    backpropagating it gives exactly the gradients of the straightforward double-backward implementation.
    x is detached (the penalty is a discriminator term). The logits come from the same forward pass and
    can be used for D's loss.
    mode: how the parameter gradient is formed (see fastgan/ops/penalty_jvp.py and mlp_penalty.py):
    "double_backward" (torch's generic double backward; the default), "jvp" (reverse over forward-mode;
    reduction "mean"/"sum"), "mlp" (closed form for nn.Sequential MLPs and convnets of Linear/Conv,
    activations, BatchNorm and Flatten), "auto" ("mlp" where supported (on CUDA: without batch statistics), else
    "jvp" once it has matched the double backward on D's first batch (CUDA), else "double_backward").
    _dispatch.counts[("gradient_penalty", mode)] records what ran. Inside torch.compile the closed form is traced
    (fullgraph works); the other modes run eagerly there (a graph break).
    An empty x runs by the double backward under "auto" (nan for reduction "mean", as the reference); "jvp" and
    "mlp" raise ValueError for it. Under torch.no_grad() or torch.inference_mode() every mode returns the values of
    the same call with grad enabled (D's buffers advance as there), detached.
    """
    _checks.no_differentiating_transform(x, module=D)
    check_D(D)
    _checks.tensor("x", x, min_dim=1)
    _check_weight(weight)
    _checks.choice("reduction", reduction, REDUCTIONS)
    _checks.choice("mode", mode, PENALTY_MODES)
    require_samples("x", x, mode)
    check_backend(backend, x.device, weight)
    D = uncompiled(D)
    refuse_static_graph(D)
    out = without_graph(lambda x_: gradient_penalty(D, x_, weight, reduction=reduction, backend=backend, mode=mode),
                         x)
    if out is not None:
        return out
    x = _checks.outside_inference(x)  # inference mode itself is off here (without_graph); "mlp" took such an x
    if mode != "double_backward":
        from . import penalty_jvp

        # "auto" with a weight closing over a learnable tensor goes on as the double backward, below
        if not penalty_jvp.weight_needs_double_backward(weight, x, mode):
            return penalty_jvp.gradient_penalty(D, x, weight, reduction, backend, mode)
    # through the wrapper also where not compiling: after an error inside a compiled step Dynamo runs the frame
    # that raised eagerly ever after, but still compiles what it calls, and the double backward failed there ("a
    # leaf Variable that requires grad is being used in an in-place operation") in every later compiled step
    return _eager_double_backward(D, x, weight, reduction, backend)


def without_graph(call, *xs):
    """None when grad is enabled (the usual call). Under no_grad or inference_mode: call(*xs) run as with grad
    enabled, its outputs detached. Every mode forms the penalty from an input gradient, i.e. with autograd; so the
    values and D's buffer updates are those of the call with grad enabled. xs: tensors or None."""
    if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():  # Dynamo cannot trace the query
        # inference tensors cannot be saved for a backward: normal copies of the inputs, inference mode off
        with torch.inference_mode(False):
            out = call(*(x.clone() if x is not None else None for x in xs))
    elif not torch.is_grad_enabled():
        with torch.enable_grad():
            out = call(*xs)
    else:
        return None
    return tuple(t.detach() for t in out)


def require_samples(name: str, x: torch.Tensor, mode: str) -> None:
    """ValueError naming x when it is an empty batch and `mode` is one that needs a sample ("jvp", "mlp")."""
    if mode in ("jvp", "mlp") and x.shape[0] == 0:
        raise ValueError(f"{name} has no samples: mode={mode!r} needs at least one; mode='auto' and "
                         "'double_backward' take an empty batch (the penalty is then nan for reduction='mean', "
                         "a mean over no samples, and 0 for 'sum')")


class _MathAttention:
    """torch's math attention kernel for a forward that is differentiated twice: its fused kernels (flash, memory
    efficient, cuDNN, the CPU's flash) have no double backward and raise there. Sets torch's backend flags directly
    (~1 us; torch.nn.attention.sdpa_kernel costs ~50 us a call, twice per js_penalty); flags a torch lacks are
    skipped."""

    _FUSED = [(getattr(torch._C, f"_get_{n}_sdp_enabled", None), getattr(torch._C, f"_set_sdp_use_{n}", None))
              for n in ("flash", "mem_efficient", "cudnn", "fa3", "overrideable")]
    _FUSED = [(get, set_) for get, set_ in _FUSED if get is not None and set_ is not None]
    _MATH = (getattr(torch._C, "_get_math_sdp_enabled", None), getattr(torch._C, "_set_sdp_use_math", None))

    def __enter__(self):
        self.saved = [get() for get, _ in self._FUSED]
        self.math = self._MATH[0]() if None not in self._MATH else None
        for _, set_ in self._FUSED:
            set_(False)
        if self.math is False:
            self._MATH[1](True)

    def __exit__(self, *exc):
        for (_, set_), was in zip(self._FUSED, self.saved):
            set_(was)
        if self.math is False:
            self._MATH[1](False)


def _double_backward(D, x, weight, reduction, backend, record=True, leaves=None):
    return _double_backward_batches(D, (x,), (weight,), reduction, backend, record, leaves)[0]


def _double_backward_batches(D, xs, weights, reduction, backend, record=True, leaves=None):
    """[(penalty, logits)] of each batch: D's forwards in the batches' order, then every input gradient from one
    autograd.grad call (js_penalty's two batches: one engine run instead of two; the same values, logits and
    buffers as a call per batch bit for bit, parameter gradients up to the order in which the engine adds their
    contributions, tests/ops/test_js_penalty_joint.py; on a 2-core EPYC the MLP D update's forward phase at
    B = 512 ran 190-230 us faster so, level with the reference's, docs/benchmarks.md)."""
    xs = tuple(x.detach().requires_grad_(True) for x in xs)
    if leaves is not None:  # for a caller that tells these leaves from D's inputs in the penalty's graph
        leaves.extend(xs)
    with _MathAttention():
        logits = tuple(logits_of(D, x) for x in xs)
    grads = input_grads(logits, xs, create_graph=True)
    out = []
    for grad, psi, weight in zip(grads, logits, weights):
        if record:
            _dispatch.record("gradient_penalty", "double_backward")
        # grad has x's shape and dtype, psi is (B,) (logits_of), weight and reduction were checked by the caller
        out.append((_penalty_of(grad, psi, weight, reduction, backend), psi))
    return out


def penalty_mode(D, x: torch.Tensor, reduction: str = "mean") -> tuple[str, str]:
    """(mode, why): the gradient mode that gradient_penalty / js_penalty(..., mode="auto") would run for D on a batch
    like x now ("mlp", "jvp" or "double_backward"), and why: e.g. which layer keeps D out of the closed form, or
    that jvp is used on CUDA only. Runs nothing."""
    check_D(D)
    _checks.tensor("x", x, min_dim=1)
    _checks.choice("reduction", reduction, REDUCTIONS)
    D = uncompiled(D)
    from . import penalty_jvp

    mode, why, _ = penalty_jvp.auto_choice(D, x, reduction)
    return ("jvp" if mode == "check" else mode), why


def eager_under_compile(fn):
    """fn run eagerly when called inside torch.compile (a graph break). torch.compile's AOT autograd refuses a
    double backward through a compiled graph, so the double backward and the jvp path run this way and a compiled
    training step works with any D (the closed form, mode "mlp", is traced instead, fullgraph included). The
    wrapper is made on first use: torch.compiler.disable imports torch._dynamo (and triton), which importing
    fastgan must not."""
    wrapped = None

    def call(*args):
        nonlocal wrapped
        if "torch._dynamo" not in sys.modules:  # nothing was ever compiled: no frame to keep out of a graph
            return fn(*args)
        if wrapped is None:
            wrapped = torch.compiler.disable(fn)
            _eager.dynamo_loaded()
        return wrapped(*args)
    return call


_eager_double_backward = eager_under_compile(_double_backward)


def js_penalty(D, x_real: torch.Tensor, x_fake: torch.Tensor, *, backend: str | None = None,
               mode: str = "double_backward"):
    """Roth et al.'s JS regularizer Omega = E_P[(1-sigma(psi))^2 ||grad psi||^2] + E_Q[sigma(psi)^2 ||grad psi||^2].

    Returns (Omega, logits_real, logits_fake); add ``gamma / 2 * Omega`` to the discriminator loss. x_real and
    x_fake are detached (a discriminator term): the logits carry no gradient to G; G's loss needs its own D(G(z)).
    mode: as in gradient_penalty. Where the double backward runs for both batches (the default, or "auto" picking
    it), D runs on the real batch, then the fake one, and both input gradients come from one autograd.grad call.
    """
    _checks.no_differentiating_transform(x_real, x_fake, module=D)
    check_D(D)
    _checks.tensor("x_real", x_real, min_dim=1)
    _checks.tensor("x_fake", x_fake, min_dim=1)
    _checks.same_device(x_real=x_real, x_fake=x_fake)
    if x_real.dim() != x_fake.dim() or x_real.shape[1:2] != x_fake.shape[1:2]:
        # sizes past the channels may differ: a fully convolutional D takes two resolutions, as two calls would
        raise ValueError(f"x_real has sample shape {tuple(x_real.shape[1:])} but x_fake has {tuple(x_fake.shape[1:])}"
                         f": their ranks and features/channels (dim 1) must match")
    _checks.choice("mode", mode, PENALTY_MODES)
    require_samples("x_real", x_real, mode)
    require_samples("x_fake", x_fake, mode)
    check_backend(backend, x_real.device)
    D = uncompiled(D)
    refuse_static_graph(D)
    out = without_graph(lambda xr, xf: js_penalty(D, xr, xf, backend=backend, mode=mode), x_real, x_fake)
    if out is not None:
        return out
    # mixed dtypes only under autocast, where the closed form casts its input to D's dtype: mlp_js_penalty joins
    # the batches outside autocast (its cat rejects float16 with bfloat16) in the promoted dtype, which holds both
    # exactly, so casting the join to D's dtype equals casting each batch
    if mode in ("mlp", "auto") and (x_real.dtype == x_fake.dtype or _dispatch.autocast_enabled(x_real.device)):
        from . import penalty_jvp

        joint = penalty_jvp.js_penalty_mlp(D, x_real, x_fake, backend, mode)
        if joint is not None:
            return joint
    if torch.compiler.is_compiling():
        from . import penalty_jvp

        if not penalty_jvp.js_traced_under_compile(D, x_real, x_fake, mode):
            # one graph break for both batches: eagerly, the joint pass below (the double backward, or "auto"
            # taking it), or jvp's two calls
            return _eager_js_penalty(D, x_real, x_fake, backend, mode)
    elif mode == "double_backward":  # through the wrapper: see gradient_penalty's double backward
        return _eager_js_double_backward(D, _checks.outside_inference(x_real), _checks.outside_inference(x_fake),
                                         backend)
    elif mode == "auto":
        return _eager_js_penalty_auto(D, _checks.outside_inference(x_real), _checks.outside_inference(x_fake),
                                      backend)
    pen_real, logits_real = gradient_penalty(D, x_real, "js_real", backend=backend, mode=mode)
    pen_fake, logits_fake = gradient_penalty(D, x_fake, "js_fake", backend=backend, mode=mode)
    return pen_real + pen_fake, logits_real, logits_fake


def js_double_backward(D, x_real, x_fake, backend, record=True, leaves=None):
    """js_penalty by the double backward, both batches in one joint pass (_double_backward_batches)."""
    (pen_real, logits_real), (pen_fake, logits_fake) = _double_backward_batches(
        D, (x_real, x_fake), ("js_real", "js_fake"), "mean", backend, record, leaves)
    return pen_real + pen_fake, logits_real, logits_fake


def _js_penalty_eagerly(D, x_real, x_fake, backend, mode):
    return js_penalty(D, x_real, x_fake, backend=backend, mode=mode)


_eager_js_penalty = eager_under_compile(_js_penalty_eagerly)
_eager_js_double_backward = eager_under_compile(js_double_backward)


def _js_penalty_auto(D, x_real, x_fake, backend):
    from . import penalty_jvp

    return penalty_jvp.js_penalty_auto(D, x_real, x_fake, backend)


_eager_js_penalty_auto = eager_under_compile(_js_penalty_auto)


def r1_penalty(D, x_real: torch.Tensor, *, backend: str | None = None, mode: str = "double_backward"):
    """E_P[||grad psi||^2] on real data; returns (penalty, logits_real). mode: as in gradient_penalty."""
    return gradient_penalty(D, x_real, "one", backend=backend, mode=mode)


def r2_penalty(D, x_fake: torch.Tensor, *, backend: str | None = None, mode: str = "double_backward"):
    """E_Q[||grad psi||^2] on generated data; returns (penalty, logits_fake). mode: as in gradient_penalty."""
    return gradient_penalty(D, x_fake, "one", backend=backend, mode=mode)
