"""`fastgan train` given what a hostile but realistic user types: each bad value is one line and exit 2, before any
run folder is made; a --set of a string field takes the text as typed."""
import pytest
import yaml

from fastgan.cli import main

TINY = ["optim.batch_size=8", "model.g_hidden=[8]", "model.d_hidden=[8]", "run.steps=2", "run.sample_every=0",
        "run.checkpoint_every=0", "run.progress=off", "run.tensorboard=false"]


@pytest.mark.parametrize("overrides,field", [
    (["optim.beta1=1"], "optim.beta1"), (["optim.beta2=1.0"], "optim.beta2"),
    (["method.roth.mode=mlp", "model.arch=goodfellow"], "method.roth.mode"),
    (["method.name=nt+dfm", "method.nt.batch=half", "optim.batch_size=3"], "optim.batch_size"),
    (["method.loss=least_squares", "method.name=gan", "method.g_loss=saturating"], "method.g_loss"),
])
def test_config_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, overrides, field):
    run_dir = tmp_path / "run"
    assert main(["train", "--set", *TINY, f"run.dir={run_dir}", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastgan train: error: {field}: ") and err.count("\n") == 1, err
    assert not run_dir.exists()


def test_cli_reports_the_penalty_of_r1(tmp_path, capsys):
    assert main(["train", "--set", *TINY, f"run.dir={tmp_path / 'run'}", "method.roth.penalty=r1"]) == 0
    assert "penalty gradients: double_backward" in capsys.readouterr().out


@pytest.mark.parametrize("item,key,value", [
    ("run.name=2024", "name", "2024"), ("run.name=0x10", "name", "0x10"), ("run.name=1.50", "name", "1.50"),
    ("run.out_dir=123", "out_dir", "123"), ("run.dir=true", "dir", "true"), ("run.dir=null", "dir", None),
    ("run.name='quoted 1'", "name", "quoted 1"), ("run.steps=0x10", "steps", 16)])
def test_set_of_a_string_field_keeps_the_text(capsys, item, key, value):
    assert main(["train", "--print-config", "--set", item]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["run"][key] == value


def test_set_of_a_number_for_a_number_field_still_checks_it(capsys):
    assert main(["train", "--print-config", "--set", "run.steps=ten"]) == 2
    assert "run.steps: must be an integer, got 'ten'" in capsys.readouterr().err


@pytest.mark.parametrize("item", [".run.steps=3", "run..steps=3", "run.=3", "run.steps.=3"])
def test_set_with_an_empty_name_between_dots(capsys, item):
    assert main(["train", "--print-config", "--set", item]) == 2
    assert "a key is dot-separated field names, e.g. run.steps; this one has an empty name" in capsys.readouterr().err


# ------------------------------------------------------------------ fastgan.cli's own behaviour


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2 and "required: command" in capsys.readouterr().err


@pytest.mark.parametrize("argv,arg", [(["eval", ""], "run"), (["sample", " ", "--out", "x.png"], "run"),
                                      (["crosstest", "runs/a", ""], "run_b"), (["compare", "runs", ""], "paths"),
                                      (["compare", "--grid", "", "runs"], "--grid")])
def test_an_empty_path_or_metric_is_a_usage_error(capsys, argv, arg):
    """A shell variable left unset: an empty run folder was read as the current folder (eval, sample, compare ran on
    whatever run the shell stood in), an empty --grid printed the whole table (a fuzz audit, 2026-12-07)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and f"argument {arg}: invalid non-empty" in capsys.readouterr().err


def test_a_closed_pipe_is_exit_1_without_a_traceback():
    """`fastgan info --json | head -0`: the reader is gone before anything is written; the flush in main meets the
    broken pipe (exit 1, nothing on stderr) rather than Python's flush at exit ("Exception ignored", exit 120)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a buffered stdout, as by default
    p = subprocess.Popen([sys.executable, "-m", "fastgan", "info", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # before the child (importing torch) writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 1 and err == "", err


@pytest.mark.parametrize("stdout", ["/dev/full", "closed", "read-only"])
def test_a_stdout_that_cannot_be_written_is_one_line(stdout):
    """`fastgan info > /dev/full` (a full disk) printed an OSError traceback, and with stdout closed (`>&-`, where
    sys.stdout is None) every command, a finished `fastgan train` too, ended in an AttributeError traceback, exit 1."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    argv = [sys.executable, "-m", "fastgan", "info"]
    if stdout == "closed":
        p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=120,
                           preexec_fn=lambda: os.close(1))
        assert p.returncode == 0 and p.stderr.decode() == "", p.stderr.decode()
        return
    with open("/dev/full" if stdout == "/dev/full" else os.devnull, "w" if stdout == "/dev/full" else "r") as f:
        p = subprocess.run(argv, stdout=f, stderr=subprocess.PIPE, env=env, timeout=120)
    err = p.stderr.decode()
    assert p.returncode == 1 and err.startswith("fastgan info: error: cannot write to standard output: "), err
    assert err.count("\n") == 1, err


def test_ctrl_c_while_the_commands_load_is_one_line(monkeypatch, capsys):
    """A SIGINT in the second or two the sub-commands' modules take to import printed a traceback."""
    from fastgan import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["info"]) == 130
    assert capsys.readouterr().err == "fastgan: interrupted\n"


def test_the_installed_package_lists_and_runs_the_shipped_configs_by_name(tmp_path):
    """`pip install .` (CI's, not editable) ships configs/ as fastgan.configs: from a folder that holds no configs/,
    `fastgan configs` lists every one and `fastgan train NAME` reads it, and a config swallowed by --set is still
    taken as the config."""
    import subprocess
    import sys
    from pathlib import Path

    repo = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))

    def fastgan(*args):
        r = subprocess.run([sys.executable, "-m", "fastgan", *args], capture_output=True, text=True, cwd=tmp_path,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout

    paths = [Path(p) for p in fastgan("configs", "--path").splitlines()]
    assert sorted(p.stem for p in paths) == repo and all(p.is_file() for p in paths)
    listed = fastgan("configs").splitlines()
    assert any(line.startswith("ntgan-2d-gaussian ") and "NTGAN appendix 6.1" in line for line in listed)
    assert listed[-1].startswith(f"{len(repo)} configs in ")
    for args in (["roth-mixture-gamma-fixed-5d", "--print-config"],
                 ["--print-config", "--set", "run.steps=3", "configs/roth-mixture-gamma-fixed-5d.yaml"]):
        cfg = yaml.safe_load(fastgan("train", *args))
        assert cfg["run"]["name"] == "roth-mixture-gamma-fixed-5d" and cfg["method"]["d_steps"] == 5
