"""Training configuration: frozen dataclasses (model, data, method, optim, run), YAML in and out, and one
validator that names the offending field and the allowed values.

Field metadata drives validation: ``choices`` (allowed values), ``min`` / ``max`` (inclusive bounds), ``gt``
(exclusive lower bound) and ``note`` (why the bounds, added to their message); an integer without ``max`` is
still bounded by torch's 64-bit C integers; types come from the annotations (int, float, bool, str, Optional[...],
tuple[...], nested dataclasses). ``TrainConfig()`` is the embedded default job: Roth et al.'s regularized
GAN on their 3-D submanifold mixture, a short run.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from ._errors import ConfigError
from ._limits import FLOAT32_MAX, NONNEG_F32
from .config_types import (INT64_MAX, INT64_MIN, _builtin, _check_tree, _from_dict, _hints, _is_optional, _shown,
                           _unknown_key)
from .config_types import check_section  # noqa: F401  (fastgan.config is where the package finds it)
from .config_yaml import yaml_dump, yaml_load
from .data.config import DataConfig
from .models.config import CONV_ARCHS, ModelConfig

UNITS = ("gan", "roth", "nt", "dfm")
LOSSES = ("minimax", "least_squares", "wgan_gp", "fgan")
G_LOSSES = ("nonsaturating", "saturating")
F_DIVERGENCES = ("gan", "js", "kl", "reverse_kl", "pearson", "squared_hellinger")
LINEAR_F_DIVERGENCES = ("kl", "pearson")  # output activation g_f(v) = v (fastgan.methods.fdiv)
# the built-in mixtures: data.name values that are points whatever data.path says (npz may be either)
POINT_DATASETS = ("roth3d", "ring8", "grid25")


# what names a YAML config where a path not there yet could be one (a typo: "config file not found")
CONFIG_SUFFIXES = (".yaml", ".yml")
# PIL's resize takes its sizes as C ints.
C_INT_MAX = 2 ** 31 - 1


# ------------------------------------------------------------------------------------------ dataclasses

@dataclass(frozen=True)
class RothConfig:
    """Roth et al. 2017: D loss + gamma/2 * Omega (Algorithm 1); G loss unregularized."""
    # js: Omega_JS on real and fake (eq. 20, with D = sigmoid(logit)); f: Omega_f = E_Q[f*''(T)||grad T||^2]
    # (eq. 19, needs method.loss=fgan); r1 / r2: E_P / E_Q [||grad logit||^2].
    penalty: str = field(default="js", metadata={"choices": ("js", "f", "r1", "r2")})
    # fixed: gamma; anneal: gamma(t) = gamma0 * alpha^(t/T), t = 1..T the generator iteration.
    schedule: str = field(default="fixed", metadata={"choices": ("fixed", "anneal")})
    gamma: float = field(default=0.1, metadata=NONNEG_F32)
    gamma0: float = field(default=2.0, metadata=NONNEG_F32)
    alpha: float = field(default=0.01, metadata={"gt": 0.0, "max": 1.0})
    # T of the annealing; None: run.steps. Past T, gamma stays at gamma0 * alpha.
    anneal_steps: Optional[int] = field(default=None, metadata={"min": 1})
    # How the penalty's parameter gradient is formed (fastgan.ops.gradient_penalty's mode): double_backward
    # (torch's double backward), jvp (reverse over forward mode), mlp (closed form for Sequential MLP and conv
    # discriminators), auto (mlp where D is supported, on CUDA only without batch statistics; else jvp once
    # verified on CUDA, else double_backward).
    mode: str = field(default="double_backward", metadata={"choices": ("double_backward", "jvp", "mlp", "auto")})
    # Lazy regularization (Karras et al. 2020, StyleGAN2 sec. 3.1; not part of Roth et al.): the penalty only in
    # the D updates of generator iterations t = 1, 1 + every, 1 + 2 every, ..., weighted gamma * every there, so
    # its cost is amortized over `every` iterations. 1: every D update (Algorithm 1).
    every: int = field(default=1, metadata={"min": 1})


@dataclass(frozen=True)
class NTConfig:
    """NTGAN (noise-tempered GAN): D sees clean and noisy samples, mu ~ U(0,1) weights them (Algorithm 1)."""
    # fixed: eps ~ N(0, sigma^2 I); learned_sigma: sigma is learned with penalty lam * sigma^2 (eq. 5);
    # generator: eps = N(w), a noise network, penalty lam * ||eps||^2 (eq. 6).
    noise: str = field(default="generator", metadata={"choices": ("fixed", "learned_sigma", "generator")})
    # Standard deviation of fixed noise, or the initial value of the learned sigma.
    sigma: float = field(default=1.0, metadata=NONNEG_F32)
    # linear: fixed sigma annealed to 0 over anneal_steps (ablation row (c)).
    sigma_anneal: str = field(default="none", metadata={"choices": ("none", "linear")})
    anneal_steps: Optional[int] = field(default=None, metadata={"min": 1})
    # lambda, the weight of the noise penalty.
    lam: float = field(default=1.0, metadata=NONNEG_F32)
    # full: {x, x + eps}; half: {x_1..x_{m/2}, x_{m/2+1} + eps_1, ...} (section 2.3, ablation row (i)).
    batch: str = field(default="full", metadata={"choices": ("full", "half")})
    # False: only noisy samples reach D (ablation rows (a)-(c)).
    clean: bool = True
    # True: build {x, x + eps} with fastgan.ops.noisy_clean_batch (fixed / learned sigma: Philox noise from a
    # NoiseState seeded with run.seed, not the torch generator's stream) and, for method.loss=minimax, the
    # mu-weighted losses with fastgan.ops.nt_losses (G's too when g_loss=nonsaturating). Needs clean=true.
    fused: bool = False


@dataclass(frozen=True)
class DFMConfig:
    """Denoising feature matching (Warde-Farley & Bengio 2017): a denoiser r on D's penultimate features."""
    # Std of the Gaussian corruption of real features when training r (section 5: sigma = 1).
    sigma: float = field(default=1.0, metadata=NONNEG_F32)
    # None: 0.03 / n_h, n_h = the feature size (section 5).
    lambda_denoise: Optional[float] = field(default=None, metadata=NONNEG_F32)
    lambda_adv: float = field(default=1.0, metadata=NONNEG_F32)
    # True: the denoiser's loss and the generator's denoising term run through fastgan.ops.Denoiser (same
    # values and gradients; the generator term leaves the denoiser's BatchNorm running statistics untouched).
    fused: bool = True
    # The denoiser's width and depth are model.denoiser_hidden / model.denoiser_depth.


@dataclass(frozen=True)
class MethodConfig:
    # '+'-joined units: gan (plain), roth, nt, dfm, e.g. "roth+nt+dfm".
    name: str = "roth"
    loss: str = field(default="minimax", metadata={"choices": LOSSES})
    g_loss: str = field(default="nonsaturating", metadata={"choices": G_LOSSES})
    # The f-divergence of method.loss=fgan (Nowozin et al. 2016, Table 2).
    f_divergence: str = field(default="gan", metadata={"choices": F_DIVERGENCES})
    # k discriminator steps per generator step (Goodfellow et al. Algorithm 1).
    d_steps: int = field(default=1, metadata={"min": 1})
    # alternating: k D steps then one G step; simultaneous: all updates from the same parameters (DFM);
    # auto: simultaneous when dfm is on, else alternating.
    update: str = field(default="auto", metadata={"choices": ("auto", "alternating", "simultaneous")})
    # lambda of WGAN-GP's (||grad|| - 1)^2 penalty.
    gp_weight: float = field(default=10.0, metadata=NONNEG_F32)
    roth: RothConfig = RothConfig()
    nt: NTConfig = NTConfig()
    dfm: DFMConfig = DFMConfig()

    @property
    def units(self) -> frozenset:
        return frozenset(u for u in self.name.split("+") if u != "gan")

    @property
    def resolved_update(self) -> str:
        if self.update != "auto":
            return self.update
        return "simultaneous" if "dfm" in self.units else "alternating"


# torch's optimizers turn a learning rate into a float32 scalar for float32 parameters: a larger one fails inside
# the first step ("value cannot be converted to type float without overflow")
_LR = {"gt": 0.0, "max": FLOAT32_MAX, "note": "float32's largest value"}


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = field(default="adam", metadata={"choices": ("adam", "sgd")})
    batch_size: int = field(default=512, metadata={"min": 1})
    lr_g: float = field(default=1e-3, metadata=_LR)
    lr_d: float = field(default=1e-3, metadata=_LR)
    # NTGAN's noise model and DFM's denoiser; None: lr_d.
    lr_noise: Optional[float] = field(default=None, metadata=_LR)
    lr_denoiser: Optional[float] = field(default=None, metadata=_LR)
    # 0.5: Roth et al.'s 3-D mixture code (AdamOptimizer(lr, beta1=0.5)), DCGAN, NTGAN, DFM.
    beta1: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    beta2: float = field(default=0.999, metadata={"min": 0.0, "max": 1.0})
    # SGD only.
    momentum: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    # Generator iteration t (1-based) runs every learning rate at max(lr / lr_decay**(t - 1), min_lr), never above
    # lr (pylearn2's ExponentialDecay; the Goodfellow authors' mnist.yaml: 1.000004 and 1e-6).
    lr_decay: float = field(default=1.0, metadata={"min": 1.0, "max": FLOAT32_MAX})
    min_lr: float = field(default=0.0, metadata=NONNEG_F32)
    # SGD: the momentum rises linearly from `momentum` at iteration 1 to momentum_final at iteration
    # 1 + momentum_ramp_steps and stays there (pylearn2's MomentumAdjustor, a step each epoch there; mnist.yaml:
    # 0.5 to 0.7 over 249 epochs of 500 batches).
    momentum_final: Optional[float] = field(default=None, metadata={"min": 0.0, "max": 1.0})
    momentum_ramp_steps: int = field(default=0, metadata={"min": 0})

    @property
    def scheduled(self) -> bool:
        """Whether the learning rates or the momentum change during the run."""
        return self.lr_decay != 1.0 or self.momentum_final is not None


@dataclass(frozen=True)
class RunConfig:
    name: str = "roth-mixture"
    # Generator iterations.
    steps: int = field(default=3000, metadata={"min": 1})
    # torch.manual_seed takes [-2**63, 2**64) and wraps negative seeds to 2**64 + seed, so the signed range holds
    # each of torch's seeds once and leaves room for the derived seeds (seed + 7919, seed + 104729) below 2**64.
    seed: int = field(default=0, metadata={"min": INT64_MIN, "max": INT64_MAX,
                                           "note": "a signed 64-bit integer, as torch.manual_seed takes"})
    # cpu, cuda, cuda:N or auto (cuda when available).
    device: str = "cpu"
    # The fastgan.ops backend every fused op of the run uses (as fastgan.ops.use_backend, but for the run's thread
    # only): cuda, triton, cpu or reference, checked against run.device before the run starts; auto: FASTGAN_BACKEND
    # when set, else each op's fastest usable one.
    backend: str = field(default="auto", metadata={"choices": ("auto", "reference", "cpu", "cuda", "triton")})
    # The run folder is <out_dir>/<name>-<timestamp> unless dir is given.
    out_dir: str = "runs"
    dir: Optional[str] = None
    log_every: int = field(default=100, metadata={"min": 1})
    # 0: only at the end of the run.
    sample_every: int = field(default=1000, metadata={"min": 0})
    checkpoint_every: int = field(default=1000, metadata={"min": 0})
    # Samples in a grid / scatter plot (None: 64 images or 2560 points); mixtures also get mode metrics.
    num_samples: Optional[int] = field(default=None, metadata={"min": 1})
    tensorboard: bool = True
    # auto: a tqdm bar only when stderr is a terminal.
    progress: str = field(default="auto", metadata={"choices": ("auto", "on", "off")})
    # Replay each training step from one CUDA graph (after 3 eager warm-up steps): removes the host's launch
    # and Python cost, which dominates small GANs. Needs a CUDA device; Adam runs with capturable=True.
    cuda_graph: bool = False
    # torch's CPU threads for the run (torch.set_num_threads, restored afterwards); None: torch's default (one a
    # core). On a machine whose cores other processes share, 1 can be many times faster: torch's threads spin at
    # every parallel op's barrier waiting for a thread that is not scheduled.
    threads: Optional[int] = field(default=None, metadata={
        "min": 1, "max": 1024, "note": "torch's thread pool; larger values overflowed or crashed it after the run "
                                       "folder was made"})
    # torch.optim's implementation of Adam / SGD: for_loop (one parameter at a time), foreach (torch's _foreach_
    # kernels), fused (one kernel for all), or auto: fused on the CPU (3-4x faster than the for-loop update torch
    # defaults to there, bench/bench_optim.py), torch's default (foreach) on CUDA and in CUDA graphs. May change on
    # resume (the run's last bits change with it).
    optim_impl: str = field(default="auto", metadata={"choices": ("auto", "for_loop", "foreach", "fused")})
    # Goodfellow et al.'s Parzen-window log-likelihood at the end of the run: parzen_samples generated
    # samples, sigma cross-validated on parzen_validation samples G never trained on (images: the first of the
    # data.holdout held-out ones; mixtures: fresh draws), mean log-likelihood of parzen_test test samples.
    parzen: bool = False
    parzen_samples: int = field(default=10000, metadata={"min": 1})
    parzen_validation: int = field(default=1000, metadata={"min": 1})
    parzen_test: int = field(default=10000, metadata={"min": 1})  # >= 2 with run.parzen (its standard error)
    # Fréchet distance and classifier score (FID's and the Inception score's formulas on fastgan's shipped
    # Fashion-MNIST classifier, fastgan.metrics.fmnist_scores) of fd_samples generated images (>= 20: 10 parts of
    # 2 for the score) against as many test images (at most the split's), every fd_every steps (0: only at the
    # end); at the end also the mean and std of the last five evaluations in the last 10% of the steps (NTGAN's
    # protocol). Needs data.name=fashion_mnist, split=train.
    fd: bool = False
    fd_samples: int = field(default=10000, metadata={"min": 20})
    fd_every: int = field(default=0, metadata={"min": 0})


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()


# Fields a resumed run may change; everything else must match the checkpoint.
RESUMABLE_FIELDS = ("run.steps", "run.device", "run.backend", "run.log_every", "run.sample_every",
                    "run.checkpoint_every", "run.num_samples", "run.tensorboard", "run.progress", "run.cuda_graph",
                    "run.threads", "run.optim_impl", "run.out_dir", "run.dir",
                    "run.parzen", "run.parzen_samples", "run.parzen_validation", "run.parzen_test",
                    "run.fd", "run.fd_samples", "run.fd_every")


# matched whole (fullmatch: "$" let "cpu\n" through) and ASCII digits without leading zeros (torch.device refuses
# "cuda:01" and other digits with a RuntimeError, a traceback from the CLI)
_DEVICE = re.compile(r"cpu|auto|cuda(:(0|[1-9][0-9]*))?")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Field types, choices and ranges, then the rules that tie fields together. Returns cfg."""
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"config: must be a TrainConfig, got {type(cfg).__name__}")
    _check_tree(cfg)
    m, o, r = cfg.method, cfg.optim, cfg.run
    parts = m.name.split("+")
    for u in parts:
        if u not in UNITS:
            raise ConfigError(f"method.name: units must be '+'-joined names from {UNITS}, got {_shown(u)} in "
                              f"{_shown(m.name)}")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"method.name: a unit appears twice in {_shown(m.name)}")
    units = m.units
    if "roth" in units:
        if m.roth.penalty == "js" and m.loss != "minimax":
            raise ConfigError("method.roth.penalty: 'js' is the regularizer of the minimax (JS) GAN and needs "
                              f"method.loss='minimax', got method.loss={m.loss!r} (use 'f' with method.loss='fgan', "
                              "or 'r1' / 'r2')")
        if m.roth.penalty == "f" and m.loss != "fgan":
            raise ConfigError(f"method.roth.penalty: 'f' needs method.loss='fgan', got method.loss={m.loss!r}")
        if m.roth.mode in ("jvp", "mlp") and "nt" in units and m.nt.noise != "fixed":
            raise ConfigError(f"method.roth.mode: {m.roth.mode!r} differentiates the penalty w.r.t. D only, but "
                              f"NTGAN's learned noise (method.nt.noise={m.nt.noise!r}) needs D's logits "
                              "differentiable w.r.t. the noisy inputs; use 'double_backward' or 'auto' (which "
                              "runs the double backward there)")
        d_bn = [f"model.{k}" for k in ("d_batchnorm", "d_input_batchnorm") if cfg.model.resolved(k)]
        if m.roth.penalty == "f" and m.f_divergence not in LINEAR_F_DIVERGENCES and m.roth.mode == "mlp" and d_bn:
            # Omega_f differentiates T = g_f(psi); the closed form differentiates psi (fastgan.methods.roth)
            raise ConfigError(f"method.roth.mode: 'mlp' differentiates D's logits psi, but Omega_f for "
                              f"method.f_divergence={m.f_divergence!r} needs the gradient of T = g_f(psi), which "
                              f"{' and '.join(d_bn)}'s batch statistics make differ from g_f'(psi) grad psi; use "
                              "'jvp', 'double_backward' or 'auto', or a divergence "
                              f"with g_f(psi) = psi {LINEAR_F_DIVERGENCES}")
        what = {"goodfellow": "has maxout units and dropout",
                "resnet": "adds residual shortcuts, which no single chain of layers holds"}.get(cfg.model.arch)
        if m.roth.mode == "mlp" and what is not None:
            # caught by Method too, but only after the data loaded, and as a run error (exit 1)
            raise ConfigError("method.roth.mode: 'mlp' needs a discriminator made of Linear/Conv layers, activations, "
                              f"BatchNorm and Flatten; model.arch={cfg.model.arch!r} {what}: use "
                              "'auto', 'jvp' or 'double_backward'")
    if m.g_loss == "saturating" and m.loss in ("least_squares", "wgan_gp"):
        raise ConfigError(f"method.g_loss: 'saturating' is a form of the minimax and f-GAN generator losses; "
                          f"method.loss={m.loss!r} has one generator loss only (set g_loss=nonsaturating)")
    if m.resolved_update == "simultaneous" and m.d_steps != 1:
        raise ConfigError(f"method.d_steps: simultaneous updates (method.update={m.update!r}"
                          f"{', dfm on' if m.update == 'auto' else ''}) need d_steps=1, got {m.d_steps}")
    if "nt" in units:
        if m.nt.batch == "half" and not m.nt.clean:
            raise ConfigError("method.nt.batch: 'half' mixes clean and noisy samples and needs method.nt.clean=true")
        if m.nt.batch == "half" and o.batch_size < 2:
            raise ConfigError(f"optim.batch_size: the half-batch construction needs >= 2, got {o.batch_size}")
        if m.nt.fused and not m.nt.clean:
            raise ConfigError("method.nt.fused: noisy_clean_batch builds {x, x + eps} batches and needs "
                              "method.nt.clean=true (noise-only batches run the plain path: set fused=false)")
        if m.nt.batch == "half" and m.nt.clean and "dfm" in units and o.batch_size < 4:
            raise ConfigError(f"optim.batch_size: DFM's denoiser trains on the m // 2 clean rows of NT's half batches "
                              f"(method.nt.batch='half'), and its training-mode BatchNorm needs 2: batch_size >= 4, "
                              f"got {o.batch_size}")
        if m.nt.batch == "half" and m.nt.noise == "generator" and cfg.model.arch not in CONV_ARCHS and \
                cfg.model.resolved("g_batchnorm") and o.batch_size < 3:
            # the noise generator (G's architecture) draws eps for the m - m // 2 noisy rows only
            raise ConfigError(f"optim.batch_size: NT's noise generator (method.nt.noise='generator', G's "
                              f"architecture with model.g_batchnorm) draws eps for the m - m // 2 noisy rows of half "
                              f"batches, and its training-mode BatchNorm needs 2: batch_size >= 3, got {o.batch_size}")
        if m.nt.sigma_anneal != "none" and m.nt.noise != "fixed":
            raise ConfigError(f"method.nt.sigma_anneal: annealing applies to fixed noise, got "
                              f"method.nt.noise={m.nt.noise!r}")
    if cfg.model.arch in CONV_ARCHS and cfg.data.name in POINT_DATASETS:
        raise ConfigError(f"model.arch: {cfg.model.arch!r} needs an image data set, data.name={cfg.data.name!r} is a "
                          "mixture of points; use model.arch=mlp or goodfellow, or an image data.name")
    if o.batch_size < 2:
        # training-mode BatchNorm cannot normalise one sample: the first step would fail, after the run folder
        # was written
        bn = [f for f, on in ((f"method.name={m.name!r}: DFM's denoiser", "dfm" in units),
                              ("model.g_batchnorm", cfg.model.arch not in CONV_ARCHS and
                               cfg.model.resolved("g_batchnorm")),
                              ("model.d_batchnorm", cfg.model.arch not in CONV_ARCHS and
                               cfg.model.resolved("d_batchnorm")))
              if on]
        if bn:
            raise ConfigError(f"optim.batch_size: training-mode BatchNorm ({', '.join(bn)}) needs a batch of at "
                              f"least 2 samples, got {o.batch_size}")
    if o.optimizer == "adam":
        for key in ("beta1", "beta2"):
            if getattr(o, key) >= 1:  # torch.optim.Adam refuses it at start, naming no field
                raise ConfigError(f"optim.{key}: must be < 1 for optim.optimizer='adam', got {getattr(o, key)!r}")
        if o.momentum != 0.0:  # Adam has no such setting: silently training without it would mislead
            raise ConfigError(f"optim.momentum: SGD's momentum, got {o.momentum!r} with optim.optimizer='adam' (set "
                              f"optim.optimizer=sgd, or use optim.beta1 for Adam)")
        for key in ("lr_g", "lr_d", "lr_noise", "lr_denoiser"):
            lr = getattr(o, key)
            # Adam's first step is lr / (1 - beta1): past float32's range torch raises "value cannot be converted to
            # type float without overflow" in the first step, naming no field, after the run folder was written
            if lr is not None and lr / (1 - o.beta1) > FLOAT32_MAX:
                raise ConfigError(f"optim.{key}: Adam's first step is lr / (1 - beta1) = {lr / (1 - o.beta1):.4g}, "
                                  f"past float32's largest value: lower it (got {lr!r}, beta1 {o.beta1!r})")
        if o.momentum_final is not None:
            raise ConfigError("optim.momentum_final: SGD's momentum schedule, got optim.optimizer='adam' (set "
                              "optim.optimizer=sgd, or leave momentum_final unset)")
    if (o.momentum_final is None) != (o.momentum_ramp_steps == 0):
        raise ConfigError(f"optim.momentum_ramp_steps: the momentum schedule needs both momentum_final and "
                          f"momentum_ramp_steps >= 1, got momentum_final={o.momentum_final!r}, "
                          f"momentum_ramp_steps={o.momentum_ramp_steps}")
    if o.min_lr != 0.0 and o.lr_decay == 1.0:
        raise ConfigError(f"optim.min_lr: the floor of decayed learning rates, but optim.lr_decay=1 decays none "
                          f"(got min_lr={o.min_lr!r})")
    if o.scheduled and r.cuda_graph:
        # the captured step holds the learning rates and momentum it was captured with
        raise ConfigError("optim.lr_decay / optim.momentum_final: a schedule of the optimizers' settings is not "
                          "replayed by run.cuda_graph (the graph holds the values it was captured with); set "
                          "run.cuda_graph=false")
    if not _DEVICE.fullmatch(r.device):
        raise ConfigError(f"run.device: must be one of ('cpu', 'cuda', 'cuda:N', 'auto'), got {_shown(r.device)}")
    if r.parzen and r.parzen_test < 2:
        raise ConfigError(f"run.parzen_test: must be >= 2 with run.parzen (the log-likelihood's standard error), got "
                          f"{r.parzen_test}")
    if r.cuda_graph and not r.device.startswith(("cuda", "auto")):
        raise ConfigError(f"run.cuda_graph: CUDA graphs need run.device='cuda' (or 'cuda:N', 'auto'), got "
                          f"{_shown(r.device)}")
    if cfg.data.image_size is not None and cfg.data.image_size > C_INT_MAX:
        raise ConfigError(f"data.image_size: must be <= {C_INT_MAX} (2**31 - 1, the largest size PIL's resize "
                          f"takes), got {cfg.data.image_size}")
    # "--set run.dir=$DIR" with DIR unset: read as no run.dir, a new timestamped folder (a resume: the latest run of
    # run.name's), silently
    if r.dir is not None and not r.dir.strip():
        raise ConfigError(f"run.dir: an empty path {_shown(r.dir)}; leave run.dir unset (null) for a new folder "
                          f"under run.out_dir, or name the run's folder")
    # control characters: a name with a newline or tab made a folder ls and shells show mangled; NUL failed in mkdir
    if not r.name or "/" in r.name or r.name.strip() != r.name or any(c < " " or c == "\x7f" for c in r.name):
        raise ConfigError(f"run.name: must be a non-empty name without '/', control characters or surrounding "
                          f"spaces, got {_shown(r.name)}")
    return cfg


# ------------------------------------------------------------------------------------------ public API

def from_dict(data: Mapping) -> TrainConfig:
    """A validated TrainConfig from a (possibly partial) nested mapping; missing keys take their defaults."""
    if data is None:
        data = {}
    return validate(_from_dict(TrainConfig, data, ""))


def from_stored(data: Mapping) -> TrainConfig:
    """from_dict for a config an earlier fastgan wrote (a checkpoint's, a run folder's config.yaml): a field its
    data set, architecture or optimizer does not read, accepted then and refused since (data.split on an npz,
    model.leaky_slope on a tanh MLP, optim.momentum with Adam), is dropped whatever its value, as the run used its
    default; anything else invalid raises as from_dict does."""
    import copy

    from .data.config import DataConfig
    from .data.config import unread_fields as data_unread
    from .models.config import ModelConfig
    from .models.config import unread_fields as model_unread

    data = copy.deepcopy(dict(data or {}))
    d, m, r, o = data.get("data"), data.get("model"), data.get("run"), data.get("optim")
    if isinstance(r, dict):
        _upgrade_stored_run_fields(r)
    if isinstance(o, dict) and o.get("optimizer", _default(OptimConfig, "optimizer")) == "adam":
        o.pop("momentum", None)  # SGD's, which Adam never read (refused with Adam since 2026-12-04)
    for section, key in ((r, "dir"), (d, "path")):
        # accepted until 2026-12-07 and read as unset, what the run used
        if isinstance(section, dict) and isinstance(section.get(key), str) and not section[key].strip():
            section[key] = None
    if isinstance(d, dict):
        for key in data_unread(d.get("name", _default(DataConfig, "name"))):
            d.pop(key, None)
    if isinstance(m, dict):
        unread = model_unread(*(m.get(k, _default(ModelConfig, k))
                                for k in ("arch", "mlp_activation", "dcgan_activation")))
        for key in unread:
            m.pop(key, None)
    return from_dict(data)


def _upgrade_stored_run_fields(r: dict) -> None:
    """Evaluation fields of a stored config that a later check refuses, raised to what it accepts, with a warning:
    they decide no model or training step, so every command can still read the run (and a resume can --set them)."""
    import warnings

    test = r.get("parzen_test")
    if r.get("parzen") is True and isinstance(test, int) and not isinstance(test, bool) and 0 < test < 2:
        # accepted until 2026-12-02: one test sample has no standard error
        r["parzen_test"] = 2
        warnings.warn(f"the stored config's run.parzen_test={test} (accepted by fastgan before 2026-12-02) is read "
                      f"as 2, the least run.parzen takes now (the log-likelihood's standard error)", stacklevel=3)


def _default(cls, name: str):
    return cls.__dataclass_fields__[name].default


def to_dict(cfg) -> dict:
    """Plain nested dict (tuples become lists) suitable for YAML."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return _builtin(v)
    return conv(cfg)


def _with_builtins(cfg):
    """cfg with _builtin applied to every leaf (a section that is not a dataclass is left for validate to name)."""
    changes = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            new = _with_builtins(v)
        elif isinstance(v, (tuple, list)):
            items = [_builtin(x) for x in v]
            new = v if all(a is b for a, b in zip(items, v)) else type(v)(items)
        else:
            new = _builtin(v)
        if new is not v:  # (not !=: np.int32(8) == 8, and a section holding it equals the converted one)
            changes[f.name] = new
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _yaml_problem(p: Path, e) -> str:
    """One line for a YAML parse error: file:line:column and the parser's short description (its str() spans
    several lines, with the source quoted)."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or not problem:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return f"{p}: not valid YAML: {lines[0] if lines else type(e).__name__}"
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    where = ""
    if context and cmark is not None and (cmark.line, cmark.column) != (mark.line, mark.column):
        where = f" at line {cmark.line + 1}, column {cmark.column + 1}"
    return (f"{p}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"
            + (f" ({context}{where})" if context else ""))


def _read_yaml(p: Path) -> Mapping:
    """The top-level mapping of a YAML config file ({} when empty); a bad file is one ConfigError naming it."""
    import yaml

    if not p.exists():
        raise FileNotFoundError(f"config file not found: {p}")
    if p.is_dir():
        raise ConfigError(f"config: {p} is a folder; give a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a UTF-8 text file ({e.reason} at byte {e.start}); give a YAML config") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_problem(p, e)) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true or false"}.get(
            type(data), type(data).__name__)
        raise ConfigError(f"{p}: the top level must be a mapping of sections to values (run: ...), got {kind}")
    return data


def config_path(path) -> Path:
    """`path`, or where it does not exist the shipped config it names (fastgan.shipped_configs: a bare name, or
    configs/<name>.yaml from outside a checkout); else FileNotFoundError."""
    p = Path(path)
    if p.exists():
        return p
    if os.path.lexists(p):  # a link to nothing: the user's file, not a shipped config of that name
        raise FileNotFoundError(f"config file not found: {p} is a symbolic link to {os.readlink(p)}, which does not "
                                "exist")
    from . import shipped_configs

    found = shipped_configs.find(path)  # as given: Path() drops a leading ./ and a trailing /
    if found is None:
        raise FileNotFoundError(f"config file not found: {p} (a shipped config goes by its name, e.g. "
                                f"roth-mixture-gamma-annealed: `fastgan configs` lists them)")
    return found


def load_config(path, *, stored: bool = False) -> TrainConfig:
    """Read and validate a YAML config file (or a shipped config by name: config_path); stored=True for one fastgan
    wrote (a run folder's config.yaml), read as from_stored reads it."""
    p = Path(path) if stored else config_path(path)
    data = _read_yaml(p)
    if stored and not data:
        # fastgan writes every field: an empty one is damaged (compare read it as the defaults, another run's name,
        # steps and method, without a word)
        raise ConfigError(f"{p}: empty, where the config.yaml fastgan writes holds every field (a damaged file)")
    try:
        return (from_stored if stored else from_dict)(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def save_config(cfg: TrainConfig, path) -> Path:
    """Write cfg as YAML (atomically) and return the path."""
    from ._atomic import replacing

    p = Path(path)
    with replacing(p) as tmp:
        tmp.write_text(yaml_dump(to_dict(cfg)))
    return p


def parse_override(item: str) -> tuple[str, Any]:
    """'a.b.c=value' -> ('a.b.c', value parsed as YAML)."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set {_shown(item)}: expected key=value, e.g. method.roth.gamma=0.5 (a config, a file "
                          "or a shipped config's name from `fastgan configs`, goes before --set)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {_shown(item)}: empty key")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        problem = str(getattr(e, "problem", "") or "")
        if problem.startswith("duplicate key"):  # valid YAML, not text: taken as text it would hide the mistake
            raise ConfigError(f"{key}: {problem.split(' (first at')[0]} in --set {_shown(item)}") from None
        return key, raw
    if "#" in raw and _comment_dropped(raw):
        # 'run.dir=runs/exp #2' read as runs/exp: a resume then continued another run than the one named
        raise ConfigError(f"{key}: --set {_shown(item)} holds a '#' that YAML reads as a comment (at the start or "
                          f"after a space), dropping the rest of the value; quote the value ({key}='\"...\"')")
    return key, value


def _comment_dropped(raw: str) -> bool:
    """Whether YAML read part of `raw` as a comment: its last token ends before the text does."""
    import yaml

    ends = [t.end_mark.index for t in yaml.scan(raw) if not isinstance(t, yaml.StreamEndToken)]
    return max(ends, default=0) < len(raw.rstrip())


def check_overrides(overrides) -> list:
    """overrides as a list of 'key=value' strings and (key, value) pairs; anything else is a ConfigError showing
    the bad item (a bare string would otherwise be read one character at a time)."""
    if overrides is None:
        return []
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(f"overrides: must be a list of 'key=value' strings, got the string {_shown(overrides)}")
    if isinstance(overrides, Mapping) or not isinstance(overrides, Iterable):
        raise ConfigError(f"overrides: must be a list of 'key=value' strings, got {type(overrides).__name__}")
    items = list(overrides)
    for item in items:
        pair = isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
        if not isinstance(item, str) and not pair:
            raise ConfigError(f"overrides: each item must be a 'key=value' string (or a (key, value) pair), "
                              f"got {item!r}")
    return items


def _section_type(key: str):
    """The config section class a dotted key names (TrainConfig for ""), or None for a field or an unknown key."""
    cls = TrainConfig
    for part in key.split(".") if key else ():
        f = {f.name: f for f in dataclasses.fields(cls)}.get(part)
        tp = _is_optional(_hints(cls)[part])[1] if f is not None else None
        if tp is None or not dataclasses.is_dataclass(tp):
            return None
        cls = tp
    return cls


def override_items(overrides) -> list:
    """overrides as (key, value, item) triples, item the 'key=value' text (None for a pair or what a mapping
    held): a mapping given to a section (`run={steps: 5, name: a}`) becomes one item per field, so it sets those
    fields and keeps the section's others, as `run.steps=5 run.name=a` would."""
    out = []

    def add(key, value, item):
        section = _section_type(key) if isinstance(value, Mapping) else None
        if section is None:
            out.append((key, value, item))
            return
        for k, v in value.items():
            add(f"{key}.{k}", v, None)
    for item in check_overrides(overrides):
        key, value = parse_override(item) if isinstance(item, str) else item
        add(key, value, item if isinstance(item, str) else None)
    return out


def apply_overrides(data: Mapping, overrides) -> dict:
    """A copy of the nested mapping with each 'a.b=value' (or (key, value) pair) applied; unknown keys raise."""
    import copy

    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"config: must be a mapping of keys to values, got {_shown(data)}")
    out = copy.deepcopy(dict(data or {}))
    for key, value, item in override_items(overrides):
        parts = key.split(".")
        if "" in parts:
            raise ConfigError(f"{key!r}: a key is dot-separated field names, e.g. run.steps; this one has an empty "
                              "name")
        cls, node, path = TrainConfig, out, ""
        for i, part in enumerate(parts):
            fields = {f.name: f for f in dataclasses.fields(cls)}
            full = f"{path}.{part}" if path else part
            if part not in fields:
                raise ConfigError(_unknown_key(full, part, fields))
            tp = _is_optional(_hints(cls)[part])[1]
            last = i == len(parts) - 1
            if last:
                if item is not None and tp is str and isinstance(value, (bool, int, float)):
                    # YAML reads run.name=2024 as a number: a string field takes the text as typed
                    value = item.split("=", 1)[1].strip()
                node[part] = value
            else:
                if not dataclasses.is_dataclass(tp):
                    raise ConfigError(f"{full}: is a value, not a section; cannot set {key!r}")
                child = node.get(part)
                if isinstance(child, tp):
                    child = to_dict(child)
                if child is None:
                    child = {}
                if not isinstance(child, dict):
                    raise ConfigError(f"{full}: must be a mapping, got {_shown(child)}")
                node[part] = child
                node, cls = child, tp
            path = full
    return out


def coerce(cfg, overrides=None) -> TrainConfig:
    """A TrainConfig from a TrainConfig, a nested dict, a YAML path, or None (the embedded default),
    with '--set'-style overrides applied; validated."""
    if cfg is None:
        data = {}
    elif isinstance(cfg, TrainConfig):
        # numpy scalars and Paths set on a TrainConfig in Python are taken as a dict's are (validate alone refused
        # np.int64 and passed np.float64 on, which the run folder's YAML could not write)
        cfg = _with_builtins(cfg)
        if not overrides:
            return validate(cfg)
        data = to_dict(cfg)
    elif isinstance(cfg, Mapping):
        data = cfg
    elif isinstance(cfg, (str, Path)):
        if not overrides:
            return load_config(cfg)
        cfg = config_path(cfg)
        data = _read_yaml(cfg)
        merged = apply_overrides(data, overrides)
        try:
            return from_dict(merged)
        except ConfigError as e:
            # the file's own error (the file alone fails the same way) names the file, as without overrides
            try:
                from_dict(data)
            except ConfigError as alone:
                if str(alone) == str(e):
                    raise ConfigError(f"{Path(cfg)}: {e}") from None
            raise
    else:
        raise ConfigError(f"config: must be a TrainConfig, a dict, a YAML path or None, got {type(cfg).__name__}")
    return from_dict(apply_overrides(data, overrides))


def diff(a: TrainConfig, b: TrainConfig) -> list[tuple[str, Any, Any]]:
    """[(dotted field, value in a, value in b)] for every leaf that differs."""
    out = []

    def walk(x, y, path):
        if dataclasses.is_dataclass(x) and dataclasses.is_dataclass(y):
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name), getattr(y, f.name), f"{path}.{f.name}" if path else f.name)
        elif x != y:
            out.append((path, x, y))
    walk(a, b, "")
    return out


def replace(cfg, **changes):
    """dataclasses.replace with dotted keys: replace(cfg, **{"run.steps": 10})."""
    return from_dict(apply_overrides(to_dict(cfg), list(changes.items())))
