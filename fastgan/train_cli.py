"""The `fastgan train` command: arguments, --print-config, and one line per outcome (exit codes: 0 done,
1 a run that failed, 2 a bad config, 130/143 interrupted by SIGINT/SIGTERM)."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Optional

import torch

from . import checkpoint as ckpt
from . import config as C
from ._errors import ClassifierWeightsError
from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig
from .graph import GraphCaptureError
from .interrupts import Terminated
from .ops._dispatch import BackendUnavailable
from . import shipped_configs
from .run_folder import CHECKPOINT, find_run
from .train import NonFiniteLossError, _checkpoint_config, _requested, train
from .train_resume import _merge_for_resume


def _config_to_print(config, overrides, resume: bool) -> TrainConfig:
    if not resume:
        if config and Path(config).is_dir():  # a run folder's config.yaml, read as its checkpoint's config is
            if not (Path(config) / "config.yaml").exists():  # the error `fastgan train DIR` gives, not a file's
                return _requested(config, overrides, False)
            return C.coerce(C.load_config(Path(config) / "config.yaml", stored=True), overrides)
        return C.coerce(config, overrides)
    # what --resume would continue: the checkpoint's config with the run.* fields it lets change
    cfg = _requested(config, overrides, True)
    path = find_run(cfg) / CHECKPOINT
    return _merge_for_resume(_checkpoint_config(ckpt.load(path), path), cfg, path)


def cmd_train(args) -> int:
    overrides, config = [], args.config
    for item in args.overrides:
        # a path that is not there yet (a typo) is recognised by its suffix, so its error is "config file not found"
        if "=" not in item and config is None and (Path(item).exists() or item.endswith(C.CONFIG_SUFFIXES)
                                                   or shipped_configs.find(item) is not None):
            config = item  # `fastgan train --set a=1 CONFIG`: the config was swallowed by --set
        else:
            overrides.append(item)
    try:
        if args.print_config:
            cfg = _config_to_print(config, overrides, args.resume)
            print(C.yaml_dump(C.to_dict(cfg)), end="")
            return 0
        result = train(config, overrides=overrides, resume=args.resume)
    except ConfigError as e:
        return _fail(e, 2)
    except (CheckpointError, NonFiniteLossError, OSError, ValueError, GraphCaptureError, BackendUnavailable,
            ClassifierWeightsError) as e:
        return _fail(e, 1)
    except (MemoryError, RuntimeError) as e:
        why = _out_of_memory(e)
        if why is None:
            raise
        fields = getattr(e, "sized_by", None)  # an evaluation's own sizes (train._sized_by)
        if fields:
            return _fail(e, 1, f"out of memory: {why}; lower {' or '.join(fields)}")
        return _fail(e, 1, f"out of memory: {why}; lower optim.batch_size, run.num_samples or the model's sizes "
                           "(model.latent_dim, model.g_hidden, model.d_hidden, model.dcgan_width, "
                           "model.dcgan_g_filters, model.resnet_width, model.denoiser_hidden)")
    except KeyboardInterrupt as e:
        print(f"fastgan train: interrupted{f'; {e}' if str(e) else ''}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130  # 128 + the signal's number, as a shell reports it
    if result.final_evaluation_only:
        done = ", ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in result.metrics.items())
        print(f"fastgan train: final evaluation of step {result.step} done{f' ({done})' if done else ''}; "
              f"output in {result.out_dir}")
        return 0
    if result.step <= result.start_step:
        print(f"fastgan train: nothing to train: checkpoint {result.out_dir / CHECKPOINT} is already at step "
              f"{result.step} >= run.steps={result.config.run.steps} (raise run.steps to continue); nothing written "
              f"in {result.out_dir}")
        return 0
    parts = [", ".join(f"{k} {v:.4g}" for k, v in result.losses.items() if k.endswith("loss")),
             ", ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in result.metrics.items()),
             f"penalty gradients: {', '.join(result.penalty_modes)}" if result.penalty_modes else "",
             _backends_ran(result.backends)]
    print(f"fastgan train: {result.step} steps done ({'; '.join(p for p in parts if p)}); output in {result.out_dir}")
    return 0


def _backends_ran(backends: dict) -> str:
    """'ops on cpu: a, b; on reference: c' from TrainResult.backends; an op's backward is named only when it ran
    somewhere its forward did not."""
    by = {}
    for op, names in backends.items():
        forward = backends.get(op[:-len("_backward")], ()) if op.endswith("_backward") else ()
        for name in names:
            if name not in forward:
                by.setdefault(name, []).append(op)
    return "; ".join(f"{'ops ' if i == 0 else ''}on {name}: {', '.join(ops)}" for i, (name, ops) in
                     enumerate(sorted(by.items())))


def _out_of_memory(e: BaseException) -> Optional[str]:
    """What could not be allocated when e is an allocation failure (torch's CPU and CUDA allocators, Python's
    MemoryError, a tensor size past 64 bits), else None: any other error keeps its traceback."""
    if isinstance(e, MemoryError):
        return f"MemoryError{f' ({e})' if str(e) else ''}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    if "Storage size calculation overflowed" in first:
        return f"a tensor too large to hold ({first})"
    if not (isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in first or "out of memory" in first):
        return None
    cpu = re.search(r"tried to allocate (\d+) bytes", first)
    cuda = re.search(r"Tried to allocate ([\d.]+ [KMGTPE]?i?B)", first)
    if cpu:
        return f"could not allocate {_size(int(cpu.group(1)))}"
    return f"could not allocate {cuda.group(1)}" if cuda else first


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024:
            return f"{_3_digits(n)} {unit}"
        n /= 1024
    return f"{_3_digits(n)} EiB"


def _3_digits(n: float) -> str:
    text = f"{n:.3g}"
    return f"{n:.0f}" if "e" in text else text  # 999.5 to 1023.x: .3g writes 1e+03


def _fail(e, code: int, message: Optional[str] = None) -> int:
    if os.environ.get("FASTGAN_DEBUG"):
        raise e
    print(f"fastgan train: error: {message or e}", file=sys.stderr)
    return code


def add_cli(subparsers) -> None:
    """Register `fastgan train CONFIG [--set key=value ...] [--resume]`."""
    p = subparsers.add_parser(
        "train", help="train a GAN from a YAML config (default: Roth's regularized GAN on the 3-D mixture)",
        description="Train a GAN. Without CONFIG: the embedded default job (Roth et al.'s regularized GAN on "
                    "their 3-D submanifold mixture, a short run). Output: <run.out_dir>/<run.name>-<timestamp>/ "
                    "with config.yaml, metrics.csv, tb/, samples/, checkpoints/last.pt.")
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config file, a shipped config's name (`fastgan configs` lists them), or a run folder "
                        "to continue with --resume")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override a config field, e.g. --set method.roth.gamma=0.5 run.steps=200 (values are YAML)")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest run of this config (run.dir, or <out_dir>/<name>-*) from its checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the full config and exit")
    p.set_defaults(func=cmd_train)
