"""A run stopped in its final evaluation (Ctrl-C, a failure) after its last step was checkpointed: `--resume`
runs that evaluation and trains nothing; any other resume at run.steps still writes nothing."""
import csv
import json
import subprocess
import sys

import pytest

import fastgan

train_mod = sys.modules["fastgan.train"]

TINY = ["optim.batch_size=16", "model.g_hidden=[16]", "model.d_hidden=[16,16]", "run.log_every=1",
        "run.sample_every=0", "run.checkpoint_every=0", "run.num_samples=16", "run.progress=off",
        "run.parzen=true", "run.parzen_samples=64", "run.parzen_validation=32", "run.parzen_test=32"]


def _train(d, *overrides, steps=2, resume=False):
    return fastgan.train(None, overrides=[*TINY, f"run.steps={steps}", f"run.dir={d}", *overrides], resume=resume)


def _rows(d):
    with open(d / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _status(d):
    return json.loads((d / "status.json").read_text())


def _stop_in_parzen(monkeypatch, error):
    def stopped(self, step):
        self._log(step, {"eval/parzen_ll": 123.0})  # what a later evaluation (the FD tail) would have left
        raise error

    monkeypatch.setattr(train_mod._Run, "_parzen", stopped)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("out of memory")])
def test_resume_runs_the_final_evaluation_it_stopped_in(tmp_path, monkeypatch, error):
    d = tmp_path / "r"
    _stop_in_parzen(monkeypatch, error)
    with pytest.raises(type(error)):
        _train(d)
    monkeypatch.undo()
    assert (_status(d)["phase"], _status(d)["step"]) == ("final evaluation", 2)
    checkpoint = (d / "checkpoints" / "last.pt").read_bytes()
    trained = [(r["step"], r["d_loss"], r["g_loss"]) for r in _rows(d) if r.get("d_loss")]

    r = _train(d, resume=True)
    assert r.final_evaluation_only and r.step == r.start_step == 2 and r.losses == {}
    assert set(r.metrics) == {"eval/parzen_ll", "eval/parzen_stderr", "eval/parzen_sigma"}
    rows = _rows(d)
    parzen = [row for row in rows if row.get("eval/parzen_ll")]
    assert len(parzen) == 1 and float(parzen[0]["eval/parzen_ll"]) == pytest.approx(r.metrics["eval/parzen_ll"],
                                                                                     rel=1e-5)
    assert float(parzen[0]["eval/parzen_ll"]) != 123.0 and int(parzen[0]["step"]) == 2
    assert [(r["step"], r["d_loss"], r["g_loss"]) for r in rows if r.get("d_loss")] == trained  # none trained
    assert (d / "checkpoints" / "last.pt").read_bytes() == checkpoint
    s = _status(d)
    assert (s["state"], s["phase"], s["step"], s["session_start_step"]) == ("finished", "final evaluation", 2, 2)

    # done now: a further resume is the plain nothing-to-train one
    r = _train(d, resume=True)
    assert not r.final_evaluation_only and r.metrics == {} and r.step == r.start_step == 2


def test_the_final_evaluation_rerun_through_the_cli(tmp_path, monkeypatch):
    d = tmp_path / "r"
    _stop_in_parzen(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        _train(d)
    p = subprocess.run([sys.executable, "-m", "fastgan", "train", "--resume", "--set", *TINY, "run.steps=2",
                        f"run.dir={d}"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("fastgan train: final evaluation of step 2 done (parzen_ll ")
    assert p.stdout.rstrip().endswith(f"output in {d}")


def test_only_a_stop_in_the_final_evaluation_at_the_checkpoint_step_reruns_it(tmp_path):
    d = tmp_path / "r"
    _train(d)
    before = (d / "metrics.csv").read_bytes()
    s = _status(d)
    for change in ({"state": "finished"}, {"state": "stopped"}, {"phase": "training"}, {"step": 1}):
        (d / "status.json").write_text(json.dumps({**s, "state": "interrupted", **change}))
        r = _train(d, resume=True)
        assert not r.final_evaluation_only and r.metrics == {}
    (d / "status.json").write_text("{not json")
    assert not _train(d, resume=True).final_evaluation_only
    # run.steps below the checkpoint's step: nothing to train, nothing evaluated
    (d / "status.json").write_text(json.dumps({**s, "state": "interrupted"}))
    assert not _train(d, steps=1, resume=True).final_evaluation_only
    assert (d / "metrics.csv").read_bytes() == before


def test_a_run_without_a_final_evaluation_ends_in_its_training_phase(tmp_path):
    d = tmp_path / "r"
    _train(d, "run.parzen=false")
    assert (_status(d)["state"], _status(d)["phase"]) == ("finished", "training")
    _train(tmp_path / "p")
    assert (_status(tmp_path / "p")["state"], _status(tmp_path / "p")["phase"]) == ("finished", "final evaluation")


def test_a_final_evaluation_rerun_is_running_in_its_final_evaluation_phase(tmp_path, monkeypatch):
    """While the resume reruns the stopped evaluation, status.json says so (`fastgan compare` reads it); it trains
    nothing, so no 'training' phase is ever recorded."""
    d = tmp_path / "r"
    _stop_in_parzen(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        _train(d)
    monkeypatch.undo()
    seen, orig = [], train_mod._Run._parzen

    def spy(self, step):
        seen.append(_status(d))
        return orig(self, step)

    monkeypatch.setattr(train_mod._Run, "_parzen", spy)
    assert _train(d, resume=True).final_evaluation_only
    assert [(s["state"], s["phase"], s["step"]) for s in seen] == [("running", "final evaluation", 2)]


def killed_in(method: str, overrides: list, cwd, at_step: int):
    """A training run in a subprocess killed (os._exit: no handler, no status written, as SIGKILL, the OOM killer
    or a power cut) when it enters _Run.<method> at `at_step`."""
    code = ("import os, sys, fastgan\n"
            "train = sys.modules['fastgan.train']\n"
            f"orig = train._Run.{method}\n"
            "def killed(self, step, *a, **k):\n"
            f"    if step == {at_step}:\n"
            "        os._exit(137)\n"
            "    return orig(self, step, *a, **k)\n"
            f"train._Run.{method} = killed\n"
            f"fastgan.train(None, overrides={overrides!r})\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert p.returncode == 137, p.stderr[-3000:]


def test_a_run_killed_in_its_final_evaluation_gets_it_on_resume(tmp_path):
    """status.json said 'running', phase 'training', at the step before the last checkpoint, and the resume
    found nothing to train: the run's Parzen estimate was lost for good, exit 0."""
    d = tmp_path / "r"
    killed_in("_parzen", [*TINY, "run.steps=2", f"run.dir={d}"], tmp_path, at_step=2)
    s = _status(d)
    assert (s["state"], s["phase"], s["step"], s["last_checkpoint_step"]) == ("running", "final evaluation", 2, 2)
    r = _train(d, resume=True)
    assert r.final_evaluation_only and set(r.metrics) == {"eval/parzen_ll", "eval/parzen_stderr", "eval/parzen_sigma"}
    assert [int(row["step"]) for row in _rows(d) if row.get("eval/parzen_ll")] == [2]
    want = _train(tmp_path / "whole").metrics["eval/parzen_ll"]  # the same seed, never stopped
    assert r.metrics["eval/parzen_ll"] == pytest.approx(want, rel=1e-6)
    assert _status(d)["state"] == "finished"


@pytest.mark.parametrize("how", ["second signal", "killed"])
def test_a_run_stopped_once_its_last_checkpoint_is_written_gets_its_final_evaluation(tmp_path, monkeypatch, how):
    """A stop after the last step's checkpoint was renamed into place and before status.json said "final
    evaluation" (a second Ctrl-C or SIGTERM in the durable write's folder fsync; SIGKILL there) left status.json at
    phase "training", an earlier step: the resume found the checkpoint at run.steps, trained and evaluated nothing,
    and the run's Parzen estimate was lost."""
    d = tmp_path / "r"
    if how == "killed":
        overrides = [*TINY, "run.steps=2", "run.checkpoint_every=1", f"run.dir={d}"]
        code = ("import os, sys, fastgan\n"
                "train = sys.modules['fastgan.train']\n"
                "orig = train.ckpt.save\n"
                "def save(path, state, *a, **k):\n"
                "    orig(path, state, *a, **k)\n"
                "    if state['step'] == 2:\n"
                "        os._exit(137)\n"
                "train.ckpt.save = save\n"
                f"fastgan.train(None, overrides={overrides!r})\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert p.returncode == 137, p.stderr[-3000:]
    else:
        orig = train_mod.ckpt.save

        def save(path, state, *a, **k):
            orig(path, state, *a, **k)
            if state["step"] == 2:
                raise KeyboardInterrupt()

        monkeypatch.setattr(train_mod.ckpt, "save", save)
        with pytest.raises(KeyboardInterrupt):
            _train(d, "run.checkpoint_every=1")
        monkeypatch.undo()
    assert _status(d)["phase"] == "final evaluation"
    r = _train(d, "run.checkpoint_every=1", resume=True)
    assert r.final_evaluation_only and set(r.metrics) == {"eval/parzen_ll", "eval/parzen_stderr", "eval/parzen_sigma"}
    want = _train(tmp_path / "whole", "run.checkpoint_every=1").metrics["eval/parzen_ll"]
    assert r.metrics["eval/parzen_ll"] == want
    assert [int(row["step"]) for row in _rows(d) if row.get("eval/parzen_ll")] == [2]
    assert _status(d)["state"] == "finished"
