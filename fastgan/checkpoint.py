"""Checkpoints: models, optimizers, step, config and every RNG state, written atomically.

A checkpoint is one torch.save file holding only tensors and plain Python values, so it loads with
``weights_only=True``. It is written to a temporary file in the same folder, flushed to disk, then renamed
over the old one: a crash mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import math
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

from ._atomic import replacing
from ._version import __version__
from .config import ConfigError

FORMAT = "fastgan-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, not a fastgan checkpoint, or does not match the run being resumed."""


class CheckpointMismatchError(CheckpointError, ConfigError):
    """The config asks to resume a run with a field the checkpoint was written with changed: a config error (the
    CLI's exit code 2) that is still a CheckpointError, as it was before it was a ConfigError."""


def save(path, state: Mapping) -> Path:
    """Write {format, version, fastgan (the package's version, for the reader's information), **state} atomically
    to path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "fastgan": __version__, **state}
    with replacing(p, durable=True, name_errors=False) as tmp, open(tmp, "wb") as f:  # train.py names the file
        _torch_save(payload, f)
    return p


def _torch_save(payload, f) -> None:
    """torch.save, raising what stopped the write: when a write fails (a full disk's OSError) or is interrupted
    (a second Ctrl-C or SIGTERM), torch's zip writer, closing, raises its own RuntimeError ("[enforce fail at
    inline_container.cc] unexpected pos ...") over it, which named neither cause (a traceback, exit 1 and status
    "failed" where the CLI names the full disk, or exits 130 / 143 as interrupted)."""
    try:
        torch.save(payload, f)
    except RuntimeError as e:
        cause = e.__context__
        if isinstance(cause, (OSError, KeyboardInterrupt)):
            raise cause from None
        raise


REQUIRED = ("step", "config", "method", "rng")


def _check_crcs(p: Path) -> None:
    """torch.load does not check the zip entries' CRC-32s: a flipped bit (bit rot, a damaged copy) loaded as a
    changed weight or optimizer moment, silently. Read every entry against its CRC first (a pass over the file,
    about as long as the load); a zip's start without its end is named truncated; a file that is no zip at all is
    left to torch.load's error."""
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":  # a zip's start without its end: torch.load's message says miniz, not why
            raise CheckpointError(f"checkpoint {p} is truncated: a zip archive without its end (central directory); "
                                  "an interrupted copy or download?")
        return
    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"checkpoint {p} is corrupt ({type(e).__name__}: {e})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {p} is corrupt: its entry {bad} fails its CRC-32 check (bit rot or a "
                              "damaged copy)")


def _load_error_cause(e: Exception) -> str:
    """The line of torch.load's message that says what is wrong: its unpickler's reason, which torch >= 2.6 puts
    on the line after "WeightsUnpickler error:" (that line is its boilerplate), else its first line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        m = re.search(r"(\w*Unpickler error):?\s*(.*)", ln)
        if m:
            reason = m.group(2) or (lines[i + 1] if i + 1 < len(lines) else "")
            return f"{m.group(1)}: {reason}"
    return lines[0] if lines else ""


def load(path, map_location="cpu") -> dict:
    """Read and check a checkpoint; raises FileNotFoundError or CheckpointError naming the file and cause."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_dir():  # the OS's "[Errno 21] Is a directory" named no cause a user would look for
        raise CheckpointError(f"checkpoint {p} is a folder, not a checkpoint file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (a truncated write?)")
    _check_crcs(p)
    try:
        with warnings.catch_warnings():
            # a file that is a pickle, not a zip (another program's, or damage), printed torch's warning of its
            # protocol, two lines quoting torch's source, above the one error that names the file
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for damaged zips / pickles
        raise CheckpointError(f"checkpoint {p} is corrupt or not a fastgan checkpoint "
                              f"({type(e).__name__}: {_load_error_cause(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {p} is not a fastgan checkpoint (no '{FORMAT}' marker)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {p} has format version {state.get('version')!r}; this fastgan reads "
                              f"version {VERSION}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {p} lacks {', '.join(missing)}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint {p}: step must be a non-negative integer, got {step!r}")
    for key in ("config", "method", "rng"):
        if not isinstance(state[key], Mapping):
            # a string config would otherwise be read as a YAML path
            raise CheckpointError(f"checkpoint {p}: {key} must be a mapping, got {type(state[key]).__name__}")
    return state


# ------------------------------------------------------------------------------------------ optimizer states

def _is_number(v) -> bool:
    if isinstance(v, torch.Tensor):  # a capturable / tensor learning rate
        return v.numel() == 1 and v.dtype != torch.bool and not v.is_complex() and bool(torch.isfinite(v).all())
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _as_floats(v) -> tuple:
    return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),)


def check_module_state(path, name: str, saved: Mapping, module: torch.nn.Module) -> None:
    """Each saved tensor of a model's state_dict must have its tensor's dtype (the shapes, missing and unexpected
    keys are load_state_dict's to name): load_state_dict casts what it copies, so an int64 or bool weight loaded
    as whole numbers, a complex one lost its imaginary part, and the run went on from weights the checkpoint did
    not hold, without a word. Raises CheckpointError naming path and the entry (method.modules.<name>.<key>)."""
    current = module.state_dict()
    for key, v in saved.items():
        cur = current.get(key)
        if not isinstance(cur, torch.Tensor):
            continue
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: method.modules.{name}.{key}: must be a tensor, got "
                                  f"{type(v).__name__}")
        if v.dtype != cur.dtype:
            raise CheckpointError(f"checkpoint {path}: method.modules.{name}.{key}: dtype {v.dtype}, the model's is "
                                  f"{cur.dtype} (an edited or damaged checkpoint)")


# the implementation flags the resumed run sets from its own run.optim_impl / run.cuda_graph (methods.step._set_flags),
# whatever the checkpoint holds
_IMPL_FLAGS = ("foreach", "fused", "capturable")


def check_optimizer_state(path, name: str, saved, opt: torch.optim.Optimizer, step: int,
                          scheduled: tuple = ()) -> None:
    """Check a saved optimizer state_dict against opt's parameters before it is loaded: torch accepts moments of
    the wrong shape or a string learning rate and fails steps later with an error naming neither file nor entry.
    opt is built from the config the checkpoint was written with, so its numeric hyperparameters (lr, betas, eps,
    weight_decay, ...) must be the saved ones too, but for the keys in `scheduled`, which the run changes as it
    goes: torch would train on an edited or damaged value (a negative lr: gradient ascent) without a word.
    Raises CheckpointError naming path and the entry (method.optimizers.<name>...)."""
    where = f"checkpoint {path}: method.optimizers.{name}"
    if not isinstance(saved, Mapping) or not isinstance(saved.get("state"), Mapping) or \
            not isinstance(saved.get("param_groups"), (list, tuple)):
        raise CheckpointError(f"{where}: must be a mapping with 'state' (a mapping) and 'param_groups' (a list)")
    groups = saved["param_groups"]
    if len(groups) != len(opt.param_groups):
        raise CheckpointError(f"{where}.param_groups: {len(groups)} groups, this config's optimizer has "
                              f"{len(opt.param_groups)}")
    params = {}
    for i, (g, cur) in enumerate(zip(groups, opt.param_groups)):
        gw = f"{where}.param_groups[{i}]"
        if not isinstance(g, Mapping) or not isinstance(g.get("params"), (list, tuple)):
            raise CheckpointError(f"{gw}: must be a mapping with a 'params' list")
        if len(g["params"]) != len(cur["params"]):
            raise CheckpointError(f"{gw}.params: {len(g['params'])} parameters, this config's model has "
                                  f"{len(cur['params'])}")
        for key, value in cur.items():
            if key == "params":
                continue
            got = g.get(key, "<missing>")
            if isinstance(value, bool) and key not in _IMPL_FLAGS:
                # what the update computes (amsgrad, maximize: gradient ascent, differentiable, nesterov,
                # decoupled_weight_decay): load_state_dict takes the saved value over the config's, and torch
                # trained on it without a word or failed in the first step (amsgrad without its max_exp_avg_sq:
                # KeyError; differentiable with fused: RuntimeError), tracebacks after the run folder was rewritten.
                # Missing: an older torch's state, which the optimizer fills with its default.
                if got != "<missing>" and (not isinstance(got, bool) or got != value):
                    raise CheckpointError(f"{gw}.{key}: {got!r}, where the config it was written with gives "
                                          f"{value!r} (an edited or damaged checkpoint)")
                continue
            if _is_number(value):
                ok, want = _is_number(got), "a finite number"
            elif isinstance(value, tuple) and value and all(map(_is_number, value)):  # betas
                ok = isinstance(got, (list, tuple)) and len(got) == len(value) and all(map(_is_number, got))
                want = f"{len(value)} finite numbers"
            else:
                continue  # flags (amsgrad, foreach, ...) are torch's to check
            if not ok:
                raise CheckpointError(f"{gw}.{key}: must be {want}, got {got!r}")
            if key not in scheduled and _as_floats(got) != _as_floats(value):
                raise CheckpointError(f"{gw}.{key}: {got!r}, where the config it was written with gives {value!r} "
                                      "(an edited or damaged checkpoint)")
        params.update(zip(g["params"], cur["params"]))
    state = saved["state"]
    for pid, entry in state.items():
        ew = f"{where}.state[{pid!r}]"
        if pid not in params:
            raise CheckpointError(f"{ew}: no such parameter in param_groups")
        if not isinstance(entry, Mapping):
            raise CheckpointError(f"{ew}: must be a mapping, got {type(entry).__name__}")
        p = params[pid]
        for key, v in entry.items():
            if key == "step":
                n = v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v
                if not _is_number(n) or n < 0:
                    raise CheckpointError(f"{ew}.step: must be a non-negative number, got {v!r}")
            elif isinstance(v, torch.Tensor):  # per-parameter moments / momentum buffers
                if v.shape != p.shape or v.dtype != p.dtype:
                    raise CheckpointError(f"{ew}.{key}: shape {tuple(v.shape)} {v.dtype}, its parameter has shape "
                                          f"{tuple(p.shape)} {p.dtype}")
            elif v is not None and not _is_number(v):
                raise CheckpointError(f"{ew}.{key}: must be a tensor or a number, got {v!r}")
    if isinstance(opt, torch.optim.Adam) and step > 0:
        # without its moments Adam would silently restart its averages: no longer the run being resumed
        if not state:
            raise CheckpointError(f"{where}.state: empty (no Adam moments) in a checkpoint at step {step}; the "
                                  "checkpoint is corrupt")
        amsgrad = any(g.get("amsgrad") for g in opt.param_groups)
        need = ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        for pid, entry in state.items():
            lack = [k for k in need if k not in entry]
            if lack:
                raise CheckpointError(f"{where}.state[{pid!r}]: lacks {', '.join(lack)} (Adam state of a checkpoint "
                                      f"at step {step}); the checkpoint is corrupt")


# ------------------------------------------------------------------------------------------ RNG states

def rng_state(generators: Optional[Mapping[str, torch.Generator]] = None,
              cuda_device: Optional[torch.device] = None) -> dict:
    """torch's CPU state, Python's random, NumPy's global state, the given torch.Generators (with their device
    types) and, with cuda_device, that CUDA device's default generator (D's dropout draws from it), as tensors and
    plain values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    generators = generators or {}
    out = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "generators": {k: g.get_state() for k, g in generators.items()},
        "generator_devices": {k: g.device.type for k, g in generators.items()},
    }
    if cuda_device is not None:
        # the run's device only: a list of every GPU's (get_rng_state_all) cannot be restored where fewer are
        # visible, and would give a cuda:1 run resumed on cuda:0 the state of a device it never drew from
        out["cuda_device"] = torch.cuda.get_rng_state(cuda_device)
    return out


def _is_device_type(name: str) -> bool:
    try:
        return torch.device(name).type == name
    except (RuntimeError, ValueError):
        return False


def _saved_device_type(state: Mapping, key: str) -> str:
    """The device type of a saved generator's state (checkpoints before 2026-12-03 did not record it: a CUDA
    generator's state is its 16 bytes of seed and offset, a CPU one's the Mersenne Twister's 5056)."""
    if "generator_devices" in state:
        # written beside every generator's state since then: a damaged entry is a damaged checkpoint, not a run
        # resumed on another device (which would reseed the generator with a warning)
        kinds = state["generator_devices"]
        kind = kinds.get(key) if isinstance(kinds, Mapping) else None
        if not isinstance(kind, str) or not _is_device_type(kind):
            where = f"rng.generator_devices.{key}" if isinstance(kinds, Mapping) else "rng.generator_devices"
            what = (f"a {type(kinds).__name__}, not a mapping of device types" if not isinstance(kinds, Mapping) else
                    "missing" if kind is None else f"{kind!r} is not a device type")
            raise CheckpointError(f"{where}: {what}; the checkpoint is corrupt")
        return kind
    saved = state["generators"][key]
    return "cuda" if isinstance(saved, torch.Tensor) and saved.numel() == 16 else "cpu"


def set_rng_state(state: Mapping, generators: Optional[Mapping[str, torch.Generator]] = None,
                  cuda_device: Optional[torch.device] = None) -> list[str]:
    """Restore what rng_state saved; a missing or unusable entry is a CheckpointError naming it (rng.<key>).

    Returns the names of the generators whose saved state is of another device type (a CPU run resumed on a GPU,
    or the reverse: the two kinds of generator cannot take each other's state); those are left as they are, for
    the caller to seed. cuda_device: the resumed run's CUDA device, which takes the saved run device's state."""
    def restore(key, fn, saved=state, label="rng"):
        if key not in saved:
            raise CheckpointError(f"{label}.{key}: missing random-generator state")
        try:
            fn(saved[key])
        except (TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as e:
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"{label}.{key}: unusable random-generator state ({why})") from None

    def py(s):
        version, internal, gauss = s
        random.setstate((version, tuple(internal), gauss))

    def numpy(s):
        name, keys, pos, has_gauss, cached = s
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))

    restore("torch", torch.set_rng_state)
    restore("python", py)
    restore("numpy", numpy)
    other_device = []
    if generators:
        saved = state.get("generators")
        if not isinstance(saved, Mapping):
            raise CheckpointError("rng.generators: missing random-generator state")
        for k, g in generators.items():
            if k not in saved:
                raise CheckpointError(f"rng.generators.{k}: the checkpoint holds no state for random generator {k!r}")
            if _saved_device_type(state, k) != g.device.type:
                other_device.append(k)
                continue
            restore(k, g.set_state, saved, "rng.generators")
    if cuda_device is not None:
        if state.get("cuda_device") is not None:
            restore("cuda_device", lambda s: torch.cuda.set_rng_state(s, cuda_device))
        elif isinstance(state.get("cuda"), (list, tuple)):  # before 2026-12-03: every visible GPU's, by index
            index = cuda_device.index if cuda_device.index is not None else torch.cuda.current_device()
            if index < len(state["cuda"]):
                restore(index, lambda s: torch.cuda.set_rng_state(s, cuda_device), dict(enumerate(state["cuda"])),
                        "rng.cuda")
    return other_device
