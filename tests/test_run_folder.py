"""The run folder belongs to one run: a second run on it is refused while the first holds its lock, a new run does
not write into a non-empty folder, and SIGINT leaves a checkpoint of the last completed step."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import fastgan
from fastgan import checkpoint as ckpt
from fastgan import run_folder
from fastgan.cli import main

train_mod = sys.modules["fastgan.train"]

TINY = ["optim.batch_size=16", "model.g_hidden=[16]", "model.d_hidden=[16,16]", "run.log_every=2",
        "run.sample_every=0", "run.checkpoint_every=0", "run.num_samples=64", "run.progress=off"]


def _train(d, *overrides, steps=2, resume=False):
    return fastgan.train(None, overrides=[*TINY, f"run.steps={steps}", f"run.dir={d}", *overrides], resume=resume)


def _snapshot(d: Path) -> dict:
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_held_lock_refuses_a_second_run_and_writes_nothing(tmp_path):
    d = tmp_path / "r"
    _train(d)
    before = _snapshot(d)
    fd = os.open(d / run_folder.LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live run on d holds
        with pytest.raises(train_mod.RunFolderError, match=f"run folder {d} is in use by another fastgan run"):
            _train(d, steps=4, resume=True)
        with pytest.raises(train_mod.RunFolderError, match="in use"):
            fastgan.train(d, overrides=["run.steps=4"], resume=True)
    finally:
        os.close(fd)
    assert _snapshot(d) == before
    assert _train(d, steps=4, resume=True).step == 4  # the lock went with its holder


def test_a_resume_of_a_run_before_its_first_checkpoint_names_the_holder(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    fd = run_folder.lock(d)  # a run that started and has not checkpointed yet
    run_folder.claim(fd)
    try:
        with pytest.raises(train_mod.RunFolderError, match=rf"run folder {d} is in use by another fastgan run "
                                                           rf"\(pid {os.getpid()}\)"):
            _train(d, resume=True)
        with pytest.raises(train_mod.RunFolderError, match=rf"in use by another fastgan run \(pid {os.getpid()}\)"):
            fastgan.train(d, resume=True)  # `fastgan train DIR --resume`
    finally:
        run_folder.unlock(fd)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):  # nobody holds it: the missing checkpoint
        _train(d, resume=True)


def test_the_lock_is_released_after_a_run_and_after_a_failed_start(tmp_path):
    d = tmp_path / "r"
    _train(d)
    with pytest.raises(FileExistsError, match="already holds a run"):
        _train(d)
    with pytest.raises(fastgan.config.ConfigError):
        _train(d, "method.roth.gamma=0.5", steps=4, resume=True)
    fd = os.open(d / run_folder.LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it
    finally:
        os.close(fd)


def test_a_non_empty_folder_is_refused_for_a_new_run(tmp_path, capsys):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(train_mod.RunFolderError, match=f"run.dir {d} is not empty \\(notes.txt\\).*another run.dir "
                                                        "or remove that folder"):
        _train(d)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]  # not even a lock file
    assert main(["train", "--set", *TINY, "run.steps=2", f"run.dir={d}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty" in err and "Traceback" not in err


def test_a_run_folder_without_checkpoint_is_neither_reused_nor_resumed(tmp_path):
    d = tmp_path / "r"
    _train(d)
    (d / "checkpoints" / "last.pt").unlink()  # as left by a run stopped before its first checkpoint
    before = _snapshot(d)
    with pytest.raises(train_mod.RunFolderError, match="is not empty .*holds no checkpoint"):
        _train(d, "run.seed=5")
    with pytest.raises(FileNotFoundError, match=f"holds no checkpoint \\({d / 'checkpoints' / 'last.pt'}"):
        _train(d, steps=4, resume=True)
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {d / 'checkpoints' / 'last.pt'}"):
        fastgan.train(d, overrides=["run.steps=4"], resume=True)
    assert _snapshot(d) == before


def test_an_empty_existing_folder_is_fine(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    assert _train(d).out_dir == d and (d / "checkpoints" / "last.pt").exists()


def _sigint_default():
    # a suite started as a background job (`pytest ... &` from a script) inherits SIGINT ignored, and so would the
    # child, which then never sees the test's Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(d, *overrides):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "fastgan", "train", "--set", *TINY, f"run.dir={d}", *overrides],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=d.parent,
                            preexec_fn=_sigint_default)


def _wait_for_rows(csv: Path, rows: int, p, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if csv.exists() and len(csv.read_text().splitlines()) > rows:
            return
        assert p.poll() is None, p.communicate()
        time.sleep(0.1)
    raise AssertionError(f"{csv}: no progress within {timeout} s")


def _signalled_run(d, sig, while_running=lambda run: None):
    """(exit status, stderr, checkpointed step) of a long CLI run in d sent `sig` once it has logged 3 rows
    (checkpoint_every=0: only at the end, so any checkpoint is the signal's)."""
    run = _cli(d, "run.steps=100000", "run.checkpoint_every=0")
    try:
        _wait_for_rows(d / "metrics.csv", 3, run)
        while_running(run)
        run.send_signal(sig)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    step = ckpt.load(d / "checkpoints" / "last.pt")["step"]
    assert "Traceback" not in err and err.count("\n") == 1 and f"holds step {step}" in err, err
    assert 0 < step < 100000
    return run.returncode, err, step


def test_concurrent_run_is_refused_and_sigint_checkpoints_the_last_step(tmp_path):
    d = tmp_path / "long"

    def second_run_is_refused(first):
        second = subprocess.run([sys.executable, "-m", "fastgan", "train", "--set", *TINY, f"run.dir={d}",
                                 "run.steps=20", "run.seed=1"], capture_output=True, text=True, timeout=120,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert second.returncode == 1, second.stderr
        assert second.stderr.strip() == (f"fastgan train: error: run folder {d} is in use by another fastgan run "
                                         f"(pid {first.pid}); wait for it to end or choose another run.dir")

    code, err, step = _signalled_run(d, signal.SIGINT, second_run_is_refused)
    assert code == 130 and "--resume continues from there" in err, err
    assert not [p for p in (d / "checkpoints").iterdir() if p.name != "last.pt"]  # no temporary file left
    more = fastgan.train(d, overrides=["run.steps=" + str(step + 3)], resume=True)
    assert more.start_step == step and more.step == step + 3


def test_sigterm_checkpoints_the_last_step_and_exits_143(tmp_path):
    """A scheduler's SIGTERM (SLURM's before its kill, `kill PID`) ends the run as Ctrl-C does: the step in flight
    completes and is checkpointed, status.json says interrupted, exit 143 (128 + 15); it killed the run at once."""
    d = tmp_path / "term"
    code, err, step = _signalled_run(d, signal.SIGTERM)
    assert code == 143 and err.startswith("fastgan train: interrupted; SIGTERM; checkpoint"), err
    status = json.loads((d / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] == step and "SIGTERM" in status["reason"]


def test_resuming_a_given_run_folder_refuses_another_run_dir_or_out_dir(tmp_path, capsys, monkeypatch):
    from fastgan.cli import main as cli_main

    d = tmp_path / "r"
    _train(d)
    before = _snapshot(d)
    for item in (f"run.dir={tmp_path / 'other'}", f"run.out_dir={tmp_path / 'elsewhere'}", "run.dir=null",
                 f"run={{out_dir: {tmp_path / 'elsewhere'}}}"):
        key = item.split("=")[0] if "{" not in item else "run.out_dir"
        with pytest.raises(fastgan.config.ConfigError, match=rf"^{key}: --resume of the run folder"):
            fastgan.train(d, overrides=["run.steps=4", item], resume=True)
        assert cli_main(["train", str(d), "--resume", "--set", "run.steps=4", item]) == 2
        assert "continues it there" in capsys.readouterr().err
    assert _snapshot(d) == before and not (tmp_path / "other").exists() and not (tmp_path / "elsewhere").exists()
    assert fastgan.train(d, overrides=["run.steps=4", f"run.dir={d}"], resume=True).step == 4  # the same folder
    monkeypatch.chdir(tmp_path)  # the folder given relative, run.dir absolute: the same folder
    assert fastgan.train(Path("r"), overrides=["run.steps=5", f"run.dir={d}"], resume=True).step == 5


def test_a_checkpoint_with_fields_its_run_did_not_read_still_resumes_and_evaluates(tmp_path):
    """Checkpoints written before such fields were refused (model.leaky_slope on a tanh MLP, data.split on an npz):
    the field is read back as its default, which the run used."""
    import torch

    from fastgan import checkpoint as ckpt
    from fastgan.crosstest import load_run

    d = tmp_path / "r"
    _train(d)
    path = d / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    state["config"]["model"]["leaky_slope"] = 0.1
    state["config"]["run"]["parzen_test"] = 1  # run.parzen off: not read
    torch.save(state, path)
    assert ckpt.load(path)["config"]["model"]["leaky_slope"] == 0.1
    assert _train(d, steps=4, resume=True).step == 4
    assert fastgan.train(d, overrides=["run.steps=5"], resume=True).step == 5
    assert load_run(d, (3,)).config.model.leaky_slope == 0.2
    state = torch.load(path, weights_only=False)
    state["config"]["model"]["latent_dim"] = -1  # invalid, not unread: still the checkpoint's error
    torch.save(state, path)
    with pytest.raises(train_mod.CheckpointError, match=r"holds an invalid config: model\.latent_dim"):
        _train(d, steps=6, resume=True)


def test_new_runs_by_name_take_the_next_suffix_and_resume_takes_the_newest_checkpoint(tmp_path, monkeypatch):
    """Two runs of one name started in the same second get <name>-<stamp>, -2, -3; --resume by name continues the
    run whose checkpoint is newest (not the last by name), skipping folders without a checkpoint and folders whose
    name is not <name>-<stamp>[-N]."""
    import time as _time

    monkeypatch.setattr(run_folder, "time", types.SimpleNamespace(strftime=lambda fmt: "20250101-120000",
                                                                  sleep=_time.sleep))
    base = [*TINY, f"run.out_dir={tmp_path}", "run.name=n"]
    runs = [fastgan.train(None, overrides=[*base, "run.steps=1"]).out_dir for _ in range(3)]
    assert [p.name for p in runs] == ["n-20250101-120000", "n-20250101-120000-2", "n-20250101-120000-3"]
    assert all((p / run_folder.LOCK).read_text() == f"{os.getpid()}\n" for p in runs)  # the busy message's pid
    decoy = tmp_path / "n-other"  # not <name>-<stamp>: not a run of this name, though its checkpoint is newest
    shutil.copytree(runs[0], decoy)
    unfinished = tmp_path / "n-20990101-000000"  # the newest stamp, stopped before its first checkpoint
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((runs[0] / "config.yaml").read_text())
    for t, d in ((1000, runs[0]), (3000, runs[1]), (2000, runs[2]), (4000, decoy)):
        os.utime(d / run_folder.CHECKPOINT, (t, t))
    r = fastgan.train(None, overrides=[*base, "run.steps=2"], resume=True)
    assert r.out_dir == runs[1] and (r.start_step, r.step) == (1, 2)


def test_the_lock_file_holds_this_runs_pid_alone(tmp_path):
    """A folder holding only a lock file (a run that failed right after taking it) is empty for a new run; the
    run, and a resume, write their own pid over whatever the file held (the busy message names it)."""
    d = tmp_path / "r"
    d.mkdir()
    (d / run_folder.LOCK).write_text("123456789012345\n")
    assert _train(d).step == 2
    assert (d / run_folder.LOCK).read_text() == f"{os.getpid()}\n"
    (d / run_folder.LOCK).write_text("123456789012345\n")  # the previous holder's, a longer pid
    assert _train(d, steps=3, resume=True).step == 3
    assert (d / run_folder.LOCK).read_text() == f"{os.getpid()}\n"


def test_a_new_run_dir_that_is_a_file_or_crowded_is_refused_by_name(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(train_mod.RunFolderError, match=f"run.dir {f} is a file, not a folder"):
        _train(f)
    d = tmp_path / "crowded"
    d.mkdir()
    for name in ("e", "d", "c", "b", "a"):
        (d / name).write_text(name)
    with pytest.raises(train_mod.RunFolderError, match=rf"run.dir {d} is not empty \(a, b, c, \.\.\.\) and holds no"):
        _train(d)


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_dir_the_os_cannot_look_up_is_named(tmp_path, resume):
    """A folder name past the file system's 255 bytes: errno's bare "[Errno 36] File name too long" named no field
    (run.name's own case was named already)."""
    d = tmp_path / ("a" * 300)
    with pytest.raises(train_mod.RunFolderError,
                       match=r"^run\.dir .*a\.\.\.: cannot use the path: File name too long$"):
        _train(d, resume=resume)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_resume_of_a_folder_without_a_lock_file_leaves_none(tmp_path):
    # run folders written before 2026-12-01 have no lock file: a refused or no-op resume must not add one
    d = tmp_path / "r"
    _train(d)
    (d / run_folder.LOCK).unlink()
    before = _snapshot(d)
    with pytest.raises(ckpt.CheckpointMismatchError):
        _train(d, "method.roth.gamma=0.5", steps=4, resume=True)
    assert _snapshot(d) == before and not (d / run_folder.LOCK).exists()
    assert _train(d, resume=True).step == 2  # nothing to train
    assert _snapshot(d) == before and not (d / run_folder.LOCK).exists() and not run_folder._created
    _train(d, steps=3, resume=True)
    assert (d / run_folder.LOCK).exists() and not run_folder._created  # a run that trained keeps its lock file


def test_a_lock_whose_file_was_removed_while_waiting_is_taken_again(tmp_path, monkeypatch):
    # the creator of a lock file removes it while holding it (discard_created_lock); a process that had opened
    # the old file and gets its flock afterwards must not hold a lock that a new file no longer shares
    real, calls = fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            os.unlink(tmp_path / run_folder.LOCK)  # removed by its creator just before this process got the lock
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    fd = run_folder.lock(tmp_path)
    try:
        assert len(calls) == 2 and os.path.samestat(os.fstat(fd), os.stat(tmp_path / run_folder.LOCK))
    finally:
        run_folder.unlock(fd)


def test_the_busy_message_names_the_process_holding_the_lock_from_its_first_moment(tmp_path):
    """A resume holds the folder's lock while it loads its checkpoint and data, before claim(): a second run told
    the folder is in use must read the holder's pid, not the previous session's (ended) one; a holder that lets go
    without claiming (a refused resume) leaves the lock file as it was."""
    d = tmp_path / "r"
    _train(d)
    (d / run_folder.LOCK).write_text("4242\n")  # the previous session's pid, long ended
    before = _snapshot(d)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from fastgan import run_folder; "
         "fd = run_folder.lock(Path(sys.argv[1])); print('held', flush=True); sys.stdin.readline(); "
         "run_folder.unlock(fd)", str(d)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(train_mod.RunFolderError, match=rf"in use by another fastgan run \(pid {holder.pid}\)"):
            _train(d, steps=4, resume=True)
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert _snapshot(d) == before


@pytest.mark.parametrize("where", ["out_dir", "new_run_dir", "empty_run_dir"])
def test_a_new_run_that_fails_while_starting_leaves_no_folder_behind(tmp_path, monkeypatch, where):
    """A failure after the folder is made and before training (an allocation, a full disk while writing
    run_info.json) left a folder holding a lock file or a config without a checkpoint: not a run, and a run.dir
    that later runs refused as "not empty". The folder the run made goes; an existing (empty) run.dir stays, empty
    but for its lock file."""
    def full_disk(self, shape):
        (self.out / "run_info.json").write_text("{")  # half-written, as a full disk leaves it
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_mod._Run, "_write_info", full_disk)
    d = tmp_path / "r"
    if where == "empty_run_dir":
        d.mkdir()
    target = [f"run.out_dir={tmp_path / 'runs'}"] if where == "out_dir" else [f"run.dir={d}"]
    with pytest.raises(OSError, match="No space left"):
        fastgan.train(None, overrides=[*TINY, "run.steps=2", *target])
    if where == "out_dir":
        assert list((tmp_path / "runs").iterdir()) == []
    elif where == "new_run_dir":
        assert not d.exists()
    else:
        assert [p.name for p in d.iterdir()] == [run_folder.LOCK]
    monkeypatch.undo()
    assert fastgan.train(None, overrides=[*TINY, "run.steps=2", *target]).step == 2  # the same run.dir, reusable


@pytest.mark.parametrize("where", ["_write_info", "_status"])
def test_a_run_failing_outside_the_loop_closes_its_tensorboard_file(tmp_path, monkeypatch, where):
    """A full disk after the TensorBoard event file was opened, while starting (run_info.json) or at run()'s first
    status write, before the loop whose finally closes it: the file stayed open (its descriptor, and a removed new
    folder's space) for as long as the error was kept, e.g. a notebook's last exception."""
    from fastgan import logging_utils

    writers = []

    class Recorded(logging_utils.TensorBoardWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            writers.append(self)

    def full_disk(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logging_utils, "TensorBoardWriter", Recorded)
    monkeypatch.setattr(train_mod._Run, where, full_disk)
    with pytest.raises(OSError, match="No space left") as failure:
        _train(tmp_path / "r", "run.tensorboard=true")
    assert failure.value.__traceback__ is not None  # the error, and the run its frames hold, still alive here
    assert len(writers) == 1 and writers[0]._f.closed
