"""A numpy .npz (or .npy) array: images (N, H, W), (N, C, H, W), (N, H, W, C) or points (N, D)."""
from __future__ import annotations

import math
import os
import tokenize
import warnings
import zipfile
import zlib

import numpy as np

from .._errors import ConfigError
from ._io import require_exists

_PREFERRED_KEYS = ("x", "images", "data", "arr_0")


def _pick_key(npz, path, key):
    # only the .npy members are arrays: np.load lists every member of a zip, and reads the others as bytes (a zip
    # of PNGs was "several arrays ['a.png', 'b.png']", and a key naming one an array of shape ())
    keys = [n[:-len(".npy")] for n in npz.zip.namelist() if n.endswith(".npy")]
    if not keys and npz.files:
        raise ValueError(f"{path}: not an npz file: it is a zip holding no .npy arrays (members: {npz.files[:5]}"
                         f"{', ...' if len(npz.files) > 5 else ''})")
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


# what reading a damaged file raises: numpy's header parser lets a tokenize.TokenError through (an unbalanced
# bracket in a .npy header: one flipped byte), zipfile a RuntimeError for an encrypted member and a
# NotImplementedError for an unsupported compression method (Deflate64) or zip version
_BAD = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, tokenize.TokenError, RuntimeError,
        NotImplementedError)


def _refuse_objects(e: Exception, path, what: str) -> None:
    """An intact file whose array has dtype object: numpy refuses it without pickle, which fastgan never allows
    for data files (unpickling runs code), and says so in terms that read as a damaged file."""
    if isinstance(e, ValueError) and "Object arrays cannot be loaded" in str(e):
        raise ValueError(f"{path}: {what} holds Python objects (dtype object), which fastgan does not load (it "
                         "would have to unpickle them); save the samples as a numeric array") from None


def _size_problem(f, available: int) -> str | None:
    """f at the start of a .npy holding `available` bytes: what is wrong when its header declares more data than
    that, else None. numpy allocates the declared size before it reads (a header that lies, or a file cut short,
    made a MemoryError of "1.00 TiB", which the CLI read as a batch too large). A header it cannot parse is left
    to np.load."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    except _BAD:
        return None
    if dtype.hasobject:
        return None  # refused by np.load without pickle
    need, have = math.prod(shape) * dtype.itemsize, available - f.tell()
    if need <= have:
        return None
    return (f"is truncated or its header is wrong: it declares shape {shape} of {dtype} ({need} bytes), but "
            f"holds {max(have, 0)} bytes of data")


def load_array(path, key: str | None = None) -> np.ndarray:
    path = require_exists(path, "npz file")
    problem = None
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            if head == b"\x93NUMPY" and key is None:  # its header read in the same open
                f.seek(0)
                problem = _size_problem(f, os.fstat(f.fileno()).st_size)
    except OSError as e:
        raise ValueError(f"{path}: not a readable npz/npy file ({type(e).__name__}: {e})") from None
    if not (head.startswith(b"PK") or head == b"\x93NUMPY"):
        # np.load reads anything else as a pickle and says to allow_pickle: misleading for a text or image file
        raise ValueError(f"{path}: not an npz/npy file (it starts with neither a zip's nor a .npy's magic bytes: "
                         f"{head!r})")
    if head == b"\x93NUMPY" and key is not None:
        # a .npy holds one unnamed array: the key would be recorded in config.yaml and ignored
        raise ConfigError(f"data.npz_key: {path} is a .npy file, which holds one unnamed array; leave "
                          f"data.npz_key unset (got {key!r})")
    if problem:
        raise ValueError(f"{path}: the .npy file {problem}")
    try:
        obj = np.load(path, allow_pickle=False)
    except _BAD as e:
        _refuse_objects(e, path, "its array")
        raise ValueError(f"{path}: not a readable npz/npy file ({type(e).__name__}: {e})") from None
    if isinstance(obj, np.ndarray):  # a plain .npy
        return obj
    with obj:
        name = _pick_key(obj, path, key)
        try:
            member = obj.zip.getinfo(name + ".npy")
            with obj.zip.open(member) as f:
                problem = _size_problem(f, member.file_size)
            a = None if problem else np.asarray(obj[name])  # read whole from the zip: a fresh array, no copy
        except _BAD as e:
            _refuse_objects(e, path, f"array {name!r}")
            raise ValueError(f"{path}: array {name!r} is corrupt or truncated ({type(e).__name__}: {e})") from None
    if problem:
        raise ValueError(f"{path}: array {name!r} {problem}")
    return a


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
