"""Checkpoint files: atomic writes, clear errors for damaged or foreign files, RNG state round trips."""
import random

import numpy as np
import pytest
import torch

from fastgan import checkpoint as ckpt
from fastgan.checkpoint import CheckpointError


def _state(step=3):
    return {"step": step, "config": {"run": {"steps": 5}}, "method": {"w": torch.arange(4.0)},
            "rng": ckpt.rng_state()}


def test_round_trip(tmp_path):
    p = ckpt.save(tmp_path / "c" / "last.pt", _state())
    s = ckpt.load(p)
    assert s["step"] == 3 and torch.equal(s["method"]["w"], torch.arange(4.0)) and s["format"] == ckpt.FORMAT
    assert [f.name for f in p.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    p = ckpt.save(tmp_path / "last.pt", _state(1))
    before = p.read_bytes()

    def boom(obj, f, *a, **kw):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(p, _state(2))
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    assert ckpt.load(p)["step"] == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_is_a_clear_error(tmp_path, damage):
    p = ckpt.save(tmp_path / "last.pt", _state())
    data = p.read_bytes()
    p.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"last\.pt"):
        ckpt.load(p)


def test_foreign_and_missing_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a fastgan checkpoint"):
        ckpt.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ckpt.load(tmp_path / "missing.pt")
    torch.save({"format": ckpt.FORMAT, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        ckpt.load(tmp_path / "future.pt")
    torch.save({"format": ckpt.FORMAT, "version": ckpt.VERSION, "step": 1}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lacks config, method, rng"):
        ckpt.load(tmp_path / "partial.pt")


def test_rng_states_round_trip(tmp_path):
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    torch.randn(5, generator=g)
    state = ckpt.rng_state({"train": g})
    ckpt.save(tmp_path / "r.pt", {"step": 0, "config": {}, "method": {}, "rng": state})

    def draw():
        return (torch.rand(3).tolist(), random.random(), np.random.rand(), torch.rand(2, generator=g).tolist(),
                np.random.randn())

    first = draw()
    draw()
    ckpt.set_rng_state(ckpt.load(tmp_path / "r.pt")["rng"], {"train": g})
    assert draw() == first
    with pytest.raises(CheckpointError, match="no state for random generator 'other'"):
        ckpt.set_rng_state(state, {"other": torch.Generator()})


def test_mismatch_error_is_both_a_checkpoint_and_a_config_error():
    # `except CheckpointError` callers keep catching it; the CLI's config-error branch (exit code 2) sees it first
    from fastgan.config import ConfigError

    e = ckpt.CheckpointMismatchError("method.roth.gamma: checkpoint 0.1, config 0.5")
    assert isinstance(e, ckpt.CheckpointError) and isinstance(e, ConfigError)
