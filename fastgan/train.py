"""`fastgan.train(cfg)`: run a training job from a config, writing the resolved config, CSV and TensorBoard
scalars, sample pictures and checkpoints into one run folder (its lock: `run_folder`; the command:
`train_cli`).

Kept light to import (``import fastgan`` imports this module): data, models, tqdm and PIL load inside
`train`.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import checkpoint as ckpt
from ._atomic import replacing
from ._errors import oserror
from ._version import __version__
from . import config as C
from . import shipped_configs
from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig
from .graph import GraphedStep
from .methods.dfm import check_denoiser_width
from .ops._locks import ForkSafeLock
from .models.config import CONV_ARCHS
from .interrupts import InterruptAtStepEnd, Terminated, interruption
from .run_folder import (CHECKPOINT, LOCK, STATUS, claim, discard_created_lock, find_run, lock, new_run_dir,
                         read_status, refuse_if_running, remove_stale_temporaries, unlock)
from .run_folder import RUN_INFO, recorded_data_path, usable_path
from .run_folder import RunFolderError  # noqa: F401 (users catch it as fastgan.train's, with Terminated)
from .train_checks import (_check_dcgan_images, _check_forced_backend, _check_g_starts_one_by_one,
                           _check_graph_data, _check_graph_noise_backend, _check_resnet_images, _device, _forced_by)
from .train_resume import (_check_folder_config, _check_resumed_data, _check_resumed_data_path, _first_problem,
                           _merge_for_resume, _stored_samples)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; training stopped without writing a checkpoint."""


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    losses: dict
    generator: torch.nn.Module
    config: TrainConfig
    models: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    # the gradient modes of the penalty that ran (fastgan.ops gradient_penalty's "mlp", "jvp", "double_backward";
    # "auto" resolved), read off fastgan.ops._dispatch.counts around the run
    penalty_modes: tuple = ()
    # {fastgan op: the backends its calls ran on} in this session (read off fastgan.ops._dispatch.counts; a
    # graphed run's replays are not counted, its warm-up and capture are; the counts are process-wide: ops other
    # threads ran meanwhile are included)
    backends: dict = field(default_factory=dict)
    # the step training began at (the checkpoint's on resume); step == start_step: the checkpoint was already at
    # run.steps or past it, so nothing was trained (and, unless final_evaluation_only, nothing written)
    start_step: int = 0
    # a resume of a run whose last session trained to the end and stopped in its final evaluation (Ctrl-C, a
    # failure): no step was trained, the final evaluation ran again
    final_evaluation_only: bool = False


# ------------------------------------------------------------------------------------------ helpers


class ResumedOnAnotherDevice(UserWarning):
    """A run resumed on another kind of device (CPU <-> CUDA) than its checkpoint's: its random draws go on from a
    new stream (seeded by run.seed and the step), not the one it would have drawn."""


def _resolve(cfg: TrainConfig, feature_dim: int) -> TrainConfig:
    m, changes = cfg.method, {}
    if "roth" in m.units and m.roth.schedule == "anneal" and m.roth.anneal_steps is None:
        changes["method.roth.anneal_steps"] = cfg.run.steps
    if "nt" in m.units and m.nt.sigma_anneal != "none" and m.nt.anneal_steps is None:
        changes["method.nt.anneal_steps"] = cfg.run.steps
    if "dfm" in m.units and m.dfm.lambda_denoise is None:
        changes["method.dfm.lambda_denoise"] = 0.03 / feature_dim
    return C.replace(cfg, **changes) if changes else cfg


def _finite_scalars(stats: dict) -> bool:
    """Whether every stat is a one-element tensor holding a finite value, read on the host (on the CPU a read is a
    copy of 4 bytes; the monitor's per-step path runs on devices that are not CUDA). False for anything else, which
    _FiniteMonitor.check then examines (and names)."""
    for v in stats.values():
        if v.numel() != 1 or v.is_complex() or not math.isfinite(v.item()):
            return False
    return True


class _FiniteMonitor:
    """Finds the first step at which a logged loss is NaN/inf. On CPU it checks every step; on CUDA it keeps
    the step's device tensors and checks them at log time (no host sync per step)."""

    def __init__(self, every_step: bool, latest_only: bool = False):
        self.every_step, self.latest_only = every_step, latest_only
        self.pending: list = []

    def update(self, step: int, stats: dict) -> None:
        if self.latest_only:  # a CUDA graph overwrites the same stats tensors every step
            self.pending = []
        if self.every_step and not self.pending and _finite_scalars(stats):
            return  # checked: nothing to keep (check() would find the same, with ~10 tensor ops more)
        self.pending.append((step, stats))
        if self.every_step:
            self.check()

    def check(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        flags = torch.stack([torch.stack([torch.isfinite(v).all() for v in s.values()]).all() for _, s in pending])
        if bool(flags.all()):
            return
        step, stats = pending[int((~flags).nonzero()[0])]
        for k, v in stats.items():
            if not bool(torch.isfinite(v).all()):
                when = f"by step {step} (checked at log steps under run.cuda_graph)" if self.latest_only else \
                    f"at step {step}"
                raise NonFiniteLossError(f"{k} is {float(v)} {when}")


# ------------------------------------------------------------------------------------------ the trainer

def _sized_by(*fields):
    """An evaluation whose allocation fails names the fields that size it (the CLI's out-of-memory line): a huge
    run.parzen_test failed after training, naming the batch and model sizes instead."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (MemoryError, RuntimeError) as e:
                if not hasattr(e, "sized_by"):
                    e.sized_by = fields
                raise
        return run
    return wrap


_SETUP_LOCK = ForkSafeLock()


class _Run:
    def __init__(self, cfg: TrainConfig, resume: bool, progress: Optional[bool]):
        self.device = _device(cfg.run.device)
        _check_forced_backend(cfg, self.device)
        self.lock, self._fresh = None, None
        signals = InterruptAtStepEnd(at_once=True)  # SIGTERM too: it killed the process, the folder half made
        try:
            # seeding the global generators and building the models from them: two runs in two threads raced there
            # (one's G built from the other's seed), so setups run one at a time; the steps use their own generators
            with _SETUP_LOCK:
                self._setup(cfg, resume, progress)
        except BaseException:
            self._discard_start()
            raise
        finally:
            signals.restore()

    def _discard_start(self) -> None:
        self._close_tb()  # before the folder goes: Windows removes no open file
        discard_created_lock(self.lock)  # a refused resume of a folder that had no lock file leaves none
        self._remove_fresh_folder()
        unlock(self.lock)
        self.lock = None

    def _close_tb(self) -> None:
        """The TensorBoard event file closed, where _open_logs opened it and _run's own finally did not run (a
        failure later in setup, or in run() before the loop): it stayed open, its descriptor held (a deleted file's
        space too), for as long as the error was kept (a notebook keeps the last one). A failing close (the disk
        that failed the run) does not replace the run's error."""
        tb = getattr(self, "tb", None)
        if tb is not None:
            with contextlib.suppress(OSError):
                tb.close()

    def _remove_fresh_folder(self) -> None:
        """A new run that failed while starting (an allocation, a full disk), before training a step: what it wrote
        goes, so that the folder neither lingers as a run with no checkpoint nor blocks run.dir's reuse. A folder
        this session made goes whole; one that was there (an empty run.dir) keeps itself and its lock file."""
        fresh, self._fresh = self._fresh, None
        if fresh is None:
            return
        made, d = fresh
        if made:
            shutil.rmtree(d, ignore_errors=True)
            return
        for p in d.iterdir():
            if p.name == LOCK:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def _setup(self, cfg: TrainConfig, resume: bool, progress: Optional[bool]):
        import numpy as np

        from .data import build_dataset
        from .methods.step import Method
        from .models import build_discriminator, build_generator

        state, run_dir = None, None
        if resume:
            run_dir = find_run(cfg)
            self.lock = lock(run_dir)
            path = run_dir / CHECKPOINT
            state = ckpt.load(path)
            saved = _checkpoint_config(state, path)
            _check_folder_config(run_dir, saved, path)
            recorded = recorded_data_path(run_dir)
            cfg = _merge_for_resume(saved, cfg, path, recorded)
            _check_resumed_data_path(cfg, recorded)
        seed = cfg.run.seed
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        self.dataset = build_dataset(cfg.data, self.device)
        shape = tuple(self.dataset.shape)
        if state is not None:
            _check_resumed_data(run_dir, self.dataset, run_dir / CHECKPOINT)
        if cfg.model.arch in CONV_ARCHS and self.dataset.kind != "images":
            raise ConfigError(f"model.arch: {cfg.model.arch!r} needs an image data set, data.name={cfg.data.name!r}"
                              f"{f' (data.path={cfg.data.path!r})' if cfg.data.path else ''} holds points of shape "
                              f"{shape}; use model.arch=mlp or goodfellow")
        _check_resnet_images(cfg, shape)
        _check_dcgan_images(cfg, shape)
        _check_g_starts_one_by_one(cfg, shape)
        self.G = build_generator(cfg.model, shape).to(self.device)
        if state is None and cfg.model.g_output_bias == "marginals":
            self.G.init_output_bias(self.dataset.feature_mean())
        self.D = build_discriminator(cfg.model, shape).to(self.device)
        if "dfm" in cfg.method.units:
            check_denoiser_width(cfg.model.denoiser_hidden, self.D.feature_dim)
        if not resume:
            cfg = _resolve(cfg, self.D.feature_dim)
        self.cfg = cfg
        if cfg.run.cuda_graph and self.device.type != "cuda":
            raise ConfigError(f"run.cuda_graph: needs a CUDA device, run.device={cfg.run.device!r} resolved "
                              f"to {self.device}")
        _check_graph_data(cfg, self.dataset)
        _check_graph_noise_backend(cfg, self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.method = Method(cfg, self.G, self.D, device=self.device, generator=self.gen, data_shape=shape)
        self.start, self.done = 0, False
        if state is not None:
            self._load(state, run_dir / CHECKPOINT)
            self.start = state["step"]
        nothing_to_train = state is not None and self.start >= cfg.run.steps
        self.final_only = nothing_to_train and self.start == cfg.run.steps and \
            _final_evaluation_pending(run_dir, self.start)
        self._check_eval(read_data=self.final_only or not nothing_to_train)
        if nothing_to_train and not self.final_only:
            # nothing to train: leave the run folder as it is (config.yaml would get the lower run.steps, the
            # logs a new session, samples/ a redrawn picture)
            self.out, self.ckpt_path, self.done = run_dir, run_dir / CHECKPOINT, True
            discard_created_lock(self.lock)
            return
        if run_dir is not None:
            self.out = run_dir
            claim(self.lock)  # only now: a resume refused above leaves the folder as it was, lock file included
            remove_stale_temporaries(run_dir)
        else:
            made = not (cfg.run.dir and usable_path(Path(cfg.run.dir), "run.dir").is_dir())
            self.out, self.lock = new_run_dir(cfg)
            # what a failure in setup, or an interrupt in the first step, removes (_remove_fresh_folder)
            self._fresh = (made, self.out)
        self.ckpt_path = self.out / CHECKPOINT
        self.last_ckpt_step = self.start if state is not None else None
        # what can still fail (allocations, reading metrics.csv) before config.yaml and run_info.json are
        # written: a resume refused here leaves them as they were
        self._open_logs(resume_step=self.start if state is not None else None, progress=progress)
        if self.final_only:
            # rows the stopped final evaluation logged before it stopped are logged again
            self.csv.drop(self.start, FINAL_EVALUATION_KEYS)
        C.save_config(cfg, self.out / "config.yaml")
        self._write_info(shape)

    # ---------------------------------------------------------------- setup

    @property
    def _cuda_device(self) -> Optional[torch.device]:
        """The run's device when it is a CUDA one (whose default generator the checkpoints hold), else None."""
        return self.device if self.device.type == "cuda" else None

    def _load(self, state: dict, path: Path) -> None:
        """Models, optimizers and RNG states from the checkpoint, each checked first: nothing fails steps later."""
        method, step = state["method"], state["step"]
        opts = method.get("optimizers")
        if isinstance(opts, dict):
            scheduled = ("lr", "momentum") if self.cfg.optim.scheduled else ()
            for k, opt in self.method.optimizers.items():
                if k in opts:
                    ckpt.check_optimizer_state(path, k, opts[k], opt, step, scheduled)
        mods = method.get("modules")
        if isinstance(mods, dict):
            for k, mod in self.method.modules.items():
                if isinstance(mods.get(k), dict):
                    ckpt.check_module_state(path, k, mods[k], mod)
        try:
            self.method.load_state_dict(method)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            if isinstance(e, CheckpointError):
                raise
            why = f"no entry {e}" if isinstance(e, KeyError) else _first_problem(e)
            raise CheckpointError(f"checkpoint {path} does not fit this config's models: {why}") from None
        if self.method.penalty_seen is not None and "penalty_seen" not in method:
            # written by a fastgan of 2026-11-30 (lazy regularization without this entry): training is unaffected
            warnings.warn(f"checkpoint {path} holds no latest penalty (written before fastgan kept it): the logged "
                          f"penalty reads 0 until the next regularized iteration (method.roth.every="
                          f"{self.cfg.method.roth.every})", stacklevel=2)
        try:
            other_device = ckpt.set_rng_state(state["rng"], {"train": self.gen}, cuda_device=self._cuda_device)
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
        if other_device:
            # a CPU generator and a CUDA one cannot take each other's state: the draws go on from a stream of
            # the seed and the step, the same on every resume at this step, but not the one the run would have drawn
            self.gen.manual_seed((int(self.cfg.run.seed) + 0x9E3779B97F4A7C15 * (step + 1)) % 2 ** 63)
            warnings.warn(f"resuming a run whose checkpoint was written on another kind of device than "
                          f"{self.device} (run.device): its data, latent and noise draws continue from a new stream "
                          f"seeded by run.seed and the step ({step}), not the one the run would have drawn there",
                          ResumedOnAnotherDevice, stacklevel=2)

    def _check_eval(self, read_data: bool = True):
        """What run.parzen and run.fd need of the data, checked before the run folder is made; with read_data
        (not for a resume with nothing left to train), run.fd's classifier and test split are read too."""
        from .data import TEST_SPLIT_DATASETS

        r, d = self.cfg.run, self.cfg.data
        self.classifier = self._fd_real = None
        if r.fd:
            if d.name != "fashion_mnist":
                raise ConfigError(f"run.fd: scores images with fastgan's Fashion-MNIST classifier and needs "
                                  f"data.name=fashion_mnist, got {d.name!r} (or set run.fd=false)")
            self._check_test_split("run.fd", "the Fréchet distance is to the test split")
            if read_data:
                self._fd_setup()
        if not r.parzen:
            return
        if self.dataset.kind == "points":
            from .data import mixtures

            if d.name not in mixtures.MIXTURES:
                # points of a file have no test split: both sets would be redrawn from the training points
                raise ConfigError(f"run.parzen: scores points only for the built-in mixtures "
                                  f"({', '.join(mixtures.MIXTURES)}), whose validation and test points are fresh "
                                  f"draws; got data.name={d.name!r} (set run.parzen=false)")
            return
        if d.name not in TEST_SPLIT_DATASETS:
            raise ConfigError(f"run.parzen: needs a data set with a test split ({', '.join(TEST_SPLIT_DATASETS)}) "
                              f"or a mixture, got data.name={d.name!r}")
        self._check_test_split("run.parzen", "the log-likelihood is of the test split")
        if read_data:  # a folder without its test file failed after training (hours on the shipped config)
            from .data import load_test_split

            load_test_split(d, self.device, 1)
        if d.holdout < r.parzen_validation:
            # sigma chosen on samples G was trained to reproduce would favour memorising the training set
            raise ConfigError(f"run.parzen: sigma is cross-validated on training samples held out of training: set "
                              f"data.holdout >= run.parzen_validation={r.parzen_validation}, got data.holdout="
                              f"{d.holdout} (the last data.holdout samples of the split are then not trained on), or "
                              f"set run.parzen=false")

    def _fd_setup(self):
        """The classifier and the test split's feature statistics, read now: a missing or too small split fails
        before the run folder is made, not at the first evaluation."""
        from .data import load_test_split
        from .metrics import load_fmnist_classifier, real_stats

        self.classifier = load_fmnist_classifier(self.device)
        try:
            real = load_test_split(self.cfg.data, self.device, self.cfg.run.fd_samples)
        except (OSError, ValueError) as e:
            raise type(e)(f"run.fd: needs the test split: {e}") from None
        if real.shape[0] < 2:
            raise ConfigError(f"run.fd: the test split of data.path={self.cfg.data.path!r} holds {real.shape[0]} "
                              f"image(s); the Fréchet distance needs at least 2 (or set run.fd=false)")
        self._fd_real = real_stats(real, self.classifier)

    def _check_test_split(self, key: str, why: str):
        d = self.cfg.data
        if d.path and not Path(d.path).is_dir():
            # a single file has no split files: the "test" set would silently be the training file again
            raise ConfigError(f"{key}: needs a test split, read from the split files of a data.path folder; "
                              f"data.path={d.path!r} is a single file (give its folder, or set {key}=false)")
        if d.split != "train":
            raise ConfigError(f"{key}: {why}, and data.split={d.split!r} trains on it; use data.split=train "
                              f"(or set {key}=false)")

    def _write_info(self, shape):
        from .data import mixtures
        from .methods import step

        info = {
            "device": str(self.device), "data_shape": list(shape), "data_kind": self.dataset.kind,
            "latent_dim": int(self.G.latent_dim), "feature_dim": int(self.D.feature_dim),
            "units": sorted(self.method.units), "update": self.method.update_kind,
            "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in self.method.modules.items()},
            "torch": str(torch.__version__), "fastgan": __version__,
            # what forced the fused ops' backend, if anything (status.json says which ran, once the run finishes)
            "backend": _forced_by(self.cfg),
            "optimizers": {k: step.optimizer_impl(o) for k, o in self.method.optimizers.items()},
        }
        if self.cfg.data.path:
            # as this session resolved it: config.yaml keeps data.path as typed, which a command run from another
            # folder read relative to that one (crosstest then used another file of the same name, silently)
            info["data_path"] = str(Path(self.cfg.data.path).resolve())
        if self.cfg.data.name not in mixtures.MIXTURES:
            # a resume on a file grown since trained on the samples held out before
            info["data_samples"] = _stored_samples(self.dataset)
        if self.method.denoiser is not None:
            info["lambda_denoise"] = self.method.lambda_dn
        self._write_json(RUN_INFO, info)

    def _write_json(self, name: str, obj: dict) -> None:
        """The run folder's file `name`, written to a temporary file and renamed: readers see it whole or not."""
        with replacing(self.out / name) as tmp:
            tmp.write_text(json.dumps(obj, indent=2) + "\n")

    def _open_logs(self, resume_step, progress):
        from .logging_utils import CSVLogger, TensorBoardWriter

        r = self.cfg.run
        if progress is None:
            progress = r.progress == "on" or (r.progress == "auto" and sys.stderr.isatty())
        self.show_progress = bool(progress)
        seed = r.seed
        eval_gen = torch.Generator(device=self.device).manual_seed(seed + 7919)
        points = self.dataset.kind == "points"
        n = r.num_samples or (2560 if points else 64)
        self.fixed_z = self._latent(n, eval_gen)
        self.real_view = self.dataset.sample(n, eval_gen) if points else None
        self.means = self.mix_std = None
        from .data import mixtures

        if self.cfg.data.name in mixtures.MIXTURES:
            self.means = mixtures.means(self.cfg.data.name, device=self.device)
            self.mix_std = mixtures.quality_std(self.cfg.data.name, self.cfg.data.mixture_std)
        self.csv = CSVLogger(self.out / "metrics.csv", resume_step=resume_step)  # reads; rewrites at the first row
        self.tb = TensorBoardWriter(self.out / "tb", resume_step=resume_step) if r.tensorboard else None

    def _latent(self, n, generator):
        if hasattr(self.G, "sample_latent"):
            return self.G.sample_latent(n, generator=generator, device=self.device)
        return torch.randn(n, self.G.latent_dim, generator=generator, device=self.device)

    # ---------------------------------------------------------------- outputs

    def _log(self, step, values):
        self.csv.log(step, values)
        if self.tb is not None:
            self.tb.scalars(step, values)
            self.tb.flush()

    def _generate(self, z):
        """Samples from G in eval mode (BatchNorm running statistics, no state change), restoring train mode."""
        was = self.G.training
        self.G.eval()
        try:
            with torch.no_grad():
                return self.G(z)
        finally:
            self.G.train(was)

    def _generate_many(self, n, generator):
        return torch.cat([self._generate(self._latent(min(1000, n - i), generator)) for i in range(0, n, 1000)])

    def _samples(self, step) -> dict:
        from .logging_utils import save_image_grid, save_scatter
        from .metrics import mode_metrics

        x = self._generate(self.fixed_z)
        path = self.out / "samples" / f"step_{step:07d}.png"
        metrics = {}
        if self.dataset.kind == "images":
            save_image_grid(x, path)
        else:
            save_scatter(x, path, real=self.real_view, means=self.means,
                         title=f"{self.cfg.run.name} step {step}")
            if self.means is not None:
                mm = mode_metrics(x, self.means, self.mix_std)
                metrics = {"eval/modes": float(mm["modes"]), "eval/high_quality": mm["high_quality"],
                           "eval/kl_modes": mm["kl_modes"]}
                self._log(step, metrics)
        return metrics

    @_sized_by("run.parzen_test", "run.parzen_samples", "run.parzen_validation")
    def _parzen(self, step) -> dict:
        from .data import load_test_split
        from .metrics import parzen_score

        r, d = self.cfg.run, self.cfg.data
        g = torch.Generator(device=self.device).manual_seed(r.seed + 104729)
        samples = self._generate_many(r.parzen_samples, g)
        if self.dataset.kind == "points":
            validation = self.dataset.sample(r.parzen_validation, g)
            test = self.dataset.sample(r.parzen_test, g)
        else:
            validation = torch.cat(list(self.dataset.held_out.batches(4096)))[:r.parzen_validation]
            test = load_test_split(d, self.device, r.parzen_test)
            # Goodfellow et al. evaluate pixels in [0, 1]; our images live in [-1, 1]
            samples, validation, test = [(t + 1) / 2 for t in (samples, validation, test)]
        res = parzen_score(samples, validation, test)
        out = {"eval/parzen_ll": res["log_likelihood"], "eval/parzen_stderr": res["stderr"],
               "eval/parzen_sigma": res["sigma"]}
        self._log(step, out)
        return out

    @_sized_by("run.fd_samples")
    def _fd(self, step) -> dict:
        from .metrics import fmnist_scores

        r = self.cfg.run
        # the same latents at every evaluation: the scores change with G only
        g = torch.Generator(device=self.device).manual_seed(r.seed + 15485863)
        x = self._generate_many(r.fd_samples, g)
        if not bool(torch.isfinite(x).all()):
            # eval-mode G (BatchNorm's running statistics) can diverge while the training losses stay finite
            raise NonFiniteLossError(f"run.fd at step {step}: G's samples (eval mode) hold non-finite values")
        with warnings.catch_warnings():
            # G draws in [-1, 1] (tanh): all-nonnegative samples are light images, not [0, 1] ones
            warnings.filterwarnings("ignore", message=r"samples: every value is >= 0")
            res = fmnist_scores(x, self._fd_real, classifier=self.classifier)
        out = {"eval/fd": res["fd"], "eval/classifier_score": res["score"],
               "eval/classifier_score_std": res["score_std"]}
        self._log(step, out)
        return out

    def _fd_tail(self, step) -> dict:
        """NTGAN's report: mean and std of the last five evaluations made in the last 10% of the steps (this
        session's and, after a resume, the earlier ones kept in metrics.csv)."""
        import numpy as np

        rows = [r for r in self.csv.rows if r.get("eval/fd") not in (None, "")
                and float(r["step"]) > 0.9 * self.cfg.run.steps][-5:]
        out = {"eval/tail_evaluations": float(len(rows))}
        for key in ("fd", "classifier_score") if rows else ():  # none: only a hand-made log lacks the final one
            v = np.array([float(r[f"eval/{key}"]) for r in rows])
            out[f"eval/{key}_tail_mean"], out[f"eval/{key}_tail_std"] = float(v.mean()), float(v.std())
        self._log(step, out)
        return out

    def _checkpoint(self, step):
        try:
            ckpt.save(self.ckpt_path, {
                "step": step, "config": C.to_dict(self.cfg), "method": self.method.state_dict(),
                "rng": ckpt.rng_state({"train": self.gen}, cuda_device=self._cuda_device),
                "torch_version": str(torch.__version__),
            })
        except OSError as e:
            # a full disk's OSError from a file object's write names no file; the user needs which disk filled
            # and whether the run can go on from what is there
            kept = (f"the previous checkpoint (step {self.last_ckpt_step}) is intact" if self.last_ckpt_step
                    is not None else "no checkpoint had been written yet")
            msg = f"writing checkpoint {self.ckpt_path} at step {step}: {e.strerror or e}; {kept}"
            raise oserror(e, msg) from e
        self.last_ckpt_step = step

    def _checkpoint_at(self, step, final: bool) -> None:
        """The checkpoint of a periodic or the last step, and status.json "running" at it (a run killed later then
        says which step its checkpoint holds)."""
        r = self.cfg.run
        if final and (r.parzen or r.fd):
            # the final evaluation (the last step's FD, Parzen, the FD tail) starts with the last step's checkpoint:
            # status.json says so before that checkpoint is renamed into place, so that a run stopped or killed once
            # it is there (a second signal in the write's folder fsync, SIGKILL, OOM; a samples write that failed)
            # gets the evaluation on --resume (_final_evaluation_pending), where status.json still said "training"
            # at an earlier step and the resume trained and evaluated nothing; a run stopped before the rename
            # resumes from the earlier checkpoint, whose step is not this one (a failed write, a full disk, fails
            # the checkpoint's write or the one after it, naming its file, as before)
            self.phase = "final evaluation"
            with contextlib.suppress(OSError):
                self._status("running")
        self._checkpoint(step)
        if not final or self.phase == "final evaluation":
            self._status("running")

    # ---------------------------------------------------------------- loop

    def _graphed_step(self, sample_real):
        # one graph per kind of iteration: with lazy regularization (method.roth.every > 1) the iterations with
        # and without the penalty run different kernels
        graphs = {}

        def step(t):
            self.method.update_schedules(t)  # device tensors written outside the graph, read inside it
            kind = self.method.regularize_now
            if kind not in graphs:
                graphs[kind] = GraphedStep(lambda: self.method.updates(sample_real), generators=(self.gen,),
                                           device=self.device)
            return graphs[kind]()
        return step

    def run(self) -> TrainResult:
        # first: a signal from here on lets the step in progress, or the first one, finish and be checkpointed (one
        # before the training loop's own handler was taken at once: a run folder without a checkpoint, which
        # blocked its run.dir, or for SIGTERM a killed process)
        self.stop = InterruptAtStepEnd()
        try:
            if self.done:
                return self._run()
            self.at, self.phase = self.start, "final evaluation" if self.final_only else "training"
            self._status("running")
            try:
                result = self._run()
            except NonFiniteLossError as e:
                self._status("stopped", str(e))
                raise
            except KeyboardInterrupt as e:
                if self._fresh is not None and self.last_ckpt_step is None and self.at <= 1:
                    # a second signal in a new run's first step: nothing to resume or keep, what it wrote goes
                    # (any other failure from here is the run's, recorded in status.json)
                    self._discard_start()
                    raise interruption(isinstance(e, Terminated), "in the new run's first step: its folder "
                                       f"{self.out} was removed") from None
                self._status("interrupted", str(e))
                raise
            except BaseException as e:
                self._status("failed", f"{type(e).__name__}: {e}")
                raise
            self._status("finished", backends=result.backends)
            return result
        finally:
            self.stop.restore()
            self._close_tb()  # closed by _run's finally unless run() failed before it (the first status write)
            unlock(self.lock)
            self.lock = None

    def _status(self, state: str, reason: str = "", backends: Optional[dict] = None) -> None:
        """status.json: how this session of the run ended (running while it trains; once finished, the backends its
        fastgan ops ran on), for `fastgan compare` and anyone reading a folder of runs; a failing run's own error is
        what the caller sees, so a failed write of its status does not replace it."""
        info = {"state": state, "phase": self.phase, "step": self.at, "steps": self.cfg.run.steps,
                "session_start_step": self.start, "last_checkpoint_step": self.last_ckpt_step,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if reason:
            info["reason"] = reason
        if backends:
            info["backends"] = {op: list(names) for op, names in backends.items()}
        try:
            self._write_json(STATUS, info)
        except OSError as e:
            if state == "running":
                raise
            print(f"fastgan train: warning: could not record the run's end ({state}) in {self.out / STATUS}: {e}",
                  file=sys.stderr)

    def _run(self) -> TrainResult:
        if self.done:
            return TrainResult(out_dir=self.out, step=self.start, losses={}, generator=self.G, config=self.cfg,
                               models=dict(self.method.modules), start_step=self.start)
        from tqdm import tqdm

        r = self.cfg.run
        monitor = _FiniteMonitor(every_step=self.device.type != "cuda", latest_only=r.cuda_graph)
        sample_real = lambda m: self.dataset.sample(m, self.gen)  # noqa: E731
        train_step = (self._graphed_step(sample_real) if r.cuda_graph
                      else lambda t: self.method.train_step(t, sample_real))
        from .ops import _dispatch

        counted = dict(_dispatch.counts)
        bar = tqdm(total=r.steps, initial=self.start, disable=not self.show_progress, dynamic_ncols=True,
                   desc=r.name, file=sys.stderr)
        last = {}
        metrics = {}
        t_last, s_last = time.perf_counter(), self.start
        step = self.start
        stop = self.stop
        try:
            for step in range(self.start + 1, r.steps + 1):
                self.at = step
                stats = train_step(step)
                monitor.update(step, stats)
                bar.update(1)
                final = step == r.steps
                if step % r.log_every == 0 or final:
                    monitor.check()
                    now = time.perf_counter()
                    last = {k: float(v) for k, v in stats.items()}
                    self._log(step, {**last, **self.method.schedule_values(),
                                     "steps_per_s": (step - s_last) / max(now - t_last, 1e-9)})
                    t_last, s_last = now, step
                    bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()
                                     if k in ("d_loss", "g_loss", "gamma", "sigma", "noise_norm", "denoiser_loss")})
                checkpoint_due = (r.checkpoint_every and step % r.checkpoint_every == 0) or final
                if (r.sample_every and step % r.sample_every == 0) or final:
                    monitor.check()
                    try:
                        metrics.update(self._samples(step))
                    except OSError as e:
                        # samples come before the checkpoint: one that cannot be written (a file where the samples
                        # folder goes, a full disk) lost the steps since the last checkpoint
                        if checkpoint_due:
                            self._checkpoint_at(step, final)
                        raise oserror(e, f"writing the samples of step {step} in {self.out / 'samples'}: "
                                         f"{e.strerror or e}; checkpoint {self.ckpt_path} holds step "
                                         f"{self.last_ckpt_step}") from e
                if checkpoint_due:
                    monitor.check()
                    self._checkpoint_at(step, final)
                if r.fd and ((r.fd_every and step % r.fd_every == 0) or final):
                    monitor.check()  # a non-finite loss is named as such, not as non-finite samples
                    metrics.update(self._fd(step))
                if stop.requested and not final:  # on the last step: the final evaluation's, below
                    monitor.check()
                    if self.last_ckpt_step != step:
                        self._checkpoint(step)
                    raise stop.interrupt(f"checkpoint {self.ckpt_path} holds step {step}; --resume continues "
                                         "from there")
            monitor.check()
            # the steps are done and checkpointed: a Ctrl-C or SIGTERM in the final evaluation (minutes of Parzen
            # windows for 784-d images) interrupts it at once, where the handler would only have set `requested`
            stop.at_once()
            if r.parzen or r.fd:  # status.json's phase: the last one the run entered
                self.phase = "final evaluation"
            try:
                if stop.requested and (r.parzen or r.fd):  # asked in the last step: --resume runs the evaluation
                    raise stop.interrupt("")
                if self.final_only and r.fd and not self.csv.logged(step, "eval/fd"):
                    metrics.update(self._fd(step))  # the last step's FD: the earlier session was killed in it
                if r.parzen:
                    metrics.update(self._parzen(step))
                if r.fd:
                    metrics.update(self._fd_tail(step))
            except KeyboardInterrupt as e:
                raise interruption(isinstance(e, Terminated), f"in the final evaluation; checkpoint "
                                    f"{self.ckpt_path} holds the last step, {step}") from None
        except NonFiniteLossError as e:
            where = (f"the last good checkpoint, {self.ckpt_path} (step {self.last_ckpt_step}), is intact"
                     if self.last_ckpt_step is not None else "no checkpoint had been written yet")
            raise NonFiniteLossError(f"training stopped: {e}; {where}") from None
        finally:
            stop.restore()
            bar.close()
            if self.tb is not None:
                self.tb.close()
        models = dict(self.method.modules)
        ran = [(op, name) for (op, name), n in list(_dispatch.counts.items()) if n > counted.get((op, name), 0)]
        # gradient_penalty counts its modes, the other ops their backends
        modes = tuple(sorted(mode for op, mode in ran if op == "gradient_penalty" and mode != "create_graph"))
        backends = {}
        for op, name in sorted(ran):
            if op != "gradient_penalty":
                backends.setdefault(op, []).append(name)
        return TrainResult(out_dir=self.out, step=step, losses=last, generator=self.G, config=self.cfg,
                           models=models, metrics=metrics, penalty_modes=modes, start_step=self.start,
                           final_evaluation_only=self.final_only,
                           backends={op: tuple(names) for op, names in backends.items()})


# what the final evaluation logs (Parzen's and the FD tail's rows)
FINAL_EVALUATION_KEYS = frozenset({"eval/parzen_ll", "eval/parzen_stderr", "eval/parzen_sigma",
                                   "eval/tail_evaluations"})


def _final_evaluation_pending(run_dir: Path, step: int) -> bool:
    """Whether status.json says the run's last session trained to `step`, the checkpoint's, and then stopped in
    its final evaluation (interrupted, failed, or killed: "running", which the caller, holding the run's lock,
    knows no process is any more): a resume then runs that evaluation, which nothing else would."""
    try:
        info = read_status(run_dir)
    except (OSError, ValueError):
        return False
    return info.get("phase") == "final evaluation" and info["state"] in ("interrupted", "failed", "running") and \
        info.get("step") == step


def _checkpoint_config(state: dict, path: Path) -> TrainConfig:
    """The checkpoint's own config, validated; a bad one is the checkpoint's fault, not the user's config."""
    try:
        return C.from_stored(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds an invalid config: {e}") from None


# ------------------------------------------------------------------------------------------ public API

def train(cfg=None, *, resume: bool = False, overrides=None, progress: Optional[bool] = None) -> TrainResult:
    """Train from a TrainConfig, a nested dict, a YAML path, a run folder (with resume=True) or None (the
    embedded default: Roth's regularized GAN on the 3-D mixture). `overrides`: ["key=value", ...] as with
    --set. resume: continue the latest run of this config's run.name (or run.dir) from its checkpoint.
    Returns a TrainResult (out_dir, step, last losses, generator, config, models, metrics)."""
    from .ops import _dispatch

    # a string is truthy: resume="no" resumed and progress="off" showed the bar
    if not isinstance(resume, bool):
        raise TypeError(f"resume: expected True or False, got {resume!r}")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress: expected True, False or None (run.progress decides), got {progress!r}")
    cfg = _requested(cfg, overrides, resume)
    # run.backend pins this thread's ops: a use_backend block is process-wide, and two runs in two threads each
    # ran the other's run.backend (the block opened last won for both)
    with contextlib.nullcontext() if cfg.run.backend == "auto" else \
            _dispatch.pin((cfg.run.backend, f"run.backend={cfg.run.backend!r}")):
        run = _Run(cfg, resume, progress)
        with _threads(run.cfg.run.threads):  # the resumed run's value: run.threads may change on resume
            return run.run()


@contextlib.contextmanager
def _threads(n: Optional[int]):
    """torch's CPU threads set to n for the run and put back afterwards (fastgan.train runs in the caller's
    process)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _requested(cfg, overrides, resume: bool) -> TrainConfig:
    """The config asked for: a run folder's (resume only) or the given one, with the overrides applied."""
    if isinstance(cfg, (str, Path)) and Path(cfg).is_dir():
        run_dir = Path(cfg)
        if resume:
            refuse_if_running(run_dir)
        if not (run_dir / CHECKPOINT).exists() and not (run_dir / "config.yaml").exists():
            raise ConfigError(f"{run_dir} is a folder, not a YAML config (nor a run folder: it holds no "
                              f"{CHECKPOINT} or config.yaml)")
        if not resume:
            raise ConfigError(f"{run_dir} is a run folder; pass --resume (resume=True in fastgan.train) to continue "
                              "it, or give a YAML config")
        # read for its config only: _Run reads the checkpoint again once it holds the run folder's lock, since
        # another run may have written a newer one in between
        overrides = C.check_overrides(overrides)
        for key, value, _ in C.override_items(overrides):
            moved = key == "run.out_dir" or (key == "run.dir" and (
                value is None or Path(str(value)).resolve() != run_dir.resolve()))
            if moved:  # the folder given is the run: a value here would be recorded and ignored
                raise ConfigError(f"{key}: --resume of the run folder {run_dir} continues it there; drop "
                                  f"--set {key}={value} (or give the config and run.dir to resume by them)")
        state = ckpt.load(run_dir / CHECKPOINT)
        saved = _checkpoint_config(state, run_dir / CHECKPOINT)
        return C.coerce(saved, overrides + [("run.dir", str(run_dir))])
    if resume and isinstance(cfg, (str, Path)) and not Path(cfg).exists() and \
            Path(cfg).suffix.lower() not in C.CONFIG_SUFFIXES and shipped_configs.find(cfg) is None:
        # --resume takes a run folder or a config: "config file not found" would name the wrong one
        raise FileNotFoundError(f"--resume: no run folder or config file {cfg}")
    return C.coerce(cfg, overrides)
