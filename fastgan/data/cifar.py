"""CIFAR-10, "python version" (cifar-10-batches-py): pickled dicts with b"data" (N, 3072) uint8 in
channel-major order and b"labels".

The unpickler only accepts what these files hold (dicts, lists, numpy arrays): a pickle can run
arbitrary code, and a dataset path should not be a way to do that.
"""
from __future__ import annotations

import io
import os
import pickle

import numpy as np

from ._io import require_exists

_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST = ("test_batch",)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    # pickle protocol 5 (a batch re-saved by Python 3.8+): numpy rebuilds arrays from their bytes with _frombuffer
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_batch(path) -> np.ndarray:
    """uint8 images (N, 3, 32, 32) from one CIFAR-10 batch file."""
    path = require_exists(path, "CIFAR-10 batch file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        d = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # truncated/garbled pickles raise many types
        raise ValueError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    data = d.get(b"data", d.get("data"))
    if data is None:
        raise ValueError(f"{path}: no 'data' entry (keys: {sorted(map(str, d))})")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must have shape (N, 3072), got {data.shape}")
    if data.dtype != np.uint8:
        raise ValueError(f"{path}: 'data' must be uint8, got {data.dtype}")
    return data.reshape(-1, 3, 32, 32)


def load_cifar10(path, split: str = "train") -> np.ndarray:
    """uint8 images (N, 3, 32, 32) from a cifar-10-batches-py folder (or its parent).

    split: "train" (data_batch_1..5), "test" (test_batch) or "all".
    """
    path = require_exists(path, "CIFAR-10 folder", "point data.path at the extracted cifar-10-batches-py folder")
    if not os.path.isdir(path):
        raise ValueError(f"{path}: CIFAR-10 data.path must be a folder (cifar-10-batches-py), not a file")
    if not os.path.exists(os.path.join(path, "data_batch_1")) and os.path.isdir(
            os.path.join(path, "cifar-10-batches-py")):
        path = os.path.join(path, "cifar-10-batches-py")
    names = {"train": _TRAIN, "test": _TEST, "all": _TRAIN + _TEST}.get(split)
    if names is None:
        raise ValueError(f"split: must be one of ('train', 'test', 'all'), got {split!r}")
    missing = [n for n in names if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 folder {path!r} lacks {', '.join(missing)}")
    return np.concatenate([read_batch(os.path.join(path, n)) for n in names])
