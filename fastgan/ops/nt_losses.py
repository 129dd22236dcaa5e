"""NTGAN's mu-weighted clean/noisy losses (Noise-Tempered GAN, Algorithm 1) in softplus form, fused into one
op with their gradients, optionally with Roth et al.'s JS penalty weights from the same logits.

Logits come from D applied to a batch of ``noisy_clean_batch``: the first N // 2 are clean, the rest noisy.
  loss="d": mu * mean_clean(-ln D(x)) + (1 - mu) * mean_noisy(-ln D(x + eps))
            + mu * mean_clean(-ln(1 - D(x~))) + (1 - mu) * mean_noisy(-ln(1 - D(x~ + eps)))
  loss="g": mu * mean_clean(-ln D(x~)) + (1 - mu) * mean_noisy(-ln D(x~ + eps))   (non-saturating)
with D = sigmoid(psi), -ln D = softplus(-psi), -ln(1 - D) = softplus(psi).

Custom ops ``fastgan::nt_losses`` and ``fastgan::nt_losses_backward``; the backward's own backward is
written in torch ops, so the losses are differentiable to any order.
"""
from __future__ import annotations

import numbers
from typing import Optional, Union

import torch

from .. import _ext
from ..reference import nt_losses as ref
from . import _checks, _dispatch, _eager, _library

OP = "nt_losses"
# Same tables as csrc/include/fastgan/nt_losses_math.h
KINDS = {"d": 0, "g": 1}
REDUCTIONS = {"mean": 0, "sum": 1}
MODES = ("double", "half")
# Logits per block (CUDA) or program (Triton) in the GPU forward. A batch of logits fits in one and is reduced
# in one launch; larger inputs reduce in two passes through a scratch buffer of partial sums (deterministic).
FWD_CHUNK = 4096


# ---------------------------------------------------------------- backend implementations (no autograd)

def _mu_of(mu, mu_value):
    return mu.reshape(()) if mu is not None else mu_value


def _fwd_reference(lr, lf, mu, mu_value, kind, reduction, loss, wr, wf):
    red = "mean" if reduction == 0 else "sum"
    m = _mu_of(mu, mu_value)
    if kind == 0:
        loss.copy_(ref.d_loss(lr, lf, m, red))
    else:
        loss.copy_(ref.g_loss(lf, m, red))
    if wr is not None:
        w_r, w_f = ref.js_weights(lr, lf)
        wr.copy_(w_r)
        wf.copy_(w_f)


def _coefs(n: int, mu, reduction: int, like: torch.Tensor) -> torch.Tensor:
    """Per-sample weights: mu on the clean half, 1 - mu on the noisy half, / part size for a mean."""
    n_clean = n // 2
    mu = torch.as_tensor(mu, dtype=like.dtype, device=like.device)
    clean = mu / max(n_clean, 1) if reduction == 0 else mu
    noisy = (1 - mu) / max(n - n_clean, 1) if reduction == 0 else 1 - mu
    idx = torch.arange(n, device=like.device)
    return torch.where(idx < n_clean, clean, noisy)


def _js_derivatives(psi, real: bool):
    """w, w', w'' of the JS weights (torch ops, differentiable)."""
    s, q = torch.sigmoid(psi), torch.sigmoid(-psi)
    if real:
        return q * q, -2 * s * q * q, -2 * s * q * q * (1 - 3 * s)
    return s * s, 2 * s * s * q, 2 * s * s * q * (2 - 3 * s)


def _signs(kind: int):
    return (-1, 1) if kind == 0 else (0, -1)


def _bwd_reference(go, gwr, gwf, lr, lf, mu, mu_value, kind, reduction, dr, df):
    # Autograd is off inside a custom op's implementation, so the reference backward is written out.
    m = _mu_of(mu, mu_value)
    for psi, gw, d, sign, real in ((lr, gwr, dr, _signs(kind)[0], True), (lf, gwf, df, _signs(kind)[1], False)):
        v = go * _coefs(psi.shape[0], m, reduction, psi) * sign * torch.sigmoid(sign * psi)
        if gw is not None:
            v = v + gw * _js_derivatives(psi, real)[1]
        d.copy_(v)


def _args(lr, lf, mu, mu_value, kind, reduction):
    return dict(logits_real=lr.data_ptr() if lr.numel() else 0, logits_fake=lf.data_ptr() if lf.numel() else 0,
                n_real=lr.numel(), n_fake=lf.numel(), s_real=lr.stride(0), s_fake=lf.stride(0),
                mu=mu.data_ptr() if mu is not None else 0, mu_value=float(mu_value), kind=kind,
                reduction=reduction, dtype=_ext.DTYPE_CODES[lf.dtype])


def _p(t) -> int:
    return t.data_ptr() if t is not None and t.numel() else 0


def _fwd_args(lr, lf, mu, mu_value, kind, reduction, loss, wr, wf, partials=None):
    d = _args(lr, lf, mu, mu_value, kind, reduction)
    d.update(loss=loss.data_ptr(), w_real=_p(wr), w_fake=_p(wf), partials=_p(partials),
             chunk=FWD_CHUNK if partials is not None else 0)
    return d


def _partials(lr, lf, like):
    """Scratch for the GPU forward's partial sums (one per chunk of a side), or None for a one-pass forward
    (no side longer than a chunk: one block reduces both)."""
    if max(lr.numel(), lf.numel()) <= FWD_CHUNK:
        return None
    return like.new_empty(-(-lr.numel() // FWD_CHUNK) + -(-lf.numel() // FWD_CHUNK))


def _bwd_args(go, gwr, gwf, lr, lf, mu, mu_value, kind, reduction, dr, df):
    d = _args(lr, lf, mu, mu_value, kind, reduction)
    d.update(go=go.data_ptr(), gw_real=_p(gwr), gw_fake=_p(gwf), d_real=_p(dr), d_fake=_p(df))
    return d


def _fwd_cpu(*args):
    _ext.C().nt_losses_forward_cpu(_fwd_args(*args))


def _bwd_cpu(*args):
    _ext.C().nt_losses_backward_cpu(_bwd_args(*args))


def _fwd_cuda(lr, lf, mu, mu_value, kind, reduction, loss, wr, wf):
    # the scratch is freed when this returns: the caching allocator only reuses it in stream order
    partials = _partials(lr, lf, loss)
    with torch.cuda.device(lf.device):
        _ext.C().nt_losses_forward_cuda(_fwd_args(lr, lf, mu, mu_value, kind, reduction, loss, wr, wf, partials),
                                        _ext.stream_handle(lf.device))


def _bwd_cuda(*args):
    dev = args[4].device
    with torch.cuda.device(dev):
        _ext.C().nt_losses_backward_cuda(_bwd_args(*args), _ext.stream_handle(dev))


def _triton_mu(mu, mu_value, like):
    if mu is None and like.dtype == torch.float64:
        # triton passes float arguments as float32
        return torch.full((), mu_value, dtype=torch.float64, device=like.device)
    return mu


def _fwd_triton(lr, lf, mu, mu_value, kind, reduction, loss, wr, wf):
    from ..kernels import nt_losses as k

    with _dispatch.on_device(lf):
        k.forward(lr, lf, _triton_mu(mu, mu_value, loss), mu_value, kind == 1, reduction == 0, loss, wr, wf,
                  _partials(lr, lf, loss), FWD_CHUNK)


def _bwd_triton(go, gwr, gwf, lr, lf, mu, mu_value, kind, reduction, dr, df):
    from ..kernels import nt_losses as k

    with _dispatch.on_device(lf):
        k.backward(go, gwr, gwf, lr, lf, _triton_mu(mu, mu_value, go), mu_value, kind == 1, reduction == 0, dr, df)


_FORWARD = {"reference": _fwd_reference, "cpu": _fwd_cpu, "cuda": _fwd_cuda, "triton": _fwd_triton}
_BACKWARD = {"reference": _bwd_reference, "cpu": _bwd_cpu, "cuda": _bwd_cuda, "triton": _bwd_triton}


# ---------------------------------------------------------------- kernel runners (no autograd)
# Shared by the custom ops (torch.compile, fake tensors) and the eager autograd.Functions below.

def _run_forward(logits_real, logits_fake, mu, mu_value, kind, reduction, js, backend):
    loss = logits_fake.new_empty(())
    wr = logits_real.new_empty(logits_real.shape) if js else logits_real.new_empty(0)
    wf = logits_fake.new_empty(logits_fake.shape) if js else logits_fake.new_empty(0)
    _FORWARD[backend](logits_real, logits_fake, mu, mu_value, kind, reduction, loss, wr if js else None,
                      wf if js else None)
    _dispatch.record(OP, backend)
    return loss, wr, wf


def _run_backward(go, gw_real, gw_fake, logits_real, logits_fake, mu, mu_value, kind, reduction, backend):
    dr = torch.empty_like(logits_real)
    df = torch.empty_like(logits_fake)
    _BACKWARD[backend](go, gw_real, gw_fake, logits_real, logits_fake, mu, mu_value, kind, reduction, dr, df)
    _dispatch.record(OP + "_backward", backend)
    return dr, df


# ---------------------------------------------------------------- custom ops

def _op_args(op, logits_real, logits_fake, mu, kind, reduction, **grads):
    """The kernels read every tensor as the logits' (accumulation) dtype, mu as one value."""
    _checks.op_shapes(op, ("logits_real", logits_real, (None,)), ("logits_fake", logits_fake, (None,)),
                      ("mu", mu, ()))
    if grads:
        _checks.op_shapes(op, ("go", grads["go"], ()), ("gw_real", grads["gw_real"], logits_real.shape),
                          ("gw_fake", grads["gw_fake"], logits_fake.shape))
    _checks.op_dtypes(op, ("logits_fake", logits_fake), ("logits_real", logits_real), ("mu", mu), *grads.items(),
                      allowed=(torch.float32, torch.float64))
    _checks.op_code(op, "kind", kind, KINDS.values())
    _checks.op_code(op, "reduction", reduction, REDUCTIONS.values())


@_library.custom_op("fastgan::nt_losses", mutates_args=())
def _nt(logits_real: torch.Tensor, logits_fake: torch.Tensor, mu: Optional[torch.Tensor], mu_value: float,
        kind: int, reduction: int, js: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss 0-d, w_real (Nr,), w_fake (Nf,)); logits 1-D in the accumulation dtype; weights empty unless js."""
    _op_args("nt_losses", logits_real, logits_fake, mu, kind, reduction)
    return _run_forward(logits_real, logits_fake, mu, mu_value, kind, reduction, js, backend)


@_nt.register_fake
def _nt_fake(logits_real, logits_fake, mu, mu_value, kind, reduction, js, backend):
    return (logits_fake.new_empty(()), logits_real.new_empty(logits_real.shape if js else (0,)),
            logits_fake.new_empty(logits_fake.shape if js else (0,)))


@_library.custom_op("fastgan::nt_losses_backward", mutates_args=())
def _nt_backward(go: torch.Tensor, gw_real: Optional[torch.Tensor], gw_fake: Optional[torch.Tensor],
                 logits_real: torch.Tensor, logits_fake: torch.Tensor, mu: Optional[torch.Tensor], mu_value: float,
                 kind: int, reduction: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    _op_args("nt_losses_backward", logits_real, logits_fake, mu, kind, reduction, go=go, gw_real=gw_real,
             gw_fake=gw_fake)
    return _run_backward(go, gw_real, gw_fake, logits_real, logits_fake, mu, mu_value, kind, reduction, backend)


@_nt_backward.register_fake
def _nt_backward_fake(go, gw_real, gw_fake, logits_real, logits_fake, mu, mu_value, kind, reduction, backend):
    return torch.empty_like(logits_real), torch.empty_like(logits_fake)


# ---------------------------------------------------------------- autograd (shared by both paths)
# ctx.eager says which path built the node: its backward (and the backward's backward) stay on that path.

def _save_forward(ctx, logits_real, logits_fake, mu, mu_value, kind, reduction, js, backend, eager):
    ctx.save_for_backward(logits_real, logits_fake, mu)
    ctx.mu_value, ctx.kind, ctx.reduction, ctx.js, ctx.backend = mu_value, kind, reduction, js, backend
    ctx.eager = eager


def _setup(ctx, inputs, output):
    logits_real, logits_fake, mu, mu_value, kind, reduction, js, backend = inputs
    _save_forward(ctx, logits_real, logits_fake, mu, mu_value, kind, reduction, js, backend, False)


def _backward(ctx, go, gwr, gwf):
    lr, lf, mu = ctx.saved_tensors
    if go is None:
        go = lf.new_zeros(())
    # upstream gradients often arrive expanded (stride 0, e.g. from .sum()); the kernels read them densely
    gwr = gwr.contiguous() if (ctx.js and gwr is not None and gwr.numel()) else None
    gwf = gwf.contiguous() if (ctx.js and gwf is not None and gwf.numel()) else None
    args = (go.contiguous(), gwr, gwf, lr, lf, mu, ctx.mu_value, ctx.kind, ctx.reduction, ctx.backend)
    if not ctx.eager:
        dr, df = _nt_backward(*args)
    elif _eager.needs_graph(go, gwr, gwf, lr, lf):
        dr, df = _eager_backward(*args)
    else:
        dr, df = _run_backward(*args)
    return dr, df, None, None, None, None, None, None


_nt.register_autograd(_backward, setup_context=_setup)


def _save_backward(ctx, go, gw_real, gw_fake, logits_real, logits_fake, mu, mu_value, kind, reduction):
    ctx.save_for_backward(go, gw_real, gw_fake, logits_real, logits_fake, mu)
    ctx.mu_value, ctx.kind, ctx.reduction = mu_value, kind, reduction


def _setup_backward(ctx, inputs, output):
    go, gw_real, gw_fake, logits_real, logits_fake, mu, mu_value, kind, reduction, backend = inputs
    _save_backward(ctx, go, gw_real, gw_fake, logits_real, logits_fake, mu, mu_value, kind, reduction)


def _backward_backward(ctx, a_real, a_fake):
    # d_n = go * c_n * t'(psi_n) + gw_n * w'(psi_n): linear in (go, gw), t'' and w'' for psi.
    go, gwr, gwf, lr, lf, mu = ctx.saved_tensors
    m = _mu_of(mu, ctx.mu_value)
    d_go = torch.zeros_like(go)
    out = []
    for psi, gw, a, sign, real in ((lr, gwr, a_real, _signs(ctx.kind)[0], True),
                                   (lf, gwf, a_fake, _signs(ctx.kind)[1], False)):
        if a is None:
            out.append((None, None))
            continue
        c = _coefs(psi.shape[0], m, ctx.reduction, psi)
        s = torch.sigmoid(sign * psi)
        d_go = d_go + (a * c * sign * s).sum()
        # d/dpsi of sign * sigmoid(sign * psi); sigmoid(-z) rather than 1 - s, which cancels to 0 once s rounds to 1
        d_psi = a * go * c * (sign * sign) * s * torch.sigmoid(-sign * psi)
        d_gw = None
        if gw is not None:
            _, dw, d2w = _js_derivatives(psi, real)
            d_gw = a * dw
            d_psi = d_psi + a * gw * d2w
        out.append((d_gw, d_psi))
    (d_gwr, d_lr), (d_gwf, d_lf) = out
    return d_go, d_gwr, d_gwf, d_lr, d_lf, None, None, None, None, None


_nt_backward.register_autograd(_backward_backward, setup_context=_setup_backward)


# ---------------------------------------------------------------- eager path
# Outside tracing (_eager.ok) the kernels run through these plain autograd.Functions, skipping the custom-op
# dispatcher's ~100 us a call; same runners, same backward formulas, same dispatch counts.

@_eager.function
class _EagerNT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_real, logits_fake, mu, mu_value, kind, reduction, js, backend):
        _save_forward(ctx, logits_real, logits_fake, mu, mu_value, kind, reduction, js, backend, True)
        return _run_forward(logits_real, logits_fake, mu, mu_value, kind, reduction, js, backend)

    backward = staticmethod(_backward)


@_eager.function
class _EagerNTBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, go, gw_real, gw_fake, logits_real, logits_fake, mu, mu_value, kind, reduction, backend):
        _save_backward(ctx, go, gw_real, gw_fake, logits_real, logits_fake, mu, mu_value, kind, reduction)
        return _run_backward(go, gw_real, gw_fake, logits_real, logits_fake, mu, mu_value, kind, reduction, backend)

    backward = staticmethod(_backward_backward)


_eager_forward = _eager.apply_of(_EagerNT)
_eager_backward = _eager.apply_of(_EagerNTBackward)


# ---------------------------------------------------------------- public API

def _logits(name: str, t) -> torch.Tensor:
    _checks.tensor(name, t)
    if not _checks.one_per_sample(t):
        raise ValueError(f"{name} must have shape (N,) or (N, 1, ..., 1), got {tuple(t.shape)}")
    return t if t.dim() == 1 else t.reshape(t.shape[0])


def _check_mode(name: str, n: int, mode: str) -> None:
    if mode == "double" and n % 2:
        raise ValueError(f"{name} has {n} logits, but mode='double' batches are [clean; noisy] with an even size")
    if n == 0:
        raise ValueError(f"{name} is empty")


def _parse_mu(mu, device):
    if isinstance(mu, bool) or not isinstance(mu, (numbers.Real, torch.Tensor)):
        raise TypeError(f"mu must be a float or a one-element tensor, got {type(mu).__name__}")
    if isinstance(mu, torch.Tensor):
        _checks.tensor("mu", mu)
        if mu.numel() != 1:
            raise ValueError(f"mu must have one element, got shape {tuple(mu.shape)}")
        if mu.device != device:
            raise ValueError(f"mu is on {mu.device} but the logits are on {device}")
        if mu.requires_grad:
            raise ValueError("mu must not require grad: NTGAN samples mu ~ U(0, 1) each step; it is not learned")
        return mu, 0.0
    value = float(mu)
    if not 0.0 <= value <= 1.0:  # also NaN; outside [0, 1] one part's weight would be negative
        raise ValueError(f"mu must be in [0, 1] (NTGAN draws mu ~ U(0, 1)), got {value}")
    return None, value


def nt_losses(logits_real: Optional[torch.Tensor], logits_fake: torch.Tensor, mu: Union[float, torch.Tensor], *,
              loss: str = "d", mode: str = "double", reduction: str = "mean", js_weights: bool = False,
              backend: Optional[str] = None):
    """NTGAN's mu-weighted clean/noisy logistic losses, fused with their gradients.

    logits_real, logits_fake: (N,) or (N, 1) logits of the batches of ``noisy_clean_batch(..., mode)``, clean
    samples first: the first N // 2 are clean, the rest noisy. mu: float in [0, 1] or one-element tensor
    (NTGAN draws mu ~ U(0, 1) each step; a device tensor keeps CUDA graphs valid and is not range-checked, which
    would read it on the host); not differentiated.
    loss="d": the discriminator's loss (to minimise), mu-weighted -ln D on real and -ln(1 - D) on fake;
    loss="g": the generator's non-saturating loss on the fake logits (logits_real may be None).
    reduction: "mean" (each part averaged, as mu * mean_clean + (1 - mu) * mean_noisy) or "sum" (the sums of
    Algorithm 1). js_weights=True (loss="d" only) also returns Roth et al.'s JS weights from the same logits,
    (1 - sigmoid(psi))^2 for real and sigmoid(psi)^2 for fake, differentiable w.r.t. the logits.
    Returns loss (0-d), or (loss, w_real, w_fake) with each weight in its logits' shape; float32 (float64 if a
    logits tensor it uses is float64: loss="g" ignores logits_real; mu's dtype does not count); differentiable to
    any order w.r.t. the logits.
    The noise generator's loss in NTGAN is -loss_d + lambda * ||eps||^2.
    """
    _checks.no_differentiating_transform(logits_real, logits_fake, mu)
    _checks.choice("loss", loss, tuple(KINDS))
    _checks.choice("mode", mode, MODES)
    _checks.choice("reduction", reduction, tuple(REDUCTIONS))
    js_weights = _checks.flag("js_weights", js_weights)
    lf = _logits("logits_fake", logits_fake)
    _check_mode("logits_fake", lf.shape[0], mode)
    if loss == "d":
        if logits_real is None:
            raise ValueError("logits_real is None but loss='d' needs the real logits")
        lr = _logits("logits_real", logits_real)
        _check_mode("logits_real", lr.shape[0], mode)
        _checks.same_device(logits_fake=lf, logits_real=lr)
    else:
        if js_weights:
            raise ValueError("js_weights=True needs loss='d' (the weights are the discriminator's penalty weights)")
        if logits_real is not None:
            _logits("logits_real", logits_real)
        lr = None
    mu_t, mu_value = _parse_mu(mu, lf.device)
    # the logits' dtypes alone: a float64 mu would make float32 logits' loss and weights float64
    acc = _checks.acc_dtype(lf.dtype, *(() if lr is None else (lr.dtype,)))
    lf = lf.to(acc)
    lr = lr.to(acc) if lr is not None else lf.new_empty(0)
    mu_t = mu_t.reshape(()).to(acc) if mu_t is not None else None
    chosen = _dispatch.resolve_cpu(OP, backend) if lf.is_cpu else _dispatch.resolve(OP, lf.device, backend)
    args = (lr, lf, mu_t, mu_value, KINDS[loss], REDUCTIONS[reduction], bool(js_weights), chosen)
    if not _eager.ok(lr, lf, mu_t):
        value, w_r, w_f = torch.ops.fastgan.nt_losses(*args)
    elif _eager.needs_graph(lr, lf):
        value, w_r, w_f = _eager_forward(*args)
    else:
        value, w_r, w_f = _run_forward(*args)
    if js_weights:
        # in the logits' own shapes, (N,) or (N, 1), as fastgan.reference.nt_losses returns them
        return value, w_r.reshape(logits_real.shape), w_f.reshape(logits_fake.shape)
    return value
