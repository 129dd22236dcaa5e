"""Files replaced whole or not at all: written to a temporary file beside the target, then renamed over it."""
from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Iterator

from ._errors import oserror


@contextlib.contextmanager
def replacing(path, durable: bool = False, name_errors: bool = True) -> Iterator[Path]:
    """Yields the temporary path to write; when the block ends without an error it replaces `path` (readers see
    the old file or the new one, whole). The temporary file is removed whatever happens, and its name is unique, so
    two writers of one target (two `fastgan sample --out x.png`) do not write into each other's. durable: fsync the
    file and the folder, so the rename survives a power cut (checkpoints). name_errors: an OSError that names no
    file (a full disk's, from a write) is raised again naming `path` (off where the caller names it itself)."""
    p = Path(path)
    tmp = p.with_name(_temporary_name(p.name))
    # (a process killed in the block leaves it: writer_pid names the process, for remove_stale_temporaries)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        try:
            os.replace(tmp, p)
        except IsADirectoryError as e:  # errno's line named the temporary file, not the folder in the way
            raise IsADirectoryError(e.errno, "a folder is where this file is written; move it away", str(p)) \
                from None
    except OSError as e:
        if e.filename is not None and os.fspath(e.filename) == os.fspath(tmp) and e.errno is not None:
            # creating the temporary file failed (an unwritable folder): the error named a file the user never gave
            raise OSError(e.errno, e.strerror or str(e), str(p)) from None
        if e.filename is not None or not name_errors:
            raise
        # a write's error (a full disk) names no file: "[Errno 28] No space left on device" said nothing of which
        raise oserror(e, f"{p}: could not be written ({e.strerror or e})") from e
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            # nothing was made there (a read-only file system refuses the unlink with EROFS, not ENOENT): the
            # block's error, naming `path`, is the one to raise
            pass
    if durable:
        try:
            fd = os.open(p.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


NAME_MAX = 255  # bytes in a file name: ext4's, XFS's, APFS's and NTFS's longest


def _temporary_name(name: str) -> str:
    """'.<name>.<pid>-<thread>-<random>.tmp', with name cut so that the whole stays within NAME_MAX bytes: a
    target name of 215-255 bytes failed with the temporary's name in the error."""
    tail = f".{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}.tmp"
    room = NAME_MAX - 1 - len(tail.encode())
    return "." + name.encode()[:room].decode(errors="ignore") + tail


_TEMPORARY = re.compile(r"^\..+\.(\d+)-\d+-[0-9a-f]{8}\.tmp$")


def writer_pid(name: str):
    """The pid of the process that made `name` as a temporary file of `replacing`, or None for any other name."""
    m = _TEMPORARY.match(name)
    return int(m.group(1)) if m else None
