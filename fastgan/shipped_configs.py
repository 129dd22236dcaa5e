"""The paper configs shipped with fastgan (the repository's configs/, installed as the data package
fastgan.configs): a config path that does not exist is looked up there by name, so `fastgan train
roth-mixture-gamma-annealed` (or the README's `configs/roth-mixture-gamma-annealed.yaml`) works from any folder
after `pip install`, not only from a checkout's root. `fastgan configs` lists them."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path, PurePath
from typing import Optional

from .config import CONFIG_SUFFIXES


def folder() -> Optional[Path]:
    """Where the shipped configs are: the installed fastgan.configs (an editable install maps it to the checkout's
    configs/), else a source checkout's configs/ beside the package; None when neither exists."""
    try:
        spec = importlib.util.find_spec("fastgan.configs")
    except (ImportError, ValueError):
        spec = None
    for where in (spec.submodule_search_locations or []) if spec is not None else []:
        if Path(where).is_dir():
            return Path(where)
    source = Path(__file__).resolve().parent.parent / "configs"
    return source if source.is_dir() else None


def names() -> dict[str, Path]:
    """{name: file} of every shipped config, the name being the file's stem (its run.name)."""
    root = folder()
    if root is None:
        return {}
    return {p.stem: p for p in sorted(p for suffix in CONFIG_SUFFIXES for p in root.rglob(f"*{suffix}"))}


def find(path) -> Optional[Path]:
    """The shipped config that `path`, which does not exist, names: a bare name (`roth-mixture-gamma-annealed`, with
    or without .yaml) or a path under configs/ as the README writes them (`configs/ntgan-table4/<name>.yaml`).
    None for anything else: a path elsewhere with a typo must say "not found", not train another config (so also
    for ./NAME and NAME/, which pathlib would reduce to the name)."""
    raw = os.fspath(path)
    seps = tuple(s for s in (os.sep, os.altsep, "/") if s)
    if raw.startswith(tuple("." + s for s in seps)) or raw.endswith(seps):
        return None
    given = PurePath(raw)
    if given.anchor or ".." in given.parts:  # absolute, or climbing out: a path of the user's
        return None
    parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
    if not parts or len(parts) > 2:
        return None
    stem = parts[-1][:-len(Path(parts[-1]).suffix)] if parts[-1].endswith(CONFIG_SUFFIXES) else parts[-1]
    found = names().get(stem)
    if found is None or (len(parts) == 2 and found.parent.name != parts[0]):
        return None
    return found


def summary(path: Path, width: int = 100) -> str:
    """The first sentence of a config's header comment (what it reproduces), cut at a word to `width` characters."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words += line.lstrip("#").split()
    text = ""
    for w in words:
        if len(text) + 1 + len(w) > width:
            return text + " ..."
        text = f"{text} {w}" if text else w
        if w.endswith(".") and not w.endswith(("al.", "Fig.", "e.g.", "i.e.", "vs.", "eq.")):
            break
    return text
