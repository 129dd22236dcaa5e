"""CIFAR-10, "python version" (cifar-10-batches-py): pickled dicts with b"data" (N, 3072) uint8 in
channel-major order and b"labels".

The unpickler only accepts what these files hold (dicts, lists, numpy arrays): a pickle can run
arbitrary code, and a dataset path should not be a way to do that.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle

import numpy as np

from ._io import require_exists

_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST = ("test_batch",)


class _DType:
    """numpy.dtype(name, align, copy) as the unpickler makes it: numpy's own dtype.__setstate__ (C) takes a malformed
    state unchecked (one flipped byte of a batch file made a 6-tuple of it, and the process died of SIGSEGV), so
    the state is checked here and the dtype is a plain numeric one."""

    def __init__(self, name, align=False, copy=False):
        if isinstance(name, bytes):  # the published batches were pickled by Python 2: its str loads as bytes
            name = name.decode("latin1")
        self.dtype = np.dtype(name) if isinstance(name, str) else None
        if self.dtype is None or self.dtype.kind not in "biuf" or self.dtype.fields is not None:
            raise pickle.UnpicklingError(f"refusing dtype {name!r:.40}")

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        order = state[1] if isinstance(state, tuple) and len(state) in (8, 9) else None
        order = order.decode("latin1") if isinstance(order, bytes) else order
        if order not in ("<", ">", "|", "=") or not all(x is None for x in state[2:5]):
            raise pickle.UnpicklingError(f"malformed dtype state {state!r:.80}")
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


def _array(raw, dtype, shape, order="C") -> np.ndarray:
    """An array built from its pickled pieces, each checked (numpy's ndarray.__setstate__ is not guarded either)."""
    if not (isinstance(dtype, _DType) and isinstance(raw, (bytes, bytearray, memoryview, pickle.PickleBuffer))
            and isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape) and order in ("C", "F")):
        raise pickle.UnpicklingError("malformed numpy array")
    return np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order=order)  # ValueError if the sizes differ


class _Reconstructed:
    """numpy.core.multiarray._reconstruct(ndarray, (0,), b'b'): the array its BUILD state describes, in .array."""
    array = None

    def __init__(self, *args):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # (version, shape, dtype, is_fortran, raw)
        if not (isinstance(state, tuple) and len(state) == 4 and type(state[2]) in (bool, int) and state[2] in (0, 1)):
            raise pickle.UnpicklingError("malformed numpy array state")
        shape, dtype, fortran, raw = state
        self.array = _array(raw, dtype, shape, "F" if fortran else "C")


def _scalar(dtype, raw):
    return _array(raw, dtype, ())[()]


_NDARRAY = object()  # numpy.ndarray: only an argument of _reconstruct, never called
# what these files hold; numpy's reconstructors are replaced by the checked ones above
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _Reconstructed,
    ("numpy._core.multiarray", "_reconstruct"): _Reconstructed,
    ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _DType,
    ("numpy.core.multiarray", "scalar"): _scalar, ("numpy._core.multiarray", "scalar"): _scalar,
    ("_codecs", "encode"): codecs.encode,
    # pickle protocol 5 (a batch re-saved by Python 3.8+): numpy rebuilds arrays from their bytes with _frombuffer
    ("numpy.core.numeric", "_frombuffer"): _array, ("numpy._core.numeric", "_frombuffer"): _array,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
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
    if isinstance(data, _Reconstructed):
        data = data.array
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
