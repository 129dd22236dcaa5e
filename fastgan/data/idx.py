"""IDX files (MNIST, Fashion-MNIST), gzipped or not.

Format (yann.lecun.com/exdb/mnist): two zero bytes, a type code, the number of dimensions, then each
dimension as a big-endian uint32, then the data in C order, big-endian.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ._io import read_maybe_gzip, require_exists

_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

# (split) -> base names tried in order; each also with ".gz". The first is the distributed name, the second
# the one some archives unpack to.
_IMAGE_FILES = {"train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte")}

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist/"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a native-endian numpy array; ValueError naming `name` on any inconsistency."""
    if len(data) < 4:
        raise ValueError(f"{name}: truncated IDX file ({len(data)} bytes, the header alone needs 4)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise ValueError(f"{name}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTNN with type "
                         f"code TT in {sorted(hex(t) for t in _TYPES)})")
    dtype, ndim = _TYPES[data[2]], data[3]
    if ndim == 0:
        raise ValueError(f"{name}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    # Python ints: an int64 product of uint32 dims wraps (2**31 * 2**31 * 4 == 0) and could match a short file.
    expected = math.prod(shape) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        kind = "truncated" if got < expected else "has trailing bytes"
        raise ValueError(f"{name}: IDX file {kind}: header dims {shape} of {dtype.str[1:]} need {expected} data "
                         f"bytes, found {got}")
    if expected == 0:  # numpy cannot even reshape (0, 2**32-1, 2**32-1), and nothing here could train on it
        raise ValueError(f"{name}: IDX header dims {shape} hold no data (a dimension is 0)")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path) -> np.ndarray:
    path = require_exists(path, "IDX file")
    return parse_idx(read_maybe_gzip(path), name=path)


def find_image_file(directory, split: str) -> str:
    """Path of the images file for `split` ("train" | "test") in an MNIST-style directory."""
    if split not in _IMAGE_FILES:
        raise ValueError(f"split: must be 'train' or 'test' for IDX data, got {split!r}")
    tried = []
    for base in _IMAGE_FILES[split]:
        for cand in (base, base + ".gz"):
            p = os.path.join(directory, cand)
            tried.append(cand)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(f"no {split} images in {os.fspath(directory)!r} (looked for {', '.join(tried)})")


def load_idx_images(path, split: str = "train", fashion: bool = False) -> np.ndarray:
    """uint8 images (N, 1, H, W) from an IDX images file, or from a directory holding the standard files.

    split "all" concatenates train and test.
    """
    hint = (f"install the Debian package `{FASHION_MNIST_PACKAGE}` (apt-get install {FASHION_MNIST_PACKAGE}), "
            f"which puts it in {FASHION_MNIST_DIR}, or set data.path" if fashion else "set data.path")
    what = "Fashion-MNIST data" if fashion else "MNIST data"
    path = require_exists(path, what, hint)
    if os.path.isdir(path):
        splits = ("train", "test") if split == "all" else (split,)
        try:
            files = [find_image_file(path, s) for s in splits]
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{what}: {e}; {hint}") from None
    elif split != "train":
        # A lone file is whatever split it is; reading it for another would silently train on the wrong data.
        raise ValueError(f"data.split={split!r} needs the folder holding the split files, but data.path {path!r} "
                         f"is a single file; set data.path to the folder, or leave data.split as 'train'")
    else:
        files = [path]
    arrays = []
    for f in files:
        a = read_idx(f)
        if a.ndim != 3:
            raise ValueError(f"{f}: expected an IDX images file with 3 dimensions (N, H, W), got shape {a.shape}")
        if a.dtype != np.uint8:
            raise ValueError(f"{f}: expected unsigned-byte pixels (type code 0x08), got {a.dtype}")
        arrays.append(a)
    if len({a.shape[1:] for a in arrays}) > 1:
        raise ValueError(f"{path}: train and test images differ in size: {[a.shape[1:] for a in arrays]}")
    out = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return out[:, None]
