"""A run's folder: finding one to resume, making a new one, and the lock (flock) that keeps two runs from
writing one folder; status.json, how the folder's latest session ended."""
from __future__ import annotations

import glob
import json
import os
import re
import time
from pathlib import Path
from typing import Optional

from .config import TrainConfig, _shown

CHECKPOINT = Path("checkpoints") / "last.pt"
# Held (flock) by the run writing the folder for its whole life; the file stays, the lock goes with the process.
LOCK = ".fastgan.lock"
# How the run's latest session ended: running / finished / stopped (a non-finite loss) / interrupted / failed.
STATUS = "status.json"
RUN_INFO = "run_info.json"


class RunFolderError(OSError):
    """The run folder is in use by another run, or holds files a new run would overwrite (the CLI's exit code 1)."""


_STAMP = r"\d{8}-\d{6}(-\d+)?"


def usable_path(d: Path, field: str) -> Path:
    """d, once the OS takes it as a path: one it refuses (a name too long) is a RunFolderError naming the field
    (errno's own "[Errno 36] File name too long" named none)."""
    try:
        d.exists()  # ignores a missing path; raises for one the OS cannot look up
    except OSError as e:
        shown = str(d) if len(str(d)) <= 120 else str(d)[:117] + "..."
        raise RunFolderError(f"{field} {shown}: cannot use the path: {e.strerror or e}") from None
    return d


def find_run(cfg: TrainConfig) -> Path:
    if cfg.run.dir:
        d = usable_path(Path(cfg.run.dir), "run.dir")
        if not (d / CHECKPOINT).exists():
            refuse_if_running(d)
            raise FileNotFoundError(f"--resume: {d} holds no checkpoint ({d / CHECKPOINT} not found)")
        return d
    root = Path(cfg.run.out_dir)
    pat = re.compile(rf"^{re.escape(cfg.run.name)}-{_STAMP}$")
    runs = [p for p in root.glob(f"{glob.escape(cfg.run.name)}-*") if pat.match(p.name) and
            (p / CHECKPOINT).exists()]
    if not runs:
        raise FileNotFoundError(f"--resume: no run named {cfg.run.name!r} to continue "
                                f"(no {root}/{cfg.run.name}-<timestamp>/{CHECKPOINT})")
    return max(runs, key=lambda p: (p / CHECKPOINT).stat().st_mtime)


def refuse_if_running(d: Path) -> None:
    """A resume of a folder whose run has not checkpointed yet: the busy error naming the holder's pid (rather
    than 'no checkpoint')."""
    if d.is_dir() and not (d / CHECKPOINT).exists() and lock_held(d):
        unlock(lock(d))  # lock raises the busy error while the holder lives


# descriptors from lock() whose lock file that call created (a folder written before run folders had one): a
# refused resume removes it again (discard_created_lock), so that the folder stays as it was
_created: dict[int, Path] = {}
# descriptors from lock() not yet claimed, with the lock file's content and times before this process wrote its pid
# there: unlock puts them back, so that a refused resume leaves the file as it was
_previous: dict[int, tuple[bytes, int, int]] = {}


def lock(d: Path) -> Optional[int]:
    """An exclusive flock on d/LOCK, held until the returned descriptor is closed (or the process ends, so a killed
    run leaves no stale lock). Two runs writing one folder would mix their checkpoints, configs and logs."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): unguarded, as before
        return None
    if not d.is_dir():
        raise RunFolderError(f"run folder {d} is not a folder")
    path = d / LOCK
    while True:
        try:
            fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            try:
                fd, created = os.open(path, os.O_RDWR), False
            except FileNotFoundError:  # removed between the two opens: create it
                continue
        try:
            for attempt in range(10):  # lock_held (`fastgan compare`) takes the lock for an instant: wait that out
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 9:
                        raise
                    time.sleep(0.005)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise RunFolderError(f"run folder {d} is in use by another fastgan run"
                                 f"{f' (pid {holder})' if holder else ''}; wait for it to end or choose another "
                                 "run.dir") from None
        # a file its creator removed while this call waited for it (discard_created_lock) guards nothing: a
        # process that creates the file anew would hold the folder too
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    if created:
        _created[fd] = path
    # the holder's pid from the moment it holds the lock, not from claim(): a resume loads its checkpoint and data
    # in between, while another process told "in use" would read the previous session's (ended) pid
    st = os.fstat(fd)
    _previous[fd] = (os.pread(fd, 64, 0), st.st_atime_ns, st.st_mtime_ns)
    _write_pid(fd)
    return fd


def _write_pid(fd: int, data: Optional[bytes] = None) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode() if data is None else data, 0)


def discard_created_lock(fd: Optional[int]) -> None:
    """Remove the lock file if lock() created it for fd (a refused or no-op resume of a folder that had none),
    while fd still holds it; a process that opened it meanwhile sees it gone once it gets the lock, and opens again."""
    path = _created.pop(fd, None) if fd is not None else None
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def lock_held(d: Path) -> bool:
    """Whether a process holds run folder d's lock (a run writing it), found by trying a shared lock for an
    instant (the retry in lock waits such a probe out)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(d / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the shared lock if it was taken


def read_status(d: Path) -> dict:
    """Run folder d's status.json (written by rename, so never half-written): FileNotFoundError when there is none
    (an older fastgan's run, or one that failed while starting), ValueError when it is not one JSON object with a
    "state"."""
    info = json.loads((d / STATUS).read_text())
    if not isinstance(info, dict) or not isinstance(info.get("state"), str):
        raise ValueError(f"{d / STATUS}: not a status record (an object with a \"state\")")
    return info


def claim(fd: Optional[int]) -> None:
    """Keep our pid, which lock() wrote, in the held lock file, once the folder is known to be ours (for the busy
    message): unlock no longer puts the previous content back."""
    if fd is not None:
        _created.pop(fd, None)  # the folder's lock file from now on, kept
        _previous.pop(fd, None)


def unlock(fd: Optional[int]) -> None:
    if fd is not None:
        _created.pop(fd, None)
        previous = _previous.pop(fd, None)
        if previous is not None:  # not claimed: the file as it was before lock(), its times included
            data, atime, mtime = previous
            _write_pid(fd, data)
            os.utime(fd, ns=(atime, mtime))
        os.close(fd)  # releases the flock; the file stays (see discard_created_lock for the one exception)


def new_run_dir(cfg: TrainConfig) -> tuple[Path, Optional[int]]:
    """The new run's folder and the descriptor holding its lock."""
    if cfg.run.dir:
        d = usable_path(Path(cfg.run.dir), "run.dir")
        if d.exists() and not d.is_dir():
            raise RunFolderError(f"run.dir {d} is a file, not a folder")
        if d.is_dir() and not (d / LOCK).exists() and any(d.iterdir()):
            raise _not_empty(d)  # not a fastgan run folder: refused before writing anything into it
        _make_folder(d, "run.dir")
        fd = lock(d)
        try:
            if (d / CHECKPOINT).exists():
                raise FileExistsError(f"run.dir {d} already holds a run ({CHECKPOINT}); pass --resume (resume=True in "
                                      "fastgan.train) to continue it or choose another run.dir")
            if any(p.name != LOCK for p in d.iterdir()):
                raise _not_empty(d)
            claim(fd)
        except BaseException:
            unlock(fd)
            raise
        return d, fd
    root = Path(cfg.run.out_dir)
    _make_folder(root, "run.out_dir")  # apart from the loop: a bad root is not a taken name
    base = f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    d, n = root / base, 1
    while True:
        try:
            d.mkdir(exist_ok=False)
        except FileExistsError:
            n += 1
            d = root / f"{base}-{n}"
            continue
        except OSError as e:  # a name too long for the file system, say
            raise RunFolderError(f"run.name {_shown(cfg.run.name)}: cannot make the run folder {d} "
                                 f"({e.strerror or e})") from None
        fd = lock(d)
        claim(fd)
        return d, fd


def _make_folder(d: Path, field: str) -> None:
    """d and its parents made as needed; what stops it is a RunFolderError naming the field and the path at fault
    (errno's own text named neither: "[Errno 17] File exists: 'deadlink'" for a link to a missing folder)."""
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"{field} {d}: cannot make the folder: {_blocker(d) or e.strerror or e}") from None


def _blocker(d: Path) -> str:
    """The first of d's ancestors (or d) that is a file or a link to a missing folder, said as such; '' if none."""
    for p in [*reversed(d.parents), d]:
        if p.is_symlink() and not p.exists():
            return f"{p} is a link to a missing folder ({os.readlink(p)})"
        if p.exists() and not p.is_dir():
            return f"{p} is a file"
    return ""


def _not_empty(d: Path) -> RunFolderError:
    names = sorted(p.name for p in d.iterdir() if p.name != LOCK)
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return RunFolderError(f"run.dir {d} is not empty ({shown}) and holds no checkpoint to resume; a new run "
                          "needs a new or empty folder: pick another run.dir or remove that folder")


def run_info_path(run_dir) -> Path:
    return Path(run_dir) / RUN_INFO


def recorded_data_shape(run_dir) -> tuple:
    """The sample shape a run trained on, as its run_info.json records it; FileNotFoundError / ValueError naming the
    file when it is missing or unreadable."""
    path = run_info_path(run_dir)
    try:
        info = json.loads(path.read_text())
        # a KeyError or TypeError said only "('data_shape')" or "list indices must be integers" (a CLI audit)
        if not isinstance(info, dict):
            raise ValueError(f"the top level is a JSON {type(info).__name__}, not an object of entries")
        if "data_shape" not in info:
            raise ValueError("it has no data_shape entry")
        shape = info["data_shape"]
        if not (isinstance(shape, list) and shape and all(isinstance(s, int) and s > 0 for s in shape)):
            raise ValueError(f"data_shape {shape!r} is not a list of positive ints")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found (the run folder's record of its data shape)") from None
    except (ValueError, RecursionError) as e:  # bad JSON, undecodable bytes, arrays nested past the recursion limit
        raise ValueError(f"{path}: unreadable ({e})") from None
    return tuple(shape)


def _run_info_entry(run_dir, key: str):
    """run_info.json's `key`, None where the file or the entry is missing or unreadable (the commands that need
    the file say so themselves: recorded_data_shape)."""
    try:
        return json.loads(run_info_path(run_dir).read_text()).get(key)
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def recorded_data_path(run_dir) -> Optional[str]:
    """The absolute data.path a run trained on, as its run_info.json records it (since 2026-12-06); None where it
    records none (a mixture, or a run written before)."""
    path = _run_info_entry(run_dir, "data_path")
    return path if isinstance(path, str) and os.path.isabs(path) else None


def recorded_data_samples(run_dir) -> Optional[int]:
    """How many stored samples the run loaded, as its run_info.json records it (since 2026-12-06); None where it
    records none (a mixture, or a run written before)."""
    n = _run_info_entry(run_dir, "data_samples")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


# the files only the run holding the folder's lock writes (with _atomic.replacing), by folder
_RUN_WRITES = {".": ("config.yaml", RUN_INFO, STATUS, "metrics.csv"), "checkpoints": ("last.pt",)}


def remove_stale_temporaries(d: Path) -> list:
    """Temporary files of atomic writes (a checkpoint's as large as the checkpoint) left in run folder d by killed
    trainers (a writer that ends otherwise removes its own); the removed paths. Called by the run holding d's lock:
    only temporaries of files no one else writes are removed (not those of `fastgan sample --out` into the folder,
    which may run on another host sharing it), and only where their pid names no live process here."""
    from ._atomic import writer_pid

    removed = []
    for sub, targets in _RUN_WRITES.items():
        folder = d / sub
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            pid = writer_pid(name)
            if pid is None or pid == os.getpid() or _alive(pid) or \
                    not any(name.startswith(f".{t}.") for t in targets):
                continue
            try:
                (folder / name).unlink()
                removed.append(folder / name)
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: another user's; others: not to be asked. Kept
        return True
    return True
