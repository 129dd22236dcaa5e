"""A numpy .npz (or .npy) array: images (N, H, W), (N, C, H, W), (N, H, W, C) or points (N, D)."""
from __future__ import annotations

import warnings
import zipfile
import zlib

import numpy as np

from ._io import require_exists

_PREFERRED_KEYS = ("x", "images", "data", "arr_0")


def _pick_key(npz, path, key):
    keys = list(npz.files)
    if key is not None:
        if key not in keys:
            raise ValueError(f"{path}: no array named {key!r} (arrays: {keys})")
        return key
    if len(keys) == 1:
        return keys[0]
    for k in _PREFERRED_KEYS:
        if k in keys:
            return k
    if not keys:
        raise ValueError(f"{path}: holds no arrays")
    raise ValueError(f"{path}: holds several arrays {keys}; set data.npz_key to choose one")


def _refuse_objects(e: Exception, path, what: str) -> None:
    """An intact file whose array has dtype object: numpy refuses it without pickle, which fastgan never allows
    for data files (unpickling runs code), and says so in terms that read as a damaged file."""
    if isinstance(e, ValueError) and "Object arrays cannot be loaded" in str(e):
        raise ValueError(f"{path}: {what} holds Python objects (dtype object), which fastgan does not load (it "
                         "would have to unpickle them); save the samples as a numeric array") from None


def load_array(path, key: str | None = None) -> np.ndarray:
    path = require_exists(path, "npz file")
    bad = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise ValueError(f"{path}: not a readable npz/npy file ({type(e).__name__}: {e})") from None
    if not (head.startswith(b"PK") or head == b"\x93NUMPY"):
        # np.load reads anything else as a pickle and says to allow_pickle: misleading for a text or image file
        raise ValueError(f"{path}: not an npz/npy file (it starts with neither a zip's nor a .npy's magic bytes: "
                         f"{head!r})")
    try:
        obj = np.load(path, allow_pickle=False)
    except bad as e:
        _refuse_objects(e, path, "its array")
        raise ValueError(f"{path}: not a readable npz/npy file ({type(e).__name__}: {e})") from None
    if isinstance(obj, np.ndarray):  # a plain .npy
        return obj
    with obj:
        name = _pick_key(obj, path, key)
        try:
            return np.array(obj[name])
        except bad as e:
            _refuse_objects(e, path, f"array {name!r}")
            raise ValueError(f"{path}: array {name!r} is corrupt or truncated ({type(e).__name__}: {e})") from None


def to_layout(a: np.ndarray, path) -> tuple[np.ndarray, str]:
    """(array in (N, D) or (N, C, H, W) layout, kind)."""
    if a.ndim == 2:
        return a, "points"
    if a.ndim == 3:
        return a[:, None], "images"
    if a.ndim == 4:
        if a.shape[1] in (1, 3):
            if a.shape[3] in (1, 3):
                # (N, 3, 8, 3): NHWC of height 3 or NCHW of width 3; read silently as the latter, its pixels were
                # scrambled if it was the former
                warnings.warn(f"{path}: images of shape {a.shape[1:]} could have 1 or 3 channels first or last; "
                              f"read as (N, C, H, W) with C = {a.shape[1]} (store (N, H, W, C) arrays of that height "
                              "transposed to (N, C, H, W))", stacklevel=2)
            return a, "images"
        if a.shape[3] in (1, 3):
            return np.ascontiguousarray(a.transpose(0, 3, 1, 2)), "images"
        raise ValueError(f"{path}: 4-d array {a.shape} has neither 1 or 3 channels first (N, C, H, W) "
                         f"nor last (N, H, W, C)")
    raise ValueError(f"{path}: expected points (N, D) or images (N, H, W) / (N, C, H, W) / (N, H, W, C), "
                     f"got shape {a.shape}")
