"""Run logs: CSV scalars, TensorBoard event files (written directly, no tensorboard package needed), and
PNG sample pictures (image grids, scatter plots of point samples)."""
from __future__ import annotations

import contextlib
import csv
import io
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Mapping, Optional

from ._atomic import replacing
from ._errors import oserror

# ------------------------------------------------------------------------------------------ CSV


class CSVLogger:
    """Rows of scalars keyed by step. New columns rewrite the file with the union of columns; on resume, rows
    past the checkpoint's step are dropped so the log matches the restored state. An existing file is read here
    and rewritten at the first row logged, not before: a resume that fails in between leaves it as it was. Rows the
    file holds are not kept in memory (a run logging every step kept ~920 bytes a row: ~0.9 GB a million steps):
    a rewrite, `drop`, `logged` and `rows` read them back."""

    def __init__(self, path, resume_step: Optional[int] = None):
        self.path = Path(path)
        self.columns: list[str] = []
        self._held: Optional[list[dict]] = None  # the rows while the file differs from them (None: the file's)
        if self.path.exists():
            self.columns, rows, damaged = self._read()
            if damaged:
                print(f"fastgan: warning: {self.path}: left out {damaged} damaged "
                      "row(s) (a write cut short: a last row without its line end, rows whose step is not a number "
                      "or that hold NUL bytes)", file=sys.stderr)
            if resume_step is not None:
                rows = [r for r in rows if _int(r.get("step")) <= resume_step]
            self._held = rows

    def _read(self) -> tuple[list, list, int]:
        """(columns, rows, damaged rows left out) of the file."""
        try:
            with open(self.path, newline="") as f:
                text, nul_lines = without_nul_lines(f.read())
            reader = csv.DictReader(io.StringIO(text, newline=""))
            columns, rows = list(reader.fieldnames or []), []
            problem = no_step_column(columns)
            if problem:
                # another program's file: its header's fields became columns of the continued log, beside step
                raise csv.Error(problem)
            for r in reader:
                if None in r:  # more fields than the header: the first row logged could not write them
                    raise csv.Error(f"line {reader.line_num} has {len(columns) + len(r[None])} "
                                    f"fields, the header {len(columns)}")
                rows.append(r)
        except (UnicodeDecodeError, csv.Error) as e:
            raise ValueError(f"{self.path} is not a readable CSV log ({e}); move it aside to continue the run "
                             "with a new one") from None
        # what a killed append leaves (rows are appended, not replaced): a last row without its line end, cut
        # anywhere (its step "1" of a "12"), and blocks of NULs or junk where no step parses; kept, they would
        # be rows of the continued log, and `fastgan compare` would call the run unreadable
        torn = 1 if rows and cut_short(text) else 0
        kept = [r for r in rows[:len(rows) - torn] if _int(r.get("step")) >= 0]
        return columns, kept, len(rows) - len(kept) + nul_lines

    @property
    def rows(self) -> list[dict]:
        return self._held if self._held is not None else self._read()[1] if self.path.exists() else []

    def logged(self, step: int, key: str) -> bool:
        """Whether a row at `step` holds a value of `key`."""
        return any(_int(r.get("step")) == step and r.get(key) not in (None, "") for r in self.rows)

    def drop(self, step: int, keys) -> None:
        """The rows at `step` holding a value of any of `keys`, dropped (from the file at the next row logged)."""
        keys = set(keys)
        self._held = [r for r in self.rows
                      if _int(r.get("step")) != step or not any(r.get(k) not in (None, "") for k in keys)]

    def log(self, step: int, values: Mapping[str, float]) -> None:
        row = {"step": step, **{k: _fmt(v) for k, v in values.items()}}
        new = [k for k in row if k not in self.columns]
        try:
            if new or self._held is not None:
                rows = self.rows + [row]
                self.columns += new
                self._rewrite(rows)
            else:
                with open(self.path, "a", newline="") as f:
                    csv.DictWriter(f, self.columns).writerow(row)
        except OSError as e:  # a full disk's error from a file object's write names no file
            msg = f"writing {self.path}: {e.strerror or e}"
            raise oserror(e, msg) from e

    def _rewrite(self, rows) -> None:
        self._held = rows  # until the file holds them: a failed write leaves them to the next row's rewrite
        with replacing(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows(rows)
        self._held = None


def without_nul_lines(text: str) -> tuple[str, int]:
    """(text without its lines holding NUL bytes, how many there were): what a power cut leaves in a file being
    appended to; csv before Python 3.11 refuses a whole file for one ("line contains NUL")."""
    if "\0" not in text:
        return text, 0
    lines = text.splitlines(keepends=True)
    kept = [ln for ln in lines if "\0" not in ln]
    return "".join(kept), len(lines) - len(kept)


def no_step_column(fieldnames) -> Optional[str]:
    """Why a CSV header is not a metrics log's (another program's file: a JSON record, a ;-separated table), or None:
    the trainer's resume (CSVLogger) and `fastgan compare` refuse such a file alike."""
    if fieldnames and "step" not in fieldnames:
        shown = ",".join(fieldnames)
        return f"its header, {shown[:60]!r}{'...' if len(shown) > 60 else ''}, has no step column"
    return None


def cut_short(text: str) -> bool:
    """Whether a CSV log's text ends inside a row (no line end): a row being appended, or a killed append's."""
    return not text.endswith(("\n", "\r"))


def _int(v) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError, OverflowError):  # "inf" or "1e400" in a damaged row: no step
        return -1


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


# ------------------------------------------------------------------------------------------ TensorBoard

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord framing."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, wire: int) -> bytes:
    return _varint((num << 3) | wire)


def _len_field(num: int, payload: bytes) -> bytes:
    return _field(num, 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str = None, summary: bytes = None,
           session_start: bool = False) -> bytes:
    """Serialized tensorflow.Event: wall_time (1, double), step (2, int64), file_version (3), summary (5),
    session_log (7; status START = 1 makes TensorBoard drop the steps >= its own of an earlier session). Field 6 is
    the deprecated log_message: a START written there (as until 2026-12-07) was a LogMessage TensorBoard ignores,
    and a resumed run's earlier session showed its steps past the checkpoint beside the new ones."""
    msg = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
    if file_version is not None:
        msg += _len_field(3, file_version.encode())
    if summary is not None:
        msg += _len_field(5, summary)
    if session_start:
        msg += _len_field(7, _field(1, 0) + _varint(1))
    return msg


def _scalar_summary(values: Mapping[str, float]) -> bytes:
    """tensorflow.Summary with one Value(tag (1), simple_value (2, float)) per scalar."""
    out = b""
    for tag, v in values.items():
        value = _len_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", float(v))
        out += _len_field(1, value)
    return out


class TensorBoardWriter:
    """Scalar event files TensorBoard reads (`tensorboard --logdir <run folder>/tb`)."""

    def __init__(self, logdir, resume_step: Optional[int] = None):
        self.dir = Path(logdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.dir / name
        n = 0
        while self.path.exists():
            n += 1
            self.path = self.dir / f"{name}.{n}"
        self._f, self._failed = open(self.path, "ab"), False
        try:
            self._write(_event(time.time(), 0, file_version="brain.Event:2"))
            if resume_step is not None:
                # at the first step this session logs: TensorBoard keeps only the steps below a START's, and the
                # checkpoint's own step (its losses, samples' mode metrics, FD) belongs to the kept past, as
                # metrics.csv keeps its rows
                self._write(_event(time.time(), resume_step + 1, session_start=True))
            self.flush()
        except OSError:
            # the file this writer made, left empty or torn by a full disk: removed, not left among the run's
            self.close()
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
            raise

    def _write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        with self._naming_the_file():
            self._f.write(header + struct.pack("<I", _masked_crc(header)) + data +
                          struct.pack("<I", _masked_crc(data)))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if values:
            self._write(_event(time.time(), step, summary=_scalar_summary(values)))

    def flush(self) -> None:
        with self._naming_the_file():
            self._f.flush()

    @contextlib.contextmanager
    def _naming_the_file(self):
        try:
            yield
        except OSError as e:
            self._failed = True
            if e.filename is not None:
                raise
            # a full disk's error from a file object's write or flush names no file, as CSVLogger.log's
            raise oserror(e, f"writing {self.path}: {e.strerror or e}") from e

    def close(self) -> None:
        if self._f.closed:
            return
        if self._failed:
            # closing flushes what the failed write left buffered, failing again: the first error is the one
            # raised (close runs in the trainer's finally, where a second error would replace it)
            with contextlib.suppress(OSError):
                self._f.close()
            return
        with self._naming_the_file():
            self._f.close()


def read_events(path) -> list[dict]:
    """Decode an event file written by TensorBoardWriter: [{"step", "wall_time", "scalars": {tag: value}}].
    Checks every record's CRCs (a reader for tests and for users without tensorboard)."""
    data = Path(path).read_bytes()
    pos, out = 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        n = struct.unpack("<Q", header)[0] if len(header) == 8 else None
        if n is None or len(data) < pos + 16 + n:
            # a killed writer's last record: struct's "unpack requires a buffer of 4 bytes" named neither
            raise ValueError(f"{path}: the record at byte {pos} is cut short (a write cut short)")
        (hcrc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        body = data[pos + 12:pos + 12 + n]
        (bcrc,) = struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])
        if hcrc != _masked_crc(header) or bcrc != _masked_crc(body):
            raise ValueError(f"{path}: bad record checksum at byte {pos}")
        out.append(_decode_event(body))
        pos += 16 + n
    return out


def _read_varint(b: bytes, i: int):
    shift = result = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return result, i


def _fields(b: bytes):
    i = 0
    while i < len(b):
        key, i = _read_varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(b, i)
        elif wire == 1:
            v, i = b[i:i + 8], i + 8
        elif wire == 5:
            v, i = b[i:i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield num, wire, v


def _decode_event(body: bytes) -> dict:
    ev = {"step": 0, "wall_time": 0.0, "scalars": {}}
    for num, wire, v in _fields(body):
        if num == 1:
            ev["wall_time"] = struct.unpack("<d", v)[0]
        elif num == 2:
            ev["step"] = v
        elif num == 3:
            ev["file_version"] = v.decode()
        elif num == 7:
            ev["session_log"] = dict((n, x) for n, _, x in _fields(v))
        elif num == 5:
            for n, _, value in _fields(v):
                tag, val = None, None
                for n2, _, x in _fields(value):
                    if n2 == 1:
                        tag = x.decode()
                    elif n2 == 2:
                        val = struct.unpack("<f", x)[0]
                if tag is not None:
                    ev["scalars"][tag] = val
    return ev


# ------------------------------------------------------------------------------------------ pictures

def save_image_grid(images, path, nrow: Optional[int] = None, pad: int = 2) -> Path:
    """images: (N, C, H, W) tensor in [-1, 1] (C = 1 or 3) -> one PNG grid."""
    import math

    import numpy as np
    import torch
    from PIL import Image

    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    arr = x.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, k = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = arr[i]
    img = Image.fromarray(grid[:, :, 0] if c == 1 else grid, "L" if c == 1 else "RGB")
    return _save_png(img, path)


def save_scatter(points, path, real=None, means=None, title: str = "", panel: int = 320) -> Path:
    """Scatter plot PNG of (N, D) points: one panel for 2-D, the three coordinate planes for 3-D (the first
    two coordinates otherwise). Real samples light grey, generated blue, mixture means red crosses. The
    view is fitted to the real data (and means); generated points outside it are counted, not drawn."""
    import torch
    from PIL import Image, ImageDraw

    pts = points.detach().float().cpu()
    ref = [t.detach().float().cpu() for t in (real, means) if t is not None]
    dim = pts.shape[1]
    pairs = [(0, 1), (0, 2), (1, 2)] if dim == 3 else [(0, 1)] if dim >= 2 else [(0, 0)]
    basis = torch.cat(ref) if ref else pts[torch.isfinite(pts).all(1)]
    if basis.numel() == 0:
        basis = torch.zeros(1, dim)
    lo, hi = basis.min(0).values, basis.max(0).values
    span = (hi - lo).clamp(min=1e-3)
    lo, hi = lo - 0.25 * span, hi + 0.25 * span
    top = 22
    img = Image.new("RGB", (panel * len(pairs), panel + top), "white")
    draw = ImageDraw.Draw(img)
    outside = 0
    for p, (a, b) in enumerate(pairs):
        ox = p * panel

        def xy(q):
            u = (q[:, a] - lo[a]) / (hi[a] - lo[a])
            v = (q[:, b] - lo[b]) / (hi[b] - lo[b])
            return u, v

        draw.rectangle([ox + 2, top + 2, ox + panel - 3, top + panel - 3], outline=(180, 180, 180))
        draw.text((ox + 6, top + 4), f"x{a} / x{b}" if dim > 1 else "x0", fill=(90, 90, 90))
        layers = []
        if real is not None:
            layers.append((real.detach().float().cpu(), (190, 190, 190), 1))
        layers.append((pts, (30, 90, 200), 1))
        for q, color, r in layers:
            u, v = xy(q)
            inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1) & torch.isfinite(u) & torch.isfinite(v)
            if q is pts and p == 0:
                outside = int((~inside).sum())
            for uu, vv in zip(u[inside].tolist(), v[inside].tolist()):
                px, py = ox + 4 + uu * (panel - 8), top + panel - 4 - vv * (panel - 8)
                draw.rectangle([px - r, py - r, px + r, py + r], fill=color)
        if means is not None:
            u, v = xy(means.detach().float().cpu())
            for uu, vv in zip(u.tolist(), v.tolist()):
                px, py = ox + 4 + uu * (panel - 8), top + panel - 4 - vv * (panel - 8)
                draw.line([px - 5, py, px + 5, py], fill=(220, 30, 30), width=2)
                draw.line([px, py - 5, px, py + 5], fill=(220, 30, 30), width=2)
    note = f"{title}  ({pts.shape[0]} samples" + (f", {outside} outside the view)" if outside else ")")
    draw.text((6, 4), note, fill=(0, 0, 0))
    return _save_png(img, path)


def _save_png(img, path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with replacing(p) as tmp:
        img.save(tmp, format="PNG")
    return p
