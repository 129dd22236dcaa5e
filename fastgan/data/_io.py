"""Small helpers shared by the file-format loaders: existence checks and reading maybe-gzipped files."""
from __future__ import annotations

import gzip
import os
import zlib

GZIP_MAGIC = b"\x1f\x8b"


def require_exists(path, what: str, hint: str = "") -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path!r}" + (f"; {hint}" if hint else ""))
    return path


def read_maybe_gzip(path) -> bytes:
    """The file's bytes, decompressed when it starts with the gzip magic (whatever its name says)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({e})") from None
