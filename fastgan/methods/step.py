"""One training iteration composed from the method units (gan, roth, nt, dfm) of a TrainConfig.

Alternating updates (Goodfellow et al. 2014, Algorithm 1; Roth Algorithm 1; NTGAN Algorithm 1): k times
{fresh real batch and z; D (and NT's noise model, and DFM's denoiser) update}, then one G update with fresh
z. Simultaneous updates (DFM section 5: "We calculate updates with respect to all losses with the parameters
of all three networks fixed, and update all parameters simultaneously"): one batch, every gradient taken at
the same parameters, then every optimizer steps.

Every random number an update consumes is drawn in `draws` (from one torch.Generator), so tests can hand in
the same draws to the reference and the schedules (gamma, sigma) are device tensors updated in place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .. import ops
from . import dfm as dfm_mod
from . import losses
from . import nt as nt_mod
from . import roth as roth_mod


@dataclass
class Draws:
    """The random inputs of one D or G update."""
    z: torch.Tensor                            # (m, latent_dim)
    eps_draws: Optional[torch.Tensor] = None   # NT: N(0, I) draws the noise model maps to eps
    mu: Optional[torch.Tensor] = None          # NT: 0-d, U(0, 1)
    gp_u: Optional[torch.Tensor] = None        # WGAN-GP: (batch of D,) U(0, 1) interpolation weights
    dn_noise: Optional[torch.Tensor] = None    # DFM: (clean rows, n_h) N(0, I) feature corruption


@dataclass
class DOut:
    d_loss: torch.Tensor
    adv: torch.Tensor
    stats: dict
    noise_loss: Optional[torch.Tensor] = None
    denoiser_loss: Optional[torch.Tensor] = None


class _FeatureTap:
    """Calls D.forward_features and keeps the features, so penalties that call D(x) also yield Phi(x) from
    the same forward pass (DFM reads them)."""

    def __init__(self, D):
        self.D, self.features = D, []

    def __call__(self, x):
        logits, feats = self.D.forward_features(x)
        self.features.append(feats)
        return logits


def _features_without_side_effects(D, x, grad: bool = False, same_masks: bool = False):
    """Phi(x) from a forward of D that leaves D's buffers (BatchNorm running statistics, spectral-norm
    vectors) as they were: the features of the penalty's own forward on x, for penalty modes that do not run D's
    forward_features (same_masks=True: the global RNG put back too, so that the penalty's forward draws the
    dropout masks this one drew), and of batches D does not train on (DFM's clean pass beside noise-only NTGAN
    batches: its masks drawn from the stream as any forward's, since a graph's replay cannot put a generator's
    state back, and a graphed run, whose warm-ups after a resume run eagerly, would otherwise leave the eager
    run's trajectory). grad=True keeps the graph to x. The buffers are put back through
    .data, past autograd's version counter: this forward's graph and D's earlier ones in the step save
    BatchNorm's running statistics (which the forward's own update does not count as a change), whose values a
    training-mode backward never reads (it reads the batch statistics; an eval-mode forward does not change
    them), and spectral norm differentiates clones of its vectors."""
    buffers = [(b, b.detach().clone()) for b in D.buffers()]
    cpu = torch.get_rng_state() if same_masks else None
    cuda = torch.cuda.get_rng_state(x.device) if same_masks and _cuda_rng_to_restore(x.device) else None
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        phi = D.features(x)
    with torch.no_grad():
        for b, saved in buffers:
            b.data.copy_(saved)
    if cpu is not None:
        torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, x.device)
    return phi


def _cuda_rng_to_restore(device: torch.device) -> bool:
    """Whether the CUDA generator's state is saved around the features' forward of same_masks (D's dropout draws
    from it): not while a CUDA graph captures, where get_rng_state raises ("current_seed during CUDA graph
    capture"). A graphed step draws nothing there: that forward runs for the penalty modes jvp and mlp, and a
    graphed run refuses jvp for a D with active dropout (auto takes the double backward), mlp such a D."""
    return device.type == "cuda" and not torch.cuda.is_current_stream_capturing()


def optimizer_flags(run, device: torch.device, optimizer: str) -> dict:
    """torch.optim's keyword flags for run.optim_impl (and Adam's capturable under run.cuda_graph: its step count
    stays on the device). auto: fused on the CPU, where torch's own default is the for-loop update (3-4x slower
    at fastgan's model sizes: bench/bench_optim.py); torch's default on CUDA and in CUDA graphs, the paths measured
    and captured there."""
    impl = run.optim_impl
    if impl == "auto":
        impl = "fused" if device.type == "cpu" and not run.cuda_graph else None
    flags = {"foreach": True if impl == "foreach" else False if impl == "for_loop" else None,
             "fused": True if impl == "fused" else None}
    if optimizer == "adam":
        flags["capturable"] = bool(run.cuda_graph)
    return flags


def optimizer_impl(opt) -> str:
    """The implementation opt's steps run (run_info.json records it): fused, foreach or for_loop, torch's own
    choice resolved where the flags leave it to torch."""
    g = opt.param_groups[0]
    if g.get("fused"):
        return "fused"
    foreach = g.get("foreach")
    if foreach is None:
        from torch.optim.optimizer import _default_to_fused_or_foreach

        _, foreach = _default_to_fused_or_foreach(g["params"], differentiable=False, use_fused=False)
    return "foreach" if foreach else "for_loop"


def _set_flags(opt, flags: dict) -> None:
    """load_state_dict restores the saved run's flags; a run may switch run.cuda_graph or run.optim_impl on
    resume. Adam's step counts go where the implementation reads them: on the parameters' device when capturable
    or fused, else on the CPU (on the GPU, every step would read each count back to the host)."""
    for group in opt.param_groups:
        group.update(flags)
        if not isinstance(opt, torch.optim.Adam):
            continue
        on_device = bool(group.get("capturable") or group.get("fused"))
        for p in group["params"]:
            st = opt.state.get(p)
            if st and "step" in st:
                st["step"] = torch.as_tensor(st["step"], dtype=torch.float32).to(p.device if on_device else "cpu")


def _params(module) -> list:
    return [p for p in module.parameters() if p.requires_grad] if module is not None else []


class _ParamLists:
    """_params(module) for the modules a Method trains, without walking each module's tree every step: the
    parameter lists are taken once (the optimizers, built from them, are fixed too) and filtered by requires_grad
    at each call, so a parameter frozen later is still left out."""

    def __init__(self):
        self._lists = {}

    def __call__(self, module) -> list:
        if module is None:
            return []
        lst = self._lists.get(id(module))
        if lst is None or lst[0] is not module:
            lst = self._lists[id(module)] = (module, list(module.parameters()))
        return [p for p in lst[1] if p.requires_grad]


class Method:
    """The losses and updates of cfg.method for generator G and discriminator D.

    noise_net / denoiser: optional modules to use instead of building them from cfg.model (tests).
    """

    def __init__(self, cfg, G: nn.Module, D: nn.Module, *, device=None, generator: torch.Generator = None,
                 noise_net: nn.Module = None, denoiser: nn.Module = None, data_shape=None):
        m = cfg.method
        self.cfg, self.G, self.D = cfg, G, D
        self.device = torch.device(device) if device is not None else next(G.parameters()).device
        self.generator = generator
        # draws come in the models' dtype (float64 models in tests, float32 in training)
        self.dtype = next(G.parameters()).dtype
        self.units = m.units
        self.loss, self.g_loss_kind, self.f = m.loss, m.g_loss, m.f_divergence
        self.update_kind = m.resolved_update
        self.d_steps = m.d_steps
        self.batch_size = cfg.optim.batch_size
        self.data_shape = tuple(data_shape if data_shape is not None else D.data_shape)
        self.gamma = None
        self.penalty_mode = m.roth.mode
        # lazy regularization: the iterations that carry the penalty (set by update_schedules)
        self.reg_every, self.regularize_now = m.roth.every, True
        self.penalty_seen = None
        self._trainable = _ParamLists()
        if "roth" in self.units:
            r = m.roth
            if r.mode == "mlp":
                from ..ops import mlp_penalty

                steps, why = mlp_penalty.plan(D)
                if steps is None:
                    raise ValueError(f"method.roth.mode: 'mlp' needs a discriminator made of Linear/Conv layers, "
                                     f"activations, BatchNorm and Flatten (no active dropout): {why}; use 'auto', "
                                     f"'jvp' or 'double_backward'")
            from ..ops.penalty_jvp import _active_dropout

            if cfg.run.cuda_graph and r.mode in ("auto", "jvp") and _active_dropout(D):
                # jvp replays D's forward, and dropout masks cannot be replayed inside a capture: "auto" would
                # take jvp in the eager warm-ups (its check passes there) and then fail at the capture
                if r.mode == "jvp":
                    raise ValueError("method.roth.mode: 'jvp' replays D's forward, which cannot replay D's dropout "
                                     "masks in a CUDA graph (run.cuda_graph=true); use 'double_backward' or 'auto'")
                self.penalty_mode = "double_backward"
            T = r.anneal_steps or cfg.run.steps
            self.gamma = roth_mod.GammaSchedule(r.schedule, r.gamma, r.gamma0, r.alpha, T, self.device)
            # with lazy regularization every iteration reports the latest penalty from this one tensor (a CUDA
            # graph of a plain iteration reads what the regularized one wrote); 0 until the first penalty
            acc = torch.float64 if self.dtype == torch.float64 else torch.float32  # the penalty's dtype
            self.penalty_seen = torch.zeros((), device=self.device, dtype=acc) if r.every > 1 else None
        self.noise = None
        self.nt_fused, self.noise_state = False, None
        if "nt" in self.units:
            n = m.nt
            if n.fused:
                if not n.clean:
                    raise ValueError("method.nt.fused: needs method.nt.clean=true")
                # Philox noise for fixed / learned sigma, reproducible from the run's seed and checkpointed; its
                # key is not the seed torch's CUDA generator (the same Philox) uses
                self.nt_fused = True
                self.noise_state = ops.NoiseState(ops.stream_seed(int(cfg.run.seed)), self.device)
            own = True  # what Method builds follows the models' dtype (float64, bfloat16); a given net keeps its own
            if n.noise == "fixed":
                self.noise = nt_mod.FixedNoise(n.sigma, n.sigma_anneal, n.anneal_steps or cfg.run.steps,
                                               device=self.device)
            elif n.noise == "learned_sigma":
                self.noise = nt_mod.LearnedSigma(n.sigma)
            else:
                own = noise_net is None
                if own:
                    from ..models import build_noise_generator

                    noise_net = build_noise_generator(cfg.model, self.data_shape)
                self.noise = nt_mod.GeneratedNoise(noise_net)
            self.noise.to(device=self.device, dtype=self.dtype if own else None)
        self.denoiser, self.lambda_dn = None, 0.0
        if "dfm" in self.units:
            if denoiser is None:
                from ..models import build_denoiser_from_config

                dfm_mod.check_denoiser_width(cfg.model.denoiser_hidden, D.feature_dim)  # the trainer's check too
                denoiser = build_denoiser_from_config(cfg.model, D.feature_dim).to(self.dtype)
            self.denoiser = denoiser.to(self.device)
            self.lambda_dn = dfm_mod.default_lambda_denoise(D.feature_dim, m.dfm.lambda_denoise)
        # the fused denoiser shares self.denoiser's layers (parameters, buffers, state_dict keys)
        self.fused_denoiser = None
        if self.denoiser is not None and m.dfm.fused:
            # fastgan's Denoiser holds its layers in .net; a plain nn.Sequential (the reference architecture) is them
            net = self.denoiser if isinstance(self.denoiser, nn.Sequential) else getattr(self.denoiser, "net", None)
            try:
                self.fused_denoiser = ops.Denoiser.from_sequential(net, sigma=m.dfm.sigma)
            except (TypeError, ValueError) as e:
                raise ValueError(f"method.dfm.fused: the denoiser cannot run on fastgan.ops.Denoiser ({e}); "
                                 "set method.dfm.fused=false") from None
        o = cfg.optim
        self.optimizers = {"G": self._optimizer(G, o.lr_g), "D": self._optimizer(D, o.lr_d)}
        if self.noise is not None and self.noise.learnable:
            self.optimizers["noise"] = self._optimizer(self.noise, self._config_lr("noise"))
        if self.denoiser is not None:
            self.optimizers["denoiser"] = self._optimizer(self.denoiser, self._config_lr("denoiser"))

    # ------------------------------------------------------------------ plumbing

    def _optimizer(self, module, lr):
        o = self.cfg.optim
        params = _params(module)
        flags = optimizer_flags(self.cfg.run, self.device, o.optimizer)
        if o.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, betas=(o.beta1, o.beta2), **flags)
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, **flags)

    @property
    def modules(self) -> dict:
        out = {"G": self.G, "D": self.D}
        if self.noise is not None and self.noise.learnable:
            out["noise"] = self.noise
        if self.denoiser is not None:
            out["denoiser"] = self.denoiser
        return out

    def state_dict(self) -> dict:
        out = {"modules": {k: v.state_dict() for k, v in self.modules.items()},
               "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()}}
        if self.noise_state is not None:
            out["noise_state"] = self.noise_state.get_state()
        if self.penalty_seen is not None:  # what a resumed lazy run logs until its next penalty
            out["penalty_seen"] = self.penalty_seen.detach().cpu().clone()
        return out

    def load_state_dict(self, state: dict) -> None:
        mods, opts = state["modules"], state["optimizers"]
        if set(mods) != set(self.modules) or set(opts) != set(self.optimizers):
            raise ValueError(f"the checkpoint holds modules {sorted(mods)} and optimizers {sorted(opts)}, this "
                             f"method has {sorted(self.modules)} and {sorted(self.optimizers)}")
        for k, mod in self.modules.items():
            mod.load_state_dict(mods[k])
        for k, opt in self.optimizers.items():
            opt.load_state_dict(opts[k])
            _set_flags(opt, optimizer_flags(self.cfg.run, self.device, self.cfg.optim.optimizer))
        if self.noise_state is not None:
            if "noise_state" not in state:
                raise ValueError("the checkpoint holds no NoiseState, but method.nt.fused draws its noise from one")
            self.noise_state.set_state(state["noise_state"])
        if self.penalty_seen is not None and "penalty_seen" in state:
            self.penalty_seen.copy_(state["penalty_seen"])

    def _update_optimizers(self, t) -> None:
        o = self.cfg.optim
        if not o.scheduled:
            return
        t = int(t)
        momentum = o.momentum
        if o.momentum_final is not None:
            frac = min(1.0, (t - 1) / o.momentum_ramp_steps)
            momentum = o.momentum + (o.momentum_final - o.momentum) * frac
        for k, opt in self.optimizers.items():
            lr0 = self._config_lr(k)  # not the param group's: a loaded optimizer state holds a scheduled one
            # exp(-n log d), not d ** -n: a power past float's range raises OverflowError
            lr = max(lr0 * math.exp(-(t - 1) * math.log(o.lr_decay)), min(o.min_lr, lr0))
            for group in opt.param_groups:
                group["lr"] = lr
                if isinstance(opt, torch.optim.SGD):
                    group["momentum"] = momentum

    def schedule_values(self) -> dict:
        """{lr_<optimizer>: its learning rate now, momentum: SGD's} when optim schedules them (logged), else {}."""
        o = self.cfg.optim
        if not o.scheduled:
            return {}
        out = {f"lr_{k.lower()}": opt.param_groups[0]["lr"] for k, opt in self.optimizers.items()}
        if o.optimizer == "sgd":
            out["momentum"] = self.optimizers["D"].param_groups[0]["momentum"]
        return out

    def _config_lr(self, name: str) -> float:
        o = self.cfg.optim
        return {"G": o.lr_g, "D": o.lr_d, "noise": o.lr_noise or o.lr_d, "denoiser": o.lr_denoiser or o.lr_d}[name]

    def update_schedules(self, t) -> None:
        """Set gamma(t) and the annealed sigma(t) for generator iteration t (1-based), and whether its D updates
        carry the penalty (every one, or with method.roth.every = k those of t = 1, 1 + k, ...); with optim.lr_decay
        or optim.momentum_final, the optimizers' learning rates and momentum of iteration t."""
        self._update_optimizers(t)
        if self.gamma is not None:
            self.gamma.update(t)
            if self.reg_every > 1:
                self.regularize_now = (int(t) - 1) % self.reg_every == 0
        if self.noise is not None:
            self.noise.update(t)

    # ------------------------------------------------------------------ random inputs

    def _rand(self, shape):
        g = self.generator
        gdev = g.device if g is not None else self.device
        return torch.rand(shape, generator=g, device=gdev, dtype=self.dtype).to(self.device)

    def _randn(self, shape):
        g = self.generator
        gdev = g.device if g is not None else self.device
        return torch.randn(shape, generator=g, device=gdev, dtype=self.dtype).to(self.device)

    def sample_z(self, m: int) -> torch.Tensor:
        if hasattr(self.G, "sample_latent"):
            return self.G.sample_latent(m, generator=self.generator, device=self.device, dtype=self.dtype)
        return self._randn((m, self.G.latent_dim))

    def draws(self, m: int, for_d: bool = True) -> Draws:
        d = Draws(z=self.sample_z(m))
        nt = self.cfg.method.nt
        d_batch, clean_rows = m, m
        if self.noise is not None:
            n_eps = nt_mod.noise_count(m, nt.batch, nt.clean)
            if not (self.nt_fused and not isinstance(self.noise, nt_mod.GeneratedNoise)):
                # (fused fixed / learned sigma: the op draws eps from the Philox stream of noise_state)
                d.eps_draws = self.noise.draw(n_eps, self.data_shape, self.generator, self.device, self.dtype)
            if nt.clean:
                d.mu = self._rand(())
                d_batch = 2 * m if nt.batch == "full" else m
                clean_rows = m if nt.batch == "full" else m // 2
        if for_d and self.loss == "wgan_gp":
            d.gp_u = self._rand((d_batch,))
        if for_d and self.denoiser is not None:
            d.dn_noise = self._randn((clean_rows, self.D.feature_dim))
        return d

    # ------------------------------------------------------------------ objectives

    def _noise_eps(self, draws):
        """eps from the noise model (with a graph to its parameters), or None where the fused op draws it."""
        if draws.eps_draws is None:
            return None
        eps = self.noise(draws.eps_draws)
        if tuple(eps.shape[1:]) != self.data_shape:
            # x + eps would broadcast a noise net of another shape over the data, silently
            raise ValueError(f"noise_net: its output has sample shape {tuple(eps.shape[1:])}, the data have sample "
                             f"shape {self.data_shape}")
        return eps

    def _nt_batches(self, x_real, x_fake, draws, eps):
        nt = self.cfg.method.nt
        if self.nt_fused:
            xr, xf, w, clean = nt_mod.fused_build(x_real, x_fake, self.noise, eps, draws.mu, nt.batch,
                                                  self.noise_state)
            return xr, xf, w, w, clean
        xr, wr, clean = nt_mod.build(x_real, eps, draws.mu, nt.batch, nt.clean)
        xf, wf, _ = nt_mod.build(x_fake, eps, draws.mu, nt.batch, nt.clean)
        return xr, xf, wr, wf, clean

    def d_objective(self, x_real: torch.Tensor, x_fake: torch.Tensor, draws: Draws) -> DOut:
        """The discriminator's loss (and NT's noise loss, DFM's denoiser loss) on one batch.

        x_fake must not carry a graph to G (the D update does not touch G).
        """
        m = self.cfg.method
        stats = {}
        wr = wf = None
        clean = slice(None)
        eps = None
        if self.noise is not None:
            eps = self._noise_eps(draws)
            xr, xf, wr, wf, clean = self._nt_batches(x_real, x_fake, draws, eps)
            stats["noise_norm" if m.nt.noise == "generator" else "sigma"] = self.noise.magnitude(eps)
        else:
            xr, xf = x_real, x_fake
        regularize = self.gamma is not None and self.regularize_now
        tap = self.denoiser is not None and not (regularize and self.penalty_mode != "double_backward")
        D = _FeatureTap(self.D) if tap else self.D
        phi = None
        if self.denoiser is not None and not tap and clean is not None:
            # the fused penalty modes do not call D.forward_features: Phi of the same batch, taken beforehand
            phi = _features_without_side_effects(self.D, xr, same_masks=True)[clean]
        if regularize:
            omega, lr, lf = roth_mod.regularizer(D, m.roth.penalty, xr, xf, wr, wf, self.f, self.penalty_mode)
        else:
            lr = D(xr).reshape(xr.shape[0])
            lf = D(xf).reshape(xf.shape[0])
        if self.nt_fused and self.loss == "minimax":
            adv = ops.nt_losses(lr, lf, draws.mu, loss="d", mode=nt_mod.FUSED_MODES[m.nt.batch])
        else:
            tr, tf = losses.d_terms(self.loss, lr, lf, self.f)
            adv = losses.reduce(tr, wr) + losses.reduce(tf, wf)
        d_loss = adv
        if regularize:
            # every = 1 multiplies nothing more: Algorithm 1's loss as before, bit for bit
            weight = self.gamma.value if self.reg_every == 1 else self.gamma.value * self.reg_every
            d_loss = d_loss + 0.5 * weight * omega
            if self.penalty_seen is None:
                stats["penalty"] = omega.detach()
            else:
                self.penalty_seen.copy_(omega.detach())
        if self.penalty_seen is not None:
            # a copy: the stats of an iteration must not change when a later one writes the buffer (inside a
            # CUDA graph the copy is a captured kernel, so the plain graph still reads the latest value)
            stats["penalty"] = self.penalty_seen.clone()
        if self.gamma is not None:
            stats["gamma"] = self.gamma.value.detach().clone()
        if self.loss == "wgan_gp":
            gp = losses.reduce(losses.gp_per_sample(self.D, xr, xf, draws.gp_u), wr)
            d_loss = d_loss + m.gp_weight * gp
            stats["gp"] = gp.detach()
        out = DOut(d_loss=d_loss, adv=adv, stats=stats)
        if self.noise is not None and self.noise.learnable:
            # Eq. 5 / 6: the noise minimises the D objective (the adversarial value D maximises) + lambda * penalty.
            out.noise_loss = -adv + m.nt.lam * self.noise.penalty(eps)
        if self.denoiser is not None:
            if clean is None:  # noise-only batches hold no clean real sample: a separate pass for Phi(x), which
                # D does not train on, so it must not move D's running statistics (nor spectral-norm vectors)
                phi = _features_without_side_effects(self.D, x_real)
            elif tap:
                phi = D.features[0][clean]
            out.denoiser_loss = self._denoiser_loss(phi, draws.dn_noise)
        stats["d_loss"] = d_loss.detach()
        if out.noise_loss is not None:
            stats["noise_loss"] = out.noise_loss.detach()
        if out.denoiser_loss is not None:
            stats["denoiser_loss"] = out.denoiser_loss.detach()
        return out

    def _sync_fused_mode(self) -> None:
        """The fused denoiser (its layers are the denoiser's) in the denoiser's mode: Module.train() sets every
        submodule's flag through nn.Module.__setattr__ (~18 us at depth 3), so it runs only when a flag differs."""
        mode = self.denoiser.training
        if any(m.training != mode for m in self.fused_denoiser.modules()):
            self.fused_denoiser.train(mode)

    def _denoiser_loss(self, phi, noise):
        if self.fused_denoiser is None:
            return dfm_mod.denoiser_loss(self.denoiser, phi, noise, self.cfg.method.dfm.sigma)
        self._sync_fused_mode()
        return self.fused_denoiser.loss(phi, noise)  # phi detached inside: the loss trains r only

    def _denoiser_term(self, phi_fake):
        if self.fused_denoiser is None:
            return dfm_mod.generator_term(self.denoiser, phi_fake)
        self._sync_fused_mode()
        return self.fused_denoiser.generator_loss(phi_fake)

    def g_objective(self, fake: torch.Tensor, draws: Draws, noise_state=None):
        """(generator loss, stats) for generated samples `fake` (carrying G's graph). noise_state: where the fused
        NT op draws eps (default the method's stream, which D's batches moved on)."""
        m = self.cfg.method
        wg, clean = None, slice(None)
        xg = fake
        if self.noise is not None:
            with torch.no_grad():  # the G update does not move the noise model
                eps = self._noise_eps(draws)
            if self.nt_fused:
                _, xg, wg, clean = nt_mod.fused_build(None, fake, self.noise, eps, draws.mu, m.nt.batch,
                                                     noise_state or self.noise_state, grad_noise=False)
            else:
                xg, wg, clean = nt_mod.build(fake, eps, draws.mu, m.nt.batch, m.nt.clean)
        fused_g = self.nt_fused and self.loss == "minimax" and self.g_loss_kind == "nonsaturating"

        def adversarial(logits):
            if fused_g:
                return ops.nt_losses(None, logits, draws.mu, loss="g", mode=nt_mod.FUSED_MODES[m.nt.batch])
            return losses.reduce(losses.g_terms(self.loss, self.g_loss_kind, logits, self.f), wg)
        stats = {}
        if self.denoiser is not None:
            logits, phi = self.D.forward_features(xg)
            adv = adversarial(logits.reshape(-1))
            # noise-only batches: Phi(G(z)) of the clean fakes D's step does not see, without moving D's state
            phi_fake = _features_without_side_effects(self.D, fake, grad=True) if clean is None else phi[clean]
            term = self._denoiser_term(phi_fake)
            g_loss = m.dfm.lambda_adv * adv + self.lambda_dn * term
            stats["dfm_term"] = term.detach()
        else:
            logits = self.D(xg).reshape(xg.shape[0])
            g_loss = adv = adversarial(logits)
        stats["g_loss"] = g_loss.detach()
        return g_loss, stats

    # ------------------------------------------------------------------ updates

    def _zero(self, *names):
        for n in names:
            if n in self.optimizers:
                self.optimizers[n].zero_grad(set_to_none=True)

    def _backward_d(self, out: DOut) -> None:
        """Gradients of the D loss into D, of the noise loss into the noise model, of the denoiser loss into r."""
        if out.noise_loss is not None:
            params = self._trainable(self.noise)
            grads = torch.autograd.grad(out.noise_loss, params, retain_graph=True, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = torch.zeros_like(p) if g is None else g
        out.d_loss.backward(inputs=self._trainable(self.D))
        if out.denoiser_loss is not None:
            out.denoiser_loss.backward(inputs=self._trainable(self.denoiser))

    def _step(self, *names):
        for n in names:
            if n in self.optimizers:
                self.optimizers[n].step()

    def d_update(self, x_real: torch.Tensor, draws: Draws) -> dict:
        with torch.no_grad():
            fake = self.G(draws.z)
        out = self.d_objective(x_real, fake, draws)
        self._zero("D", "noise", "denoiser")
        self._backward_d(out)
        self._step("D", "noise", "denoiser")
        return out.stats

    def g_update(self, draws: Draws) -> dict:
        fake = self.G(draws.z)
        g_loss, stats = self.g_objective(fake, draws)
        self._zero("G")
        g_loss.backward(inputs=self._trainable(self.G))
        self._step("G")
        return stats

    def simultaneous_update(self, x_real: torch.Tensor, draws: Draws) -> dict:
        fake = self.G(draws.z)
        # one set of draws for every loss, so G's batch gets D's eps: the fused op draws it again from the stream
        # as it stood before D's batches (a device copy: capturable)
        g_noise = self.noise_state.clone() if self.nt_fused else None
        out = self.d_objective(x_real, fake.detach(), draws)
        g_loss, gstats = self.g_objective(fake, draws, g_noise)
        self._zero(*self.optimizers)
        g_loss.backward(inputs=self._trainable(self.G))
        self._backward_d(out)
        self._step(*self.optimizers)
        return {**out.stats, **gstats}

    def train_step(self, t, sample_real: Callable[[int], torch.Tensor]) -> dict:
        """Generator iteration t (1-based); returns detached statistics (device tensors)."""
        self.update_schedules(t)
        return self.updates(sample_real)

    def updates(self, sample_real: Callable[[int], torch.Tensor]) -> dict:
        """The updates of one generator iteration at the current schedules: what a CUDA graph captures."""
        m = self.batch_size
        if self.update_kind == "simultaneous":
            return self.simultaneous_update(sample_real(m), self.draws(m, for_d=True))
        stats = {}
        for _ in range(self.d_steps):
            x = sample_real(m)
            stats.update(self.d_update(x, self.draws(m, for_d=True)))
        stats.update(self.g_update(self.draws(m, for_d=False)))
        return stats
