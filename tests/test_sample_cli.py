"""`fastgan sample`: samples of a finished run's G into .npz / .png, atomically, and its errors."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import tiny_fashion_mnist  # noqa: F401 (a fixture)

import fastgan
from fastgan.cli import main as cli_main

_RUN = ["run.sample_every=0", "run.checkpoint_every=0", "optim.batch_size=16", "run.progress=off"]


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    return fastgan.train(None, overrides=["run.steps=2", f"run.dir={d / 'run'}", *_RUN])


@pytest.fixture
def run_copy(mixture_run, tmp_path):
    """A copy of the mixture run's folder, for a test that damages it."""
    return Path(shutil.copytree(mixture_run.out_dir, tmp_path / "copy"))


def test_npz_holds_the_generators_samples_and_latents(mixture_run, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert cli_main(["sample", str(mixture_run.out_dir), "--out", str(out), "-n", "300", "--seed", "3"]) == 0
    assert "300 samples of" in capsys.readouterr().out
    with np.load(out) as f:
        x, z = f["x"], f["z"]
    G = mixture_run.generator.eval()
    want_z = G.sample_latent(300, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want_x = G(want_z)
    np.testing.assert_array_equal(z, want_z.numpy())
    np.testing.assert_allclose(x, want_x.numpy(), rtol=1e-6, atol=1e-7)
    assert x.shape == (300, 3)


def test_png_of_points_and_of_images(mixture_run, tmp_path, tiny_fashion_mnist):
    assert cli_main(["sample", str(mixture_run.out_dir), "--out", str(tmp_path / "p.png")]) == 0
    assert Image.open(tmp_path / "p.png").size[0] > 0
    r = fastgan.train(None, overrides=["data.name=fashion_mnist", f"data.path={tiny_fashion_mnist}",
                                       "model.arch=dcgan", "model.dcgan_width=4", "model.latent_dim=8",
                                       "run.steps=1", f"run.dir={tmp_path / 'img'}", "run.num_samples=16", *_RUN[:2],
                                       "optim.batch_size=8", "run.progress=off"])
    assert cli_main(["sample", str(r.out_dir), "--out", str(tmp_path / "sub" / "g.png"), "-n", "16"]) == 0
    img = Image.open(tmp_path / "sub" / "g.png")
    assert img.mode == "L" and img.size == (4 * 30 + 2, 4 * 30 + 2)   # 4x4 grid of 28x28 with 2-pixel padding


def test_errors_leave_an_existing_file(mixture_run, tmp_path, capsys):
    out = tmp_path / "keep.npz"
    out.write_bytes(b"old")
    with pytest.raises(SystemExit) as e:
        cli_main(["sample", str(mixture_run.out_dir), "--out", str(out), "-n", "0"])
    assert e.value.code == 2 and "argument -n: invalid integer in [1, 2**31 - 1] value: '0'" in capsys.readouterr().err
    assert out.read_bytes() == b"old"
    (tmp_path / "d.png").mkdir()
    assert cli_main(["sample", str(mixture_run.out_dir), "--out", str(tmp_path / "d.png")]) == 2
    assert "--out: '" in capsys.readouterr().err  # named, not the temporary file's rename
    assert cli_main(["sample", str(mixture_run.out_dir), "--out", str(tmp_path / "s.jpg")]) == 2
    assert "--out: must end in .png or .npz" in capsys.readouterr().err
    # the suffix is checked before the run is read: a missing run would exit 1 naming the run
    assert cli_main(["sample", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.jpg")]) == 2
    assert "--out: must end in .png or .npz" in capsys.readouterr().err
    assert cli_main(["sample", str(mixture_run.out_dir), "--out", str(out), "--device", "gpu"]) == 2
    assert cli_main(["sample", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    assert "fastgan sample: error: " in capsys.readouterr().err and out.read_bytes() == b"old"
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("suffix", [".png", ".npz"])
def test_a_failed_write_leaves_no_temporary_file(mixture_run, tmp_path, capsys, suffix, monkeypatch):
    """The PNG writer left `x.png.tmp` behind when the rename failed (here: a rename that fails, as onto a folder
    made after --out was checked)."""
    import fastgan._atomic

    def refuse(src, dst):
        raise IsADirectoryError(21, "Is a directory", str(dst))
    monkeypatch.setattr(fastgan._atomic.os, "replace", refuse)
    out = tmp_path / f"s{suffix}"
    assert cli_main(["sample", str(mixture_run.out_dir), "--out", str(out), "-n", "4"]) == 1
    assert "fastgan sample: error: " in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_replacing_keeps_the_old_file_on_failure_and_names_temporaries_apart(tmp_path):
    from fastgan._atomic import replacing

    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with replacing(target) as a, replacing(target) as b:
        assert a != b  # two writers of one target
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("errno_", [13, 2, 30])
def test_a_temporary_file_that_cannot_be_made_is_named_as_the_target(tmp_path, monkeypatch, errno_):
    """An --out in a folder it cannot write (/sys, /proc) failed naming '.x.npz.<pid>-...tmp', a name the user never
    gave (an audit of the CLI, 2026-12-06): the error keeps its errno and type and names the target. On a read-only
    file system (30, EROFS) the clean-up's unlink of the temporary file fails with EROFS too, not ENOENT, and its
    error replaced the one naming the target (an audit, 2026-12-07)."""
    import builtins
    from pathlib import Path

    from fastgan._atomic import replacing

    real_open, real_unlink = builtins.open, Path.unlink

    def refusing(file, *a, **k):
        if str(file).endswith(".tmp"):
            raise OSError(errno_, "refused", str(file))
        return real_open(file, *a, **k)

    def read_only_unlink(self, missing_ok=False):
        if errno_ == 30 and self.name.endswith(".tmp"):
            raise OSError(30, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)
    monkeypatch.setattr(builtins, "open", refusing)
    monkeypatch.setattr(Path, "unlink", read_only_unlink)
    target = tmp_path / "x.npz"
    with pytest.raises(OSError) as info:
        with replacing(target) as tmp, open(tmp, "wb") as f:
            f.write(b"x")
    assert info.value.errno == errno_ and info.value.filename == str(target) and ".tmp" not in str(info.value)
    assert isinstance(info.value, {13: PermissionError, 2: FileNotFoundError, 30: OSError}[errno_])


def test_replacing_a_folder_names_the_folder(tmp_path):
    """A run's status.json replaced by a folder: errno's line named the temporary file ('[Errno 21] Is a directory:
    '.status.json.<pid>-...tmp' -> ...')."""
    from fastgan._atomic import replacing

    (tmp_path / "status.json").mkdir()
    with pytest.raises(IsADirectoryError, match=r"^\[Errno 21\] a folder is where this file is written; move it "
                                                r"away: '.*status\.json'$"):
        with replacing(tmp_path / "status.json") as tmp:
            tmp.write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"] and (tmp_path / "status.json").is_dir()


def test_missing_or_damaged_run_info(run_copy, tmp_path, capsys):
    run = run_copy
    info = json.loads((run / "run_info.json").read_text())
    (run / "run_info.json").write_text(json.dumps({**info, "data_shape": [3, -1]}))
    assert cli_main(["sample", str(run), "--out", str(tmp_path / "x.npz")]) == 1
    assert "run_info.json: unreadable (data_shape [3, -1] is not a list of positive ints)" in capsys.readouterr().err
    # said "('data_shape')" and "list indices must be integers or slices, not str" (an audit of the CLI)
    for content, why in (({k: v for k, v in info.items() if k != "data_shape"}, "it has no data_shape entry"),
                         ([info], "the top level is a JSON list, not an object of entries")):
        (run / "run_info.json").write_text(json.dumps(content))
        assert cli_main(["sample", str(run), "--out", str(tmp_path / "x.npz")]) == 1
        assert f"run_info.json: unreadable ({why})" in capsys.readouterr().err
    (run / "run_info.json").unlink()
    assert cli_main(["sample", str(run), "--out", str(tmp_path / "x.npz")]) == 1
    assert "run_info.json not found" in capsys.readouterr().err


# ------------------------------------------------------------------ fastgan.run_commands (crosstest, eval, sample)

def test_seed_option_takes_what_torch_generator_takes():
    import argparse

    from fastgan.run_commands import _seed, add_device_and_seed

    for seed in (-2 ** 63, 0, 2 ** 64 - 1):
        assert _seed(str(seed)) == seed
        torch.Generator().manual_seed(seed)
    for seed in (-2 ** 63 - 1, 2 ** 64):
        with pytest.raises(ValueError):
            _seed(str(seed))
    p = argparse.ArgumentParser()
    add_device_and_seed(p, "seed")
    assert vars(p.parse_args([])) == {"device": "cpu", "seed": 0}


def test_device_option_errors_name_the_option(monkeypatch):
    from fastgan.config import ConfigError
    from fastgan.run_commands import cli_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_device("cpu") == torch.device("cpu") and cli_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^--device: 'cuda:0' requested but torch sees no CUDA device"):
        cli_device("cuda:0")
    with pytest.raises(ConfigError, match=r"^--device: must be one of \('cpu', 'cuda', 'cuda:N', 'auto'\), got 'tpu'"):
        cli_device("tpu")


def test_strict_json_writes_non_finite_values_as_strings():
    from fastgan.run_commands import strict_json

    obj = {"a": float("nan"), "b": [float("inf"), (1.5, float("-inf"))], "c": {"d": (float("nan"),)}, "e": 2}
    assert json.loads(strict_json(obj)) == {"a": "nan", "b": ["inf", [1.5, "-inf"]], "c": {"d": ["nan"]}, "e": 2}


def test_run_exit_codes_config_2_other_errors_1(capsys):
    from fastgan.config import ConfigError
    from fastgan.run_commands import run

    def raising(e):
        def body():
            raise e
        return body

    assert run("x", lambda: "out") == 0 and capsys.readouterr().out == "out\n"
    assert run("x", raising(ConfigError("--device: bad"))) == 2
    assert capsys.readouterr().err == "fastgan x: error: --device: bad\n"
    for e in (FileNotFoundError("gone"), ValueError("v"), TypeError("t"), RuntimeError("r")):
        assert run("x", raising(e)) == 1
        assert capsys.readouterr().err == f"fastgan x: error: {e}\n"


@pytest.mark.parametrize("command,option", [("sample", "-n"), ("eval", "--samples"), ("crosstest", "--samples")])
def test_an_allocation_that_fails_names_the_commands_size_and_torchs_frames_stay_out(capsys, command, option):
    """-n 10**13 printed torch's raw allocator message, naming no option; an overflow printed ~20 lines of C++
    frames."""
    from fastgan.run_commands import run

    def oom():
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 80000000000000 bytes."
                           "\nframe #0: c10::alloc_cpu")

    assert run(command, oom) == 1
    assert capsys.readouterr().err == (f"fastgan {command}: error: out of memory: could not allocate 72.8 TiB; draw "
                                       f"fewer samples ({option})\n")

    def overflow():
        raise RuntimeError("Overflow when unpacking long long\nException raised from unpack at x.cpp:1\nframe #0: f")

    assert run(command, overflow) == 1
    assert capsys.readouterr().err == f"fastgan {command}: error: Overflow when unpacking long long\n"


@pytest.mark.parametrize("args", [["-n", str(2 ** 31)], ["-n", "0"], ["-n", "99999999999999999999999"]])
def test_n_outside_what_torch_takes_is_refused_by_the_parser(mixture_run, tmp_path, capsys, args):
    with pytest.raises(SystemExit) as e:
        cli_main(["sample", str(mixture_run.out_dir), "--out", str(tmp_path / "x.npz"), *args])
    assert e.value.code == 2 and "argument -n: invalid integer in [1, 2**31 - 1] value" in capsys.readouterr().err


def test_out_names_up_to_255_bytes_are_written_and_longer_ones_refused_first(mixture_run, tmp_path, capsys):
    """The temporary file's name added ~40 bytes to --out's: a name of 215-255 bytes failed after drawing, naming
    the temporary."""
    ok = tmp_path / ("a" * 251 + ".png")
    assert cli_main(["sample", str(mixture_run.out_dir), "--out", str(ok), "-n", "8"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [ok.name]
    capsys.readouterr()
    assert cli_main(["sample", str(mixture_run.out_dir), "--out", str(tmp_path / ("b" * 252 + ".png"))]) == 2
    assert capsys.readouterr().err == "fastgan sample: error: --out: its file name is 256 bytes; a file system " \
                                      "takes 255 at most\n"


def test_temporary_names_fit_a_file_system_and_name_their_writer():
    from fastgan._atomic import _temporary_name, writer_pid

    for name in ("x.png", "é" * 127 + ".png", "a" * 255):
        tmp = _temporary_name(name)
        assert len(tmp.encode()) <= 255 and writer_pid(tmp) == os.getpid(), tmp
        tmp.encode().decode()  # whole characters only


@pytest.mark.parametrize("shape", [[3, 0], [], [1.5], "3"])
def test_run_info_data_shape_must_be_a_list_of_positive_ints(run_copy, tmp_path, capsys, shape):
    run = run_copy
    info = json.loads((run / "run_info.json").read_text())
    (run / "run_info.json").write_text(json.dumps({**info, "data_shape": shape}))
    assert cli_main(["sample", str(run), "--out", str(tmp_path / "x.npz")]) == 1
    assert "run_info.json: unreadable (data_shape" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_a_data_shape_the_checkpoint_does_not_fit_names_run_info_as_its_source(run_copy, tmp_path, capsys):
    # a valid shape, not the run's: the checkpoint's weights refuse it, and the error says where the shape came from
    run = run_copy
    info = json.loads((run / "run_info.json").read_text())
    (run / "run_info.json").write_text(json.dumps({**info, "data_shape": [2]}))
    assert cli_main(["sample", str(run), "--out", str(tmp_path / "x.npz")]) == 1
    err = capsys.readouterr().err
    assert "its G does not fit its config's model for samples of shape (2,) (the data_shape that " in err
    assert f"{run / 'run_info.json'} records)" in err
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("shape", [[1, 28], [1, 2, 3, 4]])
def test_a_data_shape_the_model_cannot_take_names_run_info_as_its_source(run_copy, tmp_path, capsys, shape):
    # a shape no model of the config builds (an MLP given (1, 28)): the error named only "data_shape: expected ..."
    run = run_copy
    info = json.loads((run / "run_info.json").read_text())
    (run / "run_info.json").write_text(json.dumps({**info, "data_shape": shape}))
    assert cli_main(["sample", str(run), "--out", str(tmp_path / "x.npz")]) == 1
    err = capsys.readouterr().err
    assert f"its config's model cannot be built for samples of shape {tuple(shape)} (the data_shape that " in err
    assert f"{run / 'run_info.json'} records)" in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.npz").exists()


def test_an_allocation_that_fails_building_the_models_names_the_shape_not_n(run_copy, tmp_path, capsys,
                                                                              monkeypatch):
    # a data_shape of [10**9] (a hand edit) made the models' weights too large: the advice was "draw fewer samples
    # (-n)" for -n 4
    import fastgan.models

    def oom(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 512000000000 bytes.")

    monkeypatch.setattr(fastgan.models, "build_generator", oom)
    assert cli_main(["sample", str(run_copy), "--out", str(tmp_path / "x.npz"), "-n", "4"]) == 1
    err = capsys.readouterr().err
    assert "out of memory building its config's model for samples of shape (3,) (the data_shape that " in err, err
    assert "could not allocate 477 GiB" in err and "-n" not in err and err.count("\n") == 1, err


def test_run_info_without_data_shape_is_unreadable(run_copy, tmp_path, capsys):
    run = run_copy
    info = json.loads((run / "run_info.json").read_text())
    del info["data_shape"]
    (run / "run_info.json").write_text(json.dumps(info))
    assert cli_main(["sample", str(run), "--out", str(tmp_path / "x.npz")]) == 1
    assert "run_info.json: unreadable (" in capsys.readouterr().err


def test_npz_default_n_into_a_new_folder_and_upper_case_suffix(mixture_run, tmp_path):
    out = tmp_path / "new" / "sub" / "s.npz"   # the folder is made, as for a .png
    assert cli_main(["sample", str(mixture_run.out_dir), "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["x"].shape == (64, 3) and f["z"].shape[0] == 64   # -n defaults to 64
    assert cli_main(["sample", str(mixture_run.out_dir), "--out", str(tmp_path / "S.NPZ"), "-n", "2"]) == 0
    with np.load(tmp_path / "S.NPZ") as f:
        assert f["x"].shape == (2, 3)


def test_samples_come_from_g_in_eval_mode_in_every_chunk(tmp_path):
    """A G with BatchNorm: the samples are those of G.eval() (its running statistics), all n of them, however
    many chunks of 1000 they are drawn in."""
    r = fastgan.train(None, overrides=["run.steps=2", f"run.dir={tmp_path / 'bn'}", "model.g_batchnorm=true", *_RUN])
    out = tmp_path / "s.npz"
    assert cli_main(["sample", str(r.out_dir), "--out", str(out), "-n", "1001", "--seed", "1"]) == 0
    with np.load(out) as f:
        x, z = f["x"], f["z"]
    G = r.generator.eval()
    with torch.no_grad():
        want = G(torch.from_numpy(z))
    assert x.shape == (1001, 3) and z.shape[0] == 1001
    np.testing.assert_allclose(x, want.numpy(), rtol=1e-5, atol=1e-6)


def test_png_of_a_mixture_marks_its_modes(mixture_run, tmp_path):
    """The scatter plot of a mixture run's samples draws the mixture's means as red crosses."""
    out = tmp_path / "p.png"
    assert cli_main(["sample", str(mixture_run.out_dir), "--out", str(out)]) == 0
    colors = {c for _, c in Image.open(out).convert("RGB").getcolors(1 << 20)}
    assert (220, 30, 30) in colors


def test_the_step_reported_is_the_checkpoints(run_copy, tmp_path, capsys):
    run = run_copy
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    state["step"] = 1   # as a run stopped before run.steps saves it
    torch.save(state, path)
    assert cli_main(["sample", str(run), "--out", str(tmp_path / "x.npz"), "-n", "2"]) == 0
    assert "(step 1) written to" in capsys.readouterr().out


def test_draws_keep_no_graph(mixture_run):
    """G's parameters require grad: the samples of `fastgan sample` / `eval` (10000 by default) kept every chunk's
    activations for a backward nobody runs."""
    from fastgan.sample import draw, sample_run

    x, z = draw(mixture_run.generator, 2500, torch.Generator().manual_seed(0), "cpu")
    assert any(p.requires_grad for p in mixture_run.generator.parameters())
    assert x.shape == (2500, 3) and not x.requires_grad and x.grad_fn is None
    assert not sample_run(mixture_run.out_dir, 10)["x"].requires_grad


@pytest.mark.parametrize("suffix", [".png", ".npz"])
def test_an_out_whose_parent_is_a_file_is_refused_before_the_run_is_read(mixture_run, tmp_path, capsys, suffix):
    """mkdir of the parents said "[Errno 17] File exists" after the run was loaded and sampled (an audit)."""
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / f"s{suffix}", tmp_path / "afile" / "sub" / f"s{suffix}"):
        assert cli_main(["sample", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out: '{tmp_path / 'afile'}' is a file, not a folder" in err, err
    assert (tmp_path / "afile").read_text() == "x"
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")  # exists() is False through it: lexists is not
    assert cli_main(["sample", str(tmp_path / "nowhere"), "--out", str(tmp_path / "dangling" / f"s{suffix}")]) == 2
    assert f"--out: '{tmp_path / 'dangling'}' is a dangling symbolic link, not a folder" in capsys.readouterr().err


def test_non_finite_samples_refuse_a_png_and_are_counted_in_an_npz(run_copy, tmp_path, capsys):
    """A G whose eval-mode samples are NaN wrote an all-black grid with exit 0, where crosstest and eval name such a
    run (an audit); an .npz keeps the values as drawn and the line counts them."""
    from fastgan import checkpoint as ckpt

    path = run_copy / "checkpoints" / "last.pt"
    state = ckpt.load(path)
    g = state["method"]["modules"]["G"]
    last_bias = [k for k in g if k.endswith("bias")][-1]
    g[last_bias][0] = float("nan")  # the first coordinate of every sample
    torch.save(state, path)
    png = tmp_path / "s.png"
    assert cli_main(["sample", str(run_copy), "--out", str(png), "-n", "8"]) == 1
    err = capsys.readouterr().err
    assert "made 8 non-finite samples of 8 (eval mode)" in err and str(run_copy) in err and not png.exists()
    assert cli_main(["sample", str(run_copy), "--out", str(tmp_path / "s.npz"), "-n", "8"]) == 0
    assert "(8 of them non-finite)" in capsys.readouterr().out
    with np.load(tmp_path / "s.npz") as f:
        assert np.isnan(f["x"][:, 0]).all() and np.isfinite(f["x"][:, 1:]).all()


@pytest.mark.parametrize("x,bad", [(torch.tensor([[0.0, float("inf"), 1.0], [0.0, 0.0, 0.0]]), 1),
                                   (torch.zeros(2, 1, 4, 4).index_fill_(2, torch.tensor([1]), float("nan")), 2)],
                         ids=["inf_points", "nan_images"])
def test_a_png_of_any_non_finite_sample_is_refused(tmp_path, x, bad):
    from fastgan.sample import write_samples

    with pytest.raises(ValueError, match=rf"the generator of r \(step 3\) made {bad} non-finite samples of 2 "):
        write_samples({"x": x, "z": torch.zeros(2, 2), "config": None, "step": 3, "run": "r"}, tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.complex64])
def test_weights_of_another_dtype_are_refused_as_resume_refuses_them(run_copy, tmp_path, capsys, dtype):
    # load_state_dict casts what it copies: an edited int64 / float64 weight was scored as whole numbers or rounded,
    # a complex one lost its imaginary part behind torch's two-line UserWarning (a helper's fuzzing of the commands)
    path = run_copy / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    G = state["method"]["modules"]["G"]
    key = next(k for k in G if k.endswith("weight"))
    G[key] = G[key].to(dtype)
    torch.save(state, path)
    for args in (["sample", str(run_copy), "--out", str(tmp_path / "x.npz")], ["eval", str(run_copy), "--samples", "20"]):
        assert cli_main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"method.modules.G.{key}: dtype {dtype}" in err, err
    assert not (tmp_path / "x.npz").exists()


def test_a_run_info_nested_past_the_recursion_limit_is_named(run_copy, tmp_path, capsys):
    # json's RecursionError said "maximum recursion depth exceeded while decoding a JSON array ..." naming no file,
    # and eval, which does not need run_info.json, failed on it (a helper's fuzzing of the commands)
    (run_copy / "run_info.json").write_text("[" * 100000 + "]" * 100000)
    assert cli_main(["sample", str(run_copy), "--out", str(tmp_path / "x.npz")]) == 1
    assert "run_info.json: unreadable (" in capsys.readouterr().err
    assert cli_main(["eval", str(run_copy), "--samples", "20"]) == 0
