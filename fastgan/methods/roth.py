"""Roth, Lucchi, Nowozin, Hofmann (2017), "Stabilizing Training of GANs through Regularization".

The discriminator minimises  -F(P, Q; psi) + gamma/2 * Omega  (Algorithm 1 writes it as ascent on
F - gamma/2 Omega); the generator's objective stays unregularized (section 4.1). Omega is one of
- "js": Omega_JS = E_P[(1 - D(x))^2 ||grad psi||^2] + E_Q[D(x)^2 ||grad psi||^2], D = sigmoid(psi), the
  gradient taken of the logit psi (eq. 20);
- "f": Omega_f = E_Q[f*''(T) ||grad T||^2] for the f-GAN with T = g_f(psi) (eq. 19, fastgan.methods.fdiv), taken
  as f*''(g_f(psi)) g_f'(psi)^2 ||grad psi||^2 per sample (the op's named weights, fdiv.penalty_weight), or from
  T's own gradient where BatchNorm couples the samples;
- "r1" / "r2": E_P / E_Q [||grad psi||^2].
All of them run through fastgan.ops (the fused gradient-norm op), and the D loss uses the logits of the same
forward pass.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .. import ops
from ..ops.compiled_d import uncompiled
from . import fdiv
from .losses import reduce

PENALTIES = ("js", "f", "r1", "r2")


class GammaSchedule:
    """gamma as a 0-d device tensor, updated in place (so a captured CUDA graph sees new values).

    fixed: gamma. anneal: gamma(t) = gamma0 * alpha^(t/T) for generator iteration t = 1..T (Algorithm 1,
    "gamma <- gamma0 * alpha^(t/T)"; section 4.2), held at gamma0 * alpha after T.
    """

    def __init__(self, schedule: str, gamma: float, gamma0: float, alpha: float, total: int, device=None):
        if schedule not in ("fixed", "anneal"):
            raise ValueError(f"method.roth.schedule: must be one of ('fixed', 'anneal'), got {schedule!r}")
        if schedule == "anneal" and not (alpha > 0 and total >= 1):
            raise ValueError(f"annealing needs alpha > 0 and T >= 1, got alpha={alpha!r}, T={total!r}")
        self.schedule, self.gamma0, self.total = schedule, float(gamma0), int(total)
        self._log_alpha = math.log(alpha) if schedule == "anneal" else 0.0
        start = gamma if schedule == "fixed" else gamma0
        self.value = torch.tensor(float(start), dtype=torch.float32, device=device)

    def update(self, t) -> torch.Tensor:
        """Set gamma for iteration t (an int or a device tensor) and return the tensor."""
        if self.schedule == "anneal" and isinstance(t, torch.Tensor):
            t = t.to(self.value.device, torch.float64).clamp(max=self.total)
            self.value.copy_(torch.exp(t * (self._log_alpha / self.total)) * self.gamma0)
        elif self.schedule == "anneal":
            # computed on the host and written by a fill: a host tensor copied to the GPU would synchronize
            # the stream every step, keeping the host from queuing the next replay while the GPU runs this one
            self.value.fill_(math.exp(min(float(t), self.total) * (self._log_alpha / self.total)) * self.gamma0)
        return self.value


def penalty_and_logits(D, x: torch.Tensor, weight, scale: float = 1.0, stat=None):
    """(per-sample scale * w(psi_n) ||d psi_n / d x_n||^2, logits psi) from one forward pass of D; with `stat` (a
    fastgan.ops.penalty_statistic.Statistic, psi -> T), the gradient is T's, grad_{x_n} sum_m T(psi_m), and w
    still a function of psi; with its root (psi -> r), ||r(psi_n) grad_n||^2 times w: r^2 as a weight taken into the
    gradient before squaring (where r^2 or the squared norm overflows, their product need not).

    Unlike fastgan.ops.gradient_penalty, an x that carries a graph (NTGAN's learned noise) keeps it, so the
    logits stay differentiable with respect to whatever produced x.
    """
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    logits = _logits(D, x)
    if stat is None:
        (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    else:
        g = stat.input_grad(logits, x)
    # a double backward as gradient_penalty's: counted alike, so TrainResult.penalty_modes shows that it ran
    ops._dispatch.record("gradient_penalty", "double_backward")
    pen = ops.grad_norm_penalty(g, logits, weight, reduction="none")
    return (pen * scale if scale != 1.0 else pen), logits


MODES = ops.penalty.PENALTY_MODES


def _logits(D, x: torch.Tensor) -> torch.Tensor:
    """D's logits (B,) as the ops take them: a D returning another shape (e.g. (1, B)) refused, compiled code in D
    run as its Python source (a compiled forward has no double backward, and the penalty's paths take it)."""
    return ops.penalty.logits_of(D, x)


# modules of these packages do not mix a batch's samples, but for BatchNorm with batch statistics
_KNOWN_FORWARDS = ("torch.nn.", "fastgan.")


def couples_samples(D) -> bool:
    """Whether a sample's logit may depend on the other samples of its batch: D normalizes with batch statistics
    (BatchNorm in training mode, or without running statistics), or D's forward is one fastgan cannot vouch for (a
    function, or a module of a class from outside torch.nn and fastgan, whose forward may take a functional
    batch_norm or a minibatch standard deviation; Omega_f of such a D by g_f'(psi) grad psi was silently off, 1-50%
    in an audit's cases). Where the answer is wrongly yes, T's gradient is still exact, at about the same cost."""
    if not isinstance(D, nn.Module):
        return True
    return any((isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None))
               or not type(m).__module__.startswith(_KNOWN_FORWARDS) for m in D.modules())


def needs_statistic_gradient(D, f: str) -> bool:
    """Whether Omega_f must differentiate T = g_f(psi) itself: g_f non-linear and D's samples coupled, where
    grad_{x_n} sum_m T_m differs from g_f'(psi_n) grad_{x_n} sum_m psi_m (fdiv's per-sample rewrite)."""
    return f not in fdiv.LINEAR and couples_samples(D)


def statistic_mode_refusal(mode: str, f: str) -> str:
    return (f"method.roth.mode: {mode!r} differentiates D's logits psi, but Omega_f for "
            f"method.f_divergence={f!r} needs the gradient of T = g_f(psi), which BatchNorm with batch statistics "
            "(or a forward fastgan does not know, which may mix the batch's samples) makes differ from g_f'(psi) "
            "grad psi; use 'jvp', 'double_backward' or 'auto'")


def statistic(f: str):
    """T = g_f(psi) with eq. 19's weight f*''(T) as the root taken into grad_x T (fdiv.conjugate_curvature_root)."""
    from ..ops.penalty_statistic import Statistic

    return Statistic(lambda v: fdiv.activation(f, v), lambda v: fdiv.conjugate_curvature_root(f, v))


def _weighting(coef: Optional[torch.Tensor]):
    return ("one", "mean") if coef is None else (ops.penalty.SampleWeighted("one", coef), "sum")


def _per_sample_weights(mode: str, coef: Optional[torch.Tensor]) -> bool:
    """Whether the penalty is taken per sample and then weighted by coef (reduce): the closed form's way, and "auto"'s
    for weights that require grad (SampleWeighted, the fused weighting, holds them constant)."""
    return coef is not None and (mode == "mlp" or (mode == "auto" and coef.requires_grad))


def statistic_mode(D, x_fake: torch.Tensor, mode: str, coef: Optional[torch.Tensor] = None) -> str:
    """How Omega_f of a batch-coupled D is taken: "jvp", "check" (jvp once it has matched the double backward on
    D's first batch) or "double_backward". "auto" takes jvp where it would for psi's gradient (CUDA); where it
    would take the closed form, which differentiates psi only, the double backward."""
    if mode != "auto":
        return mode
    from ..ops import penalty_jvp

    choice = penalty_jvp.auto_mode(D, x_fake, _weighting(coef)[1])
    return choice if choice in ("jvp", "check") else "double_backward"


def statistic_penalty_jvp(D, x: torch.Tensor, f: str, coef: Optional[torch.Tensor] = None, check: bool = False):
    """(Omega_f part, logits) of a batch-coupled D by reverse-over-forward (fastgan.ops.penalty_statistic): the
    batch mean of f*''(T) ||grad_x sum T||^2, or its coef-weighted sum. check: verified against the double backward
    first (statistic_mode's "check"); None where it did not match, D's state and draws as at the call."""
    from ..ops import penalty_jvp

    weight, reduction = _weighting(coef)
    if check:
        out = penalty_jvp.checked_jvp(D, x, weight, reduction, None, stat=statistic(f))  # records jvp itself
        return None if out is None else (out[0], out[1].reshape(x.shape[0]))
    pen, logits = penalty_jvp.jvp_penalty(D, x, weight, reduction, stat=statistic(f))
    ops._dispatch.record(penalty_jvp.MODE_OP, "jvp")
    return pen, logits.reshape(x.shape[0])


def penalty_by_mode(D, x: torch.Tensor, weight: str, mode: str, coef: Optional[torch.Tensor] = None,
                    scale: float = 1.0):
    """(Omega part, logits) through fastgan.ops.gradient_penalty(mode=...): the batch mean of
    scale * w(psi) ||grad psi||^2 for the op's named weight w, or the coef-weighted sum when per-sample weights coef
    are given. x must not carry a graph (these modes differentiate the penalty w.r.t. D only)."""
    if coef is None:
        pen, logits = ops.gradient_penalty(D, x, weight, mode=mode)
        return (pen * scale if scale != 1.0 else pen), logits.reshape(x.shape[0])
    if _per_sample_weights(mode, coef):
        # the closed form works per sample: the fused weight kernel, then the weighted sum (reduction "none": "auto"
        # takes the closed form or the double backward, both differentiable w.r.t. coef through reduce)
        pen, logits = ops.gradient_penalty(D, x, weight, reduction="none", mode=mode)
        return reduce(pen * scale if scale != 1.0 else pen, coef), logits.reshape(x.shape[0])
    # the weighted expectation as one weight, psi -> coef_n * scale * w(psi_n), so that "jvp" (which needs a scalar
    # reduction) forms the weighted sum with reduction="sum"; on the fused kernels
    pen, logits = ops.gradient_penalty(D, x, ops.penalty.SampleWeighted(weight, coef, scale), reduction="sum",
                                       mode=mode)
    return pen, logits.reshape(x.shape[0])


def _real_then_fake(D, x_real, x_fake, real, fake, mode: str, fake_reduction: str):
    """(real(), fake()): the real batch's forward first (the double backward's order of forwards), its graph saving
    D's buffers. A refusal of the fake batch ("mlp"/"jvp" cannot run D) leaves D's state and the draws as at the call,
    the real forward undone; where "auto" checks jvp on the fake batch and the check fails (it puts back in place
    the buffers the real logits' graph saved: their backward raised "modified by an inplace operation"), both are
    taken again from the state and draws at the call."""
    from ..ops import penalty_jvp

    def checking():
        return mode == "auto" and penalty_jvp.check_pending(D, x_fake, fake_reduction)

    pending = checking()  # once a call where no check is pending (every call after D's first)
    start = penalty_jvp.Snapshot(D, x_real.device) if mode in ("jvp", "mlp") or pending else None
    out_real = real()
    check = pending and checking()  # not where the real batch's own check gave the verdict
    try:
        out_fake = fake()
    except (ValueError, TypeError, NotImplementedError):
        if start is not None:
            start.restore()
        raise
    if check and penalty_jvp.auto_mode(D, x_fake, fake_reduction) != "jvp":
        start.restore()
        out_real = real()
        out_fake = fake()
    return out_real, out_fake


def _reduction(mode: str, coef: Optional[torch.Tensor]) -> str:
    """The reduction penalty_by_mode asks gradient_penalty for."""
    return "none" if _per_sample_weights(mode, coef) else _weighting(coef)[1]


def _regularizer_by_mode(D, penalty, x_real, x_fake, w_real, w_fake, f, mode):
    if penalty == "js":
        if w_real is None and w_fake is None:
            omega, lr, lf = ops.js_penalty(D, x_real, x_fake, mode=mode)
            return omega, lr.reshape(x_real.shape[0]), lf.reshape(x_fake.shape[0])
        (pr, lr), (pf, lf) = _real_then_fake(D, x_real, x_fake,
                                             lambda: penalty_by_mode(D, x_real, "js_real", mode, w_real),
                                             lambda: penalty_by_mode(D, x_fake, "js_fake", mode, w_fake),
                                             mode, _reduction(mode, w_fake))
        return pr + pf, lr, lf
    if penalty == "r1":
        pr, lr = penalty_by_mode(D, x_real, "one", mode, w_real)
        return pr, lr, _logits(D, x_fake)
    weight, scale = ("one", 1.0) if penalty == "r2" else fdiv.penalty_weight(f)
    lr, (pf, lf) = _real_then_fake(D, x_real, x_fake, lambda: _logits(D, x_real),
                                   lambda: penalty_by_mode(D, x_fake, weight, mode, w_fake, scale),
                                   mode, _reduction(mode, w_fake))
    return pf, lr, lf


def _statistic_regularizer(D, x_real, x_fake, w_fake, f: str, mode: str, graph: bool):
    """regularizer's (Omega_f, logits_real, logits_fake) where D couples its samples and g_f is not the identity:
    eq. 19 with T = g_f(psi)'s own gradient, as fastgan.reference.methods.roth_f_penalty takes it."""
    if mode == "mlp":
        raise ValueError(statistic_mode_refusal(mode, f))
    # an x_fake that carries a graph (NTGAN's learned noise) keeps it: the double backward (the checked jvp
    # "auto" took there detached x: the noise got no gradient through Omega_f nor the fake logits); so do weights
    # that require grad under "auto" (per sample, then reduce)
    forced = graph or _per_sample_weights(mode, w_fake)
    lr, (pf, lf) = _real_then_fake(D, x_real, x_fake, lambda: _logits(D, x_real),
                                   lambda: _statistic_fake(D, x_fake, w_fake, f, mode, forced, graph),
                                   "double_backward" if forced else mode, _weighting(w_fake)[1])
    return pf, lr, lf


def _statistic_fake(D, x_fake, w_fake, f: str, mode: str, forced: bool, graph: bool):
    """(Omega_f, logits_fake) for _statistic_regularizer, or (None, None) where auto's jvp check failed (then
    _real_then_fake takes both batches again, and this runs the double backward)."""
    how = "double_backward" if forced else statistic_mode(D, x_fake, mode, w_fake)
    if how in ("jvp", "check"):
        out = statistic_penalty_jvp(D, x_fake, f, w_fake, check=how == "check")
        return (None, None) if out is None else out
    if mode == "auto" and not graph:
        # as "auto" runs psi's double backward: a create_graph backward differentiates a replay with the norms in
        # ordinary ops (torch's fused batch_norm has wrong third derivatives: a Hessian-vector product of Omega_f
        # took them, 9% off for a BatchNorm MLP)
        # per sample, then reduce: the double backward's own weighting below, differentiable in weights requiring
        # grad
        from ..ops import penalty_jvp

        pf, lf = penalty_jvp.double_backward_any_order(D, x_fake, "one", "none", None, stat=statistic(f))
        return reduce(pf, w_fake), lf.reshape(x_fake.shape[0])
    # f*''(T) taken into T's gradient as its root: alone, f*'' overflows float32 at |psi| ~ 44 (~30 for
    # squared_hellinger) and ||grad T||^2 at psi ~ -44, where a D whose fake logits all passed that can have a
    # modest Omega_f (0.08 for the test MLP's; NaN before)
    pf, lf = penalty_and_logits(D, x_fake, "one", stat=statistic(f))
    return reduce(pf, w_fake), lf


def regularizer(D, penalty: str, x_real: torch.Tensor, x_fake: torch.Tensor,
                w_real: Optional[torch.Tensor] = None, w_fake: Optional[torch.Tensor] = None, f: str = "gan",
                mode: str = "double_backward"):
    """(Omega, logits_real, logits_fake), with weighted expectations when per-sample weights are given.

    mode: fastgan.ops.gradient_penalty's mode (method.roth.mode). Inputs that carry a graph (NTGAN's learned
    noise) need the double backward: "auto" runs it for them, "jvp" / "mlp" raise. Under torch.no_grad() or
    torch.inference_mode(): the values of the same call with grad enabled (D's buffers advance as there), detached.
    """
    if penalty not in PENALTIES:
        raise ValueError(f"method.roth.penalty: must be one of {PENALTIES}, got {penalty!r}")
    if mode not in MODES:
        raise ValueError(f"method.roth.mode: must be one of {MODES}, got {mode!r}")
    # under no_grad / inference_mode the values of the call with grad enabled, detached, as the ops' penalties
    # give them (a penalty is formed from an input gradient: Omega_f's paths raised, jvp's naming a wrong cause)
    out = ops.penalty.without_graph(lambda *a: regularizer(D, penalty, *a, f=f, mode=mode), x_real, x_fake,
                                    w_real, w_fake)
    if out is not None:
        return out
    # a torch.compile'd D runs as the module it wraps, as under the ops (torch's AOT autograd has no double backward)
    D = uncompiled(D)
    graph = x_real.requires_grad or x_fake.requires_grad
    if mode in ("jvp", "mlp") and graph:
        raise ValueError(f"method.roth.mode: {mode!r} cannot differentiate D's logits w.r.t. inputs that carry a "
                         "graph (NTGAN's learned noise); use 'double_backward' or 'auto'")
    # per-sample weights that require grad: the fused weighting (ops.penalty.SampleWeighted) holds them constant, so
    # "jvp" (and "auto" taking a mode through it) gave them no gradient, silently; "auto" takes the per-sample
    # penalties then (the closed form's or the double backward's, _per_sample_weights) and their weighted sum
    if any(w is not None and w.requires_grad for w in (w_real, w_fake)):
        if mode == "jvp":
            raise ValueError("method.roth.mode: 'jvp' cannot differentiate Omega w.r.t. per-sample weights "
                             "(w_real/w_fake) that require grad; use 'double_backward', 'auto' or 'mlp'")
    if penalty == "f" and needs_statistic_gradient(D, f):
        return _statistic_regularizer(D, x_real, x_fake, w_fake, f, mode, graph)
    if mode != "double_backward" and not graph:
        return _regularizer_by_mode(D, penalty, x_real, x_fake, w_real, w_fake, f, mode)
    plain = w_real is None and w_fake is None and not graph
    if penalty == "js":
        if plain:
            return ops.js_penalty(D, x_real, x_fake)
        pr, lr = penalty_and_logits(D, x_real, "js_real")
        pf, lf = penalty_and_logits(D, x_fake, "js_fake")
        return reduce(pr, w_real) + reduce(pf, w_fake), lr, lf
    if penalty == "r1":
        pr, lr = penalty_and_logits(D, x_real, "one")
        return reduce(pr, w_real), lr, _logits(D, x_fake)
    if penalty == "r2":
        lr = _logits(D, x_real)
        pf, lf = penalty_and_logits(D, x_fake, "one")
        return reduce(pf, w_fake), lr, lf
    if penalty == "f":
        weight, scale = fdiv.penalty_weight(f)
        lr = _logits(D, x_real)
        pf, lf = penalty_and_logits(D, x_fake, weight, scale)
        return reduce(pf, w_fake), lr, lf
    raise ValueError(f"method.roth.penalty: must be one of {PENALTIES}, got {penalty!r}")
