"""The trainer's status.json (how a run's latest session ended) and `fastgan compare` over folders of runs."""
import importlib
import json
import os
from pathlib import Path

import pytest
import torch

import fastgan
from fastgan import compare, run_folder
from fastgan.cli import main

train_mod = importlib.import_module("fastgan.train")

TINY = ["optim.batch_size=16", "model.g_hidden=[16]", "model.d_hidden=[16,16]", "run.log_every=2",
        "run.sample_every=2", "run.checkpoint_every=0", "run.num_samples=64", "run.progress=off"]


def _run(root, name, steps=4, *extra):
    return fastgan.train(None, overrides=[*TINY, f"run.steps={steps}", f"run.dir={root / name}",
                                          f"run.name={name}", *extra])


def _status(d):
    return json.loads((d / "status.json").read_text())


def _poison(monkeypatch, at: int):
    from fastgan.methods.step import Method

    orig = Method.train_step

    def poisoned(self, t, sample_real):
        stats = orig(self, t, sample_real)
        if t == at:
            stats["d_loss"] = torch.tensor(float("inf"))
        return stats

    monkeypatch.setattr(Method, "train_step", poisoned)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """study-a-x, study-a-y finished; study-b-x stopped by a non-finite loss at step 3; study-b-y failed."""
    root = tmp_path_factory.mktemp("study")
    _run(root, "study-a-x")
    _run(root, "study-a-y", 6)
    mp = pytest.MonkeyPatch()
    try:
        _poison(mp, 3)
        with pytest.raises(train_mod.NonFiniteLossError):
            _run(root, "study-b-x")
        from fastgan.methods.step import Method

        def broken(self, t, sample_real):
            raise RuntimeError("device lost")

        mp.setattr(Method, "train_step", broken)
        with pytest.raises(RuntimeError):
            _run(root, "study-b-y")
    finally:
        mp.undo()
    return root


def test_status_records_how_each_session_ended(study):
    s = _status(study / "study-a-y")
    assert (s["state"], s["step"], s["steps"], s["session_start_step"], s["last_checkpoint_step"]) == \
        ("finished", 6, 6, 0, 6)
    s = _status(study / "study-b-x")
    assert (s["state"], s["step"], s["last_checkpoint_step"]) == ("stopped", 3, None)
    assert "d_loss is inf at step 3" in s["reason"]
    s = _status(study / "study-b-y")
    assert (s["state"], s["step"]) == ("failed", 1) and s["reason"] == "RuntimeError: device lost"


def test_status_while_training_and_after_a_resume(tmp_path, monkeypatch):
    from fastgan.methods.step import Method

    seen = []
    orig = Method.train_step

    def spy(self, t, sample_real):
        seen.append(_status(tmp_path / "r"))
        return orig(self, t, sample_real)

    monkeypatch.setattr(Method, "train_step", spy)
    fastgan.train(None, overrides=[*TINY, "run.steps=2", f"run.dir={tmp_path / 'r'}"])
    assert seen[0]["state"] == "running" and seen[0]["step"] == 0
    fastgan.train(None, overrides=[*TINY, "run.steps=4", f"run.dir={tmp_path / 'r'}"], resume=True)
    assert seen[2]["state"] == "running" and seen[2]["session_start_step"] == 2
    s = _status(tmp_path / "r")
    assert (s["state"], s["step"], s["session_start_step"]) == ("finished", 4, 2)
    # a resume with nothing left to train leaves the record alone
    before = (tmp_path / "r" / "status.json").read_bytes()
    fastgan.train(None, overrides=[*TINY, "run.steps=4", f"run.dir={tmp_path / 'r'}"], resume=True)
    assert (tmp_path / "r" / "status.json").read_bytes() == before


def test_status_follows_the_periodic_checkpoints(tmp_path, monkeypatch):
    """status.json was written at the start and the end only: a run killed after checkpoints (SIGKILL) said
    step 0 and no checkpoint, though one held step 4."""
    from fastgan.methods.step import Method

    seen = {}
    orig = Method.train_step

    def spy(self, t, sample_real):
        seen[t] = _status(tmp_path / "r")
        return orig(self, t, sample_real)

    monkeypatch.setattr(Method, "train_step", spy)
    fastgan.train(None, overrides=[*TINY, "run.steps=5", "run.checkpoint_every=2", f"run.dir={tmp_path / 'r'}"])
    got = {t: (s["state"], s["step"], s["last_checkpoint_step"]) for t, s in seen.items()}
    assert got == {1: ("running", 0, None), 2: ("running", 0, None), 3: ("running", 2, 2), 4: ("running", 2, 2),
                   5: ("running", 4, 4)}
    assert _status(tmp_path / "r")["last_checkpoint_step"] == 5


def test_interrupt_is_recorded(tmp_path, monkeypatch):
    from fastgan.methods.step import Method

    real_step = Method.train_step

    def interrupted(self, t, sample_real):
        if t == 1:  # one in a new run's first step removes its folder (tests/test_train_inputs.py)
            return real_step(self, t, sample_real)
        raise KeyboardInterrupt

    monkeypatch.setattr(Method, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fastgan.train(None, overrides=[*TINY, "run.steps=2", f"run.dir={tmp_path / 'r'}"])
    assert _status(tmp_path / "r")["state"] == "interrupted"


def test_summaries_read_state_step_and_last_evaluations(study):
    rows = compare.compare(study)
    assert [(r["name"], r["state"], r["at"], r["step"], r["steps"]) for r in rows] == [
        ("study-a-x", "finished", 4, 4, 4), ("study-a-y", "finished", 6, 6, 6), ("study-b-x", "stopped", 3, 2, 4),
        ("study-b-y", "failed", 1, 0, 4)]
    # the last logged value of each eval/* column, as metrics.csv holds it
    import csv

    with open(study / "study-a-y" / "metrics.csv") as f:
        last = [r for r in csv.DictReader(f) if r.get("eval/modes")][-1]
    assert rows[1]["metrics"]["modes"] == float(last["eval/modes"]) and last["step"] == "6"
    assert set(rows[1]["metrics"]) == {"modes", "high_quality", "kl_modes"}
    # one run folder, or several paths, work too
    assert [r["name"] for r in compare.compare([study / "study-a-x", study / "study-b-x"])] == ["study-a-x", "study-b-x"]


def test_sort_and_grid(study):
    rows = compare.compare(study, sort="kl_modes")
    kl = [r["metrics"].get("kl_modes") for r in rows]
    have = [v for v in kl if v is not None]
    assert have == sorted(have) and kl[:len(have)] == have  # runs without the metric come last
    grid = compare.format_grid(rows, "eval/modes").splitlines()
    assert grid[0] == "eval/modes" and grid[1].split() == ["x", "y"]
    a = {r["name"]: r for r in rows}
    assert grid[2].split() == ["study-a", compare._fmt(a["study-a-x"]["metrics"]["modes"]),
                               compare._fmt(a["study-a-y"]["metrics"]["modes"])]
    assert grid[3].split() == ["study-b", "stopped@3", "failed@1"]  # where they stopped, not their last values


@pytest.mark.parametrize("text", ["", "\n# nothing\n"])
def test_an_empty_config_yaml_is_unreadable_not_the_defaults(study, tmp_path, text):
    """A zero-byte config.yaml was read as the default config: the run shown as 'roth-mixture', 2/3000 (a fuzz
    audit, 2026-12-07)."""
    import shutil

    shutil.copytree(study / "study-a-x", tmp_path / "study-a-x")
    (tmp_path / "study-a-x" / "config.yaml").write_text(text)
    (r,) = compare.compare(tmp_path)
    assert r["state"] == "unreadable" and "config.yaml: empty" in r["reason"]


def test_unfinished_and_damaged_runs(study, tmp_path):
    import shutil

    for name in ("study-a-x", "study-a-y"):
        shutil.copytree(study / name, tmp_path / name)
    # a run that recorded "running" but whose process is gone
    s = _status(tmp_path / "study-a-x")
    (tmp_path / "study-a-x" / "status.json").write_text(json.dumps({**s, "state": "running"}))
    (tmp_path / "study-a-y" / "config.yaml").write_text("run: [unclosed\n")
    rows = {r["run"]: r for r in compare.compare(tmp_path)}
    r = rows[str(tmp_path / "study-a-x")]
    assert r["state"] == "ended" and "killed" in r["reason"]
    r = rows[str(tmp_path / "study-a-y")]
    assert r["state"] == "unreadable" and "not valid YAML" in r["reason"]
    table = compare.format_table(list(rows.values()))
    assert "study-a-y" in table and "unreadable: " in table
    # while a process holds the lock, "running" is running
    fd = run_folder.lock(tmp_path / "study-a-x")
    try:
        assert compare.summarize(tmp_path / "study-a-x")["state"] == "running"
    finally:
        run_folder.unlock(fd)
    # older runs have no status.json
    os.remove(tmp_path / "study-a-x" / "status.json")
    assert compare.summarize(tmp_path / "study-a-x")["state"] == "unknown"


def test_cli(study, tmp_path, capsys):
    assert main(["compare", str(study)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:6] == ["run", "state", "step", "modes", "high_quality", "kl_modes"]
    assert out[1].split()[:3] == ["study-a-x", "finished", "4/4"]
    assert any(line.startswith("study-b-x (") and "stopped: " in line and "d_loss is inf" in line for line in out)
    assert main(["compare", str(study), "--metrics", "eval/modes", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)][0] == "study-a-x"
    assert main(["compare", str(study), "--grid", "modes"]) == 0
    assert capsys.readouterr().out.startswith("eval/modes\n")
    a_file = next(study.iterdir()) / "config.yaml"
    for args, code, msg in (([str(tmp_path / "none")], 1, "no such run folder"),
                            ([str(a_file)], 1, "config.yaml is a file; give its run folder"),
                            ([str(tmp_path)], 1, "neither a run folder"),
                            ([str(study), "--metrics", "fd"], 2, "--metrics: no run logged eval/fd; logged: modes"),
                            ([str(study), "--sort", "fd"], 2, "--sort: no run logged eval/fd"),
                            ([str(study), "--grid", "fd"], 2, "--grid: no run logged eval/fd")):
        assert main(["compare", *args]) == code
        err = capsys.readouterr().err
        assert err.startswith("fastgan compare: error: ") and msg in err and err.count("\n") == 1


def _fake_run(root, name, state="finished", rows=("step,eval/fd", "10,1.5"), **status):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"run:\n  name: {name}\n  steps: 10\n")
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    (d / "status.json").write_text(json.dumps({"state": state, "step": 10, **status}))
    return d


def test_nan_sorts_last_and_json_is_strict(tmp_path, capsys):
    for name, fd in (("a", "3"), ("b", "nan"), ("c", "1"), ("d", "inf"), ("e", "0.5")):
        _fake_run(tmp_path, name, rows=("step,eval/fd,eval/classifier_score", f"10,{fd},2"))
    assert [r["name"] for r in compare.compare(tmp_path, sort="fd")] == ["e", "c", "a", "d", "b"]
    assert [r["name"] for r in compare.compare(tmp_path, sort="fd", descending=True)] == ["d", "a", "c", "e", "b"]
    assert main(["compare", str(tmp_path), "--sort", "fd", "--descending"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]] == ["d", "a", "c", "e", "b"]
    assert main(["compare", str(tmp_path), "--descending"]) == 2
    assert "--descending: orders by --sort's metric" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), "--json", "--metrics", "fd"]) == 0
    rows = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert [r["metrics"] for r in rows] == [{"fd": 3.0}, {"fd": "nan"}, {"fd": 1.0}, {"fd": "inf"}, {"fd": 0.5}]
    assert main(["compare", str(tmp_path), "--grid", "fd", "--sort", "fd"]) == 2
    assert "--grid: lays out one metric on its own" in capsys.readouterr().err


def test_damaged_files_mark_only_their_run(tmp_path):
    _fake_run(tmp_path, "ok")
    _fake_run(tmp_path, "inf-step", rows=("step,eval/fd", "inf,1", "10,2"))
    _fake_run(tmp_path, "bad-middle", rows=("step,eval/fd", "5,x", "10,2"))
    _fake_run(tmp_path, "partial-last", rows=("step,eval/fd", "5,1", "10,2", "15,1.2e"))
    bad_status = _fake_run(tmp_path, "status-dir")
    (bad_status / "status.json").unlink()
    (bad_status / "status.json").mkdir()
    for name, text in (("status-cut", '{"state": "stop'), ("status-list", "[1]"), ("status-no-state", "{}")):
        (_fake_run(tmp_path, name) / "status.json").write_text(text)
    rows = {r["name"]: r for r in compare.compare(tmp_path)}
    assert rows["ok"]["state"] == "finished" and rows["ok"]["metrics"] == {"fd": 1.5}
    assert rows["inf-step"]["state"] == "unreadable" and "row 1: step 'inf' is not a step number" in rows["inf-step"]["reason"]
    assert rows["bad-middle"]["state"] == "unreadable" and "eval/fd holds 'x'" in rows["bad-middle"]["reason"]
    assert rows["partial-last"]["state"] == "finished" and (rows["partial-last"]["step"], rows["partial-last"]["metrics"]) == (10, {"fd": 2.0})
    assert rows["status-dir"]["state"] == "unreadable"
    for name, why in (("status-cut", "JSONDecodeError"), ("status-list", "ValueError"), ("status-no-state", "ValueError")):
        assert rows[name]["state"] == "unreadable" and f"unreadable status.json ({why}" in rows[name]["reason"], name
    grid = compare.format_grid([rows["status-cut"]], "fd")
    assert "unreadable" in grid and "1.5" not in grid  # not shown as if it had finished


def test_foreign_metrics_and_rows_past_the_header_are_named(tmp_path):
    """A metrics.csv without a step column (another program's file) read as a run that logged nothing at step 0, and
    a row with more fields than the header (which the trainer refuses on resume) was read without a word."""
    _fake_run(tmp_path, "json", rows=('{"fd": 1.5}',))
    _fake_run(tmp_path, "semicolons", rows=("step;eval/fd", "10;1.5"))
    _fake_run(tmp_path, "extra", rows=("step,eval/fd", "5,1,9", "10,2"))
    _fake_run(tmp_path, "extra-last", rows=("step,eval/fd", "5,1", "10,2,9"))
    rows = {r["name"]: r for r in compare.compare(tmp_path)}
    for name, header in (("json", '{"fd": 1.5}'), ("semicolons", "step;eval/fd")):
        assert rows[name]["state"] == "unreadable", rows[name]
        assert rows[name]["reason"] == (f"{tmp_path / name / 'metrics.csv'}: not a fastgan metrics log (its header, "
                                        f"{header!r}, has no step column)")
    assert rows["extra"]["state"] == "unreadable"
    assert rows["extra"]["reason"].endswith("metrics.csv: row 1: it has 3 fields, the header 2")
    # a last row is left out with a warning, as any damaged last row
    assert (rows["extra-last"]["state"], rows["extra-last"]["step"], rows["extra-last"]["metrics"]) == \
        ("finished", 5, {"fd": 1.0})
    assert "row 2: it has 3 fields, the header 2" in rows["extra-last"]["warning"]


def test_grid_layout_duplicates_and_unfinished_runs(tmp_path):
    _fake_run(tmp_path / "old", "t-a-x", rows=("step,eval/fd", "10,9"))
    _fake_run(tmp_path / "new", "t-a-x", rows=("step,eval/fd", "10,1"))
    (tmp_path / "new" / "t-a-x").rename(tmp_path / "new" / "t-a-x-2")  # later stamp, as the trainer names folders
    (tmp_path / "old" / "t-a-x").rename(tmp_path / "old" / "t-a-x-1")
    _fake_run(tmp_path / "new", "t-a-y", state="running", rows=("step,eval/fd", "4,5"), step=6)
    _fake_run(tmp_path / "new", "solo")
    grid = compare.format_grid(compare.compare([tmp_path / "old", tmp_path / "new"]), "fd").splitlines()
    assert grid[1].split() == ["-", "x", "y"]  # in the order the folders sort; a name without '-' in "-"
    assert grid[2].split() == ["solo", "1.5"]
    assert grid[3].split() == ["t-a", "1", "ended@6"]  # the latest t-a-x; t-a-y's process is gone
    assert grid[-1] == f"(older runs of the same name not shown: {tmp_path / 'old' / 't-a-x-1'})"


def test_grid_takes_the_tenth_run_of_one_second_as_the_latest(tmp_path):
    """The trainer names runs started in one second <stamp>, <stamp>-2, .., <stamp>-10: in text order -10 came
    before -2, and the grid showed -2's value as the latest."""
    for suffix, fd in (("", 7), ("-2", 8), ("-10", 9)):
        _fake_run(tmp_path, "t-a", rows=("step,eval/fd", f"10,{fd}"))
        (tmp_path / "t-a").rename(tmp_path / f"t-a-20261206-120000{suffix}")
    grid = compare.format_grid(compare.compare([tmp_path]), "fd").splitlines()
    assert grid[2].split() == ["t", "9"], grid
    assert grid[-1] == (f"(older runs of the same name not shown: {tmp_path / 't-a-20261206-120000'}, "
                        f"{tmp_path / 't-a-20261206-120000-2'})")


def test_grid_shows_the_last_logged_step_of_a_running_or_killed_run(tmp_path):
    """status.json holds the step a session started at until it ends; a run still training, or killed, is as
    far as metrics.csv has logged (the grid showed running@0 for a run at step 400)."""
    _fake_run(tmp_path, "t-a", state="running", rows=("step,eval/fd", "200,5", "400,4"), step=0)
    _fake_run(tmp_path, "t-b", state="stopped", rows=("step,eval/fd", "200,5"), step=250)
    grid = compare.format_grid(compare.compare(tmp_path), "fd").splitlines()
    assert grid[2].split() == ["t", "ended@400", "stopped@250"]


def test_final_evaluation_failure_and_status_write_failure(tmp_path, monkeypatch, capsys):
    def broken(self, step):
        raise RuntimeError("parzen out of memory\nsecond line")

    monkeypatch.setattr(train_mod._Run, "_parzen", broken)
    with pytest.raises(RuntimeError):
        _run(tmp_path, "ev", 2, "run.parzen=true")
    s = _status(tmp_path / "ev")
    assert (s["state"], s["phase"], s["step"], s["last_checkpoint_step"]) == ("failed", "final evaluation", 2, 2)
    r = compare.summarize(tmp_path / "ev")
    assert r["reason"].startswith("trained to the end, then failed in the final evaluation: RuntimeError: parzen")
    assert "second line" not in compare.format_table([r])
    monkeypatch.undo()
    # the end cannot be recorded: the run's own result stands and a warning says so
    from fastgan.methods.step import Method

    orig = Method.train_step

    def block_status(self, t, sample_real):
        if t == 2:
            (tmp_path / "w" / "status.json").unlink()
            (tmp_path / "w" / "status.json").mkdir()
        return orig(self, t, sample_real)

    monkeypatch.setattr(Method, "train_step", block_status)
    assert _run(tmp_path, "w", 2).step == 2
    assert "warning: could not record the run's end (finished)" in capsys.readouterr().err


def test_grid_shows_a_tail_mean_with_its_std(tmp_path):
    _fake_run(tmp_path, "s-a-x", rows=("step,eval/fd_tail_mean,eval/fd_tail_std", "10,26.5,0.6"))
    _fake_run(tmp_path, "s-a-y", rows=("step,eval/fd_tail_mean", "10,7"))
    grid = compare.format_grid(compare.compare(tmp_path), "fd_tail_mean").splitlines()
    assert grid[2].split() == ["s-a", "26.5±0.6", "7"]
    assert compare.format_grid(compare.compare(tmp_path), "fd_tail_std").splitlines()[2].split() == ["s-a", "0.6", "-"]


def test_a_run_given_twice_is_listed_once(tmp_path, monkeypatch):
    """`compare runs/ runs/a` listed a twice, and --grid called it an older run of itself."""
    a, b = _fake_run(tmp_path / "runs", "t-a"), _fake_run(tmp_path / "runs", "t-b")
    monkeypatch.chdir(tmp_path)
    assert compare.find_runs([tmp_path / "runs", a, "runs/t-a", b]) == [a, b]
    grid = compare.format_grid(compare.compare([tmp_path / "runs", a]), "fd")
    assert "older runs" not in grid


def test_a_config_yaml_with_a_field_its_run_did_not_read_is_summarized(study, tmp_path, capsys):
    """Run folders written before model.leaky_slope was refused on a tanh MLP hold it in config.yaml: compare reads
    them as their checkpoints are read (the field at its default), not as unreadable."""
    import shutil

    import yaml

    d = tmp_path / "old"
    shutil.copytree(study / "study-a-x", d)
    data = yaml.safe_load((d / "config.yaml").read_text())
    assert data["model"]["arch"] == "mlp" and data["model"]["mlp_activation"] == "tanh"
    data["model"]["leaky_slope"] = 0.1
    (d / "config.yaml").write_text(yaml.safe_dump(data))
    r = compare.summarize(d)
    assert r["state"] == "finished" and r["steps"] == data["run"]["steps"], r
    assert main(["train", "--print-config", str(d)]) == 0  # read the same way
    data["model"]["latent_dim"] = -1  # invalid, not unread
    (d / "config.yaml").write_text(yaml.safe_dump(data))
    r = compare.summarize(d)
    assert r["state"] == "unreadable" and "model.latent_dim" in r["reason"]
    capsys.readouterr()
    assert main(["train", "--print-config", str(d)]) == 2 and "model.latent_dim" in capsys.readouterr().err


def test_runs_sort_by_their_name_and_folders_list_sorted(tmp_path):
    """compare() sorts by run.name (config.yaml), not by the folder's path; find_runs lists a folder's runs
    sorted."""
    for name, folder in (("b", "1"), ("a", "2"), ("c", "0")):
        _fake_run(tmp_path, name).rename(tmp_path / folder)
    assert [r["name"] for r in compare.compare(tmp_path)] == ["a", "b", "c"]
    assert [p.name for p in compare.find_runs(tmp_path)] == ["0", "1", "2"]


def test_metrics_are_listed_first_ones_first(tmp_path):
    _fake_run(tmp_path, "a", rows=("step,eval/zzz,eval/kl_modes,eval/fd", "10,1,2,3"))
    assert compare.format_table(compare.compare(tmp_path)).splitlines()[0].split() == \
        ["run", "state", "step", "fd", "kl_modes", "zzz"]


def test_a_finished_final_evaluation_keeps_its_reason_and_a_boolean_step_is_no_step(tmp_path):
    _fake_run(tmp_path, "f", phase="final evaluation", reason="done")
    _fake_run(tmp_path, "s", state="stopped", reason="why", step=True)
    rows = {r["name"]: r for r in compare.compare(tmp_path)}
    assert rows["f"]["reason"] == "done"
    assert rows["s"]["at"] is None


def test_table_values_keep_four_significant_digits_and_an_unreadable_run_has_no_steps(tmp_path):
    _fake_run(tmp_path, "a", rows=("step,eval/fd", "10,26.55"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.yaml").write_text("run: [unclosed\n")
    lines = compare.format_table(compare.compare(tmp_path)).splitlines()
    assert lines[1].split() == ["a", "finished", "10/10", "26.55"]
    assert lines[2].split()[:3] == ["b", "unreadable", "0/?"]


def test_a_missing_tail_mean_is_not_shown_with_a_std(tmp_path):
    _fake_run(tmp_path, "s-a-x", rows=("step,eval/fd_tail_mean,eval/fd_tail_std", "10,26.5,0.6"))
    _fake_run(tmp_path, "s-a-y", rows=("step,eval/fd_tail_std", "10,0.7"))
    grid = compare.format_grid(compare.compare(tmp_path), "fd_tail_mean").splitlines()
    assert grid[2].split() == ["s-a", "26.5±0.6", "-"]


def test_grid_shows_the_values_of_a_run_without_status_json(tmp_path):
    """A run from an older fastgan has no status.json (state "unknown"): the grid shows what it logged."""
    (_fake_run(tmp_path, "o-a") / "status.json").unlink()
    grid = compare.format_grid(compare.compare(tmp_path), "fd").splitlines()
    assert grid[2].split() == ["o", "1.5"]


def test_cli_metrics_list_ignores_empty_items(tmp_path, capsys):
    _fake_run(tmp_path, "a", rows=("step,eval/fd,eval/modes", "10,1.5,3"))
    assert main(["compare", str(tmp_path), "--metrics", "fd,,", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["metrics"] == {"fd": 1.5}
    assert main(["compare", str(tmp_path), "--metrics", "fd,modes,fd"]) == 0  # each column once
    assert capsys.readouterr().out.splitlines()[0].split().count("fd") == 1


def test_a_run_in_its_final_evaluation_has_no_dangling_colon(tmp_path):
    """A run still in its final evaluation has no reason yet: until 2026-12-02 its reason ended in ': '."""
    d = _fake_run(tmp_path, "e", state="running", phase="final evaluation")
    fd = run_folder.lock(d)
    try:
        assert compare.summarize(d)["reason"] == "trained to the end, then running in the final evaluation"
    finally:
        run_folder.unlock(fd)


def test_a_status_that_cannot_be_written_at_the_start_stops_the_run(tmp_path):
    """The running record is written before the first step: a run folder where it cannot be (status.json a folder
    here; a full disk) fails then, training nothing, rather than running on unrecorded."""
    from fastgan import checkpoint as ckpt

    d = tmp_path / "r"
    fastgan.train(None, overrides=[*TINY, "run.steps=2", f"run.dir={d}"])
    (d / "status.json").unlink()
    (d / "status.json").mkdir()
    with pytest.raises(OSError):
        fastgan.train(None, overrides=[*TINY, "run.steps=4", f"run.dir={d}"], resume=True)
    assert ckpt.load(d / "checkpoints" / "last.pt")["step"] == 2


def test_a_last_row_that_does_not_parse_is_flagged_unless_a_trainer_is_writing_it(tmp_path, monkeypatch, capsys):
    """A finished or killed run's damaged last row (its final evaluation, perhaps) showed the row before it as the
    run's result, unflagged; a running trainer may be writing it, so only then is it left out silently."""
    rows = ("step,eval/fd", "5,3", "10,1.2e")
    finished = _fake_run(tmp_path, "done", rows=rows)
    _fake_run(tmp_path, "live", state="running", rows=rows)
    monkeypatch.setattr(compare, "lock_held", lambda d: Path(d).name == "live")
    got = {r["name"]: r for r in compare.compare(tmp_path)}
    assert got["live"]["state"] == "running" and got["live"]["warning"] is None
    assert got["done"]["metrics"] == {"fd": 3.0} and got["done"]["warning"] == (
        "metrics.csv's last row is damaged (row 2: eval/fd holds '1.2e', not a number): left out, the values "
        "shown are from the rows before it")
    for text in (compare.format_table(list(got.values())), compare.format_grid(list(got.values()), "fd")):
        assert f"done ({finished}): metrics.csv's last row is damaged" in text and "live (" not in text
    assert main(["compare", str(tmp_path), "--json"]) == 0
    assert [r["warning"] is None for r in json.loads(capsys.readouterr().out)] == [False, True]  # done, live


def test_runs_of_one_name_are_told_apart_by_their_folders(tmp_path):
    for folder, fd in (("a-1", "1"), ("a-2", "2"), ("b-1", "3")):
        d = _fake_run(tmp_path, folder, rows=("step,eval/fd", f"10,{fd}"))
        (d / "config.yaml").write_text(f"run:\n  name: {folder[0]}\n  steps: 10\n")
    lines = compare.format_table(compare.compare(tmp_path)).splitlines()
    assert [ln.split("  ")[0] for ln in lines[1:]] == ["a (a-1)", "a (a-2)", "b"]


def test_a_run_and_its_copy_elsewhere_are_told_apart_by_their_paths(tmp_path):
    for parent, fd in (("a", "1.5"), ("b", "9.5")):
        _fake_run(tmp_path / parent, "mix-1", rows=("step,eval/fd", f"10,{fd}"))
    rows = compare.compare([tmp_path / "a", tmp_path / "b"])
    labels = [ln.split("  ")[0] for ln in compare.format_table(rows).splitlines()[1:]]
    assert labels == [f"mix-1 ({tmp_path / 'a' / 'mix-1'})", f"mix-1 ({tmp_path / 'b' / 'mix-1'})"]


def test_nul_bytes_a_power_cut_left_are_flagged_not_unreadable(tmp_path):
    """csv before Python 3.11 refuses a whole file for a NUL ("line contains NUL"): the lines are left out."""
    d = _fake_run(tmp_path, "cut", rows=("step,eval/fd", "5,3", "10,2"))
    with open(d / "metrics.csv", "a") as f:
        f.write("\0" * 40 + "\n")
    r = compare.summarize(d)
    assert (r["state"], r["step"], r["metrics"]) == ("finished", 10, {"fd": 2.0})
    assert "1 line(s) of NUL bytes" in r["warning"]


def test_a_last_row_without_its_line_end_is_flagged_not_taken(tmp_path):
    """A half-written last row that still parses ("6,1.3" of "6,1.35", no line end) was taken as the run's values,
    unflagged, where a resume leaves it out with a warning."""
    d = _fake_run(tmp_path, "torn", rows=("step,eval/fd", "5,3", "10,2"))
    with open(d / "metrics.csv", "a") as f:
        f.write("12,1.3")
    r = compare.summarize(d)
    assert (r["state"], r["step"], r["metrics"]) == ("finished", 10, {"fd": 2.0})
    assert r["warning"] == ("metrics.csv's last row is damaged (a last row without its line end): left out, the "
                            "values shown are from the rows before it")


def test_undecodable_metrics_csv_is_named(tmp_path):
    """Bytes that are not UTF-8 in metrics.csv: the reason said only "'utf-8' codec can't decode byte 0xff ..."
    (an audit of the CLI, 2026-12-06)."""
    d = _fake_run(tmp_path, "u", rows=("step,eval/fd", "5,3"))
    with open(d / "metrics.csv", "ab") as f:
        f.write(b"\xff\xfe10,2\n")
    r = compare.summarize(d)
    assert r["state"] == "unreadable" and r["reason"].startswith(f"{d / 'metrics.csv'}: not UTF-8 text ("), r


def test_a_sub_folder_that_cannot_be_looked_into_does_not_hide_the_runs(tmp_path, monkeypatch):
    # `compare runs/` with one sub-folder it may not search (another user's run, lost+found) failed as a whole with
    # "[Errno 13] Permission denied: 'runs/lost+found/config.yaml'" (a helper's fuzzing of the commands)
    _fake_run(tmp_path, "ok")
    locked = tmp_path / "lost+found"
    locked.mkdir()
    is_file = Path.is_file

    def denied(self):
        if self.parent == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return is_file(self)
    monkeypatch.setattr(Path, "is_file", denied)
    rows = {r["name"]: r for r in compare.compare(tmp_path)}
    assert rows["ok"]["state"] == "finished"
    assert rows["lost+found"]["state"] == "unreadable" and str(locked) in rows["lost+found"]["reason"]
