"""Checkpoint files: atomic writes, clear errors for damaged or foreign files, RNG state round trips."""
import os
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from fastgan import checkpoint as ckpt
from fastgan.checkpoint import CheckpointError
from helpers import StoppingFile


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


@pytest.mark.parametrize("stop", ["full disk", "second signal"])
def test_a_write_stopped_midway_raises_its_cause(tmp_path, monkeypatch, stop):
    """torch's zip writer, closing after the write failed, raised its own RuntimeError ("unexpected pos ...")
    over the cause: the trainer then printed a traceback, where it names a full disk, or exits as interrupted
    (an audit's finding: the test above stops torch.save itself, before its writer)."""
    import builtins
    import errno

    from fastgan.interrupts import Terminated, interruption

    p = ckpt.save(tmp_path / "last.pt", _state(1))
    before = p.read_bytes()
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if stop == "full disk" else interruption(True, "")
    monkeypatch.setattr(ckpt, "open", lambda *a, **k: StoppingFile(builtins.open(*a, **k), 600, error),
                        raising=False)
    with pytest.raises(OSError if stop == "full disk" else Terminated) as e:
        ckpt.save(p, {**_state(2), "big": torch.zeros(10000)})
    assert e.value is error
    assert p.read_bytes() == before and [f.name for f in tmp_path.iterdir()] == ["last.pt"]


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


# ------------------------------------------------------------------------------------------ resuming a damaged run

TINY = ["optim.batch_size=16", "model.g_hidden=[16]", "model.d_hidden=[16,16]", "run.log_every=1",
        "run.sample_every=0", "run.checkpoint_every=0", "run.num_samples=16", "run.progress=off"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import fastgan

    d = tmp_path_factory.mktemp("ck") / "run"
    fastgan.train(None, overrides=[*TINY, "run.steps=2", f"run.dir={d}"])
    return d


def _opt(s):
    return s["method"]["optimizers"]["D"]


def _d(s):
    return s["method"]["modules"]["D"]


@pytest.mark.parametrize("damage,message", [
    (lambda s: _opt(s)["state"][0].__setitem__("exp_avg", torch.zeros(7)),
     r"method\.optimizers\.D\.state\[0\]\.exp_avg: shape \(7,\) torch\.float32, its parameter has shape \(16, 3\)"),
    (lambda s: _opt(s)["state"][1].__setitem__("exp_avg_sq", _opt(s)["state"][1]["exp_avg_sq"].double()),
     r"method\.optimizers\.D\.state\[1\]\.exp_avg_sq: shape \(16,\) torch\.float64"),
    (lambda s: _opt(s)["param_groups"][0].__setitem__("lr", "x"),
     r"method\.optimizers\.D\.param_groups\[0\]\.lr: must be a finite number, got 'x'"),
    (lambda s: _opt(s)["param_groups"][0].__setitem__("betas", (0.5,)),
     r"method\.optimizers\.D\.param_groups\[0\]\.betas: must be 2 finite numbers"),
    (lambda s: _opt(s)["param_groups"][0].__setitem__("lr", -_opt(s)["param_groups"][0]["lr"]),
     r"method\.optimizers\.D\.param_groups\[0\]\.lr: -0\.001, where the config it was written with gives 0\.001 "
     r"\(an edited or damaged checkpoint\)"),
    (lambda s: _opt(s)["param_groups"][0].__setitem__("betas", (0.9, 0.999)),
     r"method\.optimizers\.D\.param_groups\[0\]\.betas: \(0\.9, 0\.999\), where the config .* gives \(0\.5, 0\.999\)"),
    (lambda s: _opt(s)["state"].clear(), r"method\.optimizers\.D\.state: empty \(no Adam moments\).*at step 2"),
    (lambda s: _opt(s)["state"][0].pop("exp_avg"), r"method\.optimizers\.D\.state\[0\]: lacks exp_avg"),
    (lambda s: s.__setitem__("step", -5), r"step must be a non-negative integer, got -5"),
    (lambda s: s.__setitem__("step", 3.7), r"step must be a non-negative integer, got 3\.7"),
    (lambda s: s.__setitem__("step", "abc"), r"step must be a non-negative integer, got 'abc'"),
    (lambda s: s.__setitem__("config", "x"), r"config must be a mapping, got str"),
    (lambda s: s["config"]["optim"].__setitem__("batch_size", -1),
     r"holds an invalid config: optim\.batch_size: must be >= 1, got -1"),
    (lambda s: s["rng"].pop("python"), r"rng\.python: missing random-generator state"),
    (lambda s: s["rng"].__setitem__("numpy", [1, 2]), r"rng\.numpy: unusable random-generator state"),
    (lambda s: s["rng"]["python"].__setitem__(1, [-1] * 625),
     r"rng\.python: unusable random-generator state \(can't convert negative"),
    (lambda s: s["rng"]["numpy"].__setitem__(2, 2 ** 70), r"rng\.numpy: unusable random-generator state"),
    (lambda s: _d(s).__setitem__("net.0.weight", torch.zeros(5, 5)),
     r"does not fit this config's models: .*MLPDiscriminator: size mismatch for net\.0\.weight: copying a param "
     r"with shape torch\.Size\(\[5, 5\]\)"),
    (lambda s: _d(s).__setitem__("zzz", torch.zeros(1)),
     r'MLPDiscriminator: Unexpected key\(s\) in state_dict: "zzz"'),
    (lambda s: _d(s).pop("net.0.bias"), r'MLPDiscriminator: Missing key\(s\) in state_dict: "net\.0\.bias"'),
    # flags that change the update: torch took the saved ones over the config's (amsgrad: a KeyError in the first
    # step; differentiable: a RuntimeError with the fused CPU Adam; maximize: gradient ascent, silently)
    (lambda s: _opt(s)["param_groups"][0].__setitem__("amsgrad", True),
     r"method\.optimizers\.D\.param_groups\[0\]\.amsgrad: True, where the config .* gives False"),
    (lambda s: _opt(s)["param_groups"][0].__setitem__("maximize", True),
     r"method\.optimizers\.D\.param_groups\[0\]\.maximize: True, where the config .* gives False"),
    (lambda s: _opt(s)["param_groups"][0].__setitem__("differentiable", True),
     r"method\.optimizers\.D\.param_groups\[0\]\.differentiable: True, where the config .* gives False"),
    (lambda s: _opt(s)["param_groups"][0].__setitem__("amsgrad", "x"),
     r"method\.optimizers\.D\.param_groups\[0\]\.amsgrad: 'x', where the config .* gives False"),
    # load_state_dict casts: an int64 weight loaded as whole numbers, silently
    (lambda s: _d(s).__setitem__("net.0.weight", _d(s)["net.0.weight"].long()),
     r"method\.modules\.D\.net\.0\.weight: dtype torch\.int64, the model's is torch\.float32"),
    (lambda s: _d(s).__setitem__("net.0.weight", _d(s)["net.0.weight"].to(torch.complex64)),
     r"method\.modules\.D\.net\.0\.weight: dtype torch\.complex64, the model's is torch\.float32"),
], ids=["exp_avg-shape", "exp_avg_sq-dtype", "lr-string", "betas-length", "lr-negated", "betas-edited",
        "state-cleared", "moment-missing",
        "step-negative", "step-float", "step-string", "config-string", "config-invalid", "rng-python-missing",
        "rng-numpy-bad", "rng-python-overflow", "rng-numpy-overflow", "weight-shape", "extra-key", "missing-key",
        "amsgrad", "maximize", "differentiable", "amsgrad-string", "weight-int64", "weight-complex"])
@pytest.mark.parametrize("how", ["run.dir", "folder"])
def test_damaged_checkpoint_is_refused_at_load_naming_file_and_entry(trained, tmp_path, damage, message, how):
    """Caught before any training step (torch would load most of these and fail steps later, naming nothing)."""
    import shutil

    import fastgan

    d = tmp_path / "run"
    shutil.copytree(trained, d)
    p = d / "checkpoints" / "last.pt"
    s = torch.load(p, weights_only=True)
    damage(s)
    torch.save(s, p)
    before = {f: f.read_bytes() for f in d.rglob("*") if f.is_file() and f.name != ".fastgan.lock"}
    with pytest.raises(CheckpointError, match=f"checkpoint {p}.*{message}") as e:
        if how == "folder":
            fastgan.train(d, overrides=["run.steps=4"], resume=True)
        else:
            fastgan.train(None, overrides=[*TINY, "run.steps=4", f"run.dir={d}"], resume=True)
    assert "\n" not in str(e.value)
    assert {f: f.read_bytes() for f in d.rglob("*") if f.is_file() and f.name != ".fastgan.lock"} == before


def test_save_fsyncs_the_file_before_the_rename_and_then_the_folder(tmp_path, monkeypatch):
    """The module's promise: written to a temporary file in the same folder, flushed to disk, then renamed."""
    events, real_fsync, real_replace = [], os.fsync, os.replace
    target = tmp_path / "c" / "last.pt"

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src).parent == Path(dst).parent, os.stat(src).st_ino))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    ckpt.save(target, _state())
    monkeypatch.undo()
    final = os.stat(target).st_ino
    assert events[0] == ("fsync", "file", final)  # the data, before it is visible under the name
    assert events[1] == ("replace", True, final)  # renamed within the folder
    assert ("fsync", "dir", os.stat(target.parent).st_ino) in events[2:]  # and the rename itself made durable
    assert ckpt.load(target)["step"] == 3


def test_empty_and_corrupt_checkpoints_name_the_cause(tmp_path):
    p = ckpt.save(tmp_path / "last.pt", _state())
    data = p.read_bytes()
    p.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"last\.pt is empty"):
        ckpt.load(p)
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt is truncated: a zip archive without its end"):
        ckpt.load(p)
    p.write_bytes(data[: len(data) // 2][::-1])  # no zip at all: torch.load's own reason, cut to its line
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt .*\(\w+Error: \S.*\)$"):
        ckpt.load(p)
    # a folder in its place: the OS's "[Errno 21] Is a directory" named no cause (a fuzz audit, 2026-12-07)
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"dir\.pt is a folder, not a checkpoint file$"):
        ckpt.load(tmp_path / "dir.pt")


def test_rng_round_trip_keeps_cached_gaussians(tmp_path):
    """Python's random.gauss and NumPy's legacy randn draw normals in pairs and cache the second: a resumed run
    must get the cached one back."""
    random.seed(5)
    np.random.seed(6)
    random.gauss(0.0, 1.0)
    np.random.randn()  # both now hold a cached second normal
    ckpt.save(tmp_path / "r.pt", {"step": 0, "config": {}, "method": {}, "rng": ckpt.rng_state()})

    def draw():
        return random.gauss(0.0, 1.0), np.random.randn(), random.gauss(0.0, 1.0), np.random.randn()

    first = draw()
    draw()
    ckpt.set_rng_state(ckpt.load(tmp_path / "r.pt")["rng"])
    assert draw() == first


def test_adam_state_is_required_from_step_1(tmp_path):
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([w])
    w.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    saved["state"] = {}
    with pytest.raises(CheckpointError, match=r"method\.optimizers\.G\.state: empty \(no Adam moments\).*at step 1"):
        ckpt.check_optimizer_state(tmp_path / "x.pt", "G", saved, opt, 1)
    ckpt.check_optimizer_state(tmp_path / "x.pt", "G", saved, opt, 0)  # a step-0 checkpoint has none yet


@pytest.mark.parametrize("key", ["method", "rng"])
@pytest.mark.parametrize("value", [None, "x", [1, 2]])
def test_non_mapping_sections_are_refused_at_load(tmp_path, key, value):
    state = _state()
    state[key] = value
    p = ckpt.save(tmp_path / "last.pt", state)
    with pytest.raises(CheckpointError, match=rf"last\.pt: {key} must be a mapping, got {type(value).__name__}"):
        ckpt.load(p)


def test_a_garbage_file_names_the_unpicklers_reason(tmp_path):
    """torch >= 2.6 puts the unpickler's reason on the line after its "WeightsUnpickler error:" boilerplate; the
    error names the reason, not the boilerplate."""
    p = tmp_path / "last.pt"
    p.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt .*Unpickler error: Unsupported operand \d+\)$"):
        ckpt.load(p)


@pytest.mark.parametrize("message, cause", [
    ("Weights only load failed. Re-running ... trusted source.\nPlease file an issue ...: WeightsUnpickler error: "
     "\n\nUnsupported operand 103\n\nCheck the documentation of torch.load",
     "WeightsUnpickler error: Unsupported operand 103"),
    ("Weights only load failed. ...\n Unpickler error: Unsupported global: GLOBAL os.system",
     "Unpickler error: Unsupported global: GLOBAL os.system"),
    ("PytorchStreamReader failed reading zip archive: failed finding central directory\nmore",
     "PytorchStreamReader failed reading zip archive: failed finding central directory"),
    ("", "")])
def test_load_error_cause_takes_the_reason_line(message, cause):
    assert ckpt._load_error_cause(RuntimeError(message)) == cause


def test_a_flipped_bit_is_refused_naming_the_damaged_entry(tmp_path):
    """torch.load does not check the zip's CRC-32s: a flipped byte in a tensor's data loaded as a changed weight."""
    p = ckpt.save(tmp_path / "last.pt", {**_state(), "method": {"w": torch.randn(4096)}})
    data = bytearray(p.read_bytes())
    # a byte inside the tensor's data: the largest entry, located through the zip's own directory
    import zipfile
    with zipfile.ZipFile(p) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    data[offset] ^= 0x40
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"last\.pt is corrupt: its entry {info.filename} fails its CRC-32"):
        ckpt.load(p)


def test_a_pickle_that_is_no_zip_is_refused_without_torchs_protocol_warning(tmp_path, recwarn):
    """A plain pickle where the checkpoint goes (protocol 4, Python's default) printed torch's UserWarning of its
    protocol, two lines quoting torch's source, above the one error naming the file (an audit, 2026-12-07); its
    reduce (here os.system) is never called: weights_only."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    p = tmp_path / "last.pt"
    p.write_bytes(pickle.dumps(Evil(), protocol=4))
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt or not a fastgan checkpoint \(UnpicklingError"):
        ckpt.load(p)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
    assert not (tmp_path / "ran").exists()
