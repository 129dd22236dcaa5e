"""Roth et al.'s cross-testing (section 5.5): fastgan.metrics.cross_test on hand-made discriminators, and
`fastgan crosstest` on two short runs."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import fastgan
import fastgan.metrics as _metrics
from fastgan import crosstest
from fastgan.cli import build_parser, main
from fastgan.metrics import confusion, cross_test, real_fraction


def threshold_d(t: float) -> nn.Module:
    """Calls a point real when its first coordinate exceeds t."""
    d = nn.Linear(2, 1)
    with torch.no_grad():
        d.weight.copy_(torch.tensor([[1.0, 0.0]]))
        d.bias.fill_(-t)
    return d


def _ac(k: int, n: int) -> float:
    """Agresti-Coull standard error of k successes in n: sqrt(q (1 - q) / (n + 4)), q = (k + 2) / (n + 4)."""
    q = (k + 2) / (n + 4)
    return (q * (1 - q) / (n + 4)) ** 0.5


def nan_d() -> nn.Module:
    d = threshold_d(0.5)
    with torch.no_grad():
        d.bias.fill_(float("nan"))
    return d


def points(*first) -> torch.Tensor:
    return torch.tensor([[v, 0.0] for v in first])


def test_rates_are_the_fractions_each_d_calls_real():
    real = points(1, 1, 1, 0.2)
    fake1, fake2 = points(0, 0, 0.6, 0.6), points(0.9, 0.9, 0.9, 0)
    d1, d2 = threshold_d(0.5), threshold_d(0.95)
    r = cross_test(d1, fake1, d2, fake2, real)
    se75 = _ac(3, 4)  # the standard error of a rate 3/4 over 4 samples
    assert r["model1"] == pytest.approx({"tp": 0.75, "fn": 0.25, "fp": 0.5, "tn": 0.5, "cross_fp": 0.75,
                                         "tp_se": se75, "fp_se": _ac(2, 4), "cross_fp_se": se75, "threshold": 0.0})
    assert r["model2"] == pytest.approx({"tp": 0.75, "fn": 0.25, "fp": 0.0, "tn": 1.0, "cross_fp": 0.0,
                                         "tp_se": se75, "fp_se": _ac(0, 4), "cross_fp_se": _ac(0, 4),
                                         "threshold": 0.0})
    assert r["better"] == 2  # D2 is not fooled by model 1's samples
    assert r["cross_fp_difference_se"] == pytest.approx((se75 ** 2 + _ac(0, 4) ** 2) ** 0.5)
    swapped = cross_test(d2, fake2, d1, fake1, real)
    assert swapped["better"] == 1 and swapped["model1"] == r["model2"]


def test_standard_errors_use_each_rates_own_sample_count():
    real = points(*([1.0] * 9 + [0.0]))           # D calls 9 of 10 real samples real
    fake1 = points(0.0, 0.0, 0.0, 1.0)            # D1's own: 1 of 4 called real by D1
    fake2 = points(*([1.0] * 5 + [0.0] * 15))     # 5 of 20 called real by D1
    d = threshold_d(0.5)
    r = cross_test(d, fake1, d, fake2, real)
    m1, m2 = r["model1"], r["model2"]
    assert m1["tp_se"] == pytest.approx(_ac(9, 10)) and m1["fp_se"] == pytest.approx(_ac(1, 4))
    assert m1["cross_fp"] == 0.25 and m1["cross_fp_se"] == pytest.approx(_ac(5, 20))
    assert m2["cross_fp"] == 0.25 and m2["cross_fp_se"] == pytest.approx(_ac(1, 4))
    assert r["cross_fp_difference_se"] == pytest.approx((_ac(5, 20) ** 2 + _ac(1, 4) ** 2) ** 0.5)
    # for many samples it is the plain binomial error
    big = cross_test(d, fake1, d, points(*([1.0] * 2500 + [0.0] * 7500)), real)
    assert big["model1"]["cross_fp_se"] == pytest.approx((0.25 * 0.75 / 10000) ** 0.5, rel=1e-3)


def test_rates_of_0_and_1_are_not_read_as_certain():
    d = threshold_d(0.5)
    r = cross_test(d, points(0.0), d, points(1.0), points(1.0))  # cross FPs 1 and 0 from one sample each
    assert (r["model1"]["cross_fp"], r["model2"]["cross_fp"]) == (1.0, 0.0)
    assert r["model1"]["cross_fp_se"] == r["model2"]["cross_fp_se"] == pytest.approx(_ac(0, 1)) and _ac(0, 1) > 0.2
    report = crosstest.format_report({**r, "real": "r", "generated": 1, "runs": ["a", "b"], "steps": [1, 1]})
    assert "± 0.0000" not in report


def test_report_says_whether_the_difference_is_clear():
    base = {"real": "r", "generated": 4, "runs": ["a", "b"], "steps": [1, 1]}
    rates = {"tp": 0.5, "fn": 0.5, "fp": 0.5, "tn": 0.5, "tp_se": 0.1, "fp_se": 0.1}
    near = {**base, "model1": {**rates, "cross_fp": 0.30, "cross_fp_se": 0.05},
            "model2": {**rates, "cross_fp": 0.25, "cross_fp_se": 0.05}, "better": 2, "cross_fp_difference_se": 0.0707}
    text = crosstest.format_report(near)
    assert "the other's samples called real   0.3000   0.2500   (± 0.0500, ± 0.0500)" in text
    assert "difference 0.0500 ± 0.0707 (standard error): within two standard errors" in text
    far = {**near, "model1": {**near["model1"], "cross_fp": 0.9}}
    assert "more than two standard errors" in crosstest.format_report(far)
    tie = {**near, "model1": near["model2"], "better": None}
    assert "difference" not in crosstest.format_report(tie) and "a tie" in crosstest.format_report(tie)


def test_a_d_that_calls_everything_fake_wins_with_a_warning():
    # a flat D that never learned (seen: Roth's annealed mixture run at gamma0 = 2) calls every sample fake, so
    # its cross-testing FP is 0 and the rule names its model better; the result says why that means nothing
    real, fake = points(1, 0.9, 0.8, 0.7), points(0.6, 0.2, 0.1, 0)
    r = cross_test(threshold_d(0.5), fake, threshold_d(5.0), fake, real, names=("D1", "D2"))
    assert r["better"] == 2 and r["model2"]["tp"] == 0
    assert r["warnings"] == ["D2 calls 100.0% of the real samples fake (TP 0.0000 < 0.05): its low cross-testing "
                             "FP says only that it calls almost everything fake, not that model 2 is better"]
    assert cross_test(threshold_d(0.5), fake, threshold_d(0.5), fake, real)["warnings"] == []
    # a degenerate D whose model is not called better is not warned about (it was, beside the winner or on a tie)
    loses = cross_test(threshold_d(0.5), fake, threshold_d(5.0), points(0, 0, 0, 0), real)
    assert loses["better"] == 1 and loses["model2"]["tp"] == 0 and loses["warnings"] == []
    tie = cross_test(threshold_d(5.0), points(0, 0, 0, 0), threshold_d(5.0), points(0, 0, 0, 0), real)
    assert tie["better"] is None and tie["warnings"] == []
    text = crosstest.format_report({**r, "real": "r", "generated": 4, "runs": ["a", "b"], "steps": [1, 1]})
    assert text.splitlines()[-1].startswith("warning: D2 calls 100.0% of the real samples fake")


def test_ties_on_cross_fp_go_to_the_lower_fn_then_none():
    real = points(1, 0.7)
    d1, d2 = threshold_d(0.5), threshold_d(0.8)  # d2 calls the 0.7 real sample fake
    fake = points(0, 0)
    assert cross_test(d1, fake, d2, fake, real)["better"] == 1
    assert cross_test(d1, fake, d1, fake, real)["better"] is None


def test_classifies_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    d = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    d.train()
    before = {k: v.clone() for k, v in d.state_dict().items()}
    x = torch.randn(100, 2)
    one = real_fraction(d, x, batch_size=1)  # a 1-sample batch would fail in training-mode BatchNorm
    assert real_fraction(d, x, batch_size=64) == one
    assert d.training
    for k, v in d.state_dict().items():
        assert torch.equal(v, before[k]), k
    want = float((d.eval()(x).reshape(-1) > 0).float().mean())
    assert one == pytest.approx(want)


def test_numpy_and_float64_samples_meet_d_on_its_dtype():
    d = threshold_d(0.5)
    assert real_fraction(d, np.array([[1.0, 0.0], [0.0, 0.0]])) == 0.5


@pytest.mark.parametrize("call, exc, match", [
    (lambda d: real_fraction(d, torch.zeros(0, 2)), ValueError, r"x: expected a non-empty batch"),
    (lambda d: real_fraction(d, torch.tensor([[float("nan"), 0.0]])), ValueError, r"x: contains 1 non-finite"),
    (lambda d: real_fraction(d, points(1), batch_size=0), ValueError, r"batch_size: must be >= 1"),
    (lambda d: real_fraction("d", points(1)), TypeError, r"D: expected a discriminator"),
    (lambda d: real_fraction(nn.Linear(2, 2), points(1, 0)), ValueError, r"D: expected one logit per sample \(2\)"),
    (lambda d: confusion(d, points(1), torch.zeros(3)), ValueError, r"fake: expected a non-empty batch"),
    (lambda d: cross_test(d, torch.zeros(2, 3), d, points(0), points(1)), ValueError,
     r"fake1: samples of shape \(3,\), real samples of shape \(2,\)"),
    # a NaN logit is not "fake": a diverged D would have the best cross-testing FP, 0
    (lambda d: real_fraction(nan_d(), points(1, 0)), ValueError, r"^D: returned 2 NaN logit\(s\) for 2 samples"),
    (lambda d: cross_test(d, points(0), nan_d(), points(0), points(1)), ValueError, r"^D2: returned 1 NaN logit"),
])
def test_bad_arguments_name_themselves(call, exc, match):
    with pytest.raises(exc, match=match):
        call(threshold_d(0.5))


# ------------------------------------------------------------------------------------------ two runs

TINY = ["optim.batch_size=32", "model.g_hidden=[16]", "model.d_hidden=[16,16]", "run.log_every=5",
        "run.sample_every=0", "run.checkpoint_every=0", "run.progress=off", "run.steps=5"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("xt")
    fastgan.train(None, overrides=[*TINY, f"run.dir={d / 'gan'}", "method.name=gan"])
    fastgan.train(None, overrides=[*TINY, f"run.dir={d / 'roth'}", "method.name=roth", "run.seed=1"])
    return d / "gan", d / "roth"


def test_runs_are_cross_tested_with_their_own_models(two_runs):
    a, b = two_runs
    r = crosstest.cross_test_runs(a, b, samples=300, seed=3)
    assert r["runs"] == [str(a), str(b)] and r["steps"] == [5, 5] and r["generated"] == 300
    assert r["real"] == "300 fresh draws of roth3d"
    # recomputed from the checkpoints with the same draws: the real samples come first from the seeded generator
    g = torch.Generator().manual_seed(3)
    real, _ = crosstest.held_out_real(fastgan.config.load_config(a / "config.yaml").data, 300, "cpu", g)
    for i, run in ((1, a), (2, b)):
        m = crosstest.load_run(run, (3,))
        assert r[f"model{i}"]["tp"] == real_fraction(m.D, real)
        assert 0.0 <= r[f"model{i}"]["cross_fp"] <= 1.0
    key = {i: (r[f"model{i}"]["cross_fp"], r[f"model{i}"]["fn"]) for i in (1, 2)}
    assert r["better"] == (None if key[1] == key[2] else min((1, 2), key=key.get))


def test_cli_prints_the_report_and_json(two_runs, capsys):
    a, b = two_runs
    assert main(["crosstest", str(a), str(b), "--samples", "200"]) == 0
    out = capsys.readouterr().out
    assert "cross-testing FP: the other's samples called real" in out and f"model 2: {b} (step 5)" in out
    assert main(["crosstest", str(a), str(b), "--samples", "200", "--json"]) == 0
    import json

    assert set(json.loads(capsys.readouterr().out)) >= {"model1", "model2", "better", "real"}


@pytest.mark.parametrize("args, code, match", [
    (["{a}", "{missing}"], 1, "run folder not found: "),
    (["{a}", "{a}/checkpoints/last.pt"], 1, "last.pt is a file; give the run folder"),
    (["{a}", "{empty}"], 1, "empty holds no checkpoints/last.pt: not a run folder, or a run not checkpointed yet"),
    (["{a}", "{b}", "--device", "gpu"], 2, "--device: must be one of"),
])
def test_cli_errors_are_one_line(two_runs, tmp_path, capsys, args, code, match):
    a, b = two_runs
    (tmp_path / "empty").mkdir()
    argv = [s.format(a=a, b=b, missing=tmp_path / "none", empty=tmp_path / "empty") for s in args]
    assert main(["crosstest", *argv]) == code
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_cli_sample_count_and_api_prefix(two_runs, tmp_path, capsys):
    a, b = two_runs
    with pytest.raises(SystemExit) as e:  # argparse's usage error, naming the option
        main(["crosstest", str(a), str(b), "--samples", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --samples: invalid integer in [1, 2**31 - 1] value: '0'" in err
    other = tmp_path / "other"
    fastgan.train(None, overrides=["data.name=ring8", "run.steps=1", f"run.dir={other}", "run.sample_every=0",
                                   "run.checkpoint_every=0", "optim.batch_size=16", "run.progress=off"])
    assert main(["crosstest", str(a), str(other)]) == 1
    err = capsys.readouterr().err  # cross_test_runs' own "crosstest: " is not said twice
    assert err.startswith("fastgan crosstest: error: ") and "crosstest: error: crosstest:" not in err


def _damaged_copy(run, dest, edit):
    import shutil

    shutil.copytree(run, dest)
    path = dest / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    edit(state["method"]["modules"])
    torch.save(state, path)
    return dest


def test_a_diverged_run_is_named_not_declared_better(two_runs, tmp_path, capsys):
    a, b = two_runs

    def nan_weights(modules):
        for v in modules["D"].values():
            v.fill_(float("nan"))
    bad = _damaged_copy(b, tmp_path / "nan_d", nan_weights)
    assert main(["crosstest", str(a), str(bad), "--samples", "100"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fastgan crosstest: error: the discriminator of {bad}: returned 100 NaN logit(s)"), err

    def nan_g(modules):
        for v in modules["G"].values():
            v.fill_(float("nan"))
    bad_g = _damaged_copy(b, tmp_path / "nan_g", nan_g)
    assert main(["crosstest", str(bad_g), str(a), "--samples", "100"]) == 1
    assert f"the generator of {bad_g} (step 5) made non-finite samples" in capsys.readouterr().err


def test_a_model_mismatch_names_the_first_problem(two_runs, tmp_path, capsys):
    def drop_a_key(modules):
        modules["D"].pop(next(iter(modules["D"])))
    bad = _damaged_copy(two_runs[0], tmp_path / "missing", drop_a_key)
    assert main(["crosstest", str(bad), str(two_runs[1]), "--samples", "100"]) == 1
    err = capsys.readouterr().err
    assert "its D does not fit its config's model for samples of shape (3,) (those of the real samples: 100 fresh " \
        "draws of " in err and "): Error(s) in loading state_dict for" in err
    assert 'Missing key(s) in state_dict: "' in err and len(err.strip().splitlines()) == 1, err


def test_runs_on_different_data_are_refused(two_runs, tmp_path):
    a, _ = two_runs
    c = tmp_path / "ring"
    fastgan.train(None, overrides=[*TINY, f"run.dir={c}", "method.name=gan", "data.name=ring8"])
    with pytest.raises(ValueError, match=r"trained on different data \(data\.name: 'roth3d' vs 'ring8'\)"):
        crosstest.cross_test_runs(a, c, samples=10)


def _npz(path, n=12):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8))


def test_image_runs_use_held_out_samples_or_say_they_have_none(tmp_path):
    _npz(tmp_path / "x.npz")
    base = [*TINY[3:-1], "run.steps=2", "data.name=npz", f"data.path={tmp_path / 'x.npz'}", "model.arch=dcgan",
            "model.dcgan_width=4", "model.latent_dim=8", "optim.batch_size=4"]
    fastgan.train(None, overrides=[*base, f"run.dir={tmp_path / 'a'}", "data.holdout=4"])
    fastgan.train(None, overrides=[*base, f"run.dir={tmp_path / 'b'}", "data.holdout=4", "run.seed=1"])
    r = crosstest.cross_test_runs(tmp_path / "a", tmp_path / "b", samples=10)
    assert r["real"] == "stored samples held out of both runs' training (data.holdout=4: 4 from index 8)"
    fastgan.train(None, overrides=[*base, f"run.dir={tmp_path / 'c'}"])
    fastgan.train(None, overrides=[*base, f"run.dir={tmp_path / 'd'}"])
    with pytest.raises(ValueError, match=r"data\.name='npz' has no held-out real samples"):
        crosstest.cross_test_runs(tmp_path / "c", tmp_path / "d", samples=10)


def _idx(path, n, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    path.write_bytes(bytes([0, 0, 8, 3]) + np.array([n, 28, 28], dtype=">u4").tobytes() + pixels.tobytes())


def _fmnist(tmp_path):
    """A Fashion-MNIST folder of 16 training and 6 test images, and the overrides of a tiny DCGAN run on it."""
    data = tmp_path / "fmnist"
    data.mkdir()
    _idx(data / "train-images-idx3-ubyte", 16, 0)
    _idx(data / "t10k-images-idx3-ubyte", 6, 1)
    return data, [*TINY[3:-1], "run.steps=1", "data.name=fashion_mnist", f"data.path={data}", "model.arch=dcgan",
                  "model.dcgan_width=4", "model.latent_dim=8", "optim.batch_size=4"]


def test_a_relative_data_path_is_the_file_the_run_trained_on(tmp_path, monkeypatch):
    """config.yaml keeps data.path as typed: run from another folder holding a file of the same name, crosstest read
    that one and reported samples 'held out' of it (an audit's case, 2026-12-06). run_info.json records the
    resolved path, and a path spelled another way ('./x.npz', a trailing '/') is the same data."""
    (tmp_path / "train").mkdir()
    (tmp_path / "other").mkdir()
    _npz(tmp_path / "train" / "x.npz")
    _npz(tmp_path / "other" / "x.npz", n=40)
    monkeypatch.chdir(tmp_path / "train")
    base = [*TINY[3:-1], "run.steps=1", "data.name=npz", "model.arch=dcgan", "model.dcgan_width=4",
            "model.latent_dim=8", "optim.batch_size=4", "data.holdout=4"]
    fastgan.train(None, overrides=[*base, "data.path=x.npz", f"run.dir={tmp_path / 'a'}"])
    fastgan.train(None, overrides=[*base, "data.path=./x.npz", f"run.dir={tmp_path / 'b'}", "run.seed=1"])
    assert json.loads((tmp_path / "a" / "run_info.json").read_text())["data_path"] == str(tmp_path / "train" / "x.npz")
    monkeypatch.chdir(tmp_path / "other")
    r = crosstest.cross_test_runs(tmp_path / "a", tmp_path / "b", samples=10)
    assert r["real"] == "stored samples held out of both runs' training (data.holdout=4: 4 from index 8)"
    key = lambda *path: crosstest._data_key(fastgan.config.coerce(  # noqa: E731
        None, ["data.name=fashion_mnist", *(f"data.path={p}" for p in path)]))
    assert key("/usr/share/datasets/fashion-mnist/") == key("/usr/share/datasets/fashion-mnist") == key()


def test_fashion_mnist_runs_use_the_test_split(tmp_path):
    data, base = _fmnist(tmp_path)
    for name in "ab":
        fastgan.train(None, overrides=[*base, f"run.dir={tmp_path / name}"])
    r = crosstest.cross_test_runs(tmp_path / "a", tmp_path / "b", samples=10)
    assert r["real"] == "fashion_mnist test split (6 samples)"
    test = torch.from_numpy(np.fromfile(data / "t10k-images-idx3-ubyte", np.uint8, offset=16).reshape(6, 1, 28, 28))
    m = crosstest.load_run(tmp_path / "a", (1, 28, 28))
    assert r["model1"]["tp"] == real_fraction(m.D, test.float() / 127.5 - 1)


# ------------------------------------------------------------------ real samples no run trained on (review)

def _indexed_npz(path, n=12):
    # every sample's pixels hold its index: the real samples say which stored samples they are
    a = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], 8, axis=2).repeat(8, axis=3)
    np.savez(path, x=a)


def _index_run(tmp_path, name, *extra):
    base = [*TINY[3:-1], "run.steps=1", "data.name=npz", f"data.path={tmp_path / 'x.npz'}",
            "data.value_range=[0,255]", "model.arch=dcgan", "model.dcgan_width=4", "model.latent_dim=8",
            "optim.batch_size=4"]
    fastgan.train(None, overrides=[*base, f"run.dir={tmp_path / name}", *extra])
    return tmp_path / name


def _real_indices(a, b):
    g = torch.Generator().manual_seed(0)
    cfgs = [fastgan.config.load_config(r / "config.yaml").data for r in (a, b)]
    real, where = crosstest.held_out_real(cfgs[0], 100, "cpu", g, others=cfgs[1:])
    return torch.round((real[:, 0, 0, 0] + 1) * 255 / 2).long().tolist(), where


def test_real_samples_are_held_out_of_both_runs_training(tmp_path):
    """Runs differing in data.holdout or data.max_samples trained on different samples: the real samples are
    those neither trained on, whichever run comes first (it took run A's held-out samples, which run B with a
    smaller holdout had trained on; in the other order it found none)."""
    _indexed_npz(tmp_path / "x.npz")
    a = _index_run(tmp_path, "a", "data.holdout=4")                           # trained on 0..7
    b = _index_run(tmp_path, "b", "data.holdout=6")                           # 0..5
    c = _index_run(tmp_path, "c", "data.max_samples=10", "data.holdout=4")    # 0..5, held out 6..9
    none = _index_run(tmp_path, "none")                                       # 0..11
    for x, y in ((a, none), (none, a)):
        with pytest.raises(ValueError, match="no stored sample is held out of both runs' training"):
            crosstest.cross_test_runs(x, y, samples=10)
    for x, y in ((a, b), (b, a)):
        assert _real_indices(x, y)[0] == [8, 9, 10, 11]
    for x, y in ((a, c), (c, a)):  # c never saw 10, 11 (past its max_samples)
        assert _real_indices(x, y) == ([8, 9, 10, 11], "stored samples held out of both runs' training "
                                                        "(data.holdout=4 and past data.max_samples=10: 4 from index 8)")
    # samples only past max_samples: run e trained on 0..4, never saw 5..11; run f on 0..6
    e = _index_run(tmp_path, "e", "data.max_samples=5")
    f = _index_run(tmp_path, "f", "data.max_samples=7")
    for x, y in ((e, f), (f, e)):
        assert _real_indices(x, y) == ([7, 8, 9, 10, 11], "stored samples held out of both runs' training "
                                                           "(past data.max_samples=5 and 7: 5 from index 7)")
    for x, y in ((f, none), (none, f)):
        with pytest.raises(ValueError, match="no stored sample is held out of both runs' training"):
            crosstest.cross_test_runs(x, y, samples=10)


def test_a_test_split_the_runs_trained_on_is_not_held_out(tmp_path):
    """data.split=all (or test) trains on the test split: it took the test split as held-out real samples."""
    data, base = _fmnist(tmp_path)
    base.append("data.split=all")
    for name in "ab":
        fastgan.train(None, overrides=[*base, f"run.dir={tmp_path / name}"])
    with pytest.raises(ValueError, match=r"data\.split='all' trains on the test split"):
        crosstest.cross_test_runs(tmp_path / "a", tmp_path / "b", samples=10)
    for name in "cd":
        fastgan.train(None, overrides=[*base, f"run.dir={tmp_path / name}", "data.holdout=2"])
    r = crosstest.cross_test_runs(tmp_path / "c", tmp_path / "d", samples=10)
    assert r["real"] == "stored samples held out of both runs' training (data.holdout=2: 2 from index 20)"
    test = torch.from_numpy(np.fromfile(data / "t10k-images-idx3-ubyte", np.uint8, offset=16).reshape(6, 1, 28, 28))
    m = crosstest.load_run(tmp_path / "c", (1, 28, 28))
    assert r["model1"]["tp"] == real_fraction(m.D, test[4:].float() / 127.5 - 1)  # the last 2 of split=all


def test_the_mixtures_literature_std_given_or_not_is_the_same_data(two_runs, tmp_path):
    a, _ = two_runs
    for std, same in ((0.01, True), (0.02, False)):  # roth3d's std is 0.01
        c = tmp_path / str(std)
        fastgan.train(None, overrides=[*TINY, f"run.dir={c}", "method.name=gan", f"data.mixture_std={std}"])
        if same:
            assert crosstest.cross_test_runs(a, c, samples=10)["real"] == "10 fresh draws of roth3d"
        else:
            with pytest.raises(ValueError, match=r"different data \(data\.mixture_std: 0\.01 vs 0\.02\)"):
                crosstest.cross_test_runs(a, c, samples=10)


def test_a_run_against_itself_ties_and_swapping_runs_swaps_results(two_runs):
    a, b = two_runs
    same = crosstest.cross_test_runs(a, a, samples=200)
    assert same["model1"] == same["model2"] and same["better"] is None
    ab, ba = crosstest.cross_test_runs(a, b, samples=200), crosstest.cross_test_runs(b, a, samples=200)
    assert ab["model1"] == ba["model2"] and ab["model2"] == ba["model1"]


def test_a_logit_of_exactly_zero_is_not_called_real():
    # "Real" is D(x) > 1/2, i.e. a logit > 0: at x_0 = 0.5 the logit is exactly 0 (D(x) = 1/2), not real
    d = threshold_d(0.5)
    assert real_fraction(d, points(0.5, 0.5, 1.0, 0.0)) == 0.25


def _report(**m2):
    base = {"tp": 0.5, "fn": 0.5, "fp": 0.25, "tn": 0.75, "cross_fp": 0.75, "tp_se": 0.011, "fp_se": 0.022,
            "cross_fp_se": 0.033}
    return {"real": "r", "generated": 4, "runs": ["a", "b"], "steps": [3, 7], "model1": base,
            "model2": {**base, "tp_se": 0.044, "fp_se": 0.055, "cross_fp_se": 0.066, **m2}, "better": 2,
            "cross_fp_difference_se": 0.25}


def test_report_rows_show_each_rates_own_standard_error_and_step():
    text = crosstest.format_report(_report(cross_fp=0.25))
    assert "own D: real called real (TP)" in text and "(± 0.0110, ± 0.0440)" in text.splitlines()[4]
    assert "own D: real called fake (FN)" in text.splitlines()[5] and "(± 0.0110, ± 0.0440)" in text.splitlines()[5]
    assert "(± 0.0220, ± 0.0550)" in text.splitlines()[6] and "(± 0.0220, ± 0.0550)" in text.splitlines()[7]
    assert "model 1: a (step 3)" in text and "model 2: b (step 7)" in text
    # a difference of exactly two standard errors is not "more than two"
    assert "difference 0.5000 ± 0.2500 (standard error): within two standard errors" in text


def test_cli_samples_default_is_10000():
    assert build_parser().parse_args(["crosstest", "a", "b"]).samples == 10000


def test_data_fields_that_do_not_change_the_distribution_are_ignored(two_runs):
    from fastgan.data import idx

    cfg = fastgan.config.load_config(two_runs[0] / "config.yaml")

    def key(**data):
        return crosstest._data_key(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data)))
    assert key(nominal_size=7) == key()   # roth3d
    npz = {"name": "npz", "path": "x.npz"}
    for field, value in (("keep_on_device", "no"), ("max_samples", 5), ("holdout", 2)):
        assert key(**npz, **{field: value}) == key(**npz), field
    # Fashion-MNIST's default folder, spelled out or left out
    assert key(name="fashion_mnist", path=idx.FASHION_MNIST_DIR) == key(name="fashion_mnist")


def test_held_out_real_takes_at_most_n_and_names_every_holdout(tmp_path):
    _indexed_npz(tmp_path / "x.npz", n=24)
    a = _index_run(tmp_path, "a", "data.holdout=4")     # trained on 0..19
    b = _index_run(tmp_path, "b", "data.holdout=10")    # 0..13
    cfgs = [fastgan.config.load_config(r / "config.yaml").data for r in (a, b)]
    real, where = crosstest.held_out_real(cfgs[0], 2, "cpu", torch.Generator().manual_seed(0), others=cfgs[1:])
    assert torch.round((real[:, 0, 0, 0] + 1) * 255 / 2).long().tolist() == [20, 21]
    r = crosstest.cross_test_runs(b, a, samples=10)
    assert r["real"] == "stored samples held out of both runs' training (data.holdout=4 and 10: 4 from index 20)"
    assert r["generated"] == 10   # generated per model: --samples, not the number of real samples


def test_generated_samples_are_all_of_g_in_eval_mode(tmp_path, monkeypatch):
    """G with BatchNorm: the samples D classifies are G.eval()'s, on one set of latents, in every chunk of 1024."""
    runs = []
    for name, seed in (("a", 0), ("b", 1)):
        runs.append(tmp_path / name)
        fastgan.train(None, overrides=[*TINY[:-1], "run.steps=2", f"run.dir={runs[-1]}", "model.g_batchnorm=true",
                                       f"run.seed={seed}"])
    seen, real_cross_test = {}, _metrics.cross_test

    def spy(D1, fake1, D2, fake2, real, **kw):
        seen.update(fakes=(fake1, fake2))
        return real_cross_test(D1, fake1, D2, fake2, real, **kw)
    monkeypatch.setattr(_metrics, "cross_test", spy)
    crosstest.cross_test_runs(*runs, samples=1100, seed=3)
    g = torch.Generator().manual_seed(3)
    crosstest.held_out_real(fastgan.config.load_config(runs[0] / "config.yaml").data, 1100, "cpu", g)
    models = [crosstest.load_run(r, (3,)) for r in runs]
    z = models[0].G.sample_latent(1100, generator=g)
    for m, fake in zip(models, seen["fakes"]):
        with torch.no_grad():
            want = m.G.eval()(z)
        assert fake.shape == (1100, 3)
        torch.testing.assert_close(fake, want)


def test_steps_are_the_checkpoints_and_a_missing_module_is_named(two_runs, tmp_path, capsys):
    import shutil

    bad = tmp_path / "early"
    shutil.copytree(two_runs[1], bad)
    path = bad / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    state["step"] = 3   # as a run stopped before run.steps saves it
    torch.save(state, path)
    assert crosstest.cross_test_runs(two_runs[0], bad, samples=10)["steps"] == [5, 3]
    del state["method"]["modules"]["G"]
    torch.save(state, path)
    assert main(["crosstest", str(two_runs[0]), str(bad), "--samples", "10"]) == 1
    assert "its G does not fit its config's model for samples of shape (" in (err := capsys.readouterr().err)
    assert "): no entry 'G'" in err


# ------------------------------------------------------------------ errors that name their source (review)

def test_a_d_that_cannot_take_the_samples_is_named_with_their_shape():
    # torch's "mat1 and mat2 shapes cannot be multiplied" named neither D nor the samples
    real = points(0, 1)
    with pytest.raises(ValueError, match=r"^D2: failed on samples of shape \(2,\) \(a batch \(2, 2\), torch.float32\)"
                                         r": RuntimeError: (\w+: )?mat1 and mat2") as e:
        cross_test(threshold_d(0.5), real, nn.Linear(3, 1), real, real)
    assert isinstance(e.value.__cause__, RuntimeError)
    with pytest.raises(ValueError, match=r"^D: failed on samples of shape \(2,\)"):
        confusion(nn.Linear(3, 1), real, real)


def test_confusion_refuses_fake_samples_of_another_shape():
    d = nn.Sequential(nn.Flatten(), threshold_d(0.5))  # would classify (N, 1, 2) and (N, 2) alike
    with pytest.raises(ValueError, match=r"^fake: samples of shape \(1, 2\), real samples of shape \(2,\)"):
        confusion(d, points(0, 1), points(0, 1)[:, None])


def test_eval_names_where_the_sample_shape_its_checkpoint_does_not_fit_came_from(two_runs, tmp_path, capsys):
    def drop_a_key(modules):
        modules["G"].pop(next(iter(modules["G"])))
    bad = _damaged_copy(two_runs[0], tmp_path / "missing", drop_a_key)
    assert main(["eval", str(bad), "--samples", "20"]) == 1
    err = capsys.readouterr().err
    assert "its G does not fit its config's model for samples of shape (3,) (from the dimension of roth3d's modes): " \
           "Error(s) in loading state_dict for" in err, err


def test_eval_names_the_run_whose_generator_makes_non_finite_samples(tmp_path, capsys):
    _, base = _fmnist(tmp_path)
    fastgan.train(None, overrides=[*base, f"run.dir={tmp_path / 'a'}"])

    def nan_g(modules):
        for v in modules["G"].values():
            if v.is_floating_point():
                v.fill_(float("nan"))
    bad = _damaged_copy(tmp_path / "a", tmp_path / "nan_g", nan_g)
    assert main(["eval", str(bad), "--samples", "20"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fastgan eval: error: the generator of {bad} (step 1) made non-finite samples"), err


def test_held_out_float_images_are_scaled_as_the_runs_trained_on_them(tmp_path):
    """Float npz images without data.value_range map to [-1, 1] by the values loaded ((0, 1) unless one is negative):
    the held-out samples, loaded past the run's data.max_samples, came scaled by another map."""
    from fastgan.data import DataConfig, build_dataset

    a = np.full((100, 1, 4, 4), 0.5, dtype=np.float32)
    a[80:] = -0.5  # only past the first run's max_samples
    np.savez(tmp_path / "x.npz", x=a)
    cfg = DataConfig(name="npz", path=str(tmp_path / "x.npz"), max_samples=60)
    trained = next(build_dataset(cfg).batches(10))
    real, where = crosstest.held_out_real(cfg, 30, "cpu", torch.Generator().manual_seed(0))
    assert where.endswith("(past data.max_samples=60: 30 from index 60)")
    assert torch.equal(real[:20], trained[:1].expand(20, -1, -1, -1))       # stored 0.5, as trained on: 0
    assert torch.equal(real[20:], torch.full_like(real[20:], -2.0))          # stored -0.5 in the run's map
    wide = DataConfig(name="npz", path=str(tmp_path / "x.npz"), max_samples=90)
    with pytest.raises(ValueError, match=r"crosstest: the runs mapped their stored values to \[-1, 1\] differently "
                                         r"\(scale and offset 2, -1 vs 1, 0.*set data.value_range"):
        crosstest.held_out_real(cfg, 5, "cpu", torch.Generator().manual_seed(0), others=[wide])


def test_each_d_calls_real_above_its_own_threshold():
    d = threshold_d(0.5)  # logit = x_0 - 0.5
    x = points(0.9, 0.9, 0.9, 0.2)
    assert real_fraction(d, x) == 0.75
    assert real_fraction(d, x, threshold=0.5) == 0.0  # a least-squares D: real above 1/2
    assert confusion(d, x, points(1.2), threshold=0.5)["fp"] == 1.0
    r = cross_test(d, points(0.9), d, points(0.9), x, thresholds=(0.0, 0.5))
    assert (r["model1"]["tp"], r["model2"]["tp"]) == (0.75, 0.0)
    assert (r["model1"]["threshold"], r["model2"]["threshold"]) == (0.0, 0.5)
    assert r["model1"]["cross_fp"] == 1.0 and r["model2"]["cross_fp"] == 0.0
    assert real_fraction(d, x, threshold=np.float32(0.5)) == real_fraction(d, x, threshold=torch.tensor(0.5)) == 0.0
    for bad, match in ((float("nan"), r"threshold: expected a finite number"), ("0", r"threshold: expected"),
                       (torch.tensor([0.5, 0.5]), r"threshold: expected"), (np.bool_(True), r"threshold: expected")):
        with pytest.raises(ValueError, match=match):
            real_fraction(d, x, threshold=bad)
    with pytest.raises(ValueError, match=r"thresholds: expected two numbers"):
        cross_test(d, points(0.9), d, points(0.9), x, thresholds=(0.0,))
    with pytest.raises(ValueError, match=r"thresholds\[1\]: expected a finite number"):
        cross_test(d, points(0.9), d, points(0.9), x, thresholds=(0.0, float("inf")))


@pytest.mark.parametrize("loss,want", [("least_squares", 0.5), ("fgan-kl", 1.0), ("fgan-gan", 0.0),
                                       ("wgan_gp", None)])
def test_runs_are_cross_tested_at_their_losss_threshold(two_runs, tmp_path, capsys, loss, want):
    """A least-squares D's indifference point is 1/2, a KL f-GAN's 1 (methods.losses.decision_threshold): read
    from each run's config; a WGAN critic has none and is refused, naming the run."""
    a, _ = two_runs
    name, _, f = loss.partition("-")
    run = tmp_path / "other"
    fastgan.train(None, overrides=[*TINY, f"run.dir={run}", "method.name=gan", f"method.loss={name}",
                                   *([f"method.f_divergence={f}"] if f else [])])
    if want is None:
        with pytest.raises(ValueError, match=rf"crosstest: {run} was trained with method.loss='wgan_gp'"):
            crosstest.cross_test_runs(a, run, samples=50)
        return
    r = crosstest.cross_test_runs(a, run, samples=200, seed=2)
    assert (r["model1"]["threshold"], r["model2"]["threshold"]) == (0.0, want)
    g = torch.Generator().manual_seed(2)
    real, _ = crosstest.held_out_real(fastgan.config.load_config(a / "config.yaml").data, 200, "cpu", g)
    assert r["model2"]["tp"] == real_fraction(crosstest.load_run(run, (3,)).D, real, threshold=want)
    text = crosstest.format_report(r)
    assert ("real: a logit > 0.5" in text) == (want == 0.5) and ("real: a logit > 1" in text) == (want == 1.0)
    assert "model 1: " + str(a) + " (step 5)\n" in text


@pytest.mark.parametrize("tp,shown", [(0.0, "0.0000"), (0.0123, "0.0123"), (0.04995, "0.04995"),
                                      (0.0499999, "0.0499999")])
def test_a_degenerate_tp_is_shown_below_the_bound(tp, shown):
    """The warning printed "TP 0.0500 < 0.05" for a TP of 0.04995 (4 decimals; an audit, 2026-12-07)."""
    from fastgan.metrics.cross_test import DEGENERATE_TP, _shown_below

    assert _shown_below(tp, DEGENERATE_TP) == shown and float(shown) < DEGENERATE_TP
