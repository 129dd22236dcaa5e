"""Fused DFM denoiser (Warde-Farley & Bengio 2017): (Linear -> BatchNorm1d -> ReLU) x depth -> Linear,
its training loss on Gaussian-corrupted features, and the generator's denoising-feature-matching term.

This module is the public layer: argument checks, the functional API (``bn_relu``, ``denoiser_loss``,
``denoiser_generator_loss``) and the modules ``Denoiser`` and ``DenoiserLoss``. Below it:
  * denoiser_backends.py: each backend's kernels (no autograd) and how they are launched;
  * denoiser_net.py: one layer and the whole network on those kernels, and their plain-torch recomputation;
  * denoiser_ops.py: the custom ops (``torch.ops.fastgan.*``, with fake kernels), for torch.compile / export;
  * denoiser_eager.py: the plain autograd.Functions that run the same implementations eagerly, and the choice
    between them and the custom ops.
First-order backwards run the fused kernels; a backward taken with ``create_graph=True`` (second order)
recomputes through plain torch formulas, so every op is differentiable twice and more.
Running statistics: eager calls write them straight into the buffers, on every backend (the kernels read each
element before writing it); only the custom ops (the torch.compile path, and the public bn_relu given strided
running statistics), which must be functional, return new tensors, which are then copied into the buffers.
Compute dtype: the parameters' (float32 or float64); under autocast the denoiser still runs in it.

Backends: "reference" (torch), "cpu" (C++), "cuda" (CUDA C++), "triton"; see fastgan/ops/_dispatch.py.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..reference import denoiser as ref
from . import _checks, _dispatch, _eager
from ._hooks import has_hooks
from . import denoiser_eager  # _compiling() read from it at call time: one patch there reaches every caller
from . import denoiser_ops  # noqa: F401  (registers torch.ops.fastgan.bn_relu, denoiser_loss, ...)
from .denoiser_backends import OP_FORWARD, OP_LAYER, OP_LOSS, OP_RECON  # noqa: F401  (importable from here)
from .denoiser_eager import _EagerBnRelu, _EagerForward, _run_forward, _run_loss, _run_target_loss
from .denoiser_net import _copy_running, count_batches
from .noise_state import _check_device

REDUCTIONS = ("mean", "sum", "none")
PARAM_DTYPES = (torch.float32, torch.float64)

Tensor = torch.Tensor


# ---------------------------------------------------------------- argument checks

def _check_number(name: str, value, *, low: float | None = None, high: float | None = None, open_low=False):
    # numbers.Real takes numpy's scalars too (np.float32 is no float subclass), as the NTGAN ops do
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not abs(v) < math.inf:  # not math.isfinite: Dynamo traces a comparison of the SymFloat a default becomes
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and (v < low or (open_low and v == low))) or (high is not None and v > high):
        lo = "" if low is None else (f"> {low}" if open_low else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        raise ValueError(f"{name} must be {' and '.join(p for p in (lo, hi) if p)}, got {value!r}")
    return v


def _check_counters(counters, device) -> None:
    """The layers' num_batches_tracked, which the cpu and cuda kernels add 1 to as one int64 (a float32 counter read
    4e-45 after three steps; an int32 one took an 8-byte write)."""
    for i, c in enumerate(counters):
        name = f"net[{3 * i + 1}].num_batches_tracked"
        if c is None:  # none counted, as nn.BatchNorm1d counts none (track_running_stats=False)
            continue
        if not isinstance(c, Tensor):
            raise TypeError(f"{name} must be a tensor (BatchNorm1d's counter), got {type(c).__name__}")
        if c.dtype != torch.int64 or c.dim() != 0:
            raise TypeError(f"{name} must be a 0-d torch.int64 tensor, as BatchNorm1d makes it, got {c.dtype} of "
                            f"shape {tuple(c.shape)}")
        if c.device != device:
            raise ValueError(f"{name} is on {c.device} but the weights are on {device}; move them to one device")


def _check_params(weights, biases, gammas, betas, running_means, running_vars):
    """Validates the parameter lists; returns (n_features, dtype, device)."""
    for name, seq in (("weights", weights), ("biases", biases), ("gammas", gammas), ("betas", betas)):
        if not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} must be a list of tensors, got {type(seq).__name__}")
    if len(weights) < 1:
        raise ValueError("weights must hold depth + 1 >= 1 matrices, got an empty list")
    depth = len(weights) - 1
    for name, seq, n in (("biases", biases, depth + 1), ("gammas", gammas, depth), ("betas", betas, depth)):
        if len(seq) != n:
            raise ValueError(f"{name} must have {n} entries for {depth} hidden layers, got {len(seq)}")
    for name, seq in (("running_means", running_means), ("running_vars", running_vars)):
        if seq is not None and (not isinstance(seq, (list, tuple)) or len(seq) != depth):
            raise ValueError(f"{name} must be None or a list of {depth} tensors")
    if (running_means is None) != (running_vars is None):
        raise ValueError("running_means and running_vars must be given together")
    w0 = _checks.tensor("weights[0]", weights[0], min_dim=2)
    if w0.dim() != 2:  # its shape[1] is n_features: a 3-D weight was reported against a shape made from itself
        raise ValueError(f"weights[0] must be a 2-D (out, in) matrix, got shape {tuple(w0.shape)}")
    dtype, device = w0.dtype, w0.device
    if dtype not in PARAM_DTYPES:
        raise TypeError(f"weights[0] must be float32 or float64, got {dtype}")
    n_features = w0.shape[1]
    width = n_features
    for i in range(depth + 1):
        _checks.tensor(f"weights[{i}]", weights[i], min_dim=2)
        out_dim = n_features if i == depth else weights[i].shape[0]
        named = [(f"weights[{i}]", weights[i], (out_dim, width)), (f"biases[{i}]", biases[i], (out_dim,))]
        if i < depth:
            named += [(f"gammas[{i}]", gammas[i], (out_dim,)), (f"betas[{i}]", betas[i], (out_dim,))]
            if running_means is not None:
                named += [(f"running_means[{i}]", running_means[i], (out_dim,)),
                          (f"running_vars[{i}]", running_vars[i], (out_dim,))]
                for name in (f"running_means[{i}]", f"running_vars[{i}]"):
                    t = running_means[i] if name.startswith("running_means") else running_vars[i]
                    if isinstance(t, Tensor) and not t.is_contiguous():
                        raise ValueError(f"{name} must be contiguous (it is updated in place)")
        for name, t, shape in named:
            _checks.tensor(name, t)
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
            if t.dtype != dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but weights[0] has {dtype}; use one dtype")
            if t.device != device:
                raise ValueError(f"{name} is on {t.device} but weights[0] is on {device}; move them to one device")
        width = out_dim
    if running_means is not None:
        _check_running([(f"{kind}[{i}]", seq[i]) for kind, seq in (("running_means", running_means),
                                                                   ("running_vars", running_vars))
                        for i in range(depth)])
    return n_features, dtype, device


def _check_features(name: str, h, n_features: int, dtype, device, batch_stats: bool) -> Tensor:
    """batch_stats: a BatchNorm layer normalises with this batch's statistics (training mode, depth >= 1); a
    depth-0 denoiser is a single Linear, which takes a batch of one as nn.Linear does."""
    _checks.tensor(name, h)
    if h.dim() != 2 or h.shape[1] != n_features:
        raise ValueError(f"{name} must have shape (B, {n_features}), got {tuple(h.shape)}")
    if h.device != device:
        raise ValueError(f"{name} is on {h.device} but the denoiser's parameters are on {device}")
    if batch_stats and h.shape[0] < 2:
        raise ValueError(f"{name}: training-mode BatchNorm needs a batch of at least 2 samples, got {h.shape[0]}")
    return _checks.outside_inference(h.to(dtype).contiguous())


def _check_noise(noise, h: Tensor) -> Tensor:
    """The corruption's standard-normal eps for the checked features h: drawn when None."""
    if noise is None:
        return torch.randn_like(h)
    _checks.tensor("noise", noise)
    if noise.shape != h.shape:
        raise ValueError(f"noise must have the shape of h {tuple(h.shape)}, got {tuple(noise.shape)}")
    _checks.same_device(h=h, noise=noise)
    return _checks.outside_inference(noise.to(h.dtype).contiguous())


def _check_running(named) -> None:
    """Running statistics are buffers updated in place, each element read before it is written: one requiring grad
    is refused (as F.batch_norm does), and so are elements sharing memory, within one (an expanded tensor: torch
    raised its own error after the first update) or across two (each would see the other's update)."""
    for name, t in named:
        if t.requires_grad:
            raise ValueError(f"{name} requires grad: running statistics are buffers, updated in place and not "
                             "differentiated (F.batch_norm refuses them too)")
    # data_ptr is not traceable (compiled calls go unchecked, README), and fake, meta and wrapped tensors have no
    # memory of their own to compare
    if denoiser_eager._custom_ops(*(t for _, t in named)):
        return
    spans = []
    for name, t in named:
        if not t.numel():
            continue
        if t.numel() > 1 and t.stride(0) == 0:
            raise ValueError(f"{name} has elements sharing one memory location (stride 0: an expanded tensor?); "
                             "running statistics are updated in place, element by element")
        start = t.data_ptr()
        end = start + ((t.numel() - 1) * t.stride(0) + 1) * t.element_size()
        for other, (s0, s1, o) in spans:
            # byte spans first; where they meet, the elements themselves (interleaved slices of one buffer are
            # separate statistics)
            if start < s1 and s0 < end and not _element_addresses(t).isdisjoint(_element_addresses(o)):
                raise ValueError(f"{name} shares its memory with {other}; running statistics must be separate "
                                 "tensors (each is updated in place)")
        spans.append((name, (start, end, t)))


def _element_addresses(t: Tensor) -> set:
    """The first byte of each of a 1-D tensor's elements (running statistics share a dtype: _check_params)."""
    step = t.stride(0) * t.element_size()
    return set(range(t.data_ptr(), t.data_ptr() + t.numel() * step, step))


def _contig(seq):
    return [t.contiguous() for t in seq]


# ---------------------------------------------------------------- functional API

def bn_relu(y: Tensor, bias: Optional[Tensor], gamma: Tensor, beta: Tensor, running_mean: Optional[Tensor] = None,
            running_var: Optional[Tensor] = None, *, training: bool = True, momentum: float = 0.1,
            eps: float = 1e-5, relu: bool = True, backend: str | None = None) -> Tensor:
    """relu(batch_norm(y + bias)) as one fused op: ``F.relu(F.batch_norm(y + bias, running_mean, running_var,
    gamma, beta, training, momentum, eps))``, running stats updated in place in training mode.

    y: (B, N) output of a GEMM without its bias; bias, gamma, beta, running stats: (N,). Differentiable
    w.r.t. y, bias, gamma and beta. relu=False gives the plain BatchNorm.
    """
    _checks.no_differentiating_transform(y, bias, gamma, beta)
    _checks.tensor("y", y, min_dim=2)
    if y.dim() != 2:
        raise ValueError(f"y must have shape (B, N), got {tuple(y.shape)}")
    if y.dtype not in PARAM_DTYPES:
        raise TypeError(f"y must be float32 or float64, got {y.dtype}")
    N, dtype, device = y.shape[1], y.dtype, y.device
    named = (("bias", bias), ("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
             ("running_var", running_var))
    for name, t in named:
        if t is None and name in ("gamma", "beta"):
            raise TypeError(f"{name} must be a tensor (the fused op is affine)")
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout is not torch.strided:
            raise TypeError(f"{name} must be a strided (dense) tensor, got layout {t.layout}; call .to_dense()")
        if t.shape != (N,):
            raise ValueError(f"{name} must have shape ({N},), got {tuple(t.shape)}")
        if t.dtype != dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but y has {dtype}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but y is on {device}; move them to the same device")
    training, relu = _checks.flag("training", training), _checks.flag("relu", relu)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    if running_mean is not None:
        _check_running([("running_mean", running_mean), ("running_var", running_var)])
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required in eval mode (training=False)")
    if training and y.shape[0] < 2:
        raise ValueError(f"y: training-mode BatchNorm needs a batch of at least 2 samples, got {y.shape[0]}")
    momentum = _check_number("momentum", momentum, low=0.0, high=1.0)
    eps = _check_number("eps", eps, low=0.0, open_low=True)
    chosen = _dispatch.resolve(OP_LAYER, y.device, backend)
    y = _checks.outside_inference(y)
    c = lambda t: None if t is None else t.contiguous()
    if not denoiser_eager._custom_ops(y, bias, gamma, beta, running_mean, running_var) and (
            running_mean is None or (running_mean.is_contiguous() and running_var.is_contiguous())):
        meta = (running_mean, running_var, bool(training), momentum, eps, bool(relu), chosen)
        return _EagerBnRelu.apply(meta, y.contiguous(), c(bias), c(gamma), c(beta))
    out, _, _, rm, rv = torch.ops.fastgan.bn_relu(y.contiguous(), c(bias), c(gamma), c(beta), c(running_mean),
                                                  c(running_var), bool(training), momentum, eps, bool(relu), chosen)
    if training and running_mean is not None:
        _copy_running([running_mean], [running_var], [rm, rv])
    return out


def denoiser_loss(h: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], gammas: Sequence[Tensor],
                  betas: Sequence[Tensor], running_means: Sequence[Tensor] | None = None,
                  running_vars: Sequence[Tensor] | None = None, *, sigma: float = 1.0, noise: Tensor | None = None,
                  training: bool = True, momentum: float = 0.1, eps: float = 1e-5, reduction: str = "mean",
                  backend: str | None = None) -> Tensor:
    """DFM denoiser training loss ||h - r(h + sigma * noise)||^2, summed over features, reduced over the batch.

    r = (Linear(weights[i], biases[i]) -> BatchNorm(gammas[i], betas[i]) -> ReLU) for i < depth, then
    Linear(weights[depth], biases[depth]). noise: the standard-normal eps (B, F); drawn with torch.randn
    when None. Running stats (lists of depth tensors) are updated in place in training mode, as
    nn.BatchNorm1d does; they are required in eval mode. Differentiable w.r.t. h (both as the corrupted
    input and as the target), noise and all parameters.
    """
    _checks.no_differentiating_transform(h, noise, weights, biases, gammas, betas)
    training = _checks.flag("training", training)
    n_features, dtype, device = _check_params(weights, biases, gammas, betas, running_means, running_vars)
    h = _check_features("h", h, n_features, dtype, device, training and len(weights) > 1)
    sigma = _check_number("sigma", sigma, low=0.0)
    momentum = _check_number("momentum", momentum, low=0.0, high=1.0)
    eps = _check_number("eps", eps, low=0.0, open_low=True)
    _checks.choice("reduction", reduction, REDUCTIONS)
    if not training and running_means is None:
        raise ValueError("running_means and running_vars are required in eval mode (training=False)")
    noise = _check_noise(noise, h)
    chosen = _dispatch.resolve(OP_LOSS, device, backend)
    rms = list(running_means) if running_means is not None else []
    rvs = list(running_vars) if running_vars is not None else []
    return _run_loss(h, noise, sigma, _contig(weights), _contig(biases), _contig(gammas), _contig(betas), rms, rvs,
                     bool(training), momentum, eps, chosen, reduction)


def denoiser_generator_loss(h_fake: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor],
                            gammas: Sequence[Tensor], betas: Sequence[Tensor],
                            running_means: Sequence[Tensor] | None = None,
                            running_vars: Sequence[Tensor] | None = None, *, training: bool = True,
                            eps: float = 1e-5, reduction: str = "mean", backend: str | None = None) -> Tensor:
    """DFM generator term ||h_fake - r(h_fake)||^2 (sum over features, reduced over the batch) with r(h_fake)
    a constant target: the gradient reaches h_fake only, never r's parameters.

    In training mode r normalises with h_fake's own batch statistics (the paper batch-normalises real and
    generated batches separately) and leaves the running statistics untouched; in eval mode it uses them.
    Multiply by lambda_denoise = 0.03 / n_features (the paper's setting) when adding it to G's loss.
    """
    _checks.no_differentiating_transform(h_fake, weights, biases, gammas, betas)
    training = _checks.flag("training", training)
    n_features, dtype, device = _check_params(weights, biases, gammas, betas, running_means, running_vars)
    h_fake = _check_features("h_fake", h_fake, n_features, dtype, device, training and len(weights) > 1)
    eps = _check_number("eps", eps, low=0.0, open_low=True)
    _checks.choice("reduction", reduction, REDUCTIONS)
    if not training and running_means is None:
        raise ValueError("running_means and running_vars are required in eval mode (training=False)")
    chosen = _dispatch.resolve(OP_LOSS, device, backend)
    rms = list(running_means) if running_means is not None else []
    rvs = list(running_vars) if running_vars is not None else []
    return _generator_loss(h_fake, weights, biases, gammas, betas, rms, rvs, bool(training), eps, reduction, chosen)


def _generator_loss(h_fake, weights, biases, gammas, betas, rms, rvs, training, eps, reduction, backend):
    # _run_forward runs without autograd: r(h_fake) is a constant target
    target = _run_forward(h_fake.detach(), _contig(weights), _contig(biases), _contig(gammas), _contig(betas),
                          _contig(rms), _contig(rvs), training, False, 0.0, eps, backend)
    return _run_target_loss(target, h_fake, backend, reduction)


# ---------------------------------------------------------------- module

_LAYER_KINDS = (nn.Linear, nn.BatchNorm1d, nn.ReLU)
# a BatchNorm1d layer's (track_running_stats, running statistics None), as nn.BatchNorm1d acts on it; a layer holding
# one statistic without the other is refused before this is read
_RUNNING_STATES = {(True, False): "uses and updates running statistics",
                   (False, False): "keeps its running statistics frozen (track_running_stats=False)",
                   (True, True): "has no running statistics (None)",
                   (False, True): "has no running statistics (track_running_stats=False)"}


def _running_state(m: nn.BatchNorm1d) -> tuple:
    b = m._buffers  # the layer's own dict first, as Denoiser._tensors reads it; a replica's attributes otherwise
    mean = b["running_mean"] if "running_mean" in b else getattr(m, "running_mean", None)
    return bool(m.track_running_stats), mean is None


def _held(*seqs) -> list:
    return [t for seq in seqs for t in seq if t is not None]


class Denoiser(nn.Module):
    """DFM denoising auto-encoder r over discriminator features, with fused kernels.

    The layers are an ordinary ``self.net = nn.Sequential((Linear, BatchNorm1d, ReLU) x depth, Linear)`` (the
    reference architecture, so state_dicts are interchangeable with it); the fused ops read its
    parameters and update its BatchNorm buffers (running_mean, running_var, num_batches_tracked) exactly
    as nn.BatchNorm1d does.

    * ``forward(h)``: r(h).
    * ``loss(h, noise=None)``: the denoiser's training loss ||h - r(h + sigma * eps)||^2, summed over
      features, mean over the batch. h is detached by default (the loss trains r only).
    * ``generator_loss(h_fake)``: ||h_fake - r(h_fake)||^2 with r(h_fake) constant; gradient into h_fake only.
      Scale by ``lambda_denoise = 0.03 / n_features`` (Warde-Farley & Bengio) in the generator's loss.

    hidden defaults to n_features (the paper: hidden width >= input width); sigma is the corruption's
    standard deviation (the paper: 1) and may be changed between steps for annealing.
    """

    _running_flags = (True, False)  # _RUNNING_STATES' key of the layers (a module pickled before it: tracked)

    def __init__(self, n_features: int, hidden: int | None = None, depth: int = 3, *, sigma: float = 1.0,
                 momentum: float | None = 0.1, eps: float = 1e-5, backend: str | None = None, device=None,
                 dtype=None):
        super().__init__()
        for name, v, low in (("n_features", n_features, 1), ("depth", depth, 0)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < low:
                raise ValueError(f"{name} must be >= {low}, got {v}")
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int)):
            raise TypeError(f"hidden must be an int or None, got {type(hidden).__name__}")
        if hidden is not None and hidden < 1:
            raise ValueError(f"hidden must be >= 1 or None, got {hidden}")
        if momentum is not None:  # as floats: a numpy scalar would reach the BatchNorm layers as one
            momentum = _check_number("momentum", momentum, low=0.0, high=1.0)
        eps = _check_number("eps", eps, low=0.0, open_low=True)
        if dtype is not None and dtype not in PARAM_DTYPES:  # else accepted here and refused at the first call
            raise TypeError(f"dtype must be torch.float32 or torch.float64 (the parameters' dtype; features of "
                            f"another dtype are cast to it), got {dtype}")
        # as NoiseState's: nn.Module.to raised torch's own errors, naming no argument ("Expected one of cpu, cuda, ...
        # device type at start of device string: gpu"; an AssertionError "Torch not compiled with CUDA enabled")
        device = _check_device(device)
        net = ref.make_denoiser(n_features, hidden, depth, momentum, eps)
        self._eps_momentum = (eps, momentum)  # what a depth-0 denoiser, with no BatchNorm layer, reports
        self._init(net.to(device=device, dtype=dtype), sigma, backend)

    def _init(self, net: nn.Sequential, sigma: float, backend: str | None) -> None:
        self.net = net
        self._adopt(net)
        self.sigma = sigma
        if backend is not None:
            _checks.choice("backend", backend, _dispatch.BACKENDS)  # a str first (numpy arrays)
        self.backend = backend

    @classmethod
    def from_sequential(cls, net: nn.Sequential, *, sigma: float = 1.0, backend: str | None = None) -> "Denoiser":
        """Wraps an existing ``nn.Sequential((Linear, BatchNorm1d, ReLU) x depth, Linear)`` (sharing its
        parameters and buffers) in its current train/eval mode. The layers must be exactly those classes (no
        subclasses, hooks (on net too, nor a forward of its own) or parametrizations such as spectral norm: the
        fused kernels compute what those classes compute and would ignore anything else), BatchNorm layers affine,
        sharing eps and momentum and alike in their running statistics (tracked, frozen by track_running_stats=False,
        or none: each as nn.BatchNorm1d treats it), widths chained, and the output width equal to the input width."""
        if not isinstance(net, nn.Sequential):
            raise TypeError(f"net must be an nn.Sequential, got {type(net).__name__}")
        modes = {net.training} | {m.training for m in net}
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._init(net, sigma, backend)
        if len(modes) > 1:
            raise ValueError("net mixes train and eval modes among its layers; set one mode (net.train() or "
                             "net.eval()): the fused ops run every layer in the Denoiser's mode")
        self.train(net.training)
        return self

    def _adopt(self, net) -> None:
        """Validates net's layers (raising a ValueError that names the first bad one) and caches what each call
        checks again cheaply: the layer objects, and every parameter's and buffer's shape."""
        if not isinstance(net, nn.Sequential):
            raise TypeError(f"Denoiser.net must be an nn.Sequential, got {type(net).__name__}")
        if type(net).forward is not nn.Sequential.forward:
            raise ValueError(f"net: {type(net).__name__} has its own forward, which the fused kernels would not run "
                             "(they compute nn.Sequential's); use the plain module")
        if has_hooks(net):
            raise ValueError("net has hooks, which the fused kernels would not run; remove them or use the plain "
                             "nn.Sequential")
        mods = tuple(net._modules.values())
        if len(mods) % 3 != 1:
            raise ValueError("net must be (Linear, BatchNorm1d, ReLU) x depth followed by a Linear")
        width = mods[0].in_features if isinstance(mods[0], nn.Linear) else None
        for i, m in enumerate(mods):
            kind = _LAYER_KINDS[i % 3]
            if not isinstance(m, kind):
                raise ValueError(f"net[{i}] must be {kind.__name__}, got {type(m).__name__}")
            if type(m) is not kind:
                what = f"a parametrized {kind.__name__} (e.g. spectral norm)" if getattr(m, "parametrizations", None) \
                    else f"the subclass {type(m).__name__}"
                raise ValueError(f"net[{i}] must be {kind.__name__} itself, got {what}: the fused kernels compute "
                                 f"{kind.__name__}'s forward and would ignore what differs")
            if has_hooks(m):
                raise ValueError(f"net[{i}] has hooks (e.g. old-style spectral norm), which the fused kernels "
                                 "would not run; remove them or use the plain nn.Sequential")
            if kind is nn.Linear:
                if m.bias is None:
                    raise ValueError(f"net[{i}]: Linear layers must have a bias")
                if m.in_features != width:
                    raise ValueError(f"net[{i}] takes {m.in_features} features but the layer before gives {width}")
                width = m.out_features
            elif kind is nn.BatchNorm1d:
                if not m.affine:
                    raise ValueError(f"net[{i}]: BatchNorm1d must have affine=True")
                if (m.running_mean is None) != (m.running_var is None):
                    raise ValueError(f"net[{i}]: running_mean and running_var must both be tensors or both be None")
                if m.num_features != width:
                    raise ValueError(f"net[{i}] normalises {m.num_features} features but net[{i - 1}] gives {width}")
        norms = mods[1::3]
        if len({(m.eps, m.momentum) for m in norms}) > 1:
            raise ValueError("net: all BatchNorm1d layers must share eps and momentum")
        flags = [_running_state(m) for m in norms]
        other = next((i for i, f in enumerate(flags) if f != flags[0]), None)
        if other is not None:  # the kernels take one training flag and one list of statistics for every layer
            raise ValueError(f"net[{3 * other + 1}] {_RUNNING_STATES[flags[other]]} but net[1] "
                             f"{_RUNNING_STATES[flags[0]]}; set track_running_stats (or the statistics) alike in "
                             "every BatchNorm1d layer: the fused kernels run every layer alike")
        self._running_flags = flags[0] if norms else (True, False)
        if mods[0].in_features != mods[-1].out_features:
            raise ValueError(f"net maps {mods[0].in_features} features to {mods[-1].out_features}; a denoiser "
                             "reconstructs its input")
        self._mods, self._linears, self._norms = mods, mods[0::3], norms
        self._eps_momentum = (norms[0].eps, norms[0].momentum) if norms else \
            self.__dict__.get("_eps_momentum", (1e-5, 0.1))
        weights, biases, gammas, betas, rms, rvs = self._tensors()
        counters = self._counters()
        if weights[0].dtype in PARAM_DTYPES:  # other dtypes are refused by each call, naming the module's dtype
            held = (None, None) if self._running_flags[1] else (rms, rvs)
            _check_params(weights, biases, gammas, betas, *held)  # shapes, one dtype and device, own buffers
            _check_counters(counters, weights[0].device)
        self._types = tuple(map(type, mods))
        # the tensor objects too: a buffer or parameter replaced by another of its shape (say running_mean set to
        # the running_var tensor, or a bias set to None) is validated again
        objects = _held(weights, biases, gammas, betas, rms, rvs, counters)
        self._strided = not all(t.is_contiguous() for seq in (biases, gammas, betas) for t in seq)
        if not _eager.ok_on_one_device(objects[0]):
            # traced (export, compile, fake tensors): those tensors are not the module's own, and torch.export
            # warns of tensor attributes assigned while it traces; each traced call validates again
            self.__dict__.setdefault("_objects", [])
            self.__dict__.setdefault("_signature", [])
            return
        self._objects = objects
        self._signature = [(t.shape, t.dtype, t.device, t.is_contiguous()) for t in objects]

    # -- structure
    @property
    def sigma(self) -> float:
        return self._sigma

    @sigma.setter
    def sigma(self, value) -> None:
        """The corruption's standard deviation, a number >= 0 (may change between steps for annealing)."""
        if isinstance(value, Tensor):
            raise TypeError("sigma must be a number, got a Tensor: the denoiser's corruption scale is not learned "
                            "(use float(t) for a scheduled value)")
        self._sigma = _check_number("sigma", value, low=0.0)

    @property
    def linears(self) -> tuple:
        return self._linears

    @property
    def norms(self) -> tuple:
        return self._norms

    @property
    def n_features(self) -> int:
        return self.net[0].in_features

    @property
    def depth(self) -> int:
        return len(self.norms)

    @property
    def momentum(self) -> float | None:
        return self._eps_momentum[1]

    @property
    def lambda_denoise(self) -> float:
        """The paper's weight of the generator term, 0.03 / n_h (Warde-Farley & Bengio, sec. 5)."""
        return 0.03 / self.n_features

    @property
    def eps(self) -> float:
        return self._eps_momentum[0]

    def _tensors(self):
        # the modules' own dicts: nn.Module.__getattr__ costs ~1 us a lookup, 24 of them per call
        lin = [m._parameters for m in self._linears]
        bn_p = [m._parameters for m in self._norms]
        bn_b = [m._buffers for m in self._norms]
        try:
            return ([d["weight"] for d in lin], [d["bias"] for d in lin], [d["weight"] for d in bn_p],
                    [d["bias"] for d in bn_p], [d["running_mean"] for d in bn_b], [d["running_var"] for d in bn_b])
        except KeyError:
            # a tensor held otherwise than as the layer's own parameter or buffer, which the layers' forwards read
            # all the same: a DataParallel replica's (torch's replicate sets its parameters as plain attributes,
            # "no longer leaves"), a weight deleted and set to a computed tensor, or registered as a buffer
            lins, norms = self._linears, self._norms
            return ([m.weight for m in lins], [m.bias for m in lins], [m.weight for m in norms],
                    [m.bias for m in norms], [m.running_mean for m in norms], [m.running_var for m in norms])

    def _counters(self) -> list:
        return [m._buffers["num_batches_tracked"] if "num_batches_tracked" in m._buffers else
                getattr(m, "num_batches_tracked", None) for m in self._norms]

    def _updates(self) -> bool:
        """Whether a call adds to num_batches_tracked (nn.BatchNorm1d: training and tracking, statistics or not)."""
        return self.training and self._running_flags[0]

    def _params(self):
        """(weights, biases, gammas, betas, running means, running vars) of the layers as they are now, checked
        (~13 us at depth 3 on the CI machine, mostly reading each tensor's shape, dtype, device and layout): layers
        replaced, given hooks, a parametrization or another mode than the Denoiser's, tensors replaced, or tensors
        of another shape, dtype or device than when last validated are validated again (an error names the layer or
        tensor), so the kernels never read a tensor by the wrong size or type."""
        net = self.net
        mods = tuple(net._modules.values())
        # the same module objects, compared by identity (a tuple's == calls nn.Module.__eq__, which torch 2.7's
        # Dynamo cannot trace: torch.export of a module holding a Denoiser failed there; map over two iterables,
        # which torch 2.4's Dynamo cannot trace, failed torch.compile there)
        if len(mods) != len(self._mods) or any(a is not b for a, b in zip(mods, self._mods)) or \
                tuple(map(type, mods)) != self._types or has_hooks(net) or \
                any(map(has_hooks, mods)):
            self._adopt(net)
        training = self.training
        for i, m in enumerate(self._norms):
            if m.training != training:
                raise ValueError(f"net[{3 * i + 1}] is in {'training' if m.training else 'eval'} mode but the "
                                 f"Denoiser in {'training' if training else 'eval'} mode; call train() or eval() "
                                 "on the Denoiser (the fused ops run every layer in its mode)")
            # affine off, or track_running_stats turned off after construction (a usual way to freeze BatchNorm's
            # statistics, which the kernels would still have updated): validated again; statistics set to None
            # shorten `flat` below
            if (m.eps, m.momentum) != self._eps_momentum or not m.affine or \
                    m.track_running_stats != self._running_flags[0]:
                self._adopt(net)
        tensors = self._tensors()
        flat = _held(*tensors, self._counters())
        # a running statistic made to require grad is checked here too (the kernels write it in place); the
        # parameters' requires_grad is not part of the signature: a loop freezing them each step would re-adopt
        if len(flat) != len(self._objects) or any(a is not b for a, b in zip(flat, self._objects)) or \
                [(t.shape, t.dtype, t.device, t.is_contiguous()) for t in flat] != self._signature or \
                any(t is not None and t.requires_grad for t in (*tensors[4], *tensors[5])):
            self._adopt(net)  # raises for a wrong shape, mixed dtypes or devices, shared buffers, a missing bias
        weights, biases, gammas, betas, rms, rvs = tensors
        if self._strided:  # GEMM operands may be strided; the kernels' vectors may not (buffers must not be)
            biases, gammas, betas = _contig(biases), _contig(gammas), _contig(betas)
        return weights, biases, gammas, betas, *self._statistics(rms, rvs)

    def _statistics(self, rms, rvs) -> tuple[list, list]:
        """The running statistics the kernels read (eval mode) or update (training mode): none (empty lists) where
        nn.BatchNorm1d uses neither (no statistics, or training with track_running_stats=False)."""
        track, no_statistics = self._running_flags
        if no_statistics or (self.training and not track):
            return [], []
        return rms, rvs

    def _batch_statistics(self) -> bool:
        """Whether the layers normalise by the batch's statistics: in training mode, and in eval mode without
        running statistics (nn.BatchNorm1d's bn_training)."""
        return self.training or self._running_flags[1]

    def _factor(self) -> float:
        """nn.BatchNorm1d's exponential_average_factor, before this batch is counted (_counts: by the kernels)."""
        bns = self.norms
        if not (self._updates() and bns) or self._running_flags[1]:  # nothing averaged
            return 0.0
        counts = None
        if self.momentum is None:  # cumulative average: 1 / the batch count (a host read, as in nn.BatchNorm1d)
            counts = [m.num_batches_tracked for m in bns]
            # one host read: a stack and copy on a GPU, item by item on the CPU (cheaper there)
            counts = [int(c) for c in counts] if counts[0].is_cpu else torch.stack(counts).tolist()
            other = next((i for i, c in enumerate(counts) if c != counts[0]), None)
            if other is not None:  # the kernels take one factor for every layer
                raise ValueError(
                    f"net[{3 * other + 1}].num_batches_tracked is {counts[other]} but net[1]'s is {counts[0]}: "
                    "with momentum=None (a cumulative average) every BatchNorm1d layer must have counted the same "
                    "batches; call reset_running_stats() on all of them (or set a momentum)")
        return float(self.momentum) if counts is None else 1.0 / (counts[0] + 1)

    def _counts(self) -> list:
        """The num_batches_tracked a training-mode call adds 1 to, as nn.BatchNorm1d does: each layer's BatchNorm
        kernel adds it (eagerly; the custom ops' callers in one _foreach_add_)."""
        return [c for c in self._counters() if c is not None] if self._updates() else []

    def _input(self, name: str, h) -> Tensor:
        if _checks.transforms_active():  # the parameters are listed only then
            _checks.no_differentiating_transform(h, list(self.parameters()))
        else:
            _checks.no_dual(h)
        net = self.net
        # net[0], not next(iter(...), None): Dynamo on torch 2.4 cannot trace next() with a default
        first = net[0] if isinstance(net, nn.Sequential) and len(net) > 0 else None
        if not isinstance(first, nn.Linear):
            self._adopt(net)  # net replaced by something else: raises, naming what is wrong
        w = first.weight
        if w.dtype not in PARAM_DTYPES:
            raise TypeError(f"Denoiser parameters must be float32 or float64, got {w.dtype}; keep the module in "
                            "fp32 (under autocast it runs in fp32 by itself)")
        batch_stats = self._batch_statistics() and self.depth > 0
        return _check_features(name, h, self.n_features, w.dtype, w.device, batch_stats)

    # -- API
    def forward(self, h: Tensor) -> Tensor:
        """r(h) (no corruption). Training mode normalises with batch statistics and updates the running ones."""
        h = self._input("h", h)
        weights, biases, gammas, betas, rms, rvs = self._params()
        chosen = _dispatch.resolve(OP_LAYER, h.device, self.backend)
        factor, counts, training = self._factor(), self._counts(), self._batch_statistics()
        needs_grad = torch.is_grad_enabled() and (
            h.requires_grad or any(p.requires_grad for ps in (weights, biases, gammas, betas) for p in ps))
        if not needs_grad:
            return _run_forward(h, weights, biases, gammas, betas, rms, rvs, training, True, factor, self.eps,
                                chosen, counts)
        with _dispatch.no_autocast(h.device):
            if not denoiser_eager._custom_ops(h, *weights, *biases, *gammas, *betas, *rms, *rvs, *counts):
                meta = (training, training and bool(rms), factor, self.eps, chosen, self.depth, rms, rvs, counts)
                return _EagerForward.apply(meta, h, *weights, *biases, *gammas, *betas)
            count_batches(counts)
            x, new_running = h, []
            for i in range(self.depth):
                y = torch.mm(x, weights[i].t())
                x, _, _, rm, rv = torch.ops.fastgan.bn_relu(y, biases[i], gammas[i], betas[i],
                                                            rms[i] if rms else None, rvs[i] if rvs else None,
                                                            training, factor, self.eps, True, chosen)
                if training and rms:
                    new_running += [rm, rv]
            _copy_running(rms, rvs, new_running)
            return F.linear(x, weights[-1], biases[-1])

    def loss(self, h: Tensor, noise: Tensor | None = None, *, detach: bool = True, reduction: str = "mean") -> Tensor:
        """||h - r(h + sigma * noise)||^2 summed over features, reduced over the batch (mean by default).

        noise: standard-normal eps of h's shape (drawn with torch.randn when None). detach=True (default)
        stops the gradient into h, so the loss trains r only (DFM trains the discriminator's features with
        its own loss); detach=False also differentiates w.r.t. h. Training mode updates the running stats.
        """
        h = self._input("h", h)
        if _checks.flag("detach", detach):
            h = h.detach()
        weights, biases, gammas, betas, rms, rvs = self._params()
        _checks.choice("reduction", reduction, REDUCTIONS)
        noise = _check_noise(noise, h)
        chosen = _dispatch.resolve(OP_LOSS, h.device, self.backend)
        return _run_loss(h, noise, float(self.sigma), weights, biases, gammas, betas, rms, rvs,
                         self._batch_statistics(), self._factor(), self.eps, chosen, reduction, self._counts())

    def generator_loss(self, h_fake: Tensor, *, reduction: str = "mean") -> Tensor:
        """||h_fake - r(h_fake)||^2 summed over features, reduced over the batch, with r(h_fake) a constant
        target (no gradient into r). Uses h_fake's own batch statistics in training mode and does not
        update the running statistics."""
        h_fake = self._input("h_fake", h_fake)
        _checks.choice("reduction", reduction, REDUCTIONS)
        chosen = _dispatch.resolve(OP_LOSS, h_fake.device, self.backend)
        return _generator_loss(h_fake, *self._params(), self._batch_statistics(), self.eps, reduction, chosen)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, backend={self.backend!r}"


class DenoiserLoss(nn.Module):
    """`denoiser.loss` as a module's forward, for wrappers that act on forward calls: under DistributedDataParallel,
    `DistributedDataParallel(DenoiserLoss(den))(h)` averages the denoiser's gradients across processes (a call of
    `den.loss` itself bypasses the wrapper, and its gradients would stay per-process)."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        if not isinstance(denoiser, Denoiser):
            raise TypeError(f"denoiser must be a fastgan.ops.Denoiser, got {type(denoiser).__name__}")
        self.denoiser = denoiser

    def forward(self, h: Tensor, noise: Tensor | None = None, *, detach: bool = True,
                reduction: str = "mean") -> Tensor:
        return self.denoiser.loss(h, noise, detach=detach, reduction=reduction)
