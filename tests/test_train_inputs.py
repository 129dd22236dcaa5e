"""Trainer inputs that once got past the checks or wrote before failing: a resume that fails in its setup leaves
config.yaml and run_info.json as they were; an unreadable metrics.csv, an out_dir that is a dangling link, Parzen
windows on a file of points, images of strings, a learning rate past float32, a run name with glob characters or
a date, a folder that is neither a config nor a run, a seed past 64 bits; and Ctrl-C in the final evaluation."""
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fastgan
from fastgan.config import ConfigError
from fastgan.train_cli import cmd_train
from helpers import StoppingFile

train_mod = sys.modules["fastgan.train"]
MAIN_THREAD_ONLY = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                      reason="signal handlers are installed from the main thread only")

TINY = ["optim.batch_size=16", "model.g_hidden=[16]", "model.d_hidden=[16,16]", "run.log_every=1",
        "run.sample_every=0", "run.checkpoint_every=0", "run.num_samples=16", "run.progress=off"]


def _train(d, *overrides, steps=2, resume=False):
    return fastgan.train(None, overrides=[*TINY, f"run.steps={steps}", f"run.dir={d}", *overrides], resume=resume)


def _files(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".fastgan.lock"}


def test_a_resume_failing_in_setup_leaves_the_run_folder_as_it_was(tmp_path, monkeypatch):
    """config.yaml and run_info.json were written before the logs' setup, which can still fail (an allocation,
    reading metrics.csv)."""
    d = tmp_path / "r"
    _train(d)
    before = _files(d)

    def no_memory(*args, **kwargs):
        raise MemoryError("test")

    monkeypatch.setattr(train_mod._Run, "_latent", no_memory)
    with pytest.raises(MemoryError):
        _train(d, "run.num_samples=32", steps=4, resume=True)
    assert _files(d) == before


def test_a_resume_on_data_whose_sample_shape_changed_names_the_data(tmp_path):
    """The file at data.path rewritten with 3-d points after a run on 2-d ones: the error named an optimizer
    moment's shape; now the data's shape against run_info.json's, nothing in the folder changed."""
    pts = tmp_path / "pts.npy"
    np.save(pts, np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    d = tmp_path / "r"
    _train(d, "data.name=npz", f"data.path={pts}")
    before = _files(d)
    np.save(pts, np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32))
    with pytest.raises(train_mod.CheckpointError, match=r"its run trained on samples of shape \(2,\) "
                       r"\(run_info.json\), but .*pts.npy now holds samples of shape \(3,\): the data changed since"):
        _train(d, "data.name=npz", f"data.path={pts}", steps=4, resume=True)
    assert _files(d) == before


def test_a_resume_reads_a_relative_data_path_as_the_run_did(tmp_path, monkeypatch):
    """data.path=pts.npy resumed from another folder holding a pts.npy trained on that file, silently (an audit's
    case, 2026-12-06): refused naming both files; the recorded file given by its absolute path resumes."""
    for name, mean in (("a", 0.0), ("b", 100.0)):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "pts.npy", np.random.default_rng(0).normal(mean, size=(64, 2)).astype(np.float32))
    d = tmp_path / "r"
    monkeypatch.chdir(tmp_path / "a")
    _train(d, "data.name=npz", "data.path=pts.npy")
    before = _files(d)
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(ConfigError, match=rf"^data\.path: 'pts\.npy' is {tmp_path / 'b' / 'pts.npy'} here, but the run "
                                          rf"trained on {tmp_path / 'a' / 'pts.npy'} \(run_info\.json\)"):
        _train(d, "data.name=npz", "data.path=pts.npy", steps=4, resume=True)
    assert _files(d) == before
    r = _train(d, "data.name=npz", f"data.path={tmp_path / 'a' / 'pts.npy'}", steps=4, resume=True)
    assert r.step == 4 and json.loads((d / "run_info.json").read_text())["data_path"] == str(tmp_path / "a" / "pts.npy")


def test_a_resume_on_a_file_grown_since_is_refused(tmp_path):
    """More rows of the same shape: data.holdout's samples moved into training, silently."""
    pts = tmp_path / "pts.npy"
    np.save(pts, np.arange(40, dtype=np.float32).reshape(20, 2))
    d = tmp_path / "r"
    _train(d, "data.name=npz", f"data.path={pts}", "data.holdout=3")
    assert json.loads((d / "run_info.json").read_text())["data_samples"] == 20
    before = _files(d)
    np.save(pts, np.arange(50, dtype=np.float32).reshape(25, 2))
    with pytest.raises(train_mod.CheckpointError, match=r"its run loaded 20 samples \(run_info.json\), but .*pts.npy "
                                                        r"now gives 25: the data changed since"):
        _train(d, "data.name=npz", f"data.path={pts}", "data.holdout=3", steps=4, resume=True)
    assert _files(d) == before


@pytest.mark.parametrize("damage", ["bytes", "extra_field", "foreign"])
def test_an_unreadable_metrics_csv_is_named_and_nothing_is_written(tmp_path, damage):
    """extra_field: a row with more fields than the header was read, trained a step, then failed writing the
    first row logged ("dict contains fields not in fieldnames: None"), config.yaml rewritten. foreign: another
    program's file (no step column) was continued, its header's fields made columns beside step's."""
    d = tmp_path / "r"
    _train(d)
    if damage == "bytes":
        (d / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "foreign":
        (d / "metrics.csv").write_text('{"loss": [0.5, 0.4]}\n')
    else:
        lines = (d / "metrics.csv").read_text().splitlines()
        (d / "metrics.csv").write_text("\n".join([lines[0], lines[1] + ",7", *lines[2:]]) + "\n")
    before = _files(d)
    with pytest.raises(ValueError, match=f"{d / 'metrics.csv'} is not a readable CSV log"
                       + {"bytes": "", "extra_field": r" \(line 2 has",
                          "foreign": r" \(its header, '\{\"loss\": \[0.5, 0.4\]\}', has no step column\)"}[damage]):
        _train(d, steps=4, resume=True)
    assert _files(d) == before


def test_metrics_rows_past_the_checkpoint_go_at_the_first_row_logged(tmp_path):
    d = tmp_path / "r"
    _train(d, steps=2)
    with open(d / "metrics.csv", "a") as f:  # rows of steps the checkpoint does not hold (a run cut short)
        f.write("7,1,1\n8,1,1\n")
    _train(d, steps=4, resume=True)
    steps = [int(line.split(",")[0]) for line in (d / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and set(steps) == {1, 2, 3, 4}  # (a final step logs two rows)


@pytest.mark.parametrize("damage", ["torn_last_row", "nul_block", "both", "inf_step"])
def test_what_a_killed_append_leaves_in_metrics_csv_is_left_out_on_resume(tmp_path, capsys, damage):
    """A torn last row (its step cut to "1" of "12") and blocks of NULs (a power cut) survived a resume, as rows
    of the continued log, and `fastgan compare` called the finished run unreadable from then on."""
    d = tmp_path / "r"
    _train(d, steps=2)
    clean = (d / "metrics.csv").read_text()
    # "inf_step": a step no int holds (an OverflowError, which a resume raised as a traceback)
    junk = {"torn_last_row": "1", "nul_block": "\0" * 64 + "\n", "both": "\0" * 64 + "\n1",
            "inf_step": "inf,1,0.1\n-1e400,2\n"}[damage]
    with open(d / "metrics.csv", "a") as f:
        f.write(junk)
    _train(d, steps=4, resume=True)
    assert "damaged row(s)" in capsys.readouterr().err
    text = (d / "metrics.csv").read_text()
    assert "\0" not in text and text.startswith(clean)
    steps = [int(line.split(",")[0]) for line in text.splitlines()[1:]]
    assert steps == sorted(steps) and set(steps) == {1, 2, 3, 4}
    from fastgan import compare
    assert compare.summarize(d)["state"] == "finished"


def test_a_resume_removes_the_temporaries_of_killed_writers_only(tmp_path):
    """A run killed while writing its checkpoint left `.last.pt.<pid>-...tmp`, as large as the checkpoint, for
    good: repeated kills filled the disk."""
    d = tmp_path / "r"
    _train(d, steps=2)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [d / "checkpoints" / f".last.pt.{dead}-140000-0123abcd.tmp", d / f".status.json.{dead}-1-0123abcd.tmp"]
    kept = [d / "checkpoints" / f".last.pt.{os.getppid()}-140000-89abcdef.tmp",  # a process that still runs
            d / "samples" / f".mine.png.{dead}-140000-0123abcd.tmp",  # `fastgan sample --out`'s, maybe on another host
            d / ".notes.tmp"]                                           # not one of fastgan's
    for p in stale + kept:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x" * 100)
    _train(d, steps=3, resume=True)
    assert [p.exists() for p in stale + kept] == [False, False, True, True, True]


class _RawFillingUp(io.RawIOBase):
    """A raw file (open(..., buffering=0)) that StoppingFile fills up, for io.BufferedWriter: a disk's failure shows
    at a flush, and again at the close that flushes what stayed buffered."""

    def __init__(self, raw, room):
        self.stopping = StoppingFile(raw, room)

    def writable(self):
        return True

    def write(self, b):
        return self.stopping.write(b)

    def close(self):
        self.stopping.f.close()
        super().close()


@pytest.mark.parametrize("what", ["checkpoint", "checkpoint-midway", "metrics.csv", "tensorboard",
                                  "tensorboard-setup"])
def test_a_full_disk_names_the_file_and_what_is_intact(tmp_path, monkeypatch, what):
    """A file object's ENOSPC names no file: the run said only "[Errno 28] No space left on device" (TensorBoard's
    event file's writes until 2026-12-07, an audit's finding; a resume failing so in setup left an empty event
    file behind)."""
    import builtins
    import errno

    d = tmp_path / "r"
    _train(d, steps=2)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if what.startswith("tensorboard"):
        room = 0 if what == "tensorboard-setup" else 200  # the header events fit, the first scalars do not

        def open_(file, mode="r", *a, **k):
            if not Path(file).name.startswith("events.out.tfevents"):
                return builtins.open(file, mode, *a, **k)
            return io.BufferedWriter(_RawFillingUp(builtins.open(file, mode, buffering=0), room))
        monkeypatch.setattr(sys.modules["fastgan.logging_utils"], "open", open_, raising=False)
        before = sorted(p.name for p in (d / "tb").iterdir())
        with pytest.raises(OSError, match=rf"writing {re.escape(str(d / 'tb'))}/events\.out\.tfevents\.\S+: "
                                          r"No space left on device$") as e:
            _train(d, steps=4, resume=True)
        assert e.value.errno == errno.ENOSPC
        if what == "tensorboard-setup":
            assert sorted(p.name for p in (d / "tb").iterdir()) == before, "the resume's empty event file stayed"
        return
    if what.startswith("checkpoint"):
        if what == "checkpoint":
            def save(*a, **k):
                raise full
            monkeypatch.setattr(sys.modules["fastgan.checkpoint"].torch, "save", save)
        else:  # the disk fills up inside torch.save, whose zip writer then raised its own RuntimeError over it
            monkeypatch.setattr(sys.modules["fastgan.checkpoint"], "open",
                                lambda *a, **k: StoppingFile(builtins.open(*a, **k), 600), raising=False)
        message = (rf"writing checkpoint {d / 'checkpoints' / 'last.pt'} at step 4: No space left on device; "
                   r"the previous checkpoint \(step 2\) is intact")
    else:
        def rewrite(self, rows):
            raise full
        monkeypatch.setattr(sys.modules["fastgan.logging_utils"].CSVLogger, "_rewrite", rewrite)
        message = rf"writing {d / 'metrics.csv'}: No space left on device"
    with pytest.raises(OSError, match=message) as e:
        _train(d, steps=4, resume=True)
    assert e.value.errno == errno.ENOSPC


def test_a_dangling_link_as_out_dir_is_an_error_not_a_hang(tmp_path):
    link = tmp_path / "runs"
    link.symlink_to(tmp_path / "unmounted" / "runs")
    with pytest.raises(train_mod.RunFolderError, match=f"^run.out_dir {link}: cannot make the folder: {link} is a "
                                                       "link to a missing folder"):
        fastgan.train(None, overrides=[*TINY, "run.steps=1", f"run.out_dir={link}"])


@pytest.mark.parametrize("case", ["dangling_run_dir", "file_parent", "link_parent", "long_name", "full_disk"])
def test_folder_and_file_errors_name_the_field_and_the_path_at_fault(tmp_path, monkeypatch, case):
    """errno's own text named neither the field nor the path at fault ("[Errno 17] File exists: 'deadlink'" for a
    run.dir that is a link to a missing folder, "[Errno 28] No space left on device" writing config.yaml)."""
    link, file = tmp_path / "deadlink", tmp_path / "t.sh"
    link.symlink_to(tmp_path / "missing")
    file.write_text("")
    over, match = {
        "dangling_run_dir": (f"run.dir={link}", f"^run.dir {link}: cannot make the folder: {link} is a link to a "
                                                "missing folder"),
        "file_parent": (f"run.dir={file / 'sub'}", f"^run.dir {file / 'sub'}: cannot make the folder: {file} is a "
                                                   "file"),
        "link_parent": (f"run.out_dir={link / 'sub'}", f"^run.out_dir {link / 'sub'}: cannot make the folder: {link} "
                                                       "is a link to a missing folder"),
        "long_name": ("run.name=" + "n" * 300, r"^run.name 'n+\.\.\.n+': cannot make the run folder .*name too long"),
        "full_disk": (f"run.dir={tmp_path / 'r'}", f"{tmp_path / 'r' / 'config.yaml'}: could not be written \\(No "
                                                   "space left on device\\)"),
    }[case]
    if case == "full_disk":
        real = os.replace
        monkeypatch.setattr(os, "replace", lambda a, b: real(a, b) if not str(b).endswith("config.yaml") else
                            (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match=match):
        fastgan.train(None, overrides=[*TINY, "run.steps=1", f"run.out_dir={tmp_path / 'runs'}", over])


def test_parzen_on_a_file_of_points_is_refused(tmp_path):
    path = tmp_path / "pts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32))
    with pytest.raises(ConfigError, match="run.parzen: scores points only for the built-in mixtures"):
        _train(tmp_path / "r", "data.name=npz", f"data.path={path}", "run.parzen=true")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("values", [np.array([["a", "b"], ["c", "d"]] * 8).reshape(8, 1, 2, 2),
                                    np.arange(32).astype("datetime64[s]").reshape(8, 1, 2, 2)],
                         ids=["strings", "datetimes"])
def test_images_that_are_not_numbers_are_named(tmp_path, values):
    path = tmp_path / "imgs.npy"
    np.save(path, values)
    with pytest.raises(ValueError, match=re.escape(f"{path}: images must be numeric, got {values.dtype}")):
        fastgan.train(None, overrides=["data.name=npz", f"data.path={path}", f"run.dir={tmp_path / 'r'}",
                                       "run.steps=1"])


@pytest.mark.parametrize("overrides,match", [
    (["optim.batch_size=1"], r"optim\.batch_size: model\.arch='dcgan' on 1x1 images starts G at a 1x1 map.*got 1"),
    (["optim.batch_size=2", "method.name=nt", "method.nt.batch=half", "method.nt.noise=generator"],
     r"optim\.batch_size: NT's noise generator .*1x1 images.*batch_size >= 3, got 2"),
])
def test_dcgan_on_one_by_one_images_refuses_single_rows_before_the_run_folder(tmp_path, overrides, match):
    """DCGAN takes a batch of one elsewhere (its BatchNorm normalises over each map), but on 1x1 images G starts at a
    1x1 map: step 1 failed with torch's BatchNorm error, naming no field, after the run folder was written."""
    path = tmp_path / "px.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (40, 1, 1), dtype=np.uint8))
    args = ["data.name=npz", f"data.path={path}", "model.arch=dcgan", "model.dcgan_width=4", "run.steps=2",
            "run.progress=off", f"run.dir={tmp_path / 'r'}"]
    with pytest.raises(ConfigError, match=match):
        fastgan.train(None, overrides=[*args, *overrides])
    assert not (tmp_path / "r").exists()
    fastgan.train(None, overrides=[*args, "optim.batch_size=3", *overrides[1:], f"run.dir={tmp_path / 'ok'}"])


def _resnet_images(tmp_path, side: int, n: int = 12):
    path = tmp_path / f"px{side}.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (n, 3, side, side), dtype=np.uint8))
    return ["data.name=npz", f"data.path={path}", "model.arch=resnet", "model.resnet_width=2", "model.latent_dim=8",
            "run.steps=2", "run.sample_every=0", "run.checkpoint_every=0", "run.num_samples=8", "run.progress=off"]


@pytest.mark.parametrize("side", [28, 8, 48])
def test_resnet_on_images_its_resamplings_do_not_fit_is_refused_before_the_run_folder(tmp_path, side):
    """The ResNet's four x2 resamplings need a square power-of-two side >= 16 (Fashion-MNIST's 28 is not): a config
    error naming model.arch and the images' shape, not the builder's ValueError about data_shape."""
    with pytest.raises(ConfigError, match=rf"^model\.arch: 'resnet' needs square images whose side is a power of two "
                                          rf">= 16 .*holds images of shape \(3, {side}, {side}\)"):
        fastgan.train(None, overrides=[*_resnet_images(tmp_path, side), f"run.dir={tmp_path / 'r'}"])
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("hw,start", [((33, 33), "33x33"), ((218, 178), "109x89"), ((36, 20), "9x5")])
def test_dcgan_on_images_that_do_not_halve_to_a_small_start_is_refused_before_the_run_folder(tmp_path, hw, start):
    """DCGAN halves the side while it is even: on 33x33 images G had no upsampling at all, on raw CelebA's 218x178
    one, from a 160M-parameter FC layer (an audit, 2026-12-07); sides halving to 8 or less train (28 -> 7)."""
    path = tmp_path / "px.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (6, 3, *hw), dtype=np.uint8))
    args = ["data.name=npz", f"data.path={path}", "model.arch=dcgan", "model.dcgan_width=2", "run.steps=1",
            "run.sample_every=0", "run.checkpoint_every=0", "run.num_samples=4", "run.progress=off",
            "optim.batch_size=4"]
    with pytest.raises(ConfigError, match=rf"^model\.arch: 'dcgan' halves the image side while it is even, and images "
                                          rf"of shape \(3, {hw[0]}, {hw[1]}\) .* to a {start} start: .*resize the"):
        fastgan.train(None, overrides=[*args, f"run.dir={tmp_path / 'r'}"])
    assert not (tmp_path / "r").exists()
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (6, 3, 32, 24), dtype=np.uint8))  # 4x3: trains
    assert fastgan.train(None, overrides=[*args, f"run.dir={tmp_path / 'ok'}"]).step == 1


@pytest.mark.parametrize("overrides,match", [
    (["optim.batch_size=1"], r"optim\.batch_size: model\.arch='resnet' on 16x16 images starts G at a 1x1 map.*got 1"),
    (["optim.batch_size=2", "method.name=nt", "method.nt.batch=half", "method.nt.noise=generator"],
     r"optim\.batch_size: NT's noise generator \(.*the ResNet's G on 16x16 images.*batch_size >= 3, got 2"),
])
def test_resnet_on_16x16_images_refuses_single_rows_before_the_run_folder(tmp_path, overrides, match):
    """At 16x16 the ResNet's G starts at a 1x1 map, as DCGAN's on 1x1 images; at 32x32 (a 2x2 start) one row
    trains."""
    args = _resnet_images(tmp_path, 16)
    with pytest.raises(ConfigError, match=match):
        fastgan.train(None, overrides=[*args, *overrides, f"run.dir={tmp_path / 'r'}"])
    assert not (tmp_path / "r").exists()
    r = fastgan.train(None, overrides=[*args, "optim.batch_size=3", *overrides[1:], f"run.dir={tmp_path / 'ok'}"])
    assert r.step == 2
    r = fastgan.train(None, overrides=[*_resnet_images(tmp_path, 32), *overrides, f"run.dir={tmp_path / 'ok32'}"])
    assert r.step == 2 and all(np.isfinite(v) for v in r.losses.values())


@pytest.mark.parametrize("field", ["lr_g", "lr_d", "lr_noise", "lr_denoiser"])
def test_a_learning_rate_past_float32_is_a_config_error(tmp_path, field):
    with pytest.raises(ConfigError, match=rf"optim\.{field}: must be in \(0\.0, 3\.40"):
        _train(tmp_path / "r", f"optim.{field}=1e39")
    assert not (tmp_path / "r").exists()


def test_a_run_name_with_glob_characters_resumes_by_name(tmp_path):
    overrides = [*TINY, "run.name=exp[1]", f"run.out_dir={tmp_path}"]
    first = fastgan.train(None, overrides=[*overrides, "run.steps=2"])
    second = fastgan.train(None, overrides=[*overrides, "run.steps=3"], resume=True)
    assert second.out_dir == first.out_dir and second.step == 3


@pytest.mark.parametrize("text", ["2024-01-01", "2024-01-01 12:30:00"])
def test_a_date_is_a_run_name(text):
    from fastgan import config as C

    assert C.coerce(None, [f"run.name={text}"]).run.name == text
    assert C.coerce({"run": {"name": C.yaml_load(f"x: {text}")["x"]}}).run.name == text


@pytest.mark.parametrize("name", ["a\nb", "a\tb", "a\x00b", "a\x7fb"], ids=["newline", "tab", "nul", "del"])
def test_a_run_name_with_a_control_character_is_refused(name, tmp_path):
    """A newline or tab made a run folder that ls and shells show mangled; a NUL failed in mkdir."""
    from fastgan import config as C

    cfg = C.coerce(None, [*TINY, f"run.out_dir={tmp_path}"])
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=name))  # frozen: train checks it
    with pytest.raises(ConfigError, match=r"^run.name: must be a non-empty name without '/', control characters"):
        fastgan.train(cfg)
    assert not any(tmp_path.iterdir())


def test_a_folder_that_is_neither_a_config_nor_a_run(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path} is a folder, not a YAML config .*holds no"):
        fastgan.train(tmp_path)


def test_a_seed_past_64_bits_names_the_option(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastgan", "sample", str(tmp_path), "--out", str(tmp_path / "x.npz"),
                        "--seed", str(2 ** 70)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "argument --seed: invalid" in r.stderr, r.stderr


@MAIN_THREAD_ONLY
@pytest.mark.parametrize("sig, default, raised, prefix", [
    (signal.SIGINT, signal.default_int_handler, KeyboardInterrupt, ""),
    (signal.SIGTERM, signal.SIG_DFL, train_mod.Terminated, "SIGTERM; ")], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_the_final_evaluation_interrupts_it(tmp_path, monkeypatch, sig, default, raised, prefix):
    """The step loop's handler only sets a flag, which nothing read after the loop: the first Ctrl-C in the final
    evaluation (minutes of Parzen windows for 784-d images) was lost. SIGTERM (a scheduler's) is taken as Ctrl-C
    is, raised as train.Terminated, a KeyboardInterrupt; until 2026-12-02 it killed the process, status.json left
    'running'."""
    def parzen(self, step):
        os.kill(os.getpid(), sig)
        for _ in range(100):  # the handler runs between bytecodes
            sum(range(1000))
        raise AssertionError("the evaluation went on after the signal")

    monkeypatch.setattr(train_mod._Run, "_parzen", parzen)
    previous = signal.signal(sig, default)
    try:
        with pytest.raises(raised, match=f"^{prefix}in the final evaluation; checkpoint .* holds the last step, 2"):
            _train(tmp_path / "r", "run.parzen=true")
        assert signal.getsignal(sig) is default, "the run's handler is removed"
    finally:
        signal.signal(sig, previous)
    import json

    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["phase"] == "final evaluation"


@MAIN_THREAD_ONLY
@pytest.mark.parametrize("sig, default, code", [(signal.SIGINT, signal.default_int_handler, 130),
                                               (signal.SIGTERM, signal.SIG_DFL, 143)], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("evaluation", [True, False], ids=["parzen", "no_final_evaluation"])
def test_a_signal_in_the_last_step(tmp_path, monkeypatch, capsys, sig, default, code, evaluation):
    """The loop raised at the last step's end as at any other, status 'training' at run.steps: a resume had
    nothing to train and never ran the final evaluation. Now the step finishes and the evaluation is what stops
    (a resume runs it); with none, the run finishes."""
    real_log = train_mod._Run._log

    def log(self, step, row):
        if step == 2 and "d_loss" in row:  # the last step's stats: its samples and checkpoint are still to come
            os.kill(os.getpid(), sig)
        return real_log(self, step, row)

    monkeypatch.setattr(train_mod._Run, "_log", log)
    run = tmp_path / "r"
    args = ["train", *(x for o in TINY for x in ("--set", o)), "--set", "run.steps=2", "--set", f"run.dir={run}",
            "--set", f"run.parzen={str(evaluation).lower()}"]
    from fastgan.cli import main

    previous = signal.signal(sig, default)
    try:
        rc = main(args)
        assert signal.getsignal(sig) is default, "the run's handler is removed"
    finally:
        signal.signal(sig, previous)
    status = json.loads((run / "status.json").read_text())
    assert status["step"] == 2 and status["last_checkpoint_step"] == 2
    if not evaluation:
        assert rc == 0 and status["state"] == "finished", (rc, status)
        return
    assert rc == code and status["state"] == "interrupted" and status["phase"] == "final evaluation", status
    assert "in the final evaluation; checkpoint" in capsys.readouterr().err
    assert main(["train", str(run), "--resume"]) == 0
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert "eval/parzen_ll" in (run / "metrics.csv").read_text()


@pytest.mark.parametrize("forced, match", [("cuda", r"^FASTGAN_BACKEND='cuda': cannot run on cpu \(run\.device\): "
                                                    r"the cuda backend needs CUDA tensors"),
                                           ("foo", r"^FASTGAN_BACKEND: must be one of .* got 'foo'")])
def test_a_forced_backend_that_cannot_run_is_a_config_error_before_the_run_folder(tmp_path, monkeypatch, forced,
                                                                                   match):
    """FASTGAN_BACKEND=cuda on a CPU run was a BackendUnavailable traceback at step 1, in a run folder marked
    failed; an unknown name did not name the variable."""
    monkeypatch.setenv("FASTGAN_BACKEND", forced)
    with pytest.raises(ConfigError, match=match):
        _train(tmp_path / "r")
    assert not (tmp_path / "r").exists()
    import torch

    from fastgan.ops import _dispatch

    with pytest.raises(_dispatch.BackendUnavailable if forced == "cuda" else ValueError,
                       match="FASTGAN_BACKEND" if forced == "foo" else r"FASTGAN_BACKEND='cuda' cannot run here"):
        _dispatch.resolve("gradient_penalty", torch.device("cpu"), None)
    with pytest.raises(ValueError, match=r"^backend must be one of"):  # an argument still names itself
        _dispatch.resolve("gradient_penalty", torch.device("cpu"), "bar")


def test_backend_unavailable_in_a_step_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    from fastgan.ops import _dispatch

    def refuse(*args, **kwargs):
        raise _dispatch.BackendUnavailable("grad_norm_penalty: backend 'x' cannot run here: test")
    from fastgan.methods.step import Method

    monkeypatch.setattr(Method, "train_step", refuse)
    code = cmd_train(train_mod_args(tmp_path / "r"))
    assert code == 1 and capsys.readouterr().err.startswith("fastgan train: error: grad_norm_penalty: backend 'x'")


def train_mod_args(d):
    import argparse

    return argparse.Namespace(config=None, overrides=[*TINY, "run.steps=2", f"run.dir={d}"], resume=False,
                              print_config=False)


def _signal_now(sig):
    """What the signal's handler does, called directly: Python's SIGTERM default would kill the test process, so
    that handler (an int, SIG_DFL) fails here instead."""
    handler = signal.getsignal(sig)
    assert callable(handler), f"no handler of the run's for {signal.Signals(sig).name}: its default is in place"
    handler(sig, None)


@MAIN_THREAD_ONLY
@pytest.mark.parametrize("sig, default, raised", [
    (signal.SIGINT, signal.default_int_handler, KeyboardInterrupt),
    (signal.SIGTERM, signal.SIG_DFL, train_mod.Terminated)], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("when", ["setting up", "starting", "first step twice"])
def test_signals_before_the_first_step(tmp_path, monkeypatch, sig, default, raised, when):
    """An audit's findings (2026-12-07): a signal between the run's setup and its training loop's handler was taken
    at once, leaving a run folder with no checkpoint, which blocked its run.dir (`--resume`: "holds no
    checkpoint"), and SIGTERM there, or while setting up, killed the process (status.json left "running"). Now a
    signal while setting up stops it at once, removing the new folder; one after lets step 1 finish and
    checkpoints it; a second one in step 1 stops at once, removing the folder (nothing to resume)."""
    from fastgan.methods.step import Method

    d = tmp_path / "r"
    if when == "setting up":
        real = train_mod._Run._write_info

        def patched(self, shape):
            real(self, shape)
            _signal_now(sig)
        monkeypatch.setattr(train_mod._Run, "_write_info", patched)
    elif when == "starting":
        real = train_mod._Run._status

        def patched(self, state, *a, **k):
            real(self, state, *a, **k)
            if state == "running" and self.at == 0:
                _signal_now(sig)
        monkeypatch.setattr(train_mod._Run, "_status", patched)
    else:
        def patched(self, t, sample_real):
            _signal_now(sig)
            _signal_now(sig)
            raise AssertionError("the step went on after the second signal")
        monkeypatch.setattr(Method, "train_step", patched)
    previous = signal.signal(sig, default)
    try:
        with pytest.raises(raised) as e:
            _train(d, "run.checkpoint_every=0", steps=5)
        assert signal.getsignal(sig) is default, "the run's handler is removed"
    finally:
        signal.signal(sig, previous)
    monkeypatch.undo()
    if when == "starting":  # the first step finished and was checkpointed: --resume continues
        assert f"checkpoint {d / 'checkpoints' / 'last.pt'} holds step 1" in str(e.value)
        status = json.loads((d / "status.json").read_text())
        assert status["state"] == "interrupted" and status["last_checkpoint_step"] == 1
        assert _train(d, steps=2, resume=True).step == 2
    else:
        assert not d.exists(), sorted(p.name for p in d.rglob("*"))
        _train(d, steps=1)  # run.dir is free for a new run


@MAIN_THREAD_ONLY
@pytest.mark.parametrize("sig, default, raised, message", [
    (signal.SIGINT, signal.default_int_handler, KeyboardInterrupt, ""),
    (signal.SIGTERM, signal.SIG_DFL, train_mod.Terminated, "SIGTERM")], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path, monkeypatch, sig, default, raised, message):
    """The first signal waits for the step's end; a second one in the same step stops at once: no checkpoint of
    the half-done step, none at all here (run.checkpoint_every=0)."""
    from fastgan.methods.step import Method

    real_step = Method.train_step

    def twice(self, t, sample_real):
        if t == 1:  # in the first step the run's folder goes (test_signals_before_the_first_step)
            return real_step(self, t, sample_real)
        for _ in range(2):
            os.kill(os.getpid(), sig)
            for _ in range(100):  # the handler runs between bytecodes
                sum(range(1000))
        raise AssertionError("the step went on after the second signal")

    monkeypatch.setattr(Method, "train_step", twice)
    previous = signal.signal(sig, default)
    try:
        with pytest.raises(raised) as e:
            _train(tmp_path / "r", steps=5)
        assert str(e.value) == message and type(e.value) is raised
        assert signal.getsignal(sig) is default
    finally:
        signal.signal(sig, previous)
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()
    assert json.loads((tmp_path / "r" / "status.json").read_text())["state"] == "interrupted"


@MAIN_THREAD_ONLY
def test_a_sigint_handler_of_your_own_stays_yours(tmp_path, monkeypatch):
    from fastgan.methods.step import Method

    def mine(signum, frame):
        pass

    seen, orig = [], Method.train_step

    def spy(self, t, sample_real):
        seen.append(signal.getsignal(signal.SIGINT))
        return orig(self, t, sample_real)

    monkeypatch.setattr(Method, "train_step", spy)
    previous = signal.signal(signal.SIGINT, mine)
    try:
        assert _train(tmp_path / "r").step == 2
        assert seen == [mine, mine] and signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("kw,match", [({"resume": "no"}, r"^resume: expected True or False, got 'no'"),
                                      ({"resume": 1}, r"^resume: expected True or False"),
                                      ({"progress": "off"}, r"^progress: expected True, False or None")])
def test_fastgan_train_refuses_flags_that_are_not_booleans(tmp_path, kw, match):
    """A string is truthy: resume="no" resumed the latest run and progress="off" showed the bar."""
    with pytest.raises(TypeError, match=match):
        fastgan.train(None, overrides=[f"run.dir={tmp_path / 'r'}", "run.steps=1"], **kw)
    assert not (tmp_path / "r").exists()


def test_run_threads_holds_for_the_run_and_is_put_back(tmp_path, monkeypatch):
    """run.threads: torch's CPU threads for the run (2 OpenMP threads ran the default job 6-40x slower while
    another process used a core); the caller's setting comes back afterwards, also on resume with another value."""
    import torch

    seen = []
    real_run = train_mod._Run.run
    monkeypatch.setattr(train_mod._Run, "run", lambda self: seen.append(torch.get_num_threads()) or real_run(self))
    before = torch.get_num_threads()
    _train(tmp_path / "r", "run.threads=1")
    _train(tmp_path / "r", "run.threads=3", steps=4, resume=True)
    _train(tmp_path / "d")
    assert seen == [1, 3, before] and torch.get_num_threads() == before
    with pytest.raises(ConfigError, match=r"run\.threads: must be in \[1, 1024\] .*, got 0"):
        _train(tmp_path / "z", "run.threads=0")


def test_another_runs_checkpoint_in_a_run_folder_is_refused_and_nothing_written(tmp_path):
    """A resume of run folder a whose checkpoint is run b's (another architecture, copied over it) took the
    checkpoint's config as the run's: it trained b's models in a, rewrote a's config.yaml and run_info.json and
    appended b's losses to a's metrics.csv (an audit, 2026-12-07). Resumed by a's config and run.dir, it named b's
    fields as the config's changes, where the config is a's."""
    a, b = tmp_path / "a", tmp_path / "b"
    _train(a)
    _train(b, "model.g_hidden=[8,8]")
    (a / "checkpoints" / "last.pt").write_bytes((b / "checkpoints" / "last.pt").read_bytes())
    before = _files(a)
    message = rf"checkpoint {re.escape(str(a))}/checkpoints/last\.pt is not the checkpoint of the run in " \
              rf"{re.escape(str(a))}: model\.g_hidden: checkpoint \(8, 8\), config\.yaml \(16,\) \("
    with pytest.raises(train_mod.CheckpointError, match=message):
        fastgan.train(a, resume=True, overrides=["run.steps=4"])
    with pytest.raises(train_mod.CheckpointError, match=message):
        _train(a, steps=4, resume=True)
    assert _files(a) == before
    assert _train(b, "model.g_hidden=[8,8]", steps=3, resume=True).step == 3  # b's own folder still resumes
