"""What a resumed run must match: the checkpoint's config (only run.* fields may change), the data it trained on
(its file, sample shape and count, from run_info.json), and the checkpoint's models (load errors cut to a line)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from . import config as C
from .checkpoint import CheckpointError, CheckpointMismatchError
from .config import ConfigError, TrainConfig
from .config_types import _shown
from .run_folder import recorded_data_samples, recorded_data_shape

# Config fields the trainer fills in when left at None; a resumed run keeps the checkpoint's values.
RESOLVED_FIELDS = ("method.roth.anneal_steps", "method.nt.anneal_steps", "method.dfm.lambda_denoise")


def _first_problem(e: BaseException) -> str:
    """torch's load_state_dict error cut to its first line plus its first problem (a missing or unexpected key, a
    size mismatch): the full list can run to hundreds of keys."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
    if len(lines) == 1:
        return lines[0]
    detail = lines[1].rstrip(".")  # torch ends the line with ". "; an ellipsis added below is kept
    m = re.match(r'^([^:]*:\s*"[^"]*")(,)?', detail)
    if m and not detail.startswith("size mismatch"):
        detail = m.group(1) + (", ..." if m.group(2) else "")
    return f"{lines[0].rstrip(':')}: {detail}"


def _check_resumed_data(run_dir: Path, dataset, path: Path) -> None:
    """The data a run resumes on must have the sample shape its models were built for (run_info.json's data_shape):
    a file at data.path changed since would otherwise surface as an optimizer moment's shape; and as many stored
    samples as it loaded (data_samples, recorded since 2026-12-06: more rows moved data.holdout's samples into
    training)."""
    source, shape = dataset.source or "the data set", tuple(dataset.shape)
    try:
        saved = recorded_data_shape(run_dir)
    except (OSError, ValueError):
        return  # no readable record: the checkpoint's own shape checks still refuse models that do not fit
    if saved != shape:
        raise CheckpointError(f"checkpoint {path}: its run trained on samples of shape {saved} (run_info.json), but "
                              f"{source} now holds samples of shape {shape}: the data changed since; resume with "
                              "the data it trained on, or start a new run")
    count, now = recorded_data_samples(run_dir), _stored_samples(dataset)
    if count is not None and count != now:
        raise CheckpointError(f"checkpoint {path}: its run loaded {count} samples (run_info.json), but {source} now "
                              f"gives {now}: the data changed since (data.holdout's samples would move); resume with "
                              "the data it trained on, or start a new run")


def _check_resumed_data_path(cfg: TrainConfig, recorded: Optional[str]) -> None:
    """A relative data.path is read from the folder the resume runs in: another file of that name there was
    trained on, silently. It must be the file the run trained on (`recorded`: run_info.json's data_path)."""
    here = str(Path(cfg.data.path).resolve()) if cfg.data.path else None
    if recorded and here and here != recorded:
        raise ConfigError(f"data.path: {cfg.data.path!r} is {here} here, but the run trained on {recorded} "
                          f"(run_info.json); resume from the folder the run started in, or --set data.path={recorded}")


def _stored_samples(dataset) -> int:
    """The stored samples a data set loaded: its training view and data.holdout's."""
    held = getattr(dataset, "held_out", None)
    return len(dataset) + (len(held) if held is not None else 0)


def _merge_for_resume(saved: TrainConfig, new: TrainConfig, path: Path, data_path=None) -> TrainConfig:
    """The checkpoint's config with the run.* fields a resumed run may change; other differences raise. data_path:
    the file the run trained on (run_info.json), which data.path may name in another spelling."""
    bad, respelled = [], {}
    for key, old, value in C.diff(saved, new):
        if key in C.RESUMABLE_FIELDS or (key in RESOLVED_FIELDS and value is None) or \
                _the_architectures_default(saved, key, old, value):
            continue
        if key == "data.path" and data_path and value and str(Path(value).resolve()) == data_path:
            respelled[key] = value  # the same file, e.g. absolute where the run was given a relative path
            continue
        bad.append(f"{key}: checkpoint {old!r}, config {value!r}")
    if bad:
        # the fields first: the config is what the user changes to fix this
        raise CheckpointMismatchError(
            "; ".join(bad) + f" (checkpoint {path} was written by a different config, so resuming would not continue "
            f"the same run; only {', '.join(C.RESUMABLE_FIELDS)} may change on resume)")
    changes = {k: v for k, _, v in C.diff(saved, new) if k in C.RESUMABLE_FIELDS} | respelled
    return C.replace(saved, **changes) if changes else saved


def _the_architectures_default(saved: TrainConfig, key: str, old, value) -> bool:
    """A model field the checkpoint's config left to its architecture (None), given now as the value that
    architecture gives it (`--set model.latent_dim=2` on an MLP run): the same run, not a change."""
    from .models.config import ARCH_DEFAULTS

    defaults = ARCH_DEFAULTS.get(saved.model.arch, {})
    name = key[len("model."):] if key.startswith("model.") else None
    return old is None and name in defaults and defaults[name] is not None and defaults[name] == value


def _check_folder_config(run_dir: Path, saved: TrainConfig, path: Path) -> None:
    """The checkpoint must be the folder's run's: config.yaml records that run's config (each session writes it
    from the config its checkpoints hold). Another run's checkpoint put in its place was resumed as that run, over
    the folder's: config.yaml and run_info.json rewritten, its losses appended to this run's metrics.csv. Only the
    fields a resume may change can differ (and data.path's spelling, which _check_resumed_data_path checks); no
    readable config.yaml: nothing to compare."""
    import warnings

    try:
        with warnings.catch_warnings():  # from_stored's upgrade warnings: the checkpoint's own config warns once
            warnings.simplefilter("ignore")
            recorded = C.load_config(run_dir / "config.yaml", stored=True)
    except (OSError, ValueError):
        return
    bad = [f"{key}: checkpoint {_shown(new)}, config.yaml {_shown(old)}" for key, old, new in C.diff(recorded, saved)
           if key not in C.RESUMABLE_FIELDS and key != "data.path"
           and not (key in RESOLVED_FIELDS and None in (old, new))]
    if bad:
        raise CheckpointError(f"checkpoint {path} is not the checkpoint of the run in {run_dir}: " + "; ".join(bad[:3])
                              + ("; ..." if len(bad) > 3 else "") + " (its config.yaml records the run's config: a "
                              "checkpoint copied from another run?); put the run's own checkpoint back, or resume "
                              "that run from its own folder")

