"""run.fd: the Fréchet distance and classifier score logged while training on Fashion-MNIST, NTGAN's
last-five summary, resume, the config errors; `fastgan eval` on finished runs."""
import csv
import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_train import tiny_fashion_mnist  # noqa: F401 (a fixture)

import fastgan
from fastgan import evaluate as _evaluate
from fastgan.cli import main as cli_main
from fastgan.config import ConfigError
from fastgan.metrics import fmnist_scores, load_fmnist_classifier, real_stats


def _fd_run(tmp_path, data_path, *extra, name="run"):
    return ["data.name=fashion_mnist", f"data.path={data_path}", "model.arch=dcgan", "model.dcgan_width=4",
            "model.latent_dim=8", f"run.dir={tmp_path / name}", "run.sample_every=0", "run.checkpoint_every=0",
            "run.num_samples=16", "optim.batch_size=8", "run.progress=off", "run.fd=true", "run.fd_samples=20",
            *extra]


def _csv_column(run_dir, key):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def test_fd_is_logged_and_summarised_at_the_end(tmp_path, tiny_fashion_mnist):
    r = fastgan.train(None, overrides=_fd_run(tmp_path, tiny_fashion_mnist, "run.steps=20", "run.fd_every=4"))
    fd = _csv_column(r.out_dir, "eval/fd")
    assert [s for s, _ in fd] == [4, 8, 12, 16, 20]
    # the last 10% of 20 steps holds one evaluation, step 20's
    assert r.metrics["eval/tail_evaluations"] == 1.0 and r.metrics["eval/fd_tail_std"] == 0.0
    assert r.metrics["eval/fd_tail_mean"] == pytest.approx(fd[-1][1], rel=1e-5)
    # the last value, recomputed from the trained G: the trainer's latents (seed + 15485863), G in eval mode,
    # the first 20 test images
    G = r.generator.eval()
    z = G.sample_latent(20, generator=torch.Generator().manual_seed(15485863))
    with torch.no_grad():
        x = G(z)
    test = fastgan.data.load_test_split(r.config.data, "cpu", 20)
    want = fmnist_scores(x, test)
    assert fd[-1][1] == pytest.approx(want["fd"], rel=1e-5)
    assert r.metrics["eval/fd"] == pytest.approx(want["fd"], rel=1e-6)
    assert r.metrics["eval/classifier_score"] == pytest.approx(want["score"], rel=1e-6)


def test_tail_takes_the_last_five_evaluations_in_the_last_tenth():
    """_fd_tail on metrics.csv rows as the logger keeps them (strings, rows of other values in between)."""
    logged = {}
    rows = [{"step": str(s), "eval/fd": str(float(s)), "eval/classifier_score": str(s / 10)} for s in range(85, 101)]
    rows.insert(3, {"step": "88", "d_loss": "0.5", "eval/fd": "", "eval/classifier_score": ""})
    run = SimpleNamespace(csv=SimpleNamespace(rows=rows), cfg=SimpleNamespace(run=SimpleNamespace(steps=100)),
                          _log=lambda step, values: logged.update(values))
    out = sys.modules["fastgan.train"]._Run._fd_tail(run, 100)
    assert out["eval/tail_evaluations"] == 5.0 and logged == out
    assert out["eval/fd_tail_mean"] == pytest.approx(98.0) and out["eval/fd_tail_std"] == pytest.approx(np.std(
        [96, 97, 98, 99, 100]))
    assert out["eval/classifier_score_tail_mean"] == pytest.approx(9.8)
    run.cfg.run.steps = 200                  # no evaluation in (180, 200]: nothing to average
    assert sys.modules["fastgan.train"]._Run._fd_tail(run, 200) == {"eval/tail_evaluations": 0.0}


def test_tail_spans_a_resume(tmp_path, tiny_fashion_mnist):
    over = _fd_run(tmp_path, tiny_fashion_mnist)
    first = fastgan.train(None, overrides=[*over, "run.steps=19"])
    r = fastgan.train(None, overrides=[*over, "run.steps=20"], resume=True)
    fd = _csv_column(r.out_dir, "eval/fd")
    # each session evaluated at its last step; both are in the last 10% of 20 steps
    assert [s for s, _ in fd] == [19, 20] and fd[0][1] == pytest.approx(first.metrics["eval/fd"], rel=1e-5)
    assert r.metrics["eval/tail_evaluations"] == 2.0
    assert r.metrics["eval/fd_tail_mean"] == pytest.approx(np.mean([v for _, v in fd]), rel=1e-5)


def test_resume_with_nothing_to_train_reads_no_test_split(tmp_path, tiny_fashion_mnist, monkeypatch):
    over = _fd_run(tmp_path, tiny_fashion_mnist, "run.steps=1")
    fastgan.train(None, overrides=over)

    def refuse(*a, **k):
        raise AssertionError("the test split was read for a run with nothing to train")

    monkeypatch.setattr(fastgan.data, "load_test_split", refuse)
    r = fastgan.train(None, overrides=over, resume=True)
    assert r.start_step == r.step == 1


@pytest.mark.parametrize("extra,message", [
    (["data.split=test"], r"run\.fd: the Fréchet distance is to the test split, and data\.split='test' trains on it"),
    (["data.split=all"], r"run\.fd: .*data\.split='all' trains on it"),
])
def test_config_errors_write_nothing(tmp_path, tiny_fashion_mnist, extra, message):
    with pytest.raises(ConfigError, match=message):
        fastgan.train(None, overrides=_fd_run(tmp_path, tiny_fashion_mnist, "run.steps=1", *extra))
    assert not (tmp_path / "run").exists()


def test_fd_on_other_data_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.fd: .*needs data\.name=fashion_mnist, got 'roth3d'"):
        fastgan.train(None, overrides=["run.fd=true", "run.steps=1", f"run.dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_fd_from_a_single_file_is_refused(tmp_path, tiny_fashion_mnist):
    over = _fd_run(tmp_path, tiny_fashion_mnist / "train-images-idx3-ubyte", "run.steps=1")
    with pytest.raises(ConfigError, match=r"run\.fd: needs a test split, read from the split files"):
        fastgan.train(None, overrides=over)
    assert not (tmp_path / "run").exists()


def _idx(path, n, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    path.write_bytes(bytes([0, 0, 8, 3]) + np.array([n, 28, 28], dtype=">u4").tobytes() + pixels.tobytes())


@pytest.mark.parametrize("n_test,exc,message", [
    (None, FileNotFoundError, r"^run\.fd: needs the test split: .*no test images in"),
    (1, ConfigError, r"^run\.fd: the test split of data\.path=.* holds 1 image\(s\); the Fréchet distance needs at "
                     r"least 2"),
])
def test_unusable_test_split_fails_before_the_run_folder(tmp_path, n_test, exc, message):
    data = tmp_path / "d"
    data.mkdir()
    _idx(data / "train-images-idx3-ubyte", 48, 0)
    if n_test:
        _idx(data / "t10k-images-idx3-ubyte", n_test, 1)
    with pytest.raises(exc, match=message):
        fastgan.train(None, overrides=_fd_run(tmp_path, data, "run.steps=4", "run.fd_every=2"))
    assert not (tmp_path / "run").exists()


def test_fd_samples_below_20_is_a_config_error(tmp_path, tiny_fashion_mnist):
    with pytest.raises(ConfigError, match=r"run\.fd_samples"):
        fastgan.train(None, overrides=_fd_run(tmp_path, tiny_fashion_mnist, "run.steps=1", "run.fd_samples=10"))


def test_non_finite_samples_stop_the_run_keeping_the_checkpoint(tmp_path, tiny_fashion_mnist, monkeypatch):
    train_mod = sys.modules["fastgan.train"]
    real_generate = train_mod._Run._generate

    def nan_from_step_4(self, z):
        x = real_generate(self, z)
        return x * float("nan") if self.last_ckpt_step == 4 else x  # from the evaluation at step 4 on

    monkeypatch.setattr(train_mod._Run, "_generate", nan_from_step_4)
    with pytest.raises(train_mod.NonFiniteLossError, match=r"run\.fd at step 4: G's samples \(eval mode\) hold "
                                                            r"non-finite values; the last good checkpoint, .*step 4"):
        fastgan.train(None, overrides=_fd_run(tmp_path, tiny_fashion_mnist, "run.steps=6", "run.fd_every=2",
                                              "run.checkpoint_every=2"))
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert [s for s, _ in _csv_column(tmp_path / "run", "eval/fd")] == [2]


def test_missing_classifier_weights_fail_before_the_run_folder(tmp_path, tiny_fashion_mnist, monkeypatch):
    from fastgan.metrics import classifier

    monkeypatch.setattr(classifier, "WEIGHTS", tmp_path / "gone.pt")
    with pytest.raises(FileNotFoundError, match=r"classifier weights .*gone\.pt not found .*reinstall fastgan"):
        fastgan.train(None, overrides=_fd_run(tmp_path, tiny_fashion_mnist, "run.steps=1"))
    assert not (tmp_path / "run").exists()


def test_damaged_classifier_weights_are_one_line_errors_of_train_and_eval(tmp_path, tiny_fashion_mnist, monkeypatch,
                                                                          capsys):
    """A damaged shipped file is `fastgan eval`'s one-line error, and `fastgan train`'s with run.fd (it was an
    unexpected RuntimeError there: Python's traceback)."""
    import shutil

    from fastgan.metrics import classifier

    r = fastgan.train(None, overrides=[o for o in _fd_run(tmp_path, tiny_fashion_mnist, "run.steps=1", name="done")
                                       if not o.startswith("run.fd")])
    copy = tmp_path / "w.pt"
    shutil.copy(classifier.WEIGHTS, copy)
    copy.write_bytes(copy.read_bytes()[:-1000])  # truncated
    monkeypatch.setattr(classifier, "WEIGHTS", copy)
    monkeypatch.delenv("FASTGAN_DEBUG", raising=False)
    want = (f"error: classifier weights {copy} are damaged (SHA-256 differs from the shipped file's); "
            "reinstall fastgan\n")
    assert cli_main(["eval", str(r.out_dir), "--samples", "20"]) == 1
    assert capsys.readouterr().err == "fastgan eval: " + want
    assert cli_main(["train", "--set", *_fd_run(tmp_path, tiny_fashion_mnist, "run.steps=1")]) == 1
    assert capsys.readouterr().err == "fastgan train: " + want
    assert not (tmp_path / "run").exists()


def _eval_scores(r, seed):
    """What `fastgan eval --samples 20 --seed SEED` should report for run r: its test images, the classifier and
    the scores of 20 samples of G (eval mode) drawn from SEED, computed here."""
    G = r.generator.eval()
    with torch.no_grad():
        x = G(G.sample_latent(20, generator=torch.Generator().manual_seed(seed)))
    test = fastgan.data.load_test_split(r.config.data, "cpu", 20)
    net = load_fmnist_classifier()
    return test, net, fmnist_scores(x, real_stats(test, net), classifier=net)


def test_eval_command_on_a_fashion_mnist_run(tmp_path, tiny_fashion_mnist, capsys):
    r = fastgan.train(None, overrides=[o for o in _fd_run(tmp_path, tiny_fashion_mnist, "run.steps=2")
                                       if not o.startswith("run.fd")])
    assert cli_main(["eval", str(r.out_dir), "--samples", "20", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    _, _, want = _eval_scores(r, seed=0)
    assert got["fd"] == pytest.approx(want["fd"], rel=1e-9)
    assert got["classifier_score"] == pytest.approx(want["score"], rel=1e-9)
    assert got["real"] == "fashion_mnist test split (20 samples)" and got["step"] == 2
    assert cli_main(["eval", str(r.out_dir), "--samples", "20"]) == 0
    assert "Fréchet distance (fastgan's Fashion-MNIST classifier features): " in capsys.readouterr().out


def test_eval_command_on_a_mixture_run(tmp_path, capsys):
    r = fastgan.train(None, overrides=["run.steps=2", f"run.dir={tmp_path / 'mix'}", "run.sample_every=0",
                                       "run.checkpoint_every=0", "optim.batch_size=16", "run.progress=off"])
    assert cli_main(["eval", str(r.out_dir), "--samples", "300", "--json"]) == 0

    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")
    got = json.loads(capsys.readouterr().out, parse_constant=refuse)
    G = r.generator.eval()
    with torch.no_grad():
        x = G(G.sample_latent(300, generator=torch.Generator().manual_seed(0)))
    want = fastgan.metrics.mode_metrics(x, fastgan.data.mixtures.means("roth3d"), 0.01)
    assert got["modes"] == want["modes"] and got["high_quality"] == pytest.approx(want["high_quality"])
    assert got["num_modes"] == 7
    # after 2 steps no sample is near a mode: the KL of the empty histogram is NaN, written as "nan"
    assert math.isnan(want["kl_modes"]) and got["kl_modes"] == "nan"


def test_eval_command_errors(tmp_path, tiny_fashion_mnist, capsys):
    assert cli_main(["eval", str(tmp_path / "nowhere")]) == 1
    assert "fastgan eval: error: " in capsys.readouterr().err
    r = fastgan.train(None, overrides=["data.name=ring8", "run.steps=1", f"run.dir={tmp_path / 'm'}",
                                       "run.sample_every=0", "run.checkpoint_every=0", "optim.batch_size=16",
                                       "run.progress=off"])
    assert cli_main(["eval", str(r.out_dir), "--device", "tpu"]) == 2
    assert "--device: must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["eval", str(r.out_dir), "--samples", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --samples: invalid integer in [1, 2**31 - 1] value: '0'" in err
    assert cli_main(["eval", str(r.out_dir), "--samples", "5", "--json"]) == 0  # a mixture run: no classifier score
    assert json.loads(capsys.readouterr().out)["generated"] == 5
    over = [o for o in _fd_run(tmp_path, tiny_fashion_mnist, "run.steps=1", name="t") if not o.startswith("run.fd")]
    r = fastgan.train(None, overrides=[*over, f"run.dir={tmp_path / 'f'}"])
    assert cli_main(["eval", str(r.out_dir), "--samples", "5"]) == 1
    assert ("samples (--samples): must be >= 20 for a Fashion-MNIST run (the classifier score's 10 parts of at "
            "least 2), got 5" in capsys.readouterr().err)
    r = fastgan.train(None, overrides=[*over, "data.split=test"])
    assert cli_main(["eval", str(r.out_dir), "--samples", "20"]) == 1
    assert "fastgan eval: error: data.split='test' trains on the test split" in capsys.readouterr().err


@pytest.mark.cuda
def test_fd_on_cuda_matches_the_cpu(tmp_path, tiny_fashion_mnist, capsys):
    """The trainer's evaluation and `fastgan eval` run on a CUDA device (classifier, test-split statistics,
    float64 eigendecompositions on the GPU); the same images score as on the CPU (cuDNN may use TF32
    convolutions, hence the tolerance)."""
    r = fastgan.train(None, overrides=_fd_run(tmp_path, tiny_fashion_mnist, "run.steps=2", "run.device=cuda",
                                              "run.checkpoint_every=2"))
    assert r.metrics["eval/fd"] > 0
    assert cli_main(["eval", str(r.out_dir), "--samples", "20", "--json", "--device", "cuda"]) == 0
    assert json.loads(capsys.readouterr().out)["fd"] > 0
    G = r.generator.eval()
    with torch.no_grad():
        x = G(G.sample_latent(20, generator=torch.Generator().manual_seed(0), device="cpu").cuda())
    test = fastgan.data.load_test_split(r.config.data, "cpu", 20)
    on_cuda = fmnist_scores(x, test.cuda(), classifier=load_fmnist_classifier("cuda"))
    on_cpu = fmnist_scores(x.cpu(), test, classifier=load_fmnist_classifier("cpu"))
    assert on_cuda["fd"] == pytest.approx(on_cpu["fd"], rel=2e-2)
    assert on_cuda["score"] == pytest.approx(on_cpu["score"], rel=2e-2)


def test_light_samples_do_not_warn_of_a_0_1_range(tmp_path, tiny_fashion_mnist, monkeypatch):
    """The trainer's G draws in [-1, 1]: all-nonnegative samples (a G drawing light images, as a tiny one early on)
    are not the [0, 1] mistake fmnist_scores warns users of."""
    import importlib
    import warnings

    train_mod = importlib.import_module("fastgan.train")  # fastgan.train is the function
    draw = train_mod._Run._generate_many
    monkeypatch.setattr(train_mod._Run, "_generate_many", lambda self, n, g: draw(self, n, g).abs())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fastgan.train(None, overrides=_fd_run(tmp_path, tiny_fashion_mnist, "run.steps=2", "run.fd_every=1"))
    assert not [w for w in seen if "every value is >= 0" in str(w.message)]
    with pytest.warns(UserWarning, match="every value is >= 0"):  # a user's own call still warns
        fmnist_scores(torch.rand(20, 1, 28, 28), torch.rand(20, 1, 28, 28) * 2 - 1)


def _no_fd(tmp_path, data, *extra, name="run"):
    return [o for o in _fd_run(tmp_path, data, "run.steps=2", *extra, name=name) if not o.startswith("run.fd")]


def test_eval_command_seed_and_every_score_of_a_fashion_mnist_run(tmp_path, tiny_fashion_mnist, capsys):
    r = fastgan.train(None, overrides=_no_fd(tmp_path, tiny_fashion_mnist))
    assert cli_main(["eval", str(r.out_dir), "--samples", "20", "--seed", "5", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    test, net, want = _eval_scores(r, seed=5)
    assert got["fd"] == pytest.approx(want["fd"], rel=1e-9)
    assert got["classifier_score_std"] == pytest.approx(want["score_std"], rel=1e-9)
    assert got["real_classifier_score"] == pytest.approx(fmnist_scores(test, classifier=net)["score"], rel=1e-9)
    # 19 samples cannot make the classifier score's 10 parts of 2
    assert cli_main(["eval", str(r.out_dir), "--samples", "19"]) == 1
    assert "samples (--samples): must be >= 20 for a Fashion-MNIST run" in capsys.readouterr().err


def test_eval_command_on_few_held_out_images(tmp_path, tiny_fashion_mnist, capsys):
    """data.split=all with data.holdout=6: the real images are those 6; their classifier score takes 3 parts."""
    r = fastgan.train(None, overrides=_no_fd(tmp_path, tiny_fashion_mnist, "data.split=all", "data.holdout=6"))
    assert cli_main(["eval", str(r.out_dir), "--samples", "20", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["real"] == "stored samples held out of the run's training (data.holdout=6: 6 from index 66)"
    assert math.isfinite(got["real_classifier_score"])


def test_eval_command_measures_quality_in_the_runs_mixture_std(tmp_path, capsys):
    r = fastgan.train(None, overrides=["run.steps=2", f"run.dir={tmp_path / 'mix'}", "run.sample_every=0",
                                       "run.checkpoint_every=0", "optim.batch_size=16", "run.progress=off",
                                       "data.mixture_std=10"])
    assert cli_main(["eval", str(r.out_dir), "--samples", "50", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    G = r.generator.eval()
    with torch.no_grad():
        x = G(G.sample_latent(50, generator=torch.Generator().manual_seed(0)))
    want = fastgan.metrics.mode_metrics(x, fastgan.data.mixtures.means("roth3d"), 10.0)
    assert want["high_quality"] > 0 and got["high_quality"] == pytest.approx(want["high_quality"])


def test_eval_report_of_a_mixture_and_of_fashion_mnist():
    base = {"run": "r", "step": 3, "data": "roth3d", "generated": 10}
    text = _evaluate.format_report({**base, "modes": 5, "num_modes": 7, "high_quality": 0.12345, "kl_modes": 0.5})
    assert "modes covered: 5 of 7" in text and "high-quality samples (within 3 std of a mode): 0.1235" in text
    text = _evaluate.format_report({**base, "data": "fashion_mnist", "real": "x", "fd": 1.0, "classifier_score": 8.5,
                                    "classifier_score_std": 0.25, "real_classifier_score": 9.0})
    assert "classifier score: 8.5000 ± 0.2500 (the real images': 9.0000)" in text


def test_a_resume_reruns_a_stopped_fd_tail_replacing_its_row(tmp_path, tiny_fashion_mnist, monkeypatch):
    train_mod = sys.modules["fastgan.train"]

    def stopped(self, step):
        self._log(step, {"eval/tail_evaluations": 9.0, "eval/fd_tail_mean": 1.0})  # logged, then Ctrl-C
        raise KeyboardInterrupt

    over = _fd_run(tmp_path, tiny_fashion_mnist, "run.steps=2")
    monkeypatch.setattr(train_mod._Run, "_fd_tail", stopped)
    with pytest.raises(KeyboardInterrupt):
        fastgan.train(None, overrides=over)
    monkeypatch.undo()
    r = fastgan.train(None, overrides=over, resume=True)
    assert r.final_evaluation_only and r.metrics["eval/tail_evaluations"] == 1.0
    assert _csv_column(r.out_dir, "eval/tail_evaluations") == [(2, 1.0)]


def test_the_tail_takes_evaluations_past_nine_tenths_of_the_steps_only():
    rows = [{"step": str(s), "eval/fd": str(float(s)), "eval/classifier_score": "1"} for s in (85, 90, 95, 100)]
    run = SimpleNamespace(csv=SimpleNamespace(rows=rows), cfg=SimpleNamespace(run=SimpleNamespace(steps=100)),
                          _log=lambda step, values: None)
    out = sys.modules["fastgan.train"]._Run._fd_tail(run, 100)
    assert out["eval/tail_evaluations"] == 2.0 and out["eval/fd_tail_mean"] == pytest.approx(97.5)


@pytest.mark.parametrize("method", ["_fd", "_fd_tail"])
def test_a_run_killed_in_the_last_step_s_fd_or_the_tail_gets_them_on_resume(tmp_path, tiny_fashion_mnist, method):
    """Killed (no handler runs) in the last step's FD or in the tail: the resume logs the missing FD row and the
    tail as the run never stopped would (the last step's FD was not rerun: a tail of none)."""
    from test_train_final_evaluation import killed_in

    over = _fd_run(tmp_path, tiny_fashion_mnist, "run.steps=4", "run.fd_every=2")
    killed_in(method, over, tmp_path, at_step=4)
    r = fastgan.train(None, overrides=over, resume=True)
    whole = fastgan.train(None, overrides=_fd_run(tmp_path, tiny_fashion_mnist, "run.steps=4", "run.fd_every=2",
                                                  name="whole"))
    assert r.final_evaluation_only and r.metrics["eval/tail_evaluations"] == 1.0
    for key in ("eval/fd", "eval/classifier_score"):
        got, want = _csv_column(r.out_dir, key), _csv_column(whole.out_dir, key)
        assert [s for s, _ in got] == [s for s, _ in want] == [2, 4]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    assert r.metrics["eval/fd_tail_mean"] == pytest.approx(whole.metrics["eval/fd_tail_mean"], rel=1e-6)


def test_loading_the_classifier_draws_no_random_numbers():
    before = torch.get_rng_state()
    load_fmnist_classifier()
    assert torch.equal(torch.get_rng_state(), before)


def test_fd_on_or_off_trains_the_same_weights_with_a_dropout_d(tmp_path, tiny_fashion_mnist):
    """run.fd builds the classifier after seeding; its default init drew from the global generator that D's
    dropout draws from, so turning FD on changed every trained weight (an audit's repro, goodfellow's maxout D)."""
    common = ["data.name=fashion_mnist", f"data.path={tiny_fashion_mnist}", "model.arch=goodfellow",
              "model.g_hidden=[16,16]", "model.d_hidden=[8,8]", "method.name=gan", "optim.batch_size=8",
              "run.steps=3", "run.sample_every=0", "run.checkpoint_every=0", "run.num_samples=16", "run.progress=off",
              "run.fd_samples=20"]
    runs = [fastgan.train(None, overrides=common + [f"run.fd={fd}", f"run.dir={tmp_path / str(fd)}"])
            for fd in ("false", "true")]
    off, on = ({f"{m}.{k}": v for m, mod in r.models.items() for k, v in mod.state_dict().items()} for r in runs)
    assert any(k.startswith("D.") for k in off)
    assert off.keys() == on.keys() and all(torch.equal(off[k], on[k]) for k in off)
