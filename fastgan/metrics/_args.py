"""Argument checks shared by the metrics: each error names the argument, never an internal one."""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .._errors import first_line


def as_points(x, name: str) -> torch.Tensor:
    """A tensor or numpy array of real values (not bool), as a tensor (numpy input is not copied)."""
    if isinstance(x, np.ndarray):
        if x.dtype.byteorder not in "=|" or any(st < 0 for st in x.strides) or not x.flags.writeable:
            # torch reads neither a byte-swapped nor a reversed (x[::-1]) array, and warns on every read-only one
            # (np.load(mmap_mode="r")) though nothing here writes to it: a native, contiguous copy
            x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
            if not x.flags.writeable:
                x = x.copy()
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError) as e:  # an object array, long double, ...
            raise TypeError(f"{name}: a numpy array of dtype {x.dtype}, which torch cannot read "
                            f"({first_line(e)})") from None
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor or numpy array, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name}: expected real values, got dtype {x.dtype}")
    if x.dtype == torch.bool:
        # True/False would be read as 1/0 coordinates and scored without a word: a mask passed by mistake
        raise TypeError(f"{name}: expected numbers, got dtype {x.dtype} (convert with .double() if 0/1 values are "
                        f"meant)")
    return x


def check_finite(x: torch.Tensor, name: str) -> None:
    # one NaN makes every score NaN, and max() over NaN scores silently picks the first sigma of the grid
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: contains {bad} non-finite value(s) (NaN or inf)")


def real_number(v):
    """v as a float if it is a real number (a Python or numpy number, or a one-element real tensor), else None."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex():
        v = v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        return None
    try:
        return float(v)
    except OverflowError:  # an int beyond float64 (10**400): as large as inf, which the callers refuse by name
        return math.inf if v > 0 else -math.inf


def positive_float(v, name: str) -> float:
    """A finite number > 0 (a Python or numpy number, or a one-element tensor)."""
    if real_number(v) is None:
        raise TypeError(f"{name}: expected a number, got {type(v).__name__}")
    v = real_number(v)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: must be finite and > 0, got {v!r}")
    return v


def bandwidth(v, name: str) -> float:
    """A kernel bandwidth: positive_float whose square is a normal float64 (sigma^2 divides the distances)."""
    v = positive_float(v, name)
    if not 2.2250738585072014e-308 <= v * v < math.inf:
        raise ValueError(f"{name}: {v!r} squared {'underflows' if v < 1 else 'overflows'} float64; use a value in "
                         f"[1e-150, 1e150]")
    return v


def positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name}: must be >= 1, got {v!r}")
    return int(v)
