"""The penalty's parameter gradient by reverse-over-forward instead of the generic double backward.

Omega = c * sum_n w(psi_n) ||g_n||^2 with g = d(sum psi)/dx (c = 1/B for "mean", 1 for "sum"). Its parameter gradient
is sum_n u_n dpsi_n/dtheta + d/dtheta <g, v> with u_n = c w'(psi_n) ||g_n||^2 and v_n = 2 c w(psi_n) g_n held
constant, and <g, v> is the forward-mode directional derivative of sum psi along v. So:

1. forward psi = D(x) and one backward for g (w.r.t. x only, without a graph);
2. w, w', the per-sample values, u and v from the fused op (no graph);
3. a second forward of D on the dual input (x, v): its primal is psi again, as a function of theta (returned as
   the logits, for D's loss), its tangent the JVP <g, v> as a function of theta;
4. return Omega + (s - s.detach()) with s = <u, psi> + JVP: its value is Omega, its gradient is dOmega/dtheta.

The second forward must see D exactly as the first did: it runs on clones of D's buffers as they were before the
first forward (BatchNorm running statistics and spectral-norm power iterations therefore advance once per call, as
with the double backward) and replays the random-number state (dropout draws the same masks). What cannot be
replayed is refused (jvp_refusal): backward hooks, nn.MultiheadAttention (out of the rules' reach). A function D's
state lies wherever it reaches it: what its first forward writes into tensors it did not create is caught
(state_guard.StateGuard), put back before the second forward, and left afterwards as the first forward left it; so
is a module's that holds tensors outside its buffers (_state_outside_buffers).

torch's forward-mode formulas for batch_norm (training statistics), instance_norm, layer_norm treat the saved
mean / inverse std as constants, so reverse mode through their JVP is silently wrong (pytorch/pytorch#196699,
PR #81293 describes why); softmax / log_softmax / logsumexp JVPs fail in reverse mode with an in-place error. The
dual forward therefore runs those functions, and the parameterized linear ops, through rules
(dual_rules.DualRules) that write primal and tangent in ordinary ops, which reverse mode differentiates correctly
(and faster).
"""
from __future__ import annotations

import collections
import contextlib
import math
import os
import re
import threading
import warnings
import weakref

import torch
from torch import nn
from torch.autograd import forward_ad as fwAD

from .._errors import first_line
from . import _checks, _dispatch, _hooks
from . import mlp_penalty, penalty_create_graph
from ._locks import ForkSafeLock
from .compiled_d import eager_compiled_code
from .dual_rules import DualRules
from .state_guard import StateGuard, rerun_from, write
from . import penalty as _pen

# _dispatch.counts[(MODE_OP, mode)] counts gradient_penalty calls per mode that actually ran.
MODE_OP = "gradient_penalty"


# torch >= 2.5 names it at the top level; torch.cuda's is the same class
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
# RuntimeErrors of forward-mode AD itself (vmap's "Batching rule not implemented for aten::_unpack_dual", "Trying
# to use forward AD with ..."), which refuse the jvp pass; any other passes through
_FORWARD_MODE = re.compile(r"forward[- ]mode|forward AD|_dual\b|_unpack_dual|dual tensor|tangent|\bjvp\b", re.I)


def _forward_mode_error(e: RuntimeError) -> bool:
    text = str(e)
    return not isinstance(e, _OUT_OF_MEMORY) and "Nested forward mode" not in text and \
        _FORWARD_MODE.search(text) is not None


# ---------------------------------------------------------------- state the second forward must reproduce

def _backward_hooks(D) -> str | None:
    """Where D has backward hooks (None: nowhere). A module's full backward hook wraps its forward in an
    autograd.Function without a forward-mode formula, and any backward hook would run on the dual forward's
    reverse pass rather than on the gradient the penalty is formed from."""
    return _hooks.where_hooked(D, _hooks.BACKWARD)


def _multihead_attention(D) -> str | None:
    """Where D holds nn.MultiheadAttention (None: nowhere). Its forward runs F.multi_head_attention_forward, inside
    which the dual pass's rules (dual_rules.DualRules) see no call: the attention and softmax inside would take
    torch's forward-mode formulas, which have none for the fused kernels and differentiate wrongly in reverse mode
    for the math kernel's softmax."""
    for name, m in D.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            return (f"{'D.' + name if name else 'D'} is an nn.MultiheadAttention, whose attention the jvp pass cannot "
                    "reach (F.multi_head_attention_forward); call F.scaled_dot_product_attention in D's forward, "
                    "which jvp runs")
    return None


def _ddp_sink(D) -> str | None:
    """Why a DistributedDataParallel D's forward cannot run in forward mode (None: it can). With
    find_unused_parameters=True DDP passes D's output through its own autograd.Function (_DDPSink), which has no
    forward-mode rule: jvp failed there with torch's "You must implement the jvp function for custom
    autograd.Function", which fastgan blamed on a Function in D, and "auto" (CUDA) warned so once per D."""
    if isinstance(D, nn.parallel.DistributedDataParallel) and getattr(D, "find_unused_parameters", False):
        return ("D is DistributedDataParallel(find_unused_parameters=True), which passes D's output through an "
                "autograd.Function of its own without a forward-mode rule (torch's _DDPSink)")
    return None


def jvp_refusal(D) -> str | None:
    """Why mode="jvp" cannot run D exactly as the double backward does, or None."""
    if not isinstance(D, nn.Module):
        return None
    return _ddp_sink(D) or _backward_hooks(D) or _multihead_attention(D)


# Types of a module's attributes that hold no tensor (its sizes, flags, names): skipped by type alone, since the
# walk runs on every jvp call
_NO_TENSORS = frozenset({int, float, bool, str, bytes, type(None), complex, torch.dtype, torch.device})
_MODULE_SLOTS = frozenset({"_parameters", "_buffers", "_modules"})
_CONTAINERS = (list, tuple, set, frozenset, collections.deque)
# skipped when empty (hook dicts) or, but for dicts, holding scalars only
_PLAIN_CONTAINERS = frozenset({tuple, list, set, frozenset, dict, collections.OrderedDict})


def _holds(v, depth: int = 2) -> bool:
    """Whether v is or holds (in containers and plain objects' attributes, `depth` levels down) a tensor or a
    module."""
    t = type(v)
    if t in _NO_TENSORS:
        return False
    if isinstance(v, (torch.Tensor, nn.Module)):
        return True
    if depth == 0 or callable(v):  # functions, classes and methods: state they close over is not looked into
        return False
    if isinstance(v, _CONTAINERS):
        return any(_holds(e, depth - 1) for e in v)
    if isinstance(v, dict):
        return any(_holds(e, depth - 1) for e in v.values())
    own = getattr(v, "__dict__", None)
    return isinstance(own, dict) and any(_holds(e, depth - 1) for e in own.values())


def _state_outside_buffers(D) -> bool:
    """Whether an nn.Module D holds tensors outside its registered parameters and buffers: a plain tensor attribute
    (a statistic it keeps, old-style spectral norm's weight, an RNN's flat weights), or modules or tensors in Python
    containers or plain objects, two levels down (a BatchNorm in a list is no submodule). jvp's buffer copies do
    not cover those: its first forward is then watched as a function D's is (StateGuard), so that what it writes
    there advances once per call."""
    for m in D.modules():
        for k, v in m.__dict__.items():
            t = type(v)
            if t in _NO_TENSORS or k in _MODULE_SLOTS:
                continue
            if t in _PLAIN_CONTAINERS and (not v or (t is not dict and t is not collections.OrderedDict and
                                                   all(type(e) in _NO_TENSORS for e in v))):
                continue  # hook dicts (empty), sizes such as kernel_size: the common case, without a call
            if _holds(v):
                return True
    return False


def _guard_for(D, x):
    """StateGuard for D's first forward, or None where D's buffer copies cover its state (an nn.Module with all its
    tensors registered): a torch function mode costs each op of the forward some host time."""
    if not isinstance(D, nn.Module) or _state_outside_buffers(D):
        # a module's buffers are watched too: its second forward reads copies through _buffers, but an attribute
        # aliasing a buffer reaches the real tensor, which must then hold its value of before the first forward
        return StateGuard(own=(x,), refuse=True)
    return None


def _named_state(D):
    """D's buffers, and its frozen Parameters as 'param:<name>': a frozen Parameter may be state D writes in its
    forward (SN-GAN's widely copied SpectralNorm keeps its power-iteration u and v so, updated by `.data =`); not
    copied as buffers are, it advanced twice a call and the logits, penalty and gradients were off by 1-12% (an
    audit's case, 2026-12-06)."""
    yield from D.named_buffers()
    for name, p in D.named_parameters():
        if not p.requires_grad:
            yield "param:" + name, p


def _buffer_clones(D) -> dict:
    if not isinstance(D, nn.Module):
        return {}
    return {name: b.detach().clone() for name, b in _named_state(D)}


@contextlib.contextmanager
def _buffers_replaced(D, values: dict):
    """D's buffers and frozen Parameters replaced by `values` (keyed as _named_state names them) in every module
    holding them, and put back afterwards. torch.func.functional_call does not put them back in a module D reaches
    under two names (one BatchNorm used twice, an attribute aliasing a layer): D kept the clones, its running
    statistics frozen."""
    by_id = {id(b): values[name] for name, b in _named_state(D) if name in values}
    slots = [(d, k, b) for m in D.modules() for d in (m._buffers, m._parameters) for k, b in d.items()
             if b is not None and id(b) in by_id]
    try:
        for d, k, b in slots:
            d[k] = by_id[id(b)]
        yield
    finally:
        for d, k, b in slots:
            d[k] = b


def _call_with_buffers(D, values: dict, x):
    with _buffers_replaced(D, values) if values else contextlib.nullcontext(), eager_compiled_code():
        return D(x)


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _active_dropout(D) -> bool:
    return isinstance(D, nn.Module) and any(
        isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0 for m in D.modules())


# torch's forward-mode dual level is one per process (a second thread entering one fails: "Nested forward mode AD
# is not supported at the moment"), and a replay rewinds the global generators: a replay (jvp's dual forward, a
# replayed double backward) holds this lock, so concurrent jvp penalties run them one at a time. Threads drawing
# from the global generators meanwhile are rewound with D's draws, as around torch.utils.checkpoint's replay.
_REPLAY_LOCK = ForkSafeLock(threading.RLock)

# The thread inside jvp's dual level, None when none is. A child forked meanwhile by another thread gets the replay
# lock fresh, but the level open (the process's one) and not the thread that would close it: each of its jvp
# penalties failed ("Nested forward mode AD is not supported at the moment", an audit of forks, 2026-12-07). Its
# first jvp penalty closes the level instead.
_dual_owner = None
_orphaned_level = False


def _after_fork_in_child() -> None:
    global _dual_owner, _orphaned_level
    if _dual_owner is not None and _dual_owner != threading.get_ident():
        _dual_owner, _orphaned_level = None, True


os.register_at_fork(after_in_child=_after_fork_in_child)


class _DualLevel:
    """fwAD.dual_level(), recording the thread inside it for a child forked meanwhile (above)."""

    def __enter__(self):
        global _dual_owner, _orphaned_level
        if _orphaned_level:
            _orphaned_level = False
            if fwAD._current_level >= 0:  # (a fork as the level was being opened or closed left none)
                fwAD.exit_dual_level()
        level = fwAD.enter_dual_level()
        _dual_owner = threading.get_ident()
        return level

    def __exit__(self, *exc):
        global _dual_owner
        fwAD.exit_dual_level()
        _dual_owner = None


class _Rng:
    """Snapshots of the generators D may draw from (CPU, and x's CUDA device), so a forward can be replayed. Not
    Python's `random` or NumPy's: saving and comparing their states took 50-150 us a call on the 2-core CPU, for
    every D; a D drawing from them is documented to need "double_backward"."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda" and not _capturing(device)
        self.index = (device.index if device.index is not None else torch.cuda.current_device()) if self.cuda else None

    def save(self):
        return (torch.get_rng_state(), torch.cuda.get_rng_state(self.index) if self.cuda else None)

    def restore(self, snap):
        torch.set_rng_state(snap[0])
        if self.cuda:
            torch.cuda.set_rng_state(snap[1], self.index)

    @staticmethod
    def same(a, b) -> bool:
        """Whether no generator moved between snapshots a and b (D drew nothing: nothing to replay or rewind). The
        states are CPU byte tensors, compared as bytes: no aten op, which graph_check would count as a host read."""
        return all(x is None or x.numpy().tobytes() == y.numpy().tobytes() for x, y in zip(a, b))


# ---------------------------------------------------------------- shared per-sample terms

def penalty_terms(g2: torch.Tensor, psi: torch.Tensor, weight, div: int, backend, split=None):
    """(per, u, v), all without graph: per_n = w(psi_n)||g_n||^2 (acc dtype), u = d(sum per)/dpsi / div
    (acc dtype, g held fixed), v = 2 * w(psi) * g / div (g2's dtype, the JVP direction).

    g2: (B, F) input gradients; psi: (B,) logits in the accumulation dtype. weight: a name or a callable, or with
    split a pair of names, the first for rows [0, split), the second for the rest (one kernel).
    """
    B = psi.shape[0]
    if not isinstance(div, (int, torch.SymInt)) or div < 1:  # the upstream is 1 / div: an int, not the scale
        raise ValueError(f"div must be a positive integer, got {div!r}")
    if isinstance(weight, _pen.SampleWeighted) and backend != "reference":
        per, u, v = penalty_terms(g2, psi, weight.name, div, backend)
        c = weight.factors(B, per.dtype)
        return per * c, u * c, v * c.to(v.dtype)[:, None]
    if callable(weight):
        _pen.callable_weight_backend(backend)
        _dispatch.record(_pen.OP, "reference")
        ga = g2.to(psi.dtype)
        s = (ga * ga).sum(1)
        with torch.enable_grad():
            p = psi.detach().requires_grad_(True)
            w = _pen.weight_values(weight(p), B)
            u = _pen.weight_vjp(w, p, s / div)
        w = w.detach().to(psi.dtype)
        u = torch.zeros_like(psi) if u is None else u
        return w * s, u, (w * (2.0 / div))[:, None] * ga
    first, second = weight if split is not None else (weight, weight)
    chosen = _dispatch.resolve(_pen.OP, g2.device, backend)
    with torch.no_grad():
        return _pen.terms(g2, psi, _pen.WEIGHTS[first], _pen.WEIGHTS[second], B if split is None else split, div,
                          chosen)


def _div(reduction: str, B: int) -> int:
    return B if reduction == "mean" else 1


# ---------------------------------------------------------------- the jvp penalty

def jvp_penalty(D, x: torch.Tensor, weight="one", reduction: str = "mean", backend=None, _guards=None, stat=None):
    """(penalty, logits) as gradient_penalty(..., mode="jvp"); reduction "mean" or "sum". _guards: a list that
    receives the StateGuard of D's first forward (None where D's buffer copies cover its state), for auto's check
    to replay from the same state. stat: a Statistic, whose gradient is penalized instead of psi's (Roth's f-GAN
    regularizer where D's samples are coupled: see Statistic)."""
    if reduction == "none":
        raise ValueError("mode='jvp' needs reduction 'mean' or 'sum' (a per-sample penalty has no single JVP "
                         "direction); use mode='double_backward' or 'mlp' for reduction='none'")
    refusal = jvp_refusal(D)
    if refusal is not None:
        raise ValueError(f"mode='jvp': {refusal} (mode='double_backward' runs it)")
    if _capturing(x.device) and _active_dropout(D):
        raise ValueError("mode='jvp' replays D's forward, which cannot replay dropout masks under CUDA graph "
                         "capture; use mode='double_backward'")
    _pen.require_samples("x", x, "jvp")
    x = x.detach()
    if any(stride == 0 and n > 1 for stride, n in zip(x.stride(), x.shape)):
        # make_dual refuses a primal whose elements share memory (an expand()ed batch); other layouts (channels_last)
        # are kept, and the copy is made before the first forward so that both forwards see the same input
        x = x.contiguous()
    B = x.shape[0]
    div = _div(reduction, B)
    buffers = _buffer_clones(D)
    start_buffers = {k: b.clone() for k, b in buffers.items()}  # for a create_graph backward's replay
    rng = _Rng(x.device)
    with _REPLAY_LOCK:
        start = rng.save()
        x = x.requires_grad_(True)
        # a function D's writes to state it reaches are caught (an nn.Module's second forward runs on buffer clones;
        # its tensors outside buffers are caught as a function D's)
        guard = _guard_for(D, x)
        if _guards is not None:
            _guards.append(guard)
        # this forward only yields psi and g (and advances D's buffers once): its graph is freed by the grad call
        with guard if guard is not None else contextlib.nullcontext():
            psi0 = _pen.logits_of(D, x)
        after = rng.save()
        g = _pen.input_grad(psi0 if stat is None else stat.fn(psi0), x)
        acc = _checks.acc_dtype(g.dtype, psi0.dtype)
        g2 = g.reshape(B, math.prod(g.shape[1:]))
        if acc == torch.float64 and g2.dtype != acc:
            g2 = g2.to(acc)
        psi = psi0.detach().to(acc)
        r = stat.root_values(psi) if stat is not None and stat.root is not None else None
        if r is not None:
            g2 = g2.to(r.dtype) * r[:, None]
        per, u, v = penalty_terms(g2, psi, weight, div, backend)
        value = per.mean() if reduction == "mean" else per.sum()
        direction, scale = v, None
        if r is not None:
            # the root's own dependence on psi (g held): d/dpsi (w r^2 ||grad T||^2) / div = (log r)' <v, r grad T>,
            # and the tangent's direction r v, normalized: r grows like 1 / ||grad T|| (up to e^87 in float32)
            u = u + stat.log_root_slope(psi) * (v.to(acc) * g2.to(acc)).sum(1)
            direction = v * r[:, None].to(v.dtype)
            scale = direction.detach().abs().amax().clamp_min(torch.finfo(direction.dtype).tiny)
            direction = direction / scale
        elif x.dtype == torch.float16 or _dispatch.autocast_float16(x.device):
            # In float16 the backward's cotangent into D's tangent graph is the penalty's upstream gradient itself,
            # which GradScaler's 2**16 already overflows (the double backward's carries 2w(psi)g/B, small): the
            # direction is normalized to max |v| = 1 and the tangent scaled back in float32, so that cotangent is
            # upstream * max |v| as in the double backward.
            scale = v.detach().abs().amax().clamp_min(torch.finfo(v.dtype).tiny)
            direction = v / scale

        replay = not _Rng.same(start, after)
        if replay:
            rng.restore(start)
        try:
            with _DualLevel(), DualRules():
                with warnings.catch_warnings():
                    # torch's first make_dual imports torch._decomp.decompositions_for_jvp, which torch.jit.scripts
                    # its rules: a DeprecationWarning on torch 2.13, a FutureWarning (shown to users) from 2.14
                    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
                    xd = fwAD.make_dual(x.detach(), direction.reshape(x.shape).to(x.dtype))
                with _from_start(guard, x):
                    out = _call_with_buffers(D, buffers, xd)
                jv = fwAD.unpack_dual(out).tangent
        except (NotImplementedError, RuntimeError) as e:
            # only running D finds these (a custom autograd.Function without jvp, an op torch has no forward-mode
            # formula for, fastgan's refusals; a RuntimeError such as vmap's "Batching rule not implemented for
            # aten::_unpack_dual": the plain forward ran on this x): the call is refused as one that never ran,
            # D's state and the generators as at the start
            if not isinstance(e, NotImplementedError) and not _forward_mode_error(e):
                raise  # a device error, out of memory, a dual level the caller opened: torch's, as it is
            _put_back(D, start_buffers, guard)
            rng.restore(start)
            replay = False
            if isinstance(e, _checks.ForwardModeRefused):
                raise
            raise _checks.ForwardModeRefused(
                f"mode='jvp': forward-mode AD cannot run D's forward (torch: {first_line(e)}); give a custom "
                "torch.autograd.Function in D a jvp staticmethod, or use mode='double_backward'") from e
        finally:
            if replay:
                rng.restore(after)
    # The dual forward's primal is psi again (same buffers, same random draws). Its graph is needed anyway (the
    # tangent's backward reads it), so the returned logits come from it: D's loss, the u term and the JVP then
    # share one backward through one graph.
    logits = out.reshape(B)
    surrogate = None
    if jv is not None:
        # <grad T, d> = <J d, T'(psi)> (J: psi's Jacobian in x, across the batch where D couples its samples);
        # T'(psi) of the dual forward's primal, so that its dependence on the parameters is differentiated too
        surrogate = (jv.sum() if stat is None else (stat.slope(logits.to(acc)) * jv.reshape(B)).sum()).to(acc)
        if scale is not None:
            surrogate = surrogate * scale.to(acc)
    if weight != "one" or r is not None:
        term = (u * logits.to(acc)).sum()
        surrogate = term if surrogate is None else surrogate + term
    if surrogate is None or not surrogate.requires_grad:
        if logits.requires_grad and not value.requires_grad:
            # a trainable parameter reaches psi but not Omega (r1 of a D with only its last bias trainable): Omega
            # requires grad as the double backward's does, its graph reaching no parameter (x * 1: bit for bit)
            value = value.detach().requires_grad_() * 1
        return value, logits
    params = [p for p in D.parameters() if p.requires_grad] if isinstance(D, nn.Module) \
        else penalty_create_graph.graph_leaves(surrogate)

    request = _dispatch.requested_backend()  # a create_graph backward's replay runs where this forward ran

    def replay():
        with _dispatch.pin(request):
            return _replay_double_backward(D, x, weight, reduction, backend, start_buffers, rng, start,
                                           any_order=True, guard=guard, stat=stat)

    # the tap is zero, so the value stays Omega bit for bit
    return value + penalty_create_graph.CreateGraphTap.apply(surrogate, replay, (), *params), logits


def _put_back(D, buffers: dict, guard) -> None:
    """D's state as it was before the first forward: an nn.Module's buffers from `buffers` (clones taken before
    it), what `guard` caught (a function D's state, a module's tensors outside its buffers)."""
    if guard is not None:
        write(guard.saved)
    if not isinstance(D, nn.Module):
        return
    with torch.no_grad():
        for name, b in _named_state(D):
            # an unchanged one (an eval-mode BatchNorm's statistics, a frozen weight) is left alone: a copy bumps its
            # version, and a graph that saved it (methods.roth's real logits, taken before a failed check put the
            # state back) failed in backward ("modified by an inplace operation")
            if name in buffers and not torch.equal(b, buffers[name]):
                b.copy_(buffers[name])


class Snapshot:
    """An nn.Module D's buffers (and frozen Parameters) and the generators D may draw from (_Rng), as at
    construction; restore() puts them back in place, for a forward to be run again from the same state and draws
    (methods.roth: the real logits after auto's check failed and put back the buffers their graph saved), or a
    refused call to leave them as it found them."""

    __slots__ = ("_D", "_buffers", "_rng", "_draws")

    def __init__(self, D, device: torch.device):
        self._D, self._buffers, self._rng = D, _buffer_clones(D), _Rng(device)
        self._draws = self._rng.save()

    def restore(self) -> None:
        _put_back(self._D, self._buffers, None)
        self._rng.restore(self._draws)


def _from_start(guard, x):
    """For a function D (its first forward run under `guard`, on x): the state it wrote put back as it was before
    that forward for the block, and left afterwards as the block found it."""
    return contextlib.nullcontext() if guard is None else rerun_from(guard.saved, own=(x,))


def _replay_double_backward(D, x, weight, reduction, backend, buffers, rng, start, any_order=False, guard=None,
                            x_fake=None, stat=None):
    """The penalty by the double backward (with its graph), from D's buffers and the random-number state as they
    were at `start`; D's own buffers and the current random-number state are left alone (a function D's state:
    as `guard` caught it in D's first forward). x_fake: js_penalty's joint pass of (x, x_fake), its penalty.

    any_order: normalizations with batch statistics run through DualRules' ordinary ops: torch's fused
    batch/instance/layer norm backward treats its saved statistics as constants when differentiated again, so
    their third derivatives are silently wrong (pytorch/pytorch#186256, #175754), i.e. the gradient of the
    penalty would be right but not its derivative."""
    if buffers:
        clones = {k: b.clone() for k, b in buffers.items()}

        def D_at_start(inp):
            return _call_with_buffers(D, clones, inp)
    else:
        D_at_start = D
    with _REPLAY_LOCK:
        now = rng.save()
        rng.restore(start)
        try:
            with DualRules() if any_order else contextlib.nullcontext(), _from_start(guard, x):
                if x_fake is not None:
                    return _pen.js_double_backward(D_at_start, x, x_fake, backend, record=False)[0]
                if stat is not None:
                    return stat.double_backward(D_at_start, x, weight, reduction, backend)
                return _pen._double_backward(D_at_start, x, weight, reduction, backend, record=False)[0]
        finally:
            rng.restore(now)


# ---------------------------------------------------------------- auto's double backward, exact to any order

def wrong_third_order_norms(D) -> bool:
    """Whether the nn.Module D holds a normalization whose torch kernel has wrong third derivatives
    (pytorch/pytorch#186256, #175754): BatchNorm or InstanceNorm normalizing with batch statistics, LayerNorm (a
    Hessian-vector product of the penalty through one was 13-40% off in float64; GroupNorm's and RMSNorm's matched
    the same norms written in ordinary ops)."""
    for m in D.modules():
        if isinstance(m, nn.LayerNorm):
            return True
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            return True
        if isinstance(m, nn.modules.instancenorm._InstanceNorm) and (m.training or not m.track_running_stats):
            return True
    return False


def _third_order_replayed(D, x) -> bool:
    """Whether auto's double backward of D on x carries a create_graph replay (double_backward_any_order)."""
    return (isinstance(D, nn.Module) and torch.is_grad_enabled() and not _capturing(x.device)
            and wrong_third_order_norms(D) and not _state_outside_buffers(D))


def double_backward_any_order(D, x, weight, reduction, backend, x_fake=None, stat=None):
    """The double backward as "auto" runs it: _pen._double_backward, whose graph a plain backward differentiates,
    and, for an nn.Module D with a norm torch differentiates wrongly a third time (wrong_third_order_norms), a
    backward with create_graph=True differentiating a replay instead (from D's buffers and random-number state as
    they were at the call, the norms in ordinary ops: DualRules), as "jvp" and "mlp" do. Not under CUDA graph
    capture (the generators' state cannot be read there) nor for a module holding tensors outside its buffers (the
    replay could not start from their values at the call): there it is the double backward alone. x_fake:
    js_penalty's joint pass of both batches (x the real one), returning (penalty, logits_real, logits_fake)."""
    def double_backward(leaves=None):
        if x_fake is not None:
            return _pen.js_double_backward(D, x, x_fake, backend, leaves=leaves)
        if stat is not None:  # a Statistic's gradient (methods.roth's Omega_f of a batch-coupled D)
            _dispatch.record(MODE_OP, "double_backward")
            return stat.double_backward(D, x, weight, reduction, backend, leaves=leaves, logits=True)
        return _pen._double_backward(D, x, weight, reduction, backend, leaves=leaves)

    if not _third_order_replayed(D, x):
        return double_backward()
    buffers, rng, own = _buffer_clones(D), _Rng(x.device), []
    with _REPLAY_LOCK:
        start = rng.save()
        out = double_backward(own)
    pen = out[0]
    if not pen.requires_grad:
        return out
    params = [p for p in D.parameters() if p.requires_grad]
    request = _dispatch.requested_backend()

    def replay():
        with _dispatch.pin(request):
            return _replay_double_backward(D, x, weight, reduction, backend, buffers, rng, start, any_order=True,
                                           x_fake=x_fake, stat=stat)

    return (pen.detach() + penalty_create_graph.CreateGraphTap.apply(pen, replay, tuple(own), *params),) + out[1:]


# ---------------------------------------------------------------- auto: pick, and check jvp once per D

_verdicts: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_RTOL = {torch.float64: 1e-7, torch.float32: 1e-3}


def _key(D, x):
    """What auto's jvp verdict on D holds for: the batch's kind and D's modules (a layer swapped in after the check,
    e.g. one jvp cannot run, is checked again) with their training flags."""
    return (x.device.type, x.dtype, tuple(x.shape[1:]), tuple((id(m), type(m), m.training) for m in D.modules()))


# Device types on which "auto" uses the jvp path for discriminators the closed form does not take. Not "cpu":
# there the extra forward of the jvp path costs more than the double backward it replaces
# (bench/bench_penalty_modes.py, DCGAN32-like D: jvp 1.05-1.16x the double backward on a 2-core CPU).
AUTO_JVP_DEVICES = {"cuda"}

# Device types on which "auto" runs the closed form for discriminators whose BatchNorm uses batch statistics
# (mlp_penalty_bn, its BatchNorm passes fused in bn_closed_form). CPU, against the double backward, 2026-11-30:
# DCGAN32-like convnet at B=64 and 256 0.79-0.97 in interleaved A/Bs (1 and 2 threads), 1.02-1.03 by min in the
# sequential benchmark run; 3-128-128-1 MLP with two BatchNorm1d at B=512 0.99-1.00. Not yet "cuda": unmeasured
# there (by operation count it needs fewer FLOPs and a third of the kernels of jvp, bench/costs.py), where auto keeps
# the jvp path the H100 measured 23% ahead.
AUTO_CLOSED_FORM_BATCH_STATS_DEVICES = {"cpu"}

# Device types on which "auto" runs the closed form for MLP discriminators with smooth activations (Tanh, Sigmoid),
# whose curvature term needs a backward chain of its own (mlp_penalty.smooth_mlp). Not "cpu": there, against the
# double backward's D update (interleaved A/Bs, 2 cores, 2026-11-30), Roth's 3-128-128-1 tanh MLP took 1.03-1.13x
# (B = 64, 512, 4096; 1 and 2 threads), with Sigmoid 1.08x, 2-64-64-1 tanh 1.09x, 784-512-512-1 tanh 0.96x; with
# LeakyReLU 0.74-0.81x. Convnets keep it with tanh (DCGAN32-like, all five activations tanh: 0.85x, as LeakyReLU).
# Re-measured 2026-12-05 (same A/B, b30d5b6): one batch a call (gradient_penalty) 0.99-1.05x at B = 64 to 2048;
# js_penalty's joint pass (<= 1024 rows, JOINT_MLP_MAX_ROWS) 0.78-0.97x for the four MLPs above, 1.05-1.22x at
# B = 4096 a side (two passes). Not taken for the joint pass alone: the default mixture's whole training step
# (method.roth.mode mlp vs double_backward, 1500 steps) did not move beyond run-to-run noise (10.0-11.1 s each).
# "cuda" keeps it: on the H100, graphed, the tanh MLP's closed form was at parity with the double backward (1.83x vs
# 1.85x the unregularized update, 2026-11-24) with 38% fewer kernels (bench/costs.py), which eager launch-bound steps
# pay for.
AUTO_CLOSED_FORM_SMOOTH_DEVICES = {"cuda"}


def check_pending(D, x: torch.Tensor, reduction: str) -> bool:
    """Whether "auto" would run its one-time jvp check on (D, x) now. The cheap tests first: it checks on
    AUTO_JVP_DEVICES only, once per D (its verdict kept); auto_mode plans D, which every call would pay."""
    return (x.device.type in AUTO_JVP_DEVICES and isinstance(D, nn.Module)
            and _verdicts.get(D, {}).get(_key(D, x)) is None and auto_mode(D, x, reduction) == "check")


def auto_mode(D, x: torch.Tensor, reduction: str) -> str:
    """The mode "auto" runs for (D, x): "mlp", "jvp", "double_backward", or "check" (jvp not yet verified).

    "mlp" for BatchNorm with batch statistics only on AUTO_CLOSED_FORM_BATCH_STATS_DEVICES."""
    return auto_choice(D, x, reduction)[0]


def _closed_form_passed_over(steps, x) -> str | None:
    """Why "auto" does not take the closed form on a D it can run (planned into `steps`), or None when it does."""
    device = x.device.type
    if mlp_penalty.uses_batch_stats(steps) and device not in AUTO_CLOSED_FORM_BATCH_STATS_DEVICES:
        return ("BatchNorm normalizes with batch statistics: the closed form runs it (mode='mlp'), but 'auto' does "
                f"not pick it on {device} (unmeasured there)")
    if mlp_penalty.smooth_mlp(steps) and device not in AUTO_CLOSED_FORM_SMOOTH_DEVICES:
        return ("in an MLP, a Tanh/Sigmoid activation's curvature makes the closed form (mode='mlp') no faster than "
                f"the double backward on {device}, so 'auto' does not pick it there")
    return None


def _auto_closed_form(steps, x) -> bool:
    """Whether "auto" runs the closed form on a D planned into `steps` (None: the closed form cannot run it)."""
    return steps is not None and _closed_form_passed_over(steps, x) is None


def auto_choice(D, x, reduction) -> tuple[str, str, list | None]:
    """(auto_mode's answer, why, plan(D, x)'s steps or None): the steps go on to the closed form, so that D is
    planned once per call."""
    if x.shape[0] == 0:
        # the closed form and jvp need a sample; the double backward gives the reference's value for none
        return "double_backward", "empty batch: the double backward, as the reference (nan for reduction='mean', " \
                                  "a mean over no samples; 0 for 'sum')", None
    steps, why = mlp_penalty.plan(D, x)
    if steps is not None:
        why = _closed_form_passed_over(steps, x)
        if why is None:
            stats = "its BatchNorm normalizes with batch statistics, run by fused passes" \
                if mlp_penalty.uses_batch_stats(steps) else "no batch statistics"
            return "mlp", f"the closed form: D is a supported nn.Sequential (or has as_sequential()); {stats}", steps
    not_closed = f"not the closed form: {why}"
    if not isinstance(D, nn.Module):
        return "double_backward", f"{not_closed}; 'auto' takes jvp for an nn.Module only, whose one-time check it " \
                                  "keeps (mode='jvp' runs a function D)", steps
    if reduction == "none":
        return "double_backward", f"{not_closed}; jvp needs reduction 'mean' or 'sum'", steps
    refusal = jvp_refusal(D)
    if refusal is not None:  # before the verdict: hooks added after the check are seen
        return "double_backward", f"{not_closed}; not jvp: {refusal}", steps
    if x.device.type not in AUTO_JVP_DEVICES:
        return "double_backward", f"{not_closed}; jvp runs on {sorted(AUTO_JVP_DEVICES)} only (not faster on " \
                                  f"{x.device.type})", steps
    verdict = _verdicts.get(D, {}).get(_key(D, x))
    if verdict is not None:
        return ("jvp", f"{not_closed}; jvp matched the double backward on this D's first batch", steps) if verdict \
            else ("double_backward", f"{not_closed}; jvp did not match the double backward on this D (see the "
                                     "FallbackWarning it gave)", steps)
    if _capturing(x.device) or x.dtype not in _RTOL:
        # the check needs host syncs and a meaningful tolerance
        return "double_backward", f"{not_closed}; jvp is checked outside CUDA graph capture, in float32/float64 " \
                                  "only", steps
    return "check", f"{not_closed}; jvp, once it has matched the double backward on this batch (one extra double " \
                    "backward, on the first call)", steps


def _flat(grads, params):
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double() for g, p in zip(grads, params)])


def checked_jvp(D, x, weight, reduction, backend, stat=None):
    """jvp_penalty, verified once against the double backward on the same batch (gradients of the penalty
    alone, side-effect free); on a mismatch or an error, D is marked and the double backward runs instead (with
    a Statistic: None is returned, D's state and the generators as at the call, for the caller's double
    backward)."""
    with _REPLAY_LOCK:  # its replays and its final rewind of the generators, as one
        return _check_jvp_once(D, x, weight, reduction, backend, stat)


def _agreed(D, reason: str | None, device) -> str | None:
    """A DistributedDataParallel D's check verdict agreed by every rank of its process group (one all_reduce):
    each rank checks on its own batch, and ranks taking different modes ran different numbers of forwards through
    the wrapper, whose buffer broadcasts (broadcast_buffers=True, a D with BatchNorm) then paired with each other's
    other collectives: the ranks hung (a verdict differing per rank, e.g. a float32/TF32 comparison near the
    tolerance on one rank's batch)."""
    import torch.distributed as dist

    ok = torch.tensor([0 if reason is not None else 1], dtype=torch.int32, device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=getattr(D, "process_group", None))
    if reason is None and not ok.item():
        return "it did not match the double backward on another DistributedDataParallel rank's batch"
    return reason


def _check_jvp_once(D, x, weight, reduction, backend, stat=None):
    key = _key(D, x)
    # Under DistributedDataParallel the check runs on the wrapped module, without the wrapper's collectives (its
    # buffer broadcast in each forward), so that every rank reaches the agreement after the same collectives
    # whatever its check ran into; the mode agreed then runs through the wrapper.
    ddp = isinstance(D, nn.parallel.DistributedDataParallel)
    wrapper, D = D, (D.module if ddp else D)
    start_buffers = _buffer_clones(D)
    rng = _Rng(x.device)
    start = rng.save()
    params = [p for p in D.parameters() if p.requires_grad]
    reason = None
    guards: list = []
    try:
        pen, logits = jvp_penalty(D, x, weight, reduction, backend, _guards=guards, stat=stat)
        got = torch.autograd.grad(pen, params, retain_graph=True, allow_unused=True) if pen.requires_grad \
            else [None] * len(params)
        # from the state jvp's first forward started from, also outside D's buffers (its guard's copies), and
        # leaving the state as that forward left it
        guard = guards[0] if guards else None
        ref_pen = _replay_double_backward(D, x, weight, reduction, backend, start_buffers, rng, start, guard=guard,
                                          stat=stat)
        want = torch.autograd.grad(ref_pen, params, allow_unused=True) if ref_pen.requires_grad \
            else [None] * len(params)
        a, b = _flat(got, params), _flat(want, params)
        err, size = (a - b).norm().item(), max(a.norm().item(), b.norm().item())
        value_err = abs(pen.item() - ref_pen.item())
        tol = _RTOL[x.dtype]
        if not (math.isfinite(err) and err <= tol * size + 1e-30 and value_err <= tol * abs(ref_pen.item()) + 1e-30):
            reason = f"gradients differ from the double backward (relative error {err / max(size, 1e-30):.2e})"
    except (RuntimeError, NotImplementedError) as e:
        reason = f"{type(e).__name__}: {e}"
    if ddp:
        reason = _agreed(wrapper, reason, x.device)
    _verdicts.setdefault(wrapper, {})[key] = reason is None
    if reason is None:
        _dispatch.record(MODE_OP, "jvp")
        if not ddp:
            return pen, logits
    else:
        warnings.warn(f"gradient_penalty(mode='auto'): the jvp path does not support this discriminator ({reason}); "
                      "using the double backward for it from now on", _dispatch.FallbackWarning,
                      stacklevel=_dispatch.caller_stacklevel())
    _put_back(D, start_buffers, guards[0] if guards else None)
    rng.restore(start)
    if reason is None:  # DDP: the checked jvp again, through the wrapper (from the same state and draws)
        return jvp_penalty(wrapper, x, weight, reduction, backend, stat=stat)
    if stat is not None:
        return None
    return double_backward_any_order(wrapper, x, weight, reduction, backend)


# Device types on which js_penalty runs the real and fake batches of an MLP in one closed-form pass at any size: on
# a GPU the update is launch-bound and one pass takes a quarter of its launches away (bench/costs.py: 69 against 90
# for the LeakyReLU MLP's update, the contractions over the batch still one per batch; not yet timed there).
JOINT_MLP_DEVICES = {"cuda"}
# Device types on which it does so for a D without convolutions up to a number of rows (real + fake). On CPU the
# doubled intermediates fall out of cache beyond that: one pass took 0.68-1.00 of two up to 1024 rows but 0.90-1.20
# from 2048 (3-128-128-1 LeakyReLU and Tanh MLPs and a 3-512-512-1 LeakyReLU one, 1 and 2 threads, interleaved
# A/Bs, 2026-12-01). Convnets keep two passes there: unmeasured (a first, noisy A/B of the DCGAN32-like D without
# BatchNorm gave 0.94 at B=64 a side, 1.04-1.17 at 256), and oneDNN's weight gradient over a doubled batch can be
# far slower (closed_form_maps.LinearMap.weight_grad2).
JOINT_MLP_MAX_ROWS = {"cpu": 1024}


def joint_pass(device_type: str, rows: int, conv: bool = False) -> bool:
    """Whether js_penalty runs D's two batches (rows in all; conv: D has a convolution) in one closed-form pass on
    this device type."""
    if device_type in JOINT_MLP_DEVICES:
        return True
    limit = JOINT_MLP_MAX_ROWS.get(device_type)
    return not conv and limit is not None and rows <= limit


def js_penalty_mlp(D, x_real, x_fake, backend, mode):
    """js_penalty in mode "mlp" (or "auto" choosing it) with both batches in one closed-form pass, or None
    where that would not equal two separate calls: "auto" not picking "mlp" for this D, or a parametrized
    layer (spectral norm's power iteration runs once per forward, so two calls step it twice), or an empty batch
    ("auto" runs that one by the double backward; an explicit "mlp" raises, naming it)."""
    _pen.require_samples("x_real", x_real, mode)
    _pen.require_samples("x_fake", x_fake, mode)
    if not (x_real.shape[0] and x_fake.shape[0]) or x_real.shape[1:] != x_fake.shape[1:]:
        return None  # a fully convolutional D may take two sizes: no one joint batch then
    device = x_real.device.type
    # conv: looked for only where the rule asks (a module walk, cheaper than plan())
    conv = device not in JOINT_MLP_DEVICES and isinstance(D, nn.Module) and \
        any(isinstance(m, mlp_penalty.CONVS) for m in D.modules())
    if not joint_pass(device, x_real.shape[0] + x_fake.shape[0], conv):
        return None
    if not CLOSED_FORM_TRACED and torch.compiler.is_compiling():
        return None  # two gradient_penalty calls, each run eagerly
    steps = mlp_penalty.plan(D, x_real)[0] if isinstance(D, nn.Module) else None
    if steps is None:
        return None  # two gradient_penalty calls: "auto" picks another mode, an explicit "mlp" raises there
    if mode == "auto" and not _auto_closed_form(steps, x_real):
        return None  # "auto" passes the closed form over for this D here (a Tanh MLP on CPU): js_penalty goes on
    if mlp_penalty.uses_batch_stats(steps):
        return None  # batch statistics of the joint batch would differ from each batch's own
    if any(torch.nn.utils.parametrize.is_parametrized(m) for m in D.modules()):
        return None
    out = mlp_penalty.mlp_js_penalty(D, x_real, x_fake, backend, steps)
    for _ in range(2):  # one per penalty term, as two gradient_penalty calls would record
        _dispatch.record(MODE_OP, "mlp")
    return out


# Whether torch.compile may trace the closed form. torch 2.4's Dynamo rebuilds an autograd.Function's backward
# graph with placeholders whose names collide with the forward's saved tensors, so the backward reads the wrong
# saved tensor: a shape error, or silently wrong gradients where the shapes agree (a Conv2d(1, 6, 1) ->
# BatchNorm2d -> Sigmoid -> Conv2d(6, 1, 1) D on 1x1 inputs). Right on 2.7.1, 2.8.0, 2.9.1, 2.10.0 and 2.12.1
# (before mlp_penalty.own_output), 2.11.0, 2.13 and 2.14.1 (with it): tests/ops/test_penalty_compile.py,
# test_penalty_user_loop.py, the README's compiled examples, on CPU. Wrong on 2.5.1 and 2.6.0 (11 of those tests
# fail; not rechecked since 2.11's cause was found and mended: no such wheel here). Elsewhere the closed form runs
# eagerly inside a compiled function (a graph break), as the other modes do.
def closed_form_traced_on(version: str) -> bool:
    """By minor version, so that a pre-release or patch release counts as its minor release."""
    minor = tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", version).groups())
    return minor >= (2, 7)


CLOSED_FORM_TRACED = closed_form_traced_on(torch.__version__)


def _traced_under_compile(D, x, mode) -> bool:
    """Whether torch.compile traces this call: the closed form ("mlp", or "auto" picking it); jvp's forward-mode
    pass and auto's one-time check run eagerly instead (_eager_gradient_penalty)."""
    if not CLOSED_FORM_TRACED:
        return False
    if mode == "mlp":
        return True
    if mode != "auto" or x.shape[0] == 0:  # "auto" runs an empty batch by the double backward (auto_choice)
        return False
    return _auto_closed_form(mlp_penalty.plan(D, x)[0], x)


def js_traced_under_compile(D, x_real, x_fake, mode) -> bool:
    """Whether torch.compile traces some of js_penalty's per-batch calls (else js_penalty runs eagerly, whole)."""
    return _traced_under_compile(D, x_real, mode) or _traced_under_compile(D, x_fake, mode)


def weight_closes_over_grad(weight, x: torch.Tensor) -> bool:
    """Whether a callable weight's values require grad for logits that do not: it closes over tensors that require
    grad (a learnable scale), whose gradient the jvp and closed-form paths, which differentiate w through psi only,
    would not give. One call of the weight on B zeros."""
    if not callable(weight):
        return False
    with torch.enable_grad():
        w = weight(torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    return isinstance(w, torch.Tensor) and w.requires_grad


def weight_needs_double_backward(weight, x: torch.Tensor, mode: str) -> bool:
    """Whether mode "auto" must take the double backward for this weight (weight_closes_over_grad); "jvp" and "mlp"
    refuse such a weight."""
    if not weight_closes_over_grad(weight, x):
        return False
    if mode != "auto":
        raise ValueError(f"weight: the callable's values require grad through tensors other than psi (e.g. a "
                         f"learnable scale), whose gradient mode={mode!r} does not form (it differentiates the "
                         "weight through the logits only); use mode='double_backward' or 'auto' (which runs it)")
    return True


def gradient_penalty(D, x, weight, reduction, backend, mode):
    """Dispatch for penalty.gradient_penalty's modes other than "double_backward"."""
    if torch.compiler.is_compiling() and not _traced_under_compile(D, x, mode):
        return _eager_gradient_penalty(D, x, weight, reduction, backend, mode)
    steps = None
    if mode == "auto":
        mode, _, steps = auto_choice(D, x, reduction)
    return _run_mode(D, x, weight, reduction, backend, mode, steps)


def js_penalty_auto(D, x_real, x_fake, backend):
    """js_penalty's mode "auto" outside torch.compile, after js_penalty_mlp: both batches in the double backward's
    joint pass where "auto" picks it for both, else a call per batch, each batch's mode chosen as gradient_penalty
    chooses it (the fake batch's after the real one ran: a jvp check on the real batch decides the fake one's), D
    planned once per batch (once in all for batches of one shape and dtype, which auto_choice answers alike)."""
    real = auto_choice(D, x_real, "mean")
    mode, _, steps = real
    fake = None
    if mode == "double_backward":
        same = x_fake.shape == x_real.shape and x_fake.dtype == x_real.dtype  # and device: js_penalty checked it
        fake = real if same else auto_choice(D, x_fake, "mean")
    if fake is not None and fake[0] == "double_backward":
        return double_backward_any_order(D, x_real, None, "mean", backend, x_fake=x_fake)
    pen_real, logits_real = _run_mode(D, x_real, "js_real", "mean", backend, mode, steps)
    mode, _, steps = fake if fake is not None else auto_choice(D, x_fake, "mean")
    pen_fake, logits_fake = _run_mode(D, x_fake, "js_fake", "mean", backend, mode, steps)
    return pen_real + pen_fake, logits_real, logits_fake


def _run_mode(D, x, weight, reduction, backend, mode, steps):
    """The penalty in a mode auto_choice may give ("check": jvp, checked against the double backward once), with
    the closed form's steps planned there."""
    if mode == "check":
        return checked_jvp(D, x, weight, reduction, backend)
    if mode == "double_backward":
        return double_backward_any_order(D, x, weight, reduction, backend)
    if mode == "mlp":
        out = mlp_penalty.mlp_penalty(D, x, weight, reduction, backend, steps)
    else:
        out = jvp_penalty(D, x, weight, reduction, backend)
    _dispatch.record(MODE_OP, mode)
    return out


_eager_gradient_penalty = _pen.eager_under_compile(gradient_penalty)
