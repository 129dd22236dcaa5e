"""The trainer and the `fastgan train` command: smoke runs of every method, outputs, resume equivalence,
non-finite losses, and one clear error for bad configs, data and checkpoints."""
import importlib
import json
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastgan
from fastgan import checkpoint as ckpt
from fastgan.checkpoint import CheckpointError
from fastgan.cli import main
from fastgan.logging_utils import read_events
from fastgan.train_resume import RESOLVED_FIELDS
from helpers import require_fashion_mnist

train_mod = importlib.import_module("fastgan.train")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

TINY = ["optim.batch_size=16", "model.g_hidden=[16]", "model.d_hidden=[16,16]", "run.log_every=2",
        "run.sample_every=0", "run.checkpoint_every=0", "run.num_samples=64", "run.progress=off"]


def run(tmp_path, *overrides, steps=3, name="t", resume=False):
    return fastgan.train(None, overrides=[*TINY, f"run.steps={steps}", f"run.dir={tmp_path / name}", *overrides],
                         resume=resume)


@pytest.mark.parametrize("method", ["gan", "roth", "nt", "dfm", "roth+nt+dfm"])
def test_every_method_trains(tmp_path, method):
    r = run(tmp_path, f"method.name={method}")
    assert r.step == 3 and r.out_dir == tmp_path / "t"
    assert {"d_loss", "g_loss"} <= set(r.losses) and all(map(torch.isfinite, map(torch.tensor, r.losses.values())))
    if "roth" in method:
        assert {"gamma", "penalty"} <= set(r.losses)
    if "nt" in method:
        assert "noise_norm" in r.losses and "noise" in r.models
    if "dfm" in method:
        assert "denoiser_loss" in r.losses and "denoiser" in r.models
    out = r.out_dir
    for f in ["config.yaml", "metrics.csv", "run_info.json", "checkpoints/last.pt", "samples/step_0000003.png"]:
        assert (out / f).is_file(), f
    assert fastgan.config.load_config(out / "config.yaml") == r.config
    assert isinstance(r.generator, torch.nn.Module) and r.generator.latent_dim == 2


@pytest.mark.parametrize("overrides", [
    ["method.loss=least_squares", "method.name=nt", "method.nt.noise=learned_sigma"],
    ["method.loss=wgan_gp", "method.name=nt", "method.d_steps=2"],
    ["method.loss=fgan", "method.f_divergence=kl", "method.name=roth", "method.roth.penalty=f"],
    ["method.name=roth", "method.roth.penalty=r1", "method.roth.schedule=anneal"],
    ["method.name=nt", "method.nt.batch=half", "model.spectral_norm=true", "method.g_loss=saturating"],
    ["method.name=nt", "method.nt.noise=fixed", "method.nt.sigma_anneal=linear", "method.nt.clean=false"],
], ids=["ls-nt-sigma", "wgangp-nt-k2", "fgan-kl", "r1-anneal", "half-sn-sat", "noise-only-annealed"])
def test_method_variants_train(tmp_path, overrides):
    r = run(tmp_path, *overrides)
    assert r.step == 3 and "d_loss" in r.losses


def test_outputs_logs_and_annealing(tmp_path):
    r = run(tmp_path, "method.roth.schedule=anneal", steps=4, name="a")
    cfg = r.config
    assert cfg.method.roth.anneal_steps == 4  # resolved into the saved config
    rows = (r.out_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"step", "d_loss", "g_loss", "gamma", "penalty", "steps_per_s", "eval/modes",
            "eval/high_quality"} <= set(header)
    gammas = {int(row.split(",")[0]): float(row.split(",")[header.index("gamma")])
              for row in rows[1:] if row.split(",")[header.index("gamma")]}
    assert gammas[2] == pytest.approx(2.0 * 0.01 ** (2 / 4), rel=1e-5)
    assert gammas[4] == pytest.approx(0.02, rel=1e-5)
    events = [e for f in (r.out_dir / "tb").iterdir() for e in read_events(f)]
    assert events[0]["file_version"] == "brain.Event:2"
    tb_gamma = {e["step"]: e["scalars"]["gamma"] for e in events if "gamma" in e["scalars"]}
    assert tb_gamma[4] == pytest.approx(0.02, rel=1e-5)
    assert any("eval/modes" in e["scalars"] for e in events)
    assert set(r.metrics) == {"eval/modes", "eval/high_quality", "eval/kl_modes"}


def test_crc32c_test_vector():
    from fastgan.logging_utils import crc32c

    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def _same_state(a: dict, b: dict) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_state(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def _assert_resumed_as_straight(full, resumed) -> dict:
    """The resumed run's last checkpoint equals the straight run's bit for bit (every model, optimizer and RNG
    state) and so do their logged losses; returns the straight run's checkpoint."""
    a, b = (ckpt.load(r.out_dir / "checkpoints/last.pt") for r in (full, resumed))
    _same_state(a["method"], b["method"])
    _same_state(a["rng"], b["rng"])
    assert resumed.losses == full.losses
    return a


def test_resume_10_plus_10_equals_20(tmp_path):
    common = ["method.name=roth+nt+dfm", "method.nt.noise=generator", "method.roth.schedule=anneal",
              "method.roth.anneal_steps=20", "model.d_batchnorm=true", "run.checkpoint_every=4"]
    full = run(tmp_path, *common, steps=20, name="full")
    half = run(tmp_path, *common, steps=10, name="half")
    assert ckpt.load(half.out_dir / "checkpoints/last.pt")["step"] == 10
    resumed = run(tmp_path, *common, steps=20, name="half", resume=True)
    assert resumed.step == 20 and resumed.out_dir == half.out_dir
    _assert_resumed_as_straight(full, resumed)
    steps = [int(r.split(",")[0]) for r in (half.out_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and steps.count(10) == 2  # loss row + eval row at 10, none duplicated


@pytest.mark.parametrize("fused", [True, False])
def test_the_shipped_dfm_dcgan_resumes_bit_for_bit(tmp_path, tiny_fashion_mnist, fused):
    """configs/dfm-fmnist.yaml (a BatchNorm DCGAN, simultaneous Adam updates of G, D and the denoiser) shrunk: 3
    steps and a resume to 6 equal 6 straight steps in every module, optimizer (the denoiser's Adam included), RNG
    and logged loss (the test above is an MLP's; an audit checked this by hand)."""
    common = [f"data.path={tiny_fashion_mnist}", "model.dcgan_width=2", "model.latent_dim=8", "optim.batch_size=8",
              "run.fd=false", "run.sample_every=0", "run.log_every=1", "run.checkpoint_every=2", "run.progress=off",
              f"method.dfm.fused={str(fused).lower()}"]

    def go(name, steps, resume=False):
        return fastgan.train(CONFIG_DIR / "dfm-fmnist.yaml", resume=resume,
                             overrides=[*common, f"run.steps={steps}", f"run.dir={tmp_path / name}"])

    full = go("full", 6)
    go("half", 3)
    resumed = go("half", 6, resume=True)
    assert resumed.step == 6 and "denoiser" in _assert_resumed_as_straight(full, resumed)["method"]["modules"]


def test_lazy_regularization_logs_the_latest_penalty_and_resumes(tmp_path):
    """method.roth.every=3: every logged row has the latest penalty (rows 1-3 the one of iteration 1), and a run
    resumed mid-cycle regularizes the same iterations as an uninterrupted one."""
    common = ["method.name=roth", "method.roth.every=3", "model.d_batchnorm=true", "run.log_every=1",
              "run.checkpoint_every=4"]
    full = run(tmp_path, *common, steps=7, name="full")
    rows = (full.out_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    pen = {int(r.split(",")[0]): r.split(",")[header.index("penalty")] for r in rows[1:]
           if r.split(",")[header.index("d_loss")]}
    assert sorted(pen) == list(range(1, 8)) and all(pen.values())
    assert pen[1] == pen[2] == pen[3] != pen[4] == pen[5] == pen[6] != pen[7]
    run(tmp_path, *common, steps=4, name="half")
    resumed = run(tmp_path, *common, steps=7, name="half", resume=True)
    _same_state(ckpt.load(full.out_dir / "checkpoints/last.pt")["method"],
                ckpt.load(resumed.out_dir / "checkpoints/last.pt")["method"])
    rows = (resumed.out_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    again = {int(r.split(",")[0]): r.split(",")[header.index("penalty")] for r in rows[1:]
             if r.split(",")[header.index("d_loss")]}
    assert again == pen, "the resumed run logs the same penalties, the latest one from the checkpoint included"


def test_lazy_checkpoint_without_the_latest_penalty_resumes_with_a_warning(tmp_path):
    # checkpoints of lazy runs written on 2026-11-30 hold no "penalty_seen": the resume trains as before, and says
    # that the logged penalty reads 0 until the next regularized iteration
    common = ["method.name=roth", "method.roth.every=3", "run.log_every=1", "run.checkpoint_every=4"]
    old = run(tmp_path, *common, steps=4, name="old")
    path = old.out_dir / "checkpoints/last.pt"
    state = ckpt.load(path)
    del state["method"]["penalty_seen"]
    ckpt.save(path, state)
    with pytest.warns(UserWarning, match=r"holds no latest penalty .* reads 0 until the next regularized iteration "
                                         r"\(method\.roth\.every=3\)"):
        resumed = run(tmp_path, *common, steps=6, name="old", resume=True)
    assert resumed.step == 6


def test_a_stored_parzen_test_of_one_is_read_as_two(tmp_path):
    # run.parzen_test=1 with run.parzen was accepted until 2026-12-02: such a run's checkpoint and config.yaml must
    # stay readable by every command (it refused them all, as an "invalid config"), and a resume can still --set it
    from fastgan.sample import sample_run

    r = run(tmp_path, "run.parzen=false", steps=2, name="old")
    path = r.out_dir / "checkpoints/last.pt"
    state = ckpt.load(path)
    state["config"]["run"].update(parzen=True, parzen_test=1, parzen_samples=64, parzen_validation=16)
    ckpt.save(path, state)
    cfg_yaml = r.out_dir / "config.yaml"
    cfg_yaml.write_text(cfg_yaml.read_text().replace("parzen: false", "parzen: true").replace(
        "parzen_test: 10000", "parzen_test: 1"))
    with pytest.warns(UserWarning, match=r"run\.parzen_test=1 \(accepted by fastgan before 2026-12-02\) is read as 2"):
        assert sample_run(r.out_dir, 4)["x"].shape == (4, 3)
    with pytest.warns(UserWarning, match=r"run\.parzen_test=1"):
        resumed = run(tmp_path, "run.parzen=true", "run.parzen_test=8", "run.parzen_samples=64",
                      "run.parzen_validation=16", steps=3, name="old", resume=True)
    assert resumed.step == 3 and "parzen_test: 8" in cfg_yaml.read_text()


def test_resume_finds_the_latest_run_by_name(tmp_path):
    base = [*TINY, "run.steps=2", f"run.out_dir={tmp_path}", "run.name=rn"]
    first = fastgan.train(None, overrides=base)
    assert first.out_dir.parent == tmp_path and first.out_dir.name.startswith("rn-")
    again = fastgan.train(None, overrides=[*base[:-2], "run.steps=4", f"run.out_dir={tmp_path}", "run.name=rn"],
                          resume=True)
    assert again.out_dir == first.out_dir and again.step == 4
    # the run folder itself can be given instead of a config
    third = fastgan.train(first.out_dir, overrides=["run.steps=5"], resume=True)
    assert third.out_dir == first.out_dir and third.step == 5
    with pytest.raises(FileNotFoundError, match="no run named 'other'"):
        fastgan.train(None, overrides=[*TINY, f"run.out_dir={tmp_path}", "run.name=other"], resume=True)
    with pytest.raises(FileNotFoundError, match="^--resume: no run folder or config file .*rn-typo$"):
        fastgan.train(tmp_path / "rn-typo", overrides=["run.steps=5"], resume=True)
    with pytest.raises(FileNotFoundError, match=r"^config file not found: .*typo.yaml \(a shipped config goes by its "
                                                r"name.*`fastgan configs` lists them\)$"):
        fastgan.train(tmp_path / "typo.yaml", overrides=["run.steps=5"], resume=True)


def test_resume_with_a_different_config_is_an_error(tmp_path):
    run(tmp_path, "method.roth.gamma=0.1", steps=2)
    ck = tmp_path / "t" / "checkpoints" / "last.pt"
    before = ck.read_bytes()
    # a config error (the CLI's exit code 2) that existing `except CheckpointError` code still catches
    with pytest.raises(CheckpointError, match=r"^method\.roth\.gamma: checkpoint 0\.1, config 0\.5") as e:
        run(tmp_path, "method.roth.gamma=0.5", steps=4, resume=True)
    assert isinstance(e.value, fastgan.config.ConfigError)
    assert ck.read_bytes() == before


def test_corrupt_checkpoint_is_an_error_not_a_restart(tmp_path):
    run(tmp_path, steps=2)
    ck = tmp_path / "t" / "checkpoints" / "last.pt"
    ck.write_bytes(ck.read_bytes()[:100])
    csv_before = (tmp_path / "t" / "metrics.csv").read_text()
    with pytest.raises(CheckpointError, match=r"corrupt"):
        run(tmp_path, steps=4, resume=True)
    assert (tmp_path / "t" / "metrics.csv").read_text() == csv_before


def test_existing_run_folder_is_not_overwritten(tmp_path):
    run(tmp_path, steps=2)
    with pytest.raises(FileExistsError, match=r"already holds a run .*pass --resume \(resume=True in fastgan\.train\)"):
        run(tmp_path, steps=2)
    # the folder itself as the config: both spellings of resuming are named, the CLI's and the API's
    with pytest.raises(fastgan.config.ConfigError, match=r"is a run folder; pass --resume \(resume=True in fastgan\.train\) to "):
        fastgan.train(tmp_path / "t")


def _nan_g_loss(monkeypatch, at=None):
    """Training steps report g_loss as NaN (at step `at` only, or at every step)."""
    from fastgan.methods.step import Method

    orig = Method.train_step

    def poisoned(self, t, sample_real):
        stats = orig(self, t, sample_real)
        if at is None or t == at:
            stats["g_loss"] = torch.tensor(float("nan"))
        return stats

    monkeypatch.setattr(Method, "train_step", poisoned)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    _nan_g_loss(monkeypatch, at=7)
    with pytest.raises(train_mod.NonFiniteLossError, match=r"g_loss is nan at step 7.*last good checkpoint.*step 4"):
        run(tmp_path, "run.checkpoint_every=4", steps=10)
    assert ckpt.load(tmp_path / "t" / "checkpoints" / "last.pt")["step"] == 4


def test_diverging_run_reports_the_loss(tmp_path):
    with pytest.raises(train_mod.NonFiniteLossError, match=r"(d_loss|g_loss|penalty) is (nan|inf|-inf) at step \d+"):
        run(tmp_path, "optim.optimizer=sgd", "optim.lr_d=1e30", "optim.lr_g=1e30", "model.mlp_activation=relu",
            steps=20)


def test_progress_bar_is_quiet_when_not_a_terminal(tmp_path, capsys):
    fastgan.train(None, overrides=[*TINY[:-1], "run.steps=2", f"run.dir={tmp_path / 'p'}"])
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------ shipped configs

CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def _write_idx(path: Path, n: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    path.write_bytes(bytes([0, 0, 8, 3]) + np.array([n, 28, 28], dtype=">u4").tobytes() + pixels.tobytes())


@pytest.fixture(scope="module")
def tiny_fashion_mnist(tmp_path_factory):
    d = tmp_path_factory.mktemp("fmnist")
    _write_idx(d / "train-images-idx3-ubyte", 48, 0)
    _write_idx(d / "t10k-images-idx3-ubyte", 24, 1)
    return d


@pytest.fixture(scope="module")
def tiny_image_folder(tmp_path_factory):
    """12 RGB images of 20x24 pixels (the configs' data.image_size resizes and crops them)."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(d / f"im{i:02d}.png")
    return d


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_trains(path, tmp_path, tiny_fashion_mnist, tiny_image_folder):
    cfg = fastgan.config.load_config(path)
    shrink = ["run.steps=2", f"run.dir={tmp_path / 'run'}", "run.log_every=1", "run.sample_every=0",
              "run.checkpoint_every=0", "run.num_samples=16", "optim.batch_size=8", "run.progress=off"]
    if cfg.data.name == "fashion_mnist":
        shrink.append(f"data.path={tiny_fashion_mnist}")
    if cfg.data.name == "image_folder":  # the shipped path is a placeholder for the user's folder
        shrink.append(f"data.path={tiny_image_folder}")
    if cfg.model.arch == "resnet":  # at the config's own 64x64
        shrink += ["model.resnet_width=2", "model.latent_dim=8"]
    if cfg.model.arch == "dcgan":
        shrink += ["model.dcgan_width=4", "model.latent_dim=8"]
        if cfg.model.dcgan_g_filters is not None:
            shrink.append(f"model.dcgan_g_filters=[{', '.join(['4'] * len(cfg.model.dcgan_g_filters))}]")
    if cfg.model.arch == "goodfellow":
        shrink += ["model.g_hidden=[16,16]", "model.d_hidden=[8,8]", "model.latent_dim=8"]
    if cfg.run.parzen:
        shrink += ["run.parzen_samples=20", "run.parzen_validation=8", "run.parzen_test=16", "data.holdout=8"]
    if cfg.run.fd:
        shrink += ["run.fd_samples=20"]
    r = fastgan.train(path, overrides=shrink)
    assert r.step == 2
    changed = {k for k, _, _ in fastgan.config.diff(cfg, r.config)}
    assert changed <= {o.split("=")[0] for o in shrink} | set(RESOLVED_FIELDS)
    assert (r.out_dir / "samples" / "step_0000002.png").exists()
    if cfg.run.parzen:
        assert math.isfinite(r.metrics["eval/parzen_ll"]) and r.metrics["eval/parzen_sigma"] > 0
    if cfg.run.fd:
        assert r.metrics["eval/fd"] > 0 and r.metrics["eval/tail_evaluations"] == 1.0


@pytest.mark.cuda
@pytest.mark.parametrize("graph", ["false", "true"])
@pytest.mark.parametrize("name", ["ntgan-fmnist-table4-b-ntgan", "ntgan-fmnist-table4-f-gp"])
def test_table4_options_train_on_cuda(name, graph, tmp_path, tiny_fashion_mnist):
    """Table 4's tanh networks (b) and constant G filters with Roth's penalty on a BatchNorm D (f) on a GPU, eager
    and as a CUDA graph: finite losses, the run recorded as finished."""
    path = CONFIG_DIR / "ntgan-table4" / f"{name}.yaml"
    r = fastgan.train(path, overrides=[
        "run.steps=6", f"run.dir={tmp_path / 'run'}", "run.log_every=1", "run.sample_every=0", "run.checkpoint_every=0",
        "run.num_samples=16", "optim.batch_size=8", "run.progress=off", f"data.path={tiny_fashion_mnist}",
        "model.dcgan_width=4", "model.latent_dim=8", "run.fd_samples=20", "run.device=cuda",
        f"run.cuda_graph={graph}", *(["model.dcgan_g_filters=[4,4,4]"] if name.endswith("-f-gp") else [])])
    assert r.step == 6 and all(math.isfinite(v) for v in r.losses.values())
    assert json.loads((r.out_dir / "status.json").read_text())["state"] == "finished"


def _parzen_run(tmp_path, data_path, *extra):
    return ["data.name=fashion_mnist", f"data.path={data_path}", "model.arch=goodfellow", "model.g_hidden=[16,16]",
            "model.d_hidden=[8,8]", "model.latent_dim=8", "run.steps=1", f"run.dir={tmp_path / 'run'}",
            "run.sample_every=0", "run.checkpoint_every=0", "optim.batch_size=8", "run.progress=off", "run.parzen=true",
            "run.parzen_samples=20", "run.parzen_validation=6", "run.parzen_test=16", *extra]


def test_parzen_sigma_is_chosen_on_held_out_samples(tmp_path, tiny_fashion_mnist, monkeypatch):
    import fastgan.metrics

    seen = {}

    def spy(samples, validation, test, *a, **k):
        seen.update(validation=validation, test=test)
        return {"log_likelihood": 0.0, "stderr": 0.0, "sigma": 0.1}

    monkeypatch.setattr(fastgan.metrics, "parzen_score", spy)
    r = fastgan.train(None, overrides=_parzen_run(tmp_path, tiny_fashion_mnist, "data.holdout=10"))
    pixels = np.fromfile(tiny_fashion_mnist / "train-images-idx3-ubyte", np.uint8, offset=16).reshape(48, 1, 28, 28)
    want = torch.from_numpy(pixels[38:44].astype(np.float32) / 255)  # the first 6 of the 10 held out
    torch.testing.assert_close(seen["validation"], want, rtol=0, atol=1e-6)
    assert seen["test"].shape == (16, 1, 28, 28) and r.metrics["eval/parzen_sigma"] == 0.1


@pytest.mark.parametrize("holdout", [0, 5])
def test_parzen_on_images_without_enough_held_out_samples_is_refused(tmp_path, tiny_fashion_mnist, holdout):
    with pytest.raises(fastgan.config.ConfigError, match=rf"data\.holdout >= run\.parzen_validation=6, got "
                                                        rf"data\.holdout={holdout}"):
        fastgan.train(None, overrides=_parzen_run(tmp_path, tiny_fashion_mnist, f"data.holdout={holdout}"))
    assert not (tmp_path / "run").exists()


def test_parzen_on_a_folder_without_its_test_file_fails_before_the_run_folder_is_made(tmp_path, tiny_fashion_mnist):
    """The test split was first read in the final evaluation: hours of training (the shipped Goodfellow config) and
    then the error (an audit's case, 2026-12-06)."""
    data = tmp_path / "no-test"
    data.mkdir()
    shutil.copy(tiny_fashion_mnist / "train-images-idx3-ubyte", data)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        fastgan.train(None, overrides=_parzen_run(tmp_path, data, "data.holdout=10"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split", ["all", "test"])
def test_parzen_on_images_trained_on_the_test_split_is_refused(tmp_path, tiny_fashion_mnist, split):
    """The log-likelihood is of the test split: with data.split=all or test, G trained on those samples."""
    with pytest.raises(fastgan.config.ConfigError, match=rf"run\.parzen: .*data\.split={split!r} trains on it"):
        fastgan.train(None, overrides=_parzen_run(tmp_path, tiny_fashion_mnist, "data.holdout=10",
                                                  f"data.split={split}"))
    assert not (tmp_path / "run").exists()


def dcgan_roth(data_path, batchnorm: bool, mode: str) -> list:
    """Overrides of a tiny Roth run with the DCGAN D on the tiny Fashion-MNIST (no samples, no checkpoints)."""
    return ["method.name=roth", f"method.roth.mode={mode}", "data.name=fashion_mnist", f"data.path={data_path}",
            "model.arch=dcgan", "model.dcgan_width=4", "model.latent_dim=8",
            f"model.d_batchnorm={str(batchnorm).lower()}", "run.sample_every=0", "run.checkpoint_every=0",
            "run.num_samples=16", "optim.batch_size=8", "run.progress=off"]


@pytest.mark.parametrize("batchnorm,mode,ran", [(False, "auto", "mlp"), (True, "mlp", "mlp"), (True, "auto", "mlp"),
                                               (True, "double_backward", "double_backward")])
def test_dcgan_discriminator_penalty_modes(tmp_path, tiny_fashion_mnist, batchnorm, mode, ran):
    """The DCGAN D runs the penalty's closed form in the trainer, with BatchNorm's batch statistics too; on CPU
    "auto" picks it for both."""
    from fastgan.ops import _dispatch

    before = _dispatch.counts[("gradient_penalty", ran)]
    r = fastgan.train(None, overrides=[*dcgan_roth(tiny_fashion_mnist, batchnorm, mode), "run.steps=2",
                                       f"run.dir={tmp_path / 'run'}", "run.log_every=1"])
    assert r.step == 2 and math.isfinite(r.losses["penalty"]) and r.losses["penalty"] > 0
    assert _dispatch.counts[("gradient_penalty", ran)] == before + 4  # real and fake terms, two D updates
    assert r.penalty_modes == (ran,)


@pytest.mark.parametrize("mode,ran", [("auto", "double_backward"), ("jvp", "jvp"),
                                      ("double_backward", "double_backward")])
def test_resnet_discriminator_penalty_modes(tmp_path, tiny_image_folder, mode, ran):
    """The ResNet D (residual shortcuts: no closed form) in the trainer: "auto" takes the double backward on CPU,
    "jvp" runs through its BatchNorm and resamplings; mode "mlp" is refused by the config (tests/test_config.py)."""
    from fastgan.ops import _dispatch

    before = _dispatch.counts[("gradient_penalty", ran)]
    r = fastgan.train(None, overrides=[
        "method.name=roth", f"method.roth.mode={mode}", "data.name=image_folder", f"data.path={tiny_image_folder}",
        "data.image_size=16", "model.arch=resnet", "model.resnet_width=2", "model.latent_dim=8", "run.steps=2",
        f"run.dir={tmp_path / 'run'}", "run.log_every=1", "run.sample_every=0", "run.checkpoint_every=0",
        "run.num_samples=16", "optim.batch_size=8", "run.progress=off"])
    assert r.step == 2 and math.isfinite(r.losses["penalty"]) and r.losses["penalty"] > 0
    assert _dispatch.counts[("gradient_penalty", ran)] == before + 4  # real and fake terms, two D updates
    assert r.penalty_modes == (ran,)


# ------------------------------------------------------------------------------------------ CLI

def test_cli_default_job(tmp_path, capsys):
    rc = main(["train", "--set", *TINY, "run.steps=3", f"run.out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0 and "3 steps done" in out and "modes" in out and "penalty gradients: double_backward" in out
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("roth-mixture-") and (run_dir / "samples" / "step_0000003.png").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--set", "method.loss=hinge"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastgan train: error: method.loss: must be one of") and "Traceback" not in err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 1
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", "--set", "data.name=fashion_mnist", f"data.path={tmp_path / 'nodata'}",
                 f"run.out_dir={tmp_path / 'runs'}"]) == 1
    err = capsys.readouterr().err
    assert "nodata" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing written for a bad data set


def test_cli_resume_and_corrupt_checkpoint(tmp_path, capsys):
    args = ["train", "--set", *TINY, "run.steps=2", f"run.dir={tmp_path / 'r'}"]
    assert main(args) == 0
    (tmp_path / "r" / "checkpoints" / "last.pt").write_bytes(b"garbage")
    capsys.readouterr()
    assert main([*args, "--resume"]) == 1
    assert "corrupt" in capsys.readouterr().err


def test_cli_print_config(capsys):
    assert main(["train", "--print-config", "--set", "method.name=nt"]) == 0
    assert "name: nt" in capsys.readouterr().out


def test_cli_print_config_with_resume_shows_the_checkpoint_config(tmp_path, capsys):
    import yaml

    run(tmp_path, "method.roth.gamma=0.3", "run.name=pc", steps=2, name="pc-20250101-120000")
    printed = lambda *a: (main(["train", "--print-config", "--resume", *a]), capsys.readouterr())  # noqa: E731
    capsys.readouterr()
    same = ["--set", *TINY, "method.roth.gamma=0.3", f"run.out_dir={tmp_path}", "run.name=pc"]  # the run's config
    for args in ([str(tmp_path / "pc-20250101-120000")], same):
        code, out = printed(*args, "--set", "run.steps=5")
        cfg = yaml.safe_load(out.out)
        assert code == 0 and cfg["method"]["roth"]["gamma"] == 0.3 and cfg["run"]["steps"] == 5
        assert cfg["optim"]["batch_size"] == 16 and cfg["run"]["dir"] == (str(tmp_path / "pc-20250101-120000")
                                                                           if args is not same else None)
    code, out = printed(str(tmp_path / "pc-20250101-120000"), "--set", "method.roth.gamma=0.9")
    assert code == 2 and "method.roth.gamma: checkpoint 0.3, config 0.9" in out.err
    code, out = printed(*same[:-1], "run.name=other")
    assert code == 1 and "no run named 'other'" in out.err


def test_cuda_device_index_past_the_visible_devices_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert train_mod._device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(fastgan.config.ConfigError, match=r"run\.device: 'cuda:2' requested but torch sees 2 CUDA "
                                                         r"device\(s\), cuda:0 to cuda:1"):
        train_mod._device("cuda:2")


def test_python_dash_m_entry_point(tmp_path):
    p = subprocess.run([sys.executable, "-m", "fastgan", "train", "--set", "run.steps=0"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and p.stderr.strip() == "fastgan train: error: run.steps: must be >= 1, got 0"


def test_corrupt_data_file_is_one_clear_error(tmp_path, capsys):
    d = tmp_path / "fm"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + b"\x00\x00\x00\x05")  # truncated header
    rc = main(["train", "--set", "data.name=fashion_mnist", f"data.path={d}", "model.arch=dcgan",
               f"run.out_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert rc == 1 and "train-images-idx3-ubyte" in err and "truncated" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ edge cases of bad input

def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fastgan", "train", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=180, check=False)


def _snapshot(d: Path) -> dict:
    return {p.relative_to(d): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


def test_python_api_bad_override_items_are_config_errors(tmp_path):
    with pytest.raises(fastgan.config.ConfigError, match=r"each item must be a 'key=value' string.*got None"):
        fastgan.train(None, overrides=[None])
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    for overrides in (None, ["run.steps=1"]):
        with pytest.raises(fastgan.config.ConfigError, match=r"list\.yaml: the top level must be a mapping"):
            fastgan.train(bad, overrides=overrides)


def test_resume_past_run_steps_trains_nothing_and_writes_nothing(tmp_path):
    run(tmp_path, "run.sample_every=1", steps=3)
    before = _snapshot(tmp_path / "t")
    for steps in (3, 2):
        r = run(tmp_path, steps=steps, resume=True)
        assert r.step == 3 and r.start_step == 3 and r.losses == {} and r.out_dir == tmp_path / "t"
        assert isinstance(r.generator, torch.nn.Module)
    assert _snapshot(tmp_path / "t") == before
    p = _cli("--set", *TINY, "run.steps=2", f"run.dir={tmp_path / 't'}", "--resume", cwd=tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    ck = tmp_path / "t" / "checkpoints" / "last.pt"
    assert p.stdout == (f"fastgan train: nothing to train: checkpoint {ck} is already at step 3 >= run.steps=2 "
                        f"(raise run.steps to continue); nothing written in {tmp_path / 't'}\n")
    assert _snapshot(tmp_path / "t") == before


def test_cli_resume_with_a_changed_field_is_a_config_error(tmp_path):
    run(tmp_path, "method.roth.gamma=0.1", steps=2)
    before = _snapshot(tmp_path / "t")
    p = _cli("--set", *TINY, "method.roth.gamma=0.5", "run.steps=4", f"run.dir={tmp_path / 't'}", "--resume",
             cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("fastgan train: error: method.roth.gamma: checkpoint 0.1, config 0.5"), p.stderr
    assert str(tmp_path / "t" / "checkpoints" / "last.pt") in p.stderr
    assert _snapshot(tmp_path / "t") == before


def test_cli_tensor_too_large_is_one_line(tmp_path):
    # 2**60 rows: the size overflows before anything is allocated, so the test cannot exhaust the machine
    p = _cli("--set", *TINY, "optim.batch_size=1152921504606846976", "run.steps=1", f"run.out_dir={tmp_path}",
             cwd=tmp_path)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("fastgan train: error: out of memory") and "optim.batch_size" in p.stderr, p.stderr


@pytest.mark.parametrize("error,why", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 8796093022208 bytes. Error code 12 (Cannot allocate memory)\nframe #0: x"),
     "could not allocate 8 TiB"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB"),
     "could not allocate 2.00 GiB"),
    (MemoryError(), "MemoryError"),
])
def test_cli_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch, error, why):
    from fastgan.methods.step import Method

    def oom(self, t, sample_real):
        raise error

    monkeypatch.setattr(Method, "train_step", oom)
    assert main(["train", "--set", *TINY, "run.steps=2", f"run.out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastgan train: error: out of memory") and err.count("\n") == 1, err
    assert why in err and "optim.batch_size" in err, err


@pytest.mark.parametrize("metric,fields", [
    ("parzen", "run.parzen_test or run.parzen_samples or run.parzen_validation"),
    ("fd", "run.fd_samples")])
def test_an_evaluation_out_of_memory_names_its_own_sizes(tmp_path, capsys, monkeypatch, metric, fields):
    """run.parzen_test=10**11 failed after training with "lower optim.batch_size, run.num_samples or the model's
    sizes", none of which it was."""
    import fastgan.metrics as metrics

    def oom(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 800000000000 bytes.")

    if metric == "fd":
        monkeypatch.setattr(metrics, "fmnist_scores", oom)
        require_fashion_mnist()
        data = ["data.name=fashion_mnist", "model.arch=mlp", "run.fd=true", "run.fd_samples=20"]
    else:
        monkeypatch.setattr(metrics, "parzen_score", oom)
        data = ["run.parzen=true"]
    assert main(["train", "--set", *TINY, *data, "run.steps=2", f"run.out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err == f"fastgan train: error: out of memory: could not allocate 745 GiB; lower {fields}\n", err


def test_cli_does_not_swallow_unrelated_runtime_errors(tmp_path, monkeypatch):
    from fastgan.methods.step import Method

    def broken(self, t, sample_real):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(Method, "train_step", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["train", "--set", *TINY, "run.steps=2", f"run.out_dir={tmp_path}"])


def _points_npz(path):
    import numpy as np

    np.savez(path, x=np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32))
    return path


@pytest.mark.parametrize("overrides,message", [
    (["method.name=dfm", "model.denoiser_hidden=1"],
     r"^model\.denoiser_hidden: the DFM denoiser needs a width >= the discriminator's feature width 16 .*got 1$"),
    (["model.arch=dcgan", "model.g_hidden=null", "model.d_hidden=null", "data.name=npz", "data.path={npz}"],
     r"^model\.arch: 'dcgan' needs an image data set, data\.name='npz' \(data\.path='.*pts\.npz'\) holds points"),
    (["data.name=fashion_mnist", "data.path={fm}/train-images-idx3-ubyte", "run.parzen=true"],
     r"^run\.parzen: needs a test split, .* data\.path='.*train-images-idx3-ubyte' is a single file"),
    (["model.arch=dcgan", "model.g_hidden=null", "model.d_hidden=null", "model.dcgan_width=4",
      "model.dcgan_g_filters=[4,4,4,4]", "data.name=fashion_mnist", "data.path={fm}"],
     r"^model\.dcgan_g_filters: a 28x28 image needs 3 channel counts \(the FC layer's, then 2 upsamplings'\), "
     r"got \[4, 4, 4, 4\]$"),
], ids=["denoiser-hidden", "dcgan-points-npz", "parzen-single-file", "dcgan-g-filters-length"])
def test_config_errors_found_at_start_up_write_nothing(tmp_path, capsys, tiny_fashion_mnist, overrides, message):
    """What depends on the loaded data is checked before the run folder exists: a config error (exit 2), naming
    the fields, not a data error (exit 1) or a failure mid-training."""
    npz = _points_npz(tmp_path / "pts.npz")
    overrides = [o.format(npz=npz, fm=tiny_fashion_mnist) for o in overrides]
    with pytest.raises(fastgan.config.ConfigError, match=message):
        run(tmp_path, *overrides, name="cfg")
    assert not (tmp_path / "cfg").exists()
    assert main(["train", "--set", *TINY, "run.steps=2", f"run.dir={tmp_path / 'cli'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "cli").exists()


def test_cli_info_into_a_closed_pipe_is_quiet():
    p = subprocess.Popen([sys.executable, "-m", "fastgan", "info", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before anything is written, as with `| head -1` on a longer report
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert err == "" and p.returncode in (0, 1)


def test_masked_crc_is_tfrecords():
    """TFRecord framing masks the CRC-32C: ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32); TensorBoard drops
    records whose masked CRC differs. read_events checks with the same function, so it cannot catch a wrong mask."""
    from fastgan.logging_utils import _masked_crc

    assert _masked_crc(b"") == 0xA282EAD8                  # crc32c of nothing is 0
    assert _masked_crc(b"123456789") == 0xC78AB0E5         # crc32c 0xE3069283, rotated right by 15, plus the delta


def test_image_grid_places_and_quantizes_each_image(tmp_path):
    from fastgan.logging_utils import save_image_grid

    values = [-1.0, 1.0, 0.0, 0.5, -0.5]   # 5 images: a grid of 3 columns and 2 rows
    x = torch.tensor(values).reshape(5, 1, 1, 1).expand(5, 1, 2, 2)
    img = np.asarray(Image.open(save_image_grid(x, tmp_path / "g.png")))
    assert img.shape == (2 * 4 + 2, 3 * 4 + 2)
    for i, want in enumerate([0, 255, 128, 191, 64]):   # (v + 1) * 127.5, rounded
        r, k = divmod(i, 3)
        assert (img[2 + 4 * r:4 + 4 * r, 2 + 4 * k:4 + 4 * k] == want).all(), i
    assert (img[6:8, 10:12] == 255).all()   # the sixth place is empty (white)


def test_tensorboard_resume_marks_a_session_start_even_at_step_0(tmp_path):
    """A resumed run's event file starts with SessionLog(status=START) at the step after the resume step, which makes
    TensorBoard drop the earlier session's steps from there on (it keeps those below a START's step: the checkpoint's
    own stays, as in metrics.csv); nothing is written for an empty set of scalars."""
    from fastgan.logging_utils import TensorBoardWriter, _fields

    for step in (0, 7):
        w = TensorBoardWriter(tmp_path / str(step), resume_step=step)
        w.scalars(step + 1, {})
        w.close()
        events = read_events(w.path)
        assert len(events) == 2 and events[0]["file_version"] == "brain.Event:2"
        assert events[1]["step"] == step + 1 and events[1]["session_log"] == {1: 1}   # status (field 1) START = 1
        # checked apart from read_events, which shares the writer's field numbers: tensorflow.Event's session_log is
        # field 7 (6 is the deprecated log_message, which TensorBoard ignores: until 2026-12-07 it purged nothing)
        data = w.path.read_bytes()
        first = 16 + int.from_bytes(data[:8], "little")   # TFRecord framing: length, its CRC, body, the body's CRC
        body = data[first + 12:-4]
        assert [(num, wire, v) for num, wire, v in _fields(body) if num > 2] == [(7, 2, b"\x08\x01")]
    w = TensorBoardWriter(tmp_path / "fresh")
    w.close()
    assert len(read_events(w.path)) == 1


def test_read_events_names_a_record_cut_short(tmp_path):
    """A killed writer's file ends inside a record: read_events raised struct's "unpack requires a buffer of 4
    bytes", naming neither the file nor the cause."""
    from fastgan.logging_utils import TensorBoardWriter

    w = TensorBoardWriter(tmp_path)
    w.scalars(1, {"loss": 1.0})
    w.close()
    data = w.path.read_bytes()
    first = 16 + int.from_bytes(data[:8], "little")
    for cut in (len(data) - 3, first + 5):
        w.path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"{re.escape(str(w.path))}: the record at byte {first} is cut short"):
            read_events(w.path)


def test_tensorboard_drops_the_earlier_sessions_steps_past_the_checkpoint(tmp_path):
    """TensorBoard's own reader (where installed) on a run killed at step 20 with its checkpoint at 10 and resumed
    from there: steps 1..10 of the first session, then the second's; not the first's 11..20 beside them."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fastgan.logging_utils import TensorBoardWriter

    w = TensorBoardWriter(tmp_path)
    for s in range(1, 21):
        w.scalars(s, {"loss": float(s)})
    w.close()
    w2 = TensorBoardWriter(tmp_path, resume_step=10)
    assert sorted(tmp_path.iterdir())[-1] == w2.path   # read after the first session's file
    for s in range(11, 16):
        w2.scalars(s, {"loss": 100.0 + s})
    w2.close()
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("loss")] == \
        [(s, float(s)) for s in range(1, 11)] + [(s, 100.0 + s) for s in range(11, 16)]


def _start_of_training(tmp_path, seed, name):
    """G's weights and a draw of torch's, Python's and NumPy's global generators when step 1 begins."""
    from fastgan.methods.step import Method

    seen = {}
    orig = Method.train_step

    def spy(self, t, sample_real):
        if t == 1:
            seen.update(G={k: v.clone() for k, v in self.modules["G"].state_dict().items()},
                        torch=torch.rand(1).item(), python=random.random(), numpy=float(np.random.rand()))
        return orig(self, t, sample_real)

    Method.train_step = spy
    try:
        run(tmp_path, f"run.seed={seed}", steps=1, name=name)
    finally:
        Method.train_step = orig
    return seen


def test_run_seed_seeds_the_models_and_the_global_generators(tmp_path):
    a, b, c = (_start_of_training(tmp_path, seed, name) for seed, name in ((1, "a"), (1, "b"), (2, "c")))
    for key in ("torch", "python", "numpy"):
        assert a[key] == b[key] != c[key], key
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])
    assert not all(torch.equal(a["G"][k], c["G"][k]) for k in a["G"])


def test_samples_are_drawn_every_sample_every_steps_and_at_the_last(tmp_path):
    r = run(tmp_path, "run.sample_every=2", steps=5)
    assert sorted(p.name for p in (r.out_dir / "samples").iterdir()) == [
        "step_0000002.png", "step_0000004.png", "step_0000005.png"]
    rows = (r.out_dir / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("eval/modes")
    assert [int(x.split(",")[0]) for x in rows[1:] if x.split(",")[col]] == [2, 4, 5]


def test_samples_that_cannot_be_written_keep_the_steps_in_the_checkpoint(tmp_path):
    """Samples are written before the checkpoint of their step: a file where the samples folder goes failed the run
    with a bare errno line and lost the steps since the last checkpoint (up to 1000 with the defaults)."""
    run(tmp_path, "run.checkpoint_every=2", steps=3)
    out = tmp_path / "t"
    for p in (out / "samples").iterdir():
        p.unlink()
    (out / "samples").rmdir()
    (out / "samples").write_text("x")
    with pytest.raises(OSError, match=rf"^\[Errno 17\] writing the samples of step 5 in {re.escape(str(out))}/samples: "
                                      r"File exists; checkpoint .*last\.pt holds step 5$"):
        run(tmp_path, "run.checkpoint_every=2", steps=5, resume=True)
    assert ckpt.load(out / "checkpoints" / "last.pt")["step"] == 5
    assert json.loads((out / "status.json").read_text())["state"] == "failed"


def test_the_finite_monitor_names_the_first_bad_step_of_those_it_kept():
    finite, bad = {"d_loss": torch.tensor(1.0)}, {"d_loss": torch.tensor(float("nan"))}
    m = train_mod._FiniteMonitor(every_step=False)
    for step, stats in ((1, finite), (2, bad), (3, bad), (4, finite)):
        m.update(step, stats)
    with pytest.raises(train_mod.NonFiniteLossError, match=r"^d_loss is nan at step 2$"):
        m.check()
    graphed = train_mod._FiniteMonitor(every_step=False, latest_only=True)  # only the latest step's tensors
    graphed.update(1, bad)
    graphed.update(2, finite)
    graphed.check()
    graphed.update(3, bad)
    with pytest.raises(train_mod.NonFiniteLossError, match=r"by step 3 \(checked at log steps under run\.cuda_graph\)"):
        graphed.check()


def test_a_non_finite_loss_after_a_resume_names_the_checkpoint_it_resumed(tmp_path, monkeypatch):
    run(tmp_path, steps=2)
    _nan_g_loss(monkeypatch, at=3)
    with pytest.raises(train_mod.NonFiniteLossError, match=r"g_loss is nan at step 3.*last good checkpoint.*step 2\)"):
        run(tmp_path, steps=4, resume=True)
    assert json.loads((tmp_path / "t" / "status.json").read_text())["last_checkpoint_step"] == 2


def test_run_tensorboard_false_writes_no_event_files(tmp_path):
    r = run(tmp_path, "run.tensorboard=false")
    assert (r.out_dir / "metrics.csv").is_file() and not (r.out_dir / "tb").exists()


def test_cli_non_finite_loss_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    _nan_g_loss(monkeypatch)
    assert main(["train", "--set", *TINY, "run.steps=2", f"run.dir={tmp_path / 'r'}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastgan train: error: training stopped: g_loss is nan at step 1") and err.count("\n") == 1


@pytest.mark.parametrize("n,text", [(1024, "1 KiB"), (1536, "1.5 KiB"), (10 ** 12, "931 GiB"),
                                    (2 ** 60, "1 EiB")])
def test_cli_sizes_are_binary_units(n, text):
    from fastgan.train_cli import _size

    assert _size(n) == text


def test_cli_out_of_memory_without_a_size_is_still_one_line():
    from fastgan.train_cli import _out_of_memory

    e = RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported")
    assert _out_of_memory(e) == "CUDA error: out of memory"
    e = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8796093022208 bytes.")
    assert _out_of_memory(e) == "could not allocate 8 TiB"
    assert _out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def test_a_resume_keeps_the_resolved_anneal_steps_and_refuses_another(tmp_path):
    """method.roth.anneal_steps=null is resolved to run.steps at the run's start: a resume with more steps (the
    field left null) keeps that T, and an explicit other value is a config change, refused."""
    run(tmp_path, "method.roth.schedule=anneal", steps=2)
    r = run(tmp_path, "method.roth.schedule=anneal", steps=3, resume=True)
    assert r.step == 3 and r.config.method.roth.anneal_steps == 2
    with pytest.raises(fastgan.checkpoint.CheckpointMismatchError,
                       match=r"^method\.roth\.anneal_steps: checkpoint 2, config 4"):
        run(tmp_path, "method.roth.schedule=anneal", "method.roth.anneal_steps=4", steps=4, resume=True)


def test_cli_a_config_swallowed_by_set_is_the_config_only_when_none_was_given(tmp_path, capsys):
    import yaml

    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text("run:\n  name: one\n")
    two.write_text("run:\n  name: two\n")
    assert main(["train", "--print-config", "--set", "run.steps=7", str(two)]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["run"]["name"], cfg["run"]["steps"]) == ("two", 7)
    assert main(["train", str(one), "--print-config", "--set", str(two)]) == 2  # not silently two.yaml's run
    assert "expected key=value" in capsys.readouterr().err
    # a mistyped config after --set: its error is the missing file, not a malformed override
    assert main(["train", "--print-config", "--set", "run.steps=7", str(tmp_path / "tow.yaml")]) == 1
    assert "config file not found" in capsys.readouterr().err
    # a shipped config's name is taken there too; a mistyped one is an override, its error naming where configs go
    assert main(["train", "--print-config", "--set", "run.steps=7", "roth-mixture-gamma-fixed-5d"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["run"]["name"], cfg["run"]["steps"]) == ("roth-mixture-gamma-fixed-5d", 7)
    assert main(["train", "--print-config", "--set", "run.steps=7", "roth-mixture-gamma-fixd-5d"]) == 2
    assert "shipped config's name from `fastgan configs`, goes before --set" in capsys.readouterr().err


def test_fields_left_null_are_resolved_into_the_saved_config(tmp_path):
    r = run(tmp_path, "method.name=nt+dfm", "method.nt.noise=fixed", "method.nt.sigma_anneal=linear", steps=3)
    info = json.loads((r.out_dir / "run_info.json").read_text())
    assert r.config.method.nt.anneal_steps == 3
    assert r.config.method.dfm.lambda_denoise == pytest.approx(0.03 / info["feature_dim"], rel=1e-12)
    assert info["lambda_denoise"] == pytest.approx(r.config.method.dfm.lambda_denoise, rel=1e-12)
    assert fastgan.config.load_config(r.out_dir / "config.yaml") == r.config


def test_a_state_dict_error_is_cut_to_its_first_problem():
    lin = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError) as missing:
        lin.load_state_dict({})
    cut = train_mod._first_problem(missing.value)
    assert cut.startswith('Error(s) in loading state_dict for Linear: Missing key(s) in state_dict: "weight"')
    assert "bias" not in cut and "\n" not in cut
    with pytest.raises(RuntimeError) as size:
        lin.load_state_dict({"weight": torch.zeros(5, 5), "bias": torch.zeros(2)})
    assert train_mod._first_problem(size.value) == (
        "Error(s) in loading state_dict for Linear: size mismatch for weight: copying a param with shape "
        "torch.Size([5, 5]) from checkpoint, the shape in current model is torch.Size([2, 3])")
    assert train_mod._first_problem(ValueError("one line only.")) == "one line only."
    assert train_mod._first_problem(KeyError()) == "KeyError"


def test_a_state_dict_error_with_more_keys_ends_in_an_ellipsis():
    """Until 2026-12-02 the ", ..." saying more keys follow was stripped again, leaving '"weight", '."""
    with pytest.raises(RuntimeError) as missing:
        torch.nn.Linear(3, 2).load_state_dict({})
    assert train_mod._first_problem(missing.value).endswith('Missing key(s) in state_dict: "weight", ...')


def test_the_last_step_is_logged_off_the_log_every_cadence(tmp_path):
    r = run(tmp_path, "run.log_every=2", steps=5)
    rows = (r.out_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = {int(x.split(",")[0]): x.split(",") for x in rows[1:] if x.split(",")[header.index("d_loss")]}
    assert sorted(logged) == [2, 4, 5]
    assert float(logged[5][header.index("d_loss")]) == pytest.approx(r.losses["d_loss"], rel=1e-5)


def test_cli_sizes_just_under_the_next_unit_are_plain_numbers():
    from fastgan.train_cli import _size

    # until 2026-12-02 ".3g" wrote them "1e+03 KiB"
    assert (_size(1023), _size(1000 * 1024), _size(1048051712)) == ("1023 B", "1000 KiB", "1000 MiB")


def test_run_num_samples_null_draws_2560_points_for_a_mixture(tmp_path, monkeypatch):
    import fastgan.metrics

    seen, orig = [], fastgan.metrics.mode_metrics

    def spy(x, *a, **k):
        seen.append(x.shape[0])
        return orig(x, *a, **k)

    monkeypatch.setattr(fastgan.metrics, "mode_metrics", spy)
    run(tmp_path, "run.num_samples=null", steps=1)
    assert seen == [2560]


def test_cli_print_config_of_a_run_folder_applies_the_overrides(tmp_path, capsys):
    import yaml

    run(tmp_path, "method.roth.gamma=0.3", steps=2)
    capsys.readouterr()
    assert main(["train", "--print-config", str(tmp_path / "t"), "--set", "run.steps=9"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["method"]["roth"]["gamma"] == 0.3 and cfg["run"]["steps"] == 9


def test_cli_print_config_of_a_folder_that_is_no_run_says_so_as_training_it_does(tmp_path, capsys):
    """`--print-config DIR` for a folder without a run's config.yaml: `fastgan train DIR`'s config error (exit 2),
    where it said "config file not found: DIR/config.yaml" (exit 1), naming a file the user never gave."""
    (tmp_path / "d").mkdir()
    for args in ([str(tmp_path / "d")], ["--print-config", str(tmp_path / "d")]):
        assert main(["train", *args]) == 2
        err = capsys.readouterr().err
        assert "is a folder, not a YAML config" in err and "config.yaml" in err and err.count("\n") == 1, err


def test_cli_summary_line_names_the_losses_and_the_metrics_short(tmp_path, capsys):
    import re

    assert main(["train", "--set", *TINY, "run.steps=2", f"run.dir={tmp_path / 'r'}"]) == 0
    out = capsys.readouterr().out
    m = re.fullmatch(r"fastgan train: 2 steps done \((.*)\); output in (.*)\n", out)
    assert m and m.group(2) == str(tmp_path / "r"), out
    losses, metrics = m.group(1).split("; ")[:2]
    assert [p.split()[0] for p in losses.split(", ")] == ["d_loss", "g_loss"]  # losses only: no gamma, penalty
    assert [p.split()[0] for p in metrics.split(", ")] == ["modes", "high_quality", "kl_modes"]


def test_the_goodfellow_config_trains_past_where_it_diverged(tmp_path):
    """At full size on Fashion-MNIST with lr_d = 0.1 D's logits reached ~1e10 and G's loss NaN by step ~300
    (seeds 0 and 1, 2026-12-03); at the shipped lr_d (the authors' halved D objective, as a halved rate) it trains
    on (seeds 0-2 to 3000 steps then)."""
    require_fashion_mnist()
    path = CONFIG_DIR / "goodfellow-mlp-fmnist.yaml"
    r = fastgan.train(path, overrides=["run.steps=400", f"run.dir={tmp_path / 'run'}", "run.log_every=400",
                                       "run.sample_every=0", "run.checkpoint_every=0", "run.parzen=false",
                                       "run.progress=off", "run.tensorboard=false"])
    assert r.step == 400 and all(math.isfinite(v) and abs(v) < 20 for v in r.losses.values()), r.losses


def test_resume_takes_a_model_field_given_as_its_architectures_default(tmp_path):
    """The checkpoint's config leaves model.latent_dim to the architecture (null, 2 for the MLP): giving 2 on resume
    is the same run (it was refused: "checkpoint None, config 2"); another value is a change, refused."""
    run(tmp_path, steps=2)
    assert fastgan.config.load_config(tmp_path / "t" / "config.yaml").model.latent_dim is None
    assert run(tmp_path, "model.latent_dim=2", steps=3, resume=True).step == 3
    with pytest.raises(fastgan.config.ConfigError, match=r"model\.latent_dim: checkpoint None, config 3"):
        run(tmp_path, "model.latent_dim=3", steps=4, resume=True)


def test_two_runs_in_two_threads_each_build_from_their_own_seed(tmp_path, monkeypatch):
    """train seeds the global generators and builds the models from them: two runs started together in two threads
    raced there (one's G built from the other's seed: 5 of 12 concurrent runs ended with other weights than alone,
    an audit of threads, 2026-12-07). Here the first run waits, between its seed and its G, for the other to reach
    its G too (up to 2 s): the setups run one at a time, so it never does, and each run equals itself alone."""
    import threading

    alone = {s: run(tmp_path, f"run.seed={s}", "run.threads=1", name=f"alone{s}").generator.state_dict()
             for s in (1, 2)}
    models = importlib.import_module("fastgan.models")
    real, first_at_g, second_at_g = models.build_generator, threading.Event(), threading.Event()

    def build_generator(*a, **k):
        if threading.current_thread().name == "first":
            first_at_g.set()
            second_at_g.wait(timeout=2)  # the other run's seed lands here unless the setups are serialised
        else:
            second_at_g.set()
        return real(*a, **k)

    monkeypatch.setattr(models, "build_generator", build_generator)
    out = {}

    def one(seed):
        out[seed] = run(tmp_path, f"run.seed={seed}", "run.threads=1", name=f"both{seed}").generator.state_dict()

    first = threading.Thread(target=one, args=(1,), name="first")
    first.start()
    assert first_at_g.wait(timeout=60)
    second = threading.Thread(target=one, args=(2,), name="second")
    second.start()
    first.join(), second.join()
    for s in (1, 2):
        assert out[s].keys() == alone[s].keys()
        assert all(torch.equal(out[s][k], alone[s][k]) for k in alone[s]), s
