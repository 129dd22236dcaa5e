"""What the commands on finished runs (`crosstest`, `eval`, `sample`) share: --device and --seed, and one error
line with exit 2 for config errors (a bad --device or --out), 1 for the rest (missing run, damaged checkpoint,
bad data)."""
from __future__ import annotations

import json
import math
import sys

import torch

from . import config as C
from .checkpoint import CheckpointError
from .train_checks import _device


def cli_device(text: str) -> torch.device:
    """A command's --device, checked as run.device is (a ConfigError naming --device)."""
    if not C._DEVICE.fullmatch(text):
        raise C.ConfigError(f"--device: must be one of ('cpu', 'cuda', 'cuda:N', 'auto'), got {text!r}")
    try:
        return _device(text)
    except C.ConfigError as e:
        raise C.ConfigError(str(e).replace("run.device", "--device")) from None


def _seed(text: str) -> int:
    """--seed: an integer torch.Generator.manual_seed takes (argparse names the option when this raises)."""
    value = int(text)
    if not C.INT64_MIN <= value <= 2 ** 64 - 1:
        raise ValueError(text)
    return value


_seed.__name__ = "integer in [-2**63, 2**64 - 1]"  # argparse's "invalid <name> value: ..."


def positive(text: str) -> int:
    """A sample count (-n, --samples): refused by argparse naming the option, as --seed is (past 2**31 - 1, torch's
    sizes overflowed with a page of C++ frames)."""
    value = int(text)
    if not 1 <= value <= 2 ** 31 - 1:
        raise ValueError(text)
    return value


positive.__name__ = "integer in [1, 2**31 - 1]"


def non_empty(what: str):
    """An argparse type refusing empty text, named "non-empty <what>" in argparse's error: a shell variable left unset
    gave a run folder argument that was read as the current folder, a --grid that was ignored."""
    def check(text: str) -> str:
        if not text.strip():
            raise ValueError(text)
        return text

    check.__name__ = f"non-empty {what}"
    return check


folder_arg = non_empty("path")

# the option that sizes each command's draws, named when an allocation fails
_SIZED_BY = {"sample": "-n", "eval": "--samples", "crosstest": "--samples"}


def add_device_and_seed(p, seed_help: str) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--seed", type=_seed, default=0, help=seed_help)


def strict_json(obj) -> str:
    """`obj` as strict JSON (what `jq` and JSON.parse read): NaN and infinities as the strings "nan", "inf",
    "-inf", as `fastgan compare --json` writes them (a mode metric is NaN when no sample is near a mode)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), indent=2, allow_nan=False)


def run(command: str, body) -> int:
    """body() -> the text to print; errors become one line on stderr."""
    try:
        text = body()
    except CheckpointError as e:
        # a RuntimeError, but fastgan's own, whole in its first line: not read as torch's (one naming an allocation
        # that failed while a run's models were built carries its own advice)
        print(f"fastgan {command}: error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:
        from .train_cli import _out_of_memory

        oom = _out_of_memory(e)  # every MemoryError is one
        # torch's own errors carry its C++ frames after their first line
        why = f"out of memory: {oom}; draw fewer samples ({_SIZED_BY.get(command, '-n')})" if oom is not None \
            else (str(e).splitlines() or [type(e).__name__])[0]
        print(f"fastgan {command}: error: {why}", file=sys.stderr)
        return 1
    except (CheckpointError, OSError, ValueError, TypeError) as e:
        why = str(e)
        why = why[len(command) + 2:] if why.startswith(f"{command}: ") else why  # the Python API's own prefix
        print(f"fastgan {command}: error: {why}", file=sys.stderr)
        return 2 if isinstance(e, C.ConfigError) else 1
    print(text)
    return 0
