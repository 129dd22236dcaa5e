"""Checkpoints: models, optimizers, step, config and every RNG state, written atomically.

A checkpoint is one torch.save file holding only tensors and plain Python values, so it loads with
``weights_only=True``. It is written to a temporary file in the same folder, flushed to disk, then renamed
over the old one: a crash mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

from .config import ConfigError

FORMAT = "fastgan-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, not a fastgan checkpoint, or does not match the run being resumed."""


class CheckpointMismatchError(CheckpointError, ConfigError):
    """The config asks to resume a run with a field the checkpoint was written with changed: a config error (the
    CLI's exit code 2) that is still a CheckpointError, as it was before it was a ConfigError."""


def save(path, state: Mapping) -> Path:
    """Write {format, version, **state} atomically to path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    payload = {"format": FORMAT, "version": VERSION, **state}
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return p


REQUIRED = ("step", "config", "method", "rng")


def load(path, map_location="cpu") -> dict:
    """Read and check a checkpoint; raises FileNotFoundError or CheckpointError naming the file and cause."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (a truncated write?)")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for damaged zips / pickles
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unpickler error" in ln), lines[0] if lines else "")
        raise CheckpointError(f"checkpoint {p} is corrupt or not a fastgan checkpoint "
                              f"({type(e).__name__}: {why})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {p} is not a fastgan checkpoint (no '{FORMAT}' marker)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {p} has format version {state.get('version')!r}; this fastgan reads "
                              f"version {VERSION}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {p} lacks {', '.join(missing)}")
    return state


# ------------------------------------------------------------------------------------------ RNG states

def rng_state(generators: Optional[Mapping[str, torch.Generator]] = None, cuda: bool = False) -> dict:
    """torch (CPU and, when cuda, every CUDA device), Python's random, NumPy's global state, and the given
    torch.Generators, as tensors and plain values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if cuda:
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Mapping, generators: Optional[Mapping[str, torch.Generator]] = None) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    saved = state.get("generators", {})
    for k, g in (generators or {}).items():
        if k not in saved:
            raise CheckpointError(f"the checkpoint holds no state for random generator {k!r}")
        g.set_state(saved[k])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
