"""Config: defaults, YAML round trip, --set overrides, and one clear error per bad key or value."""
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from fastgan import config as C
from fastgan.config import ConfigError, TrainConfig, load_config, save_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_default_is_roth_on_the_3d_mixture():
    cfg = C.validate(TrainConfig())
    assert cfg.method.units == {"roth"} and cfg.method.roth.penalty == "js"
    assert cfg.data.name == "roth3d" and cfg.model.arch == "mlp"
    assert cfg.optim.batch_size == 512 and cfg.optim.lr_d == 1e-3  # Roth appendix 7.3
    assert cfg.method.roth.gamma0 == 2.0 and cfg.method.roth.alpha == 0.01  # Algorithm 1 defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.steps = 3


def test_yaml_round_trip(tmp_path):
    cfg = C.coerce(None, ["method.name=roth+nt+dfm", "method.nt.lam=0.1", "model.g_hidden=[16, 8]",
                          "data.name=npz", "data.path=x.npz", "data.value_range=[0, 1]", "optim.lr_g=2e-4",
                          "run.name=x"])
    p = save_config(cfg, tmp_path / "c.yaml")
    back = load_config(p)
    assert back == cfg
    assert back.model.g_hidden == (16, 8) and back.data.value_range == (0.0, 1.0)
    assert C.diff(back, TrainConfig()) and not C.diff(back, cfg)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.run.name == path.stem  # one run name per file, so runs do not mix in runs/


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_fastgan_configs_summarises_each_config_by_its_whole_first_sentence(path):
    """`fastgan configs`' line is the header's first sentence: an abbreviation's period ("eq. 20") does not end it
    (roth-mixture-gamma-fixed's read "... (Algorithm 1, JS regularizer, eq.")."""
    from fastgan import shipped_configs

    text = shipped_configs.summary(path, width=10 ** 6)
    assert text.endswith(".") and all(text.count(a) == text.count(b) for a, b in ("()", "[]", "{}")), text


def test_shipped_configs_cover_the_paper_experiments():
    names = {p.stem for p in CONFIGS}
    for required in ["roth-mixture-unregularized", "roth-mixture-gamma-fixed", "roth-mixture-gamma-annealed",
                     "roth-mixture-unregularized-5d", "roth-mixture-gamma-fixed-5d", "roth-resnet-lsun-annealed",
                     "roth-resnet-celeba-annealed", "ntgan-2d-standard", "ntgan-2d-gaussian", "dfm-fmnist",
                     "dfm-fmnist-baseline", "goodfellow-mlp-fmnist", "ntgan-fmnist-standard"]:
        assert required in names
    rows = {n.split("-")[2] for n in names if n.startswith("ntgan-fmnist-") and len(n.split("-")[2]) == 1}
    assert rows == set("abcdefghi")
    table4 = {tuple(n.split("-")[3:]) for n in names if n.startswith("ntgan-fmnist-table4-")}
    assert table4 == {(r, m) for r in "abcdefg" for m in ("standard", "gp", "sngan", "ntgan")}


@pytest.mark.parametrize("name,steps", [("roth-resnet-lsun-annealed", 200_000),
                                        ("roth-resnet-celeba-annealed", 100_000)])
def test_the_roth_resnet_configs_follow_the_paper(name, steps):
    """Roth et al. 2017 (section 5.2, appendix 7.4, Figs. 2, 3, 8): Gulrajani's 64x64 ResNet with BatchNorm in G and D,
    z ~ N(0, I) in R^128, batch 64, Adam at 2e-4 (beta1 0.5, beta2 0.999: our reading of "standard"), Algorithm 1
    with the alternative G loss, gamma annealed exponentially from 2.0 to 0.01 over 200K (LSUN) / 100K (CelebA)
    G iterations, on a folder of images resized to 64x64 that the user names."""
    import math

    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    m, d, o, r = cfg.model, cfg.data, cfg.optim, cfg.method.roth
    assert (m.arch, m.resnet_width, m.resolved("latent_dim"), m.latent_dist) == ("resnet", 64, 128, "normal")
    assert m.resolved("g_batchnorm") and m.resolved("d_batchnorm") and not m.spectral_norm and m.init == "paper"
    assert (d.name, d.image_size, d.channels) == ("image_folder", 64, 3) and d.path
    assert (o.optimizer, o.lr_g, o.lr_d, o.beta1, o.beta2, o.batch_size) == ("adam", 2e-4, 2e-4, 0.5, 0.999, 64)
    assert cfg.method.units == {"roth"} and (cfg.method.loss, cfg.method.g_loss) == ("minimax", "nonsaturating")
    assert cfg.method.d_steps == 1 and cfg.run.steps == steps
    assert (r.penalty, r.schedule, r.gamma0, r.anneal_steps) == ("js", "anneal", 2.0, None)
    assert math.isclose(r.gamma0 * r.alpha, 0.01)  # gammaT (Fig. 8)
    from fastgan.methods.roth import GammaSchedule

    g = GammaSchedule("anneal", r.gamma, r.gamma0, r.alpha, cfg.run.steps)
    assert math.isclose(g.update(0).item(), 2.0, rel_tol=1e-6)
    assert math.isclose(g.update(steps).item(), 0.01, rel_tol=1e-5)
    # exponential: halfway it is the geometric mean of gamma0 and gammaT
    assert math.isclose(g.update(steps // 2).item(), math.sqrt(2.0 * 0.01), rel_tol=1e-5)


def test_the_roth_resnet_configs_name_their_missing_folder(tmp_path, monkeypatch):
    """The data folder is the user's: with the shipped placeholder path the run stops before its run folder is made,
    naming the path and the field to set."""
    import fastgan

    monkeypatch.chdir(tmp_path)
    for name in ("roth-resnet-lsun-annealed", "roth-resnet-celeba-annealed"):
        path = load_config(REPO / "configs" / f"{name}.yaml").data.path
        with pytest.raises(FileNotFoundError, match=rf"image folder not found: '{re.escape(path)}'; point data\.path"):
            fastgan.train(REPO / "configs" / f"{name}.yaml", overrides=[f"run.dir={tmp_path / 'run'}"])
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["dfm-fmnist", "dfm-fmnist-baseline"])
def test_the_dfm_configs_score_as_dfm_reports(name):
    """DFM §2.2: the score averaged over 10 independent groups of 5,000 samples (fmnist_scores' default 10 parts
    of run.fd_samples); they took NTGAN's 10000 until 2026-12-05."""
    import inspect

    from fastgan.metrics import fmnist_scores

    run = load_config(REPO / "configs" / f"{name}.yaml").run
    splits = inspect.signature(fmnist_scores).parameters["splits"].default
    assert run.fd and (splits, run.fd_samples // splits) == (10, 5000)


def _differences(name: str, base: str) -> dict:
    """{dotted field: name's value} for every field where shipped config `name` differs from `base`."""
    a, b = load_config(REPO / "configs" / f"{name}.yaml"), load_config(REPO / "configs" / f"{base}.yaml")
    return {field: value for field, value, _ in C.diff(a, b)}


def test_the_goodfellow_authors_config_differs_from_algorithm_1s_in_the_authors_settings_only():
    """goodfellow-mlp-fmnist-authors = goodfellow-mlp-fmnist plus mnist.yaml's settings (goodfeli/adversarial)."""
    assert _differences("goodfellow-mlp-fmnist-authors", "goodfellow-mlp-fmnist") == {
        "model.g_output_bias": "marginals", "method.update": "simultaneous", "optim.lr_decay": 1.000004,
        "optim.min_lr": 1e-6, "optim.momentum_final": 0.7, "optim.momentum_ramp_steps": 249 * 500,
        "run.name": "goodfellow-mlp-fmnist-authors"}


@pytest.mark.parametrize("base", ["roth-mixture-unregularized", "roth-mixture-gamma-fixed"])
def test_the_roth_figure_6_configs_are_figure_1s_with_five_d_steps(base):
    """Roth et al. 5.1: "even more pronounced when the GANs are trained with five discriminator updates per
    generator update step, as shown in Fig. 6"; nothing else differs from Figure 1's configs."""
    assert _differences(f"{base}-5d", base) == {"method.d_steps": 5, "run.name": f"{base}-5d"}


def test_the_ntgan_2d_configs_follow_appendix_6_1():
    """NTGAN 6.1: three fully-connected layers, hidden size 512, ReLU, BatchNorm in all but D's first layer and the
    output layers, Adam at 1e-4, 20K iterations; the NTGAN run adds Gaussian noise to real and fake, clean and
    noisy batches weighted by mu, and differs from the standard GAN in nothing else."""
    from fastgan.models import build_discriminator, build_generator

    std = load_config(REPO / "configs" / "ntgan-2d-standard.yaml")
    m = std.model
    assert (m.arch, m.g_hidden, m.d_hidden, m.mlp_activation) == ("mlp", (512, 512), (512, 512), "relu")
    assert (std.optim.optimizer, std.optim.lr_g, std.optim.lr_d, std.run.steps) == ("adam", 1e-4, 1e-4, 20000)
    assert std.data.name in ("ring8", "grid25") and std.method.name == "gan"
    G, D = build_generator(m, (2,)), build_discriminator(m, (2,))

    def layers(net):
        return [type(x).__name__ for x in net.modules() if not list(x.children()) and type(x).__name__ != "Identity"]

    assert layers(G) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert layers(D) == ["Linear", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    nt = load_config(REPO / "configs" / "ntgan-2d-gaussian.yaml").method.nt
    assert (nt.noise, nt.clean, nt.batch) == ("fixed", True, "full")
    assert all(k in ("method.name", "run.name") or k.startswith("method.nt.")
               for k in _differences("ntgan-2d-gaussian", "ntgan-2d-standard"))


# NTGAN Table 4 as the paper's text prints it (../shared/papers/ntgan-noise-tempered.txt): learning rate,
# BatchNorm in G, optimizer, activation, n_disc, #filters G, #samples
TABLE4_ROWS = r"""
a)	$2 \cdot 10^{-4}$	FALSE	ADAM	ReLU / IReLU	1	[512, 256, 128, 64]	50K
b)	$2 \cdot 10^{-4}$	TRUE	ADAM	tanh	1	[512, 256, 128, 64]	50K
c)	$1 \cdot 10^{-3}$	TRUE	ADAM	ReLU / IReLU	1	[512, 256, 128, 64]	50K
d)	$1 \cdot 10^{-2}$	TRUE	SGD	ReLU / IReLU	1	[512, 256, 128, 64]	50K
e)	$2 \cdot 10^{-4}$	TRUE	ADAM	ReLU / IReLU	5	[512, 256, 128, 64]	50K
f)	$2 \cdot 10^{-4}$	TRUE	ADAM	ReLU / IReLU	1	[64, 64, 64, 64]	50K
g)	$2 \cdot 10^{-4}$	FALSE	ADAM	ReLU / IReLU	1	[512, 256, 128, 64]	5K
""".strip().splitlines()


def _table4_row(line: str) -> dict:
    exp, lr, bn, opt, act, n_disc, filters, samples = line.split("\t")
    mant, exp10 = re.fullmatch(r"\$(\d+) \\cdot 10\^\{(-?\d+)\}\$", lr).groups()
    return {"row": exp.rstrip(")"), "lr": int(mant) * 10.0 ** int(exp10), "g_bn": {"TRUE": True, "FALSE": False}[bn],
            "optimizer": opt.lower(), "activation": "tanh" if act == "tanh" else "relu", "d_steps": int(n_disc),
            "filters": [int(f) for f in filters.strip("[]").split(",")], "samples": int(samples.rstrip("K")) * 1000}


@pytest.mark.parametrize("line", TABLE4_ROWS, ids=lambda line: line[0])
def test_table4_configs_follow_the_paper(line):
    t = _table4_row(line)
    for method in ("standard", "gp", "sngan", "ntgan"):
        path = REPO / "configs" / "ntgan-table4" / f"ntgan-fmnist-table4-{t['row']}-{method}.yaml"
        cfg = load_config(path)
        m, o = cfg.model, cfg.optim
        assert (o.lr_g, o.lr_d, o.optimizer) == (pytest.approx(t["lr"]), pytest.approx(t["lr"]), t["optimizer"])
        assert o.batch_size == 64 and cfg.run.steps == 100_000 and cfg.run.fd  # section 3's batch and iterations
        assert o.optimizer == "sgd" or (o.beta1, o.beta2) == (0.5, 0.999)
        assert o.optimizer == "adam" or o.momentum == 0.0
        assert m.arch == "dcgan" and m.resolved("g_batchnorm") == t["g_bn"] and m.dcgan_activation == t["activation"]
        assert cfg.method.d_steps == t["d_steps"] and cfg.data.max_samples == t["samples"]
        # 28x28 images: one upsampling fewer than the table's 32x32, so its first number (the FC layer's) goes
        assert m.dcgan_g_filters == (None if t["filters"] == [512, 256, 128, 64] else tuple(t["filters"][1:]))
        units, sn = cfg.method.units, m.spectral_norm
        if method == "standard":
            assert units == frozenset() and not sn and m.resolved("d_batchnorm")
        elif method == "gp":  # Roth et al.'s Algorithm 1 with its default annealing
            r = cfg.method.roth
            assert units == {"roth"} and (r.penalty, r.schedule, r.gamma0, r.alpha) == ("js", "anneal", 2.0, 0.01)
            assert not sn and m.resolved("d_batchnorm")
        elif method == "sngan":
            assert units == frozenset() and sn and not m.resolved("d_batchnorm")
        else:  # "The noise penalty term is set to lambda = 0.1"
            nt = cfg.method.nt
            assert units == {"nt"} and (nt.noise, nt.lam, nt.clean) == ("generator", 0.1, True)
            assert not sn and m.resolved("d_batchnorm")
        assert cfg.method.loss == "minimax" and cfg.method.g_loss == "nonsaturating"


def test_table4_configs_are_what_the_tool_writes(tmp_path):
    import importlib.util
    import subprocess
    import sys

    tool = REPO / "tools" / "make_ntgan_table4_configs.py"
    subprocess.run([sys.executable, str(tool), "--out", str(tmp_path)], check=True, capture_output=True)
    shipped = sorted((REPO / "configs" / "ntgan-table4").glob("*.yaml"))
    assert [p.name for p in shipped] == sorted(p.name for p in tmp_path.glob("*.yaml"))
    for p in shipped:
        assert p.read_text() == (tmp_path / p.name).read_text(), p.name
    spec = importlib.util.spec_from_file_location("make_table4", tool)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert {r: (v[0], v[1], v[2], v[3], v[4], list(v[5]), v[6]) for r, v in mod.TABLE4.items()} == {
        t["row"]: (t["lr"], t["g_bn"], t["optimizer"], t["activation"], t["d_steps"], t["filters"], t["samples"])
        for t in map(_table4_row, TABLE4_ROWS)}


def test_table4_transcription_is_the_papers():
    paper = REPO.parent / "shared" / "papers" / "ntgan-noise-tempered.txt"
    if not paper.exists():
        pytest.skip(f"{paper} not beside the checkout (the configs are still checked against TABLE4_ROWS)")
    lines = [re.sub(r"\s+", " ", ln).strip() for ln in paper.read_text().splitlines()]
    start = lines.index("Exp. Learning Rate $\\textbf{BatchNorm in}\\ G$ Optimizer Activation $n_{disc}$ "
                        "<b>#Filters</b> $G$ #Samples")
    assert lines[start + 1:start + 8] == [re.sub(r"\s+", " ", ln) for ln in TABLE4_ROWS]


@pytest.mark.parametrize("data,message", [
    ({"model": {"arch": "foo"}}, r"model\.arch: must be one of \('mlp', 'goodfellow', 'dcgan', 'resnet'\), got 'foo'"),
    ({"method": {"loss": "hinge"}}, r"method\.loss: must be one of \('minimax', 'least_squares', 'wgan_gp', 'fgan'\)"),
    ({"method": {"rothh": {}}}, r"method\.rothh: unknown key; allowed keys: .*did you mean 'roth'"),
    ({"optimm": {}}, r"optimm: unknown key; allowed keys: model, data, method, optim, run"),
    ({"method": {"roth": {"gamma": -1}}}, r"method\.roth\.gamma: must be in \[0\.0, 3\.40\d+e\+38\] \(float32's largest value\), got -1"),
    # a weight, std or scale that float32 cannot hold: inf at step 1, a nan loss naming no field
    ({"method": {"name": "dfm", "dfm": {"sigma": 1e39}}}, r"method\.dfm\.sigma: must be in \[0\.0, 3\.40\d+e\+38\]"),
    ({"method": {"name": "dfm", "dfm": {"lambda_adv": 1e39}}}, r"method\.dfm\.lambda_adv: must be in \[0\.0,"),
    ({"method": {"name": "dfm", "dfm": {"lambda_denoise": 1e39}}}, r"method\.dfm\.lambda_denoise: must be in \[0\.0,"),
    ({"method": {"name": "nt", "nt": {"lam": 1e39}}}, r"method\.nt\.lam: must be in \[0\.0,"),
    ({"method": {"name": "nt", "nt": {"sigma": 1e39}}}, r"method\.nt\.sigma: must be in \[0\.0,"),
    ({"method": {"roth": {"gamma0": 1e39}}}, r"method\.roth\.gamma0: must be in \[0\.0,"),
    ({"method": {"loss": "wgan_gp", "name": "gan", "gp_weight": 1e39}}, r"method\.gp_weight: must be in \[0\.0,"),
    ({"data": {"mixture_std": 1e39}}, r"data\.mixture_std: must be in \[0\.0,"),
    ({"method": {"roth": {"alpha": 0}}}, r"method\.roth\.alpha: must be in \(0\.0, 1\.0\], got 0"),
    ({"method": {"roth": {"alpha": 2}}}, r"method\.roth\.alpha: must be in \(0\.0, 1\.0\], got 2\.0"),
    ({"optim": {"beta1": -0.5}}, r"optim\.beta1: must be in \[0\.0, 1\.0\], got -0\.5"),
    ({"optim": {"batch_size": "big"}}, r"optim\.batch_size: must be an integer, got 'big'"),
    ({"optim": {"batch_size": 2.5}}, r"optim\.batch_size: must be an integer, got 2\.5"),
    ({"optim": {"batch_size": True}}, r"optim\.batch_size: must be an integer, got True"),
    ({"run": {"tensorboard": "yes"}}, r"run\.tensorboard: must be true or false, got 'yes'"),
    ({"run": {"steps": None}}, r"run\.steps: must be an integer, got null"),
    ({"run": {"device": "tpu"}}, r"run\.device: must be one of \('cpu', 'cuda', 'cuda:N', 'auto'\), got 'tpu'"),
    # torch.device refuses these with a RuntimeError: a traceback from `fastgan train`, where "$" let "cpu\n" in
    ({"run": {"device": "cpu\n"}}, r"run\.device: must be one of .*got 'cpu\\n'"),
    ({"run": {"device": "cuda:01"}}, r"run\.device: must be one of .*got 'cuda:01'"),
    ({"run": {"device": "cuda:\u0663"}}, r"run\.device: must be one of"),
    ({"method": {"name": "roth+wgan"}}, r"method\.name: units must be '\+'-joined names from .*got 'wgan'"),
    ({"method": {"name": "roth+roth"}}, r"method\.name: a unit appears twice"),
    ({"method": {"name": "roth", "loss": "least_squares"}}, r"method\.roth\.penalty: 'js' .* needs method\.loss='minimax'"),
    ({"method": {"name": "roth", "roth": {"penalty": "f"}}}, r"method\.roth\.penalty: 'f' needs method\.loss='fgan'"),
    ({"method": {"name": "dfm", "d_steps": 2}}, r"method\.d_steps: simultaneous updates"),
    ({"method": {"name": "nt", "nt": {"batch": "half", "clean": False}}}, r"method\.nt\.batch: 'half'"),
    ({"method": {"name": "nt", "nt": {"noise": "generator", "sigma_anneal": "linear"}}}, r"method\.nt\.sigma_anneal"),
    ({"data": {"name": "npz"}}, r"data\.path: required for data\.name='npz'"),
    ({"model": {"g_hidden": [4, "x"]}}, r"model\.g_hidden\[1\]: must be an integer, got 'x'"),
    ({"method": []}, r"method: must be a mapping"),
])
def test_bad_values_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        C.from_dict(data)


@pytest.mark.parametrize("device", ["cuda:1", "cuda:128", "cuda:255", "cuda:256", "cuda:" + "9" * 20])
def test_a_cuda_index_past_the_visible_devices_is_refused(monkeypatch, device):
    """torch.device keeps the index in 8 bits: with one GPU visible, run.device=cuda:256 ran on cuda:0 and
    cuda:255 on the current device, silently, and cuda:128 (index -128) passed the check."""
    from fastgan.run_commands import cli_device
    from fastgan.train_checks import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    C.from_dict({"run": {"device": device}})
    with pytest.raises(ConfigError, match=rf"^run\.device: '{device}' requested but torch sees 1 CUDA device"):
        _device(device)
    with pytest.raises(ConfigError, match=rf"^--device: '{device}' requested but torch sees 1 CUDA device"):
        cli_device(device)
    assert _device("cuda:0") == torch.device("cuda", 0)


_LONG = "x" * 500


@pytest.mark.parametrize("overrides", [
    [f"run.device={_LONG}"], [f"run.name=/{_LONG}"], [f"run.progress={_LONG}"], [f"method.name=roth+{_LONG}"],
    [f"run.steps{_LONG}"], [f"={_LONG}"], [f"run.name=a #{_LONG}"], f"run.name={_LONG}",
])
def test_an_error_quotes_a_long_value_cut_short(overrides):
    """docs/training.md: a string at 200 characters, the whole quote at 300; run.device's, run.name's,
    method.name's and --set's own messages quoted all 500."""
    with pytest.raises(ConfigError) as e:
        C.coerce(None, overrides)
    assert "x" * 90 in str(e.value) and "x" * 201 not in str(e.value) and len(str(e.value)) < 500, str(e.value)


def test_numbers_from_yaml_strings_and_ints():
    cfg = C.from_dict({"optim": {"lr_d": "1e-4", "lr_g": 1}, "run": {"steps": "2e3"}})
    assert cfg.optim.lr_d == 1e-4 and isinstance(cfg.optim.lr_g, float) and cfg.run.steps == 2000


def test_overrides():
    cfg = C.coerce(None, ["method.roth.gamma=0.5", "method.name=roth+nt", "run.dir=null", "model.d_hidden=[3]"])
    assert cfg.method.roth.gamma == 0.5 and cfg.method.units == {"roth", "nt"} and cfg.model.d_hidden == (3,)
    with pytest.raises(ConfigError, match=r"method\.roth\.gama: unknown key.*did you mean 'gamma'"):
        C.coerce(None, ["method.roth.gama=1"])
    with pytest.raises(ConfigError, match=r"run\.steps: is a value, not a section"):
        C.coerce(None, ["run.steps.x=1"])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        C.coerce(None, ["run.steps"])
    # overrides apply on top of a config object, a dict and a file alike
    base = C.coerce(None, ["run.steps=7"])
    assert C.coerce(base, ["run.seed=3"]).run.steps == 7
    assert C.coerce({"run": {"steps": 9}}, ["run.seed=3"]).run.steps == 9


def test_a_mapping_given_to_a_section_sets_those_fields_only():
    """`--set 'run={seed: 3, steps: 9}'` is `run.seed=3 run.steps=9`: the section's other values (the file's) stay
    (it replaced the whole section, resetting them to their defaults)."""
    base = {"run": {"steps": 7, "name": "keep"}, "method": {"name": "roth", "roth": {"gamma0": 0.3}}}
    cfg = C.coerce(base, ["run={seed: 3, steps: 9}", "method={roth: {alpha: 0.5}}"])
    assert (cfg.run.steps, cfg.run.seed, cfg.run.name) == (9, 3, "keep")
    assert (cfg.method.name, cfg.method.roth.gamma0, cfg.method.roth.alpha) == ("roth", 0.3, 0.5)
    assert C.coerce(base, [("run", {"seed": 4})]).run.name == "keep"
    with pytest.raises(ConfigError, match=r"^run\.stepz: unknown key"):
        C.coerce(base, ["run={stepz: 3}"])
    with pytest.raises(ConfigError, match=r"^run: must be a mapping"):
        C.coerce(base, ["run=3"])


def test_a_shipped_config_is_found_by_name_where_no_such_file_exists(tmp_path, monkeypatch):
    """From any folder (an installed fastgan: the configs are its data package fastgan.configs) a shipped config goes
    by its name, with or without .yaml, or by the README's configs/... path; a missing path elsewhere stays an
    error, so a typo never trains another config."""
    from fastgan import shipped_configs

    monkeypatch.chdir(tmp_path)
    assert sorted(shipped_configs.names()) == sorted(p.stem for p in CONFIGS)
    for given in ("roth-mixture-gamma-fixed", "roth-mixture-gamma-fixed.yaml", "configs/roth-mixture-gamma-fixed.yaml",
                  Path("configs") / "roth-mixture-gamma-fixed.yaml"):
        assert load_config(given) == load_config(REPO / "configs" / "roth-mixture-gamma-fixed.yaml"), given
    table4 = "ntgan-fmnist-table4-c-gp"
    # the installed package's copy (CI's non-editable install) or the checkout's own file
    assert C.config_path(f"configs/ntgan-table4/{table4}.yaml").read_bytes() == \
        (REPO / "configs" / "ntgan-table4" / f"{table4}.yaml").read_bytes()
    assert C.config_path(table4).name == f"{table4}.yaml"
    assert C.coerce("ntgan-2d-gaussian", ["run.steps=7"]).run.steps == 7
    for missing in ("configs/roth-mixture-gamma-fixd.yaml", "elsewhere/roth-mixture-gamma-fixed.yaml",
                    "configs/ntgan-table4/roth-mixture-gamma-fixed.yaml", tmp_path / "roth-mixture-gamma-fixed.yaml",
                    "configs/a/b/roth-mixture-gamma-fixed.yaml", "../roth-mixture-gamma-fixed",
                    "./roth-mixture-gamma-fixed.yaml", "roth-mixture-gamma-fixed/",
                    "./configs/roth-mixture-gamma-fixed"):
        with pytest.raises(FileNotFoundError, match=r"config file not found: .*`fastgan configs` lists them"):
            load_config(missing)
    (tmp_path / "roth-mixture-gamma-fixed.yaml").symlink_to(tmp_path / "gone.yaml")  # the user's link, broken
    with pytest.raises(FileNotFoundError, match=r"roth-mixture-gamma-fixed.yaml is a symbolic link to .*gone.yaml"):
        load_config("roth-mixture-gamma-fixed.yaml")
    (tmp_path / "roth-mixture-gamma-fixed.yaml").unlink()
    (tmp_path / "roth-mixture-gamma-fixed.yaml").write_text("run:\n  name: mine\n")
    assert load_config("roth-mixture-gamma-fixed.yaml").run.name == "mine"  # a file that exists is read first


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)
    bad.write_text("run:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: run\.stepz: unknown key"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == TrainConfig()


def test_directly_built_config_is_validated():
    cfg = TrainConfig(method=C.MethodConfig(name="nt", nt=C.NTConfig(noise="gaussian")))
    with pytest.raises(ConfigError, match=r"method\.nt\.noise: must be one of \('fixed', 'learned_sigma', 'generator'\)"):
        C.validate(cfg)


# ------------------------------------------------------------------------------------------ integer ranges

INT64_MAX = 2**63 - 1


@pytest.mark.parametrize("data,message", [
    ({"run": {"seed": 2**70}}, (r"run\.seed: must be in \[-9223372036854775808, 9223372036854775807\] \(a signed "
                                r"64-bit integer.*\), got 1180591620717411303424$")),
    ({"run": {"seed": -2**63 - 1}}, r"run\.seed: must be in \[-9223372036854775808, 9223372036854775807\]"),
    ({"optim": {"batch_size": 2**64}}, r"optim\.batch_size: must be <= 9223372036854775807 .*got 18446744073709551616"),
    ({"run": {"num_samples": "1e30"}}, r"run\.num_samples: must be <= 9223372036854775807"),
    ({"model": {"g_hidden": [16, 2**63]}}, r"model\.g_hidden\[1\]: must be <= 9223372036854775807"),
    ({"model": {"latent_dim": 2**63}}, r"model\.latent_dim: must be <= 9223372036854775807"),
    ({"data": {"name": "image_folder", "path": "x", "image_size": 2**31}},
     r"data\.image_size: must be <= 2147483647 .*got 2147483648"),
])
def test_integers_beyond_what_torch_takes_name_the_field_and_range(data, message):
    with pytest.raises(ConfigError, match=message):
        C.from_dict(data)


def test_seed_range_is_what_torch_manual_seed_takes():
    import torch

    for seed in (-2**63, -1, 0, INT64_MAX):
        cfg = C.from_dict({"run": {"seed": seed}})
        torch.Generator().manual_seed(cfg.run.seed)  # accepted, and so are the trainer's derived seeds
        torch.Generator().manual_seed(cfg.run.seed + 104729)
    for seed in (-2**63 - 1, 2**64):  # just outside: torch overflows
        with pytest.raises((ValueError, OverflowError, RuntimeError)):
            torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ bad files, overrides

def test_top_level_list_names_the_file_with_and_without_overrides(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    msg = rf"^{re.escape(str(bad))}: the top level must be a mapping of sections to values \(run: \.\.\.\), got a list$"
    with pytest.raises(ConfigError, match=msg):
        load_config(bad)
    with pytest.raises(ConfigError, match=msg):
        C.coerce(bad, ["run.steps=1"])
    bad.write_text("just a string\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: the top level must be a mapping .*got a string"):
        C.coerce(str(bad), ["run.steps=1"])


def test_a_bad_value_in_the_file_is_named_with_the_file_with_and_without_overrides(tmp_path):
    """With any --set, an error in the file lost the file's name (an audit of the CLI, 2026-12-06); one that an
    override causes is not blamed on the file."""
    f = tmp_path / "lr.yaml"
    f.write_text("optim:\n  lr_g: fast\n")
    msg = rf"^{re.escape(str(f))}: optim\.lr_g: must be a number, got 'fast'$"
    for call in (lambda: load_config(f), lambda: C.coerce(f, ["run.seed=1"])):
        with pytest.raises(ConfigError, match=msg):
            call()
    assert C.coerce(f, ["optim.lr_g=0.01"]).optim.lr_g == 0.01
    f.write_text("optim:\n  lr_g: 0.01\n")
    with pytest.raises(ConfigError, match=r"^optim\.lr_g: must be a number, got 'fast'$"):
        C.coerce(f, ["optim.lr_g=fast"])


def test_invalid_yaml_is_one_line_with_the_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [1, 2\n  steps: \n")
    for call in (lambda: load_config(bad), lambda: C.coerce(bad, ["run.steps=1"])):
        with pytest.raises(ConfigError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg, msg
        assert msg.startswith(f"{bad}:2:8: not valid YAML: expected ',' or ']', but got ':'"), msg
    bad.write_bytes(b"run:\n  name: \xff\xfe\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: not a UTF-8 text file"):
        load_config(bad)


@pytest.mark.parametrize("overrides,message", [
    ([None], r"overrides: each item must be a 'key=value' string.*got None"),
    (["run.steps=2", 5], r"overrides: each item must be a 'key=value' string.*got 5"),
    ([("run.steps",)], r"overrides: each item must be a 'key=value' string.*got \('run\.steps',\)"),
    ([(3, 1)], r"overrides: each item must be a 'key=value' string.*got \(3, 1\)"),
    ("run.steps=2", r"overrides: must be a list of 'key=value' strings, got the string 'run\.steps=2'"),
    (7, r"overrides: must be a list of 'key=value' strings, got int"),
])
def test_bad_overrides_show_the_item(overrides, message):
    with pytest.raises(ConfigError, match=message):
        C.coerce(None, overrides)


# ------------------------------------------------------------------------------------------ the CLI's one line

def _cli(*args, cwd):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "fastgan", "train", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False)


def test_cli_config_file_errors_are_one_line_exit_2(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "bad.yaml").write_text("run: [1, 2\n  steps: \n")
    cases = [
        (["list.yaml"], "fastgan train: error: list.yaml: the top level must be a mapping"),
        (["list.yaml", "--set", "run.steps=1"], "fastgan train: error: list.yaml: the top level must be a mapping"),
        (["bad.yaml"], "fastgan train: error: bad.yaml:2:8: not valid YAML: expected ',' or ']', but got ':'"),
        (["--set", "run.seed=1180591620717411303424"],
         "fastgan train: error: run.seed: must be in [-9223372036854775808, 9223372036854775807]"),
        (["--set", "optim.batch_size=18446744073709551616"],
         "fastgan train: error: optim.batch_size: must be <= 9223372036854775807"),
    ]
    for args, start in cases:
        p = _cli(*args, "--set", f"run.out_dir={tmp_path / 'runs'}", cwd=tmp_path)
        assert p.returncode == 2 and p.stderr.startswith(start) and p.stderr.count("\n") == 1, (args, p.stderr)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("overrides,field", [
    (["model.arch=dcgan"], r"^model\.arch: 'dcgan' needs an image data set, data\.name='roth3d'"),
    (["model.arch=dcgan", "data.name=ring8"], r"^model\.arch: .*data\.name='ring8'"),
    (["method.name=dfm", "optim.batch_size=1"], r"^optim\.batch_size: training-mode BatchNorm \(method\.name"),
    (["model.d_batchnorm=true", "optim.batch_size=1"], r"^optim\.batch_size: .*model\.d_batchnorm.*got 1"),
    (["model.arch=goodfellow", "model.g_batchnorm=true", "optim.batch_size=1"], r"^optim\.batch_size: .*g_batchnorm"),
])
def test_what_the_config_alone_rules_out_is_a_config_error(overrides, field):
    """Caught by validation, before a run folder exists (they failed as data errors, one only at step 1)."""
    with pytest.raises(ConfigError, match=field):
        C.coerce(None, overrides)


def test_batch_of_one_is_fine_without_batchnorm():
    assert C.coerce(None, ["optim.batch_size=1"]).optim.batch_size == 1


@pytest.mark.parametrize("section,fields,unread", [
    ("data", {"name": "npz", "path": "x.npz"}, "split"),
    ("data", {"name": "roth3d"}, "path"),
    ("data", {"name": "image_folder", "path": "d"}, "npz_key"),
    ("model", {"arch": "mlp"}, "leaky_slope"),
    ("model", {"arch": "mlp", "mlp_activation": "leaky_relu"}, "dcgan_width"),
    ("model", {"arch": "dcgan"}, "g_hidden"),
    ("model", {"arch": "dcgan", "dcgan_activation": "tanh"}, "leaky_slope"),
    ("model", {"arch": "goodfellow"}, "dcgan_activation"),
    ("model", {"arch": "resnet"}, "dcgan_width"),
    ("model", {"arch": "resnet"}, "g_hidden"),
    ("model", {"arch": "dcgan"}, "resnet_width"),
])
def test_stored_configs_drop_what_their_run_did_not_read(section, fields, unread):
    """A config fastgan wrote before a field was refused where it is not read (a checkpoint's, a run folder's
    config.yaml) loads with that field at its default, which the run used; the same mapping given as a new config
    is refused, naming the field."""
    value = {"split": "test", "path": "/elsewhere", "npz_key": "x", "leaky_slope": 0.1, "dcgan_width": 32,
             "g_hidden": [8], "dcgan_activation": "tanh", "resnet_width": 32}[unread]
    data = {section: {**fields, unread: value}}
    if fields.get("arch") in ("dcgan", "resnet"):
        data["data"] = {"name": "fashion_mnist"}  # an image data set
    with pytest.raises(ConfigError, match=rf"^{section}\.{unread}: (not|only) used by"):
        C.from_dict(data)
    cfg = C.from_stored(data)
    stored = getattr(getattr(cfg, section), unread)
    assert stored == type(getattr(cfg, section)).__dataclass_fields__[unread].default
    for key, v in fields.items():  # what the run read is kept
        assert getattr(getattr(cfg, section), key) == v
    assert data[section][unread] == value  # the caller's mapping is not changed


def test_a_stored_adam_config_drops_the_momentum_adam_never_read():
    """Runs before 2026-12-04 accepted optim.momentum with Adam (and ignored it): their checkpoints still load."""
    data = {"optim": {"optimizer": "adam", "momentum": 0.5}}
    with pytest.raises(ConfigError, match=r"^optim\.momentum: SGD's momentum"):
        C.from_dict(data)
    assert C.from_stored(data).optim.momentum == 0.0
    assert C.from_stored({"optim": {"momentum": 0.5}}).optim.momentum == 0.0  # adam by default
    assert C.from_stored({"optim": {"optimizer": "sgd", "momentum": 0.5}}).optim.momentum == 0.5


def test_stored_configs_still_refuse_what_is_invalid():
    with pytest.raises(ConfigError, match=r"model\.latent_dim"):
        C.from_stored({"model": {"arch": "mlp", "leaky_slope": 0.1, "latent_dim": -1}})
    with pytest.raises(ConfigError, match=r"model\.arch"):  # an arch that does not exist: no field is dropped for it
        C.from_stored({"model": {"arch": ["mlp"], "leaky_slope": 0.1}})
    with pytest.raises(ConfigError, match=r"data\.mixture_std"):  # read by the mixture: not dropped
        C.from_stored({"data": {"name": "ring8", "mixture_std": -1.0}})


@pytest.mark.parametrize("section", ["data", "model"])
def test_unread_fields_are_exactly_what_the_config_refuses(section):
    """unread_fields (which from_stored drops) and the refusals are one table: every field it lists for a data set /
    architecture is refused away from its default there, and every other field is accepted."""
    from fastgan.data.config import DATASETS, DataConfig
    from fastgan.data.config import unread_fields as data_unread
    from fastgan.models.config import ARCHS, ModelConfig
    from fastgan.models.config import unread_fields as model_unread

    other = {"path": "/p", "split": "test", "max_samples": 3, "nominal_size": 7, "mixture_std": 0.5,
             "image_size": 8, "channels": 1, "npz_key": "k", "value_range": (0.0, 2.0), "g_hidden": (8,),
             "d_hidden": (8,), "mlp_activation": "relu", "leaky_slope": 0.1, "maxout_pieces": 2,
             "d_input_dropout": 0.1, "d_dropout": 0.1, "dcgan_width": 8, "dcgan_g_filters": (8, 8, 8),
             "dcgan_activation": "tanh", "g_output_bias": "marginals", "resnet_width": 8}
    if section == "data":
        cases = [((n,), {"name": n, **({"path": "/p"} if n in ("mnist", "cifar10", "image_folder", "npz") else {})},
                  DataConfig, data_unread) for n in DATASETS]
    else:
        cases = [((a, act, "relu"), {"arch": a, "mlp_activation": act}, ModelConfig, model_unread)
                 for a in ARCHS for act in (("tanh", "leaky_relu") if a == "mlp" else ("tanh",))]
        cases = [(k, {kk: vv for kk, vv in b.items() if kk != "mlp_activation" or b["arch"] == "mlp"}, cls, f)
                 for k, b, cls, f in cases]
    for key, base, cls, unread_fields in cases:
        unread = unread_fields(*key)
        for name, value in other.items():
            if name not in cls.__dataclass_fields__ or name in base:
                continue
            try:
                cls(**base, **{name: value})
                refused = None
            except ValueError as e:
                refused = str(e)
            if name in unread:
                assert refused and refused.startswith(f"{section}.{name}: {unread[name]}"), (base, name, refused)
            else:
                assert refused is None or "used by" not in refused, (base, name, refused)


# ------------------------------------------------------------------------------ docs/config.md's default tables

def _config_doc_default_rows():
    """(dotted key, default text) from docs/config.md's `| key | default | meaning |` tables (Methods, Data,
    Models; the README links there for every key)."""
    text = (REPO / "docs" / "config.md").read_text()
    rows, prefix = [], None
    for line in text.splitlines():
        if line.startswith("#"):  # a heading: the tables under these three only
            prefix = {"## Data (`data:`)": "data.", "## Models (`model:`)": "model.",
                      "## Methods and their config keys": ""}.get(line.strip())
        if prefix is None or not line.startswith("| `"):
            continue
        key_cell, default_cell = [c.strip() for c in line.strip("|").split("|")][:2]
        keys = re.findall(r"`([^`]+)`", key_cell)
        defaults = [d.strip().strip("`") for d in default_cell.split(",")] if "," in default_cell else [
            default_cell.strip("`")]
        section = prefix + keys[0].rsplit(".", 1)[0] + "." if "." in keys[0] else prefix
        full = [prefix + keys[0]] + [k if k.count(".") else section + k for k in keys[1:]]
        if len(full) != len(defaults):
            assert len(defaults) == 1, line
            defaults = defaults * len(full)
        rows += list(zip(full, defaults))
    return rows


def _default_of(key):
    obj = TrainConfig()
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def test_config_doc_default_tables_are_the_dataclass_defaults():
    """Each default docs/config.md's tables print is the field's default (a changed default, or a row
    left behind, shows here)."""
    rows = _config_doc_default_rows()
    assert len(rows) > 60, rows
    words = {"null": None, "none": None, "true": True, "false": False, "per arch": None, "=lr_d": None,
             "input width": None}
    for key, text in rows:
        actual = _default_of(key)
        if isinstance(actual, str):  # a choice, `none` included
            expected = text
        else:
            expected = words[text] if text in words else float(text) if re.fullmatch(r"[-+0-9.e]+", text) else text
        if isinstance(expected, float):
            assert isinstance(actual, (int, float)) and not isinstance(actual, bool) and actual == expected, (key, text)
        else:
            assert actual == expected, (key, text, actual)


def test_defaults_the_config_doc_gives_in_its_prose():
    """Defaults docs/config.md's tables give in their meaning column (Roth's gamma, Adam's betas) and the arch
    defaults (`latent_dim` 2 / 100 / 128 / 128, mlp tanh 128-128, goodfellow 1200-1200 / 240x5, BatchNorm on for dcgan
    and resnet, resnet_width 64)."""
    cfg = TrainConfig()
    r, o = cfg.method.roth, cfg.optim
    assert (r.gamma, r.gamma0, r.alpha) == (0.1, 2.0, 0.01)
    assert (o.beta1, o.beta2, o.momentum) == (0.5, 0.999, 0.0)
    from fastgan.models.config import ModelConfig

    mlp, good, dc, res = (ModelConfig(), ModelConfig(arch="goodfellow"), ModelConfig(arch="dcgan"),
                          ModelConfig(arch="resnet"))
    assert [m.resolved("latent_dim") for m in (mlp, good, dc, res)] == [2, 100, 128, 128]
    assert (mlp.resolved("g_hidden"), mlp.resolved("d_hidden")) == ((128, 128), (128, 128))
    assert (good.resolved("g_hidden"), good.resolved("d_hidden")) == ((1200, 1200), (240, 240))
    assert [(m.resolved("g_batchnorm"), m.resolved("d_batchnorm")) for m in (mlp, good, dc, res)] == [
        (False, False), (False, False), (True, True), (True, True)]
    assert res.resnet_width == 64
# ------------------------------------------------------------------------------------------ range edges, types

@pytest.mark.parametrize("data", [
    {"optim": {"beta1": 0.0, "beta2": 0.0}},  # [0, 1]: the lower end is in
    {"optim": {"optimizer": "sgd", "momentum": 1.0, "beta1": 1.0}},  # the upper end too; < 1 only for adam
    {"method": {"roth": {"alpha": 1.0, "gamma": 0.0}}},  # (0, 1] and >= 0
    {"run": {"sample_every": 0, "checkpoint_every": 0, "fd_every": 0}},  # 0: only at the end
    {"run": {"seed": -2**63}},
    {"run": {"parzen": True, "parzen_test": 2}},
    {"run": {"parzen_test": 1}},  # >= 2 only with run.parzen
    {"data": {"name": "image_folder", "path": "d", "image_size": 2**31 - 1}},  # PIL's largest
    {"model": {"mlp_activation": "leaky_relu", "leaky_slope": 1.0}},
    {"run": {"cuda_graph": True, "device": "auto"}},
    {"run": {"device": "cuda:12"}},
])
def test_range_edges_are_accepted(data):
    C.from_dict(data)


@pytest.mark.parametrize("data,message", [
    ({"optim": {"lr_g": 0}}, r"optim\.lr_g: must be in \(0\.0, "),
    ({"optim": {"momentum": 1.5, "optimizer": "sgd"}}, r"optim\.momentum: must be in \[0\.0, 1\.0\]"),
    ({"method": {"d_steps": 0}}, r"method\.d_steps: must be >= 1, got 0"),
    ({"method": {"roth": {"every": 0}}}, r"method\.roth\.every: must be >= 1"),
    ({"method": {"roth": {"anneal_steps": 0}}}, r"method\.roth\.anneal_steps: must be >= 1"),
    ({"method": {"nt": {"anneal_steps": 0}}}, r"method\.nt\.anneal_steps: must be >= 1"),
    ({"run": {"log_every": 0}}, r"run\.log_every: must be >= 1"),
    ({"run": {"num_samples": 0}}, r"run\.num_samples: must be >= 1"),
    ({"run": {"fd_samples": 19}}, r"run\.fd_samples: must be >= 20"),
    ({"run": {"parzen": True, "parzen_test": 1}}, r"run\.parzen_test: must be >= 2 with run\.parzen"),
    ({"run": {"progress": "never"}}, r"run\.progress: must be one of \('auto', 'on', 'off'\)"),
    ({"run": {"device": "cuda:"}}, r"run\.device: must be one of"),
    ({"run": {"name": "a/b"}}, r"run\.name: must be a non-empty name without '/'"),
    ({"run": {"name": " a"}}, r"run\.name: must be a non-empty name"),
    ({"run": {"cuda_graph": True}}, r"run\.cuda_graph: CUDA graphs need run\.device='cuda'"),
    ({"model": {"mlp_activation": "leaky_relu", "leaky_slope": 1.5}}, r"model\.leaky_slope: must be in \[0\.0, 1\.0\]"),
    ({"model": {"arch": "goodfellow", "d_input_dropout": 1.0}}, r"model\.d_input_dropout: must be in \[0\.0, 0\.99\]"),
    ({"method": {"roth": {"gamma": float("nan")}}}, r"method\.roth\.gamma: must be a finite number, got nan"),
    ({"method": {"roth": {"gamma": float("inf")}}}, r"method\.roth\.gamma: must be a finite number, got inf"),
    ({"optim": {"lr_g": True}}, r"optim\.lr_g: must be a number, got True"),
    ({"run": {"tensorboard": 1}}, r"run\.tensorboard: must be true or false, got 1"),
    ({"data": {"name": "npz", "path": "x.npz", "value_range": [0, 1, 2]}},
     r"data\.value_range: must be a list of 2 values .*got 3 values"),
])
def test_values_just_outside_a_range_or_type_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        C.from_dict(data)


@pytest.mark.parametrize("overrides,message", [
    (["method.name=nt", "method.nt.noise=fixed", "method.nt.clean=false", "method.nt.fused=true"],
     r"^method\.nt\.fused: noisy_clean_batch .*needs method\.nt\.clean=true"),
    (["method.name=roth+nt", "method.roth.mode=jvp", "method.nt.noise=learned_sigma"], r"^method\.roth\.mode: 'jvp'"),
    (["method.name=gan", "method.loss=wgan_gp", "method.g_loss=saturating"], r"^method\.g_loss: 'saturating'"),
    (["method.name=gan", "method.update=simultaneous", "method.d_steps=2"],
     r"^method\.d_steps: simultaneous updates \(method\.update='simultaneous'\) need d_steps=1, got 2"),
    (["method.name=nt", "method.nt.batch=half", "method.nt.noise=fixed", "optim.batch_size=1"],
     r"^optim\.batch_size: the half-batch construction needs >= 2, got 1"),
    (["method.name=nt", "method.nt.batch=half", "model.g_batchnorm=true", "optim.batch_size=2"],
     r"^optim\.batch_size: NT's noise generator .*batch_size >= 3, got 2"),
    (["model.arch=dcgan", "data.name=grid25"], r"^model\.arch: 'dcgan' needs an image data set, data\.name='grid25'"),
    (["model.arch=resnet"], r"^model\.arch: 'resnet' needs an image data set, data\.name='roth3d'"),
    (["model.arch=resnet", "data.name=fashion_mnist", "method.roth.mode=mlp"],
     r"^method\.roth\.mode: 'mlp' needs .*model\.arch='resnet' adds residual shortcuts.*use 'auto', 'jvp' or "
     r"'double_backward'$"),
    (["method.name=dfm", "optim.batch_size=1"], r"^optim\.batch_size: training-mode BatchNorm \(method\.name='dfm': "
                                                r"DFM's denoiser\) needs a batch of at least 2 samples, got 1$"),
])
def test_rules_between_fields_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        C.coerce(None, overrides)


def test_rules_between_fields_leave_what_they_do_not_cover():
    # NT's noise generator at half batches of 2: fine without G BatchNorm (dcgan's G draws for all rows)
    C.coerce(None, ["method.name=nt", "method.nt.batch=half", "optim.batch_size=2"])
    C.coerce(None, ["method.name=nt", "method.nt.batch=half", "optim.batch_size=2", "model.arch=dcgan",
                    "data.name=fashion_mnist"])
    C.coerce(None, ["method.name=roth+nt", "method.roth.mode=jvp", "method.nt.noise=fixed"])  # fixed noise: fine
    # the ResNet's BatchNorm normalises over each map, as DCGAN's: a batch of one passes the config (1x1 maps, on
    # 16x16 images, are the trainer's to refuse: tests/test_train_inputs.py)
    for extra in (["optim.batch_size=1"], ["method.name=nt", "method.nt.batch=half", "optim.batch_size=2"],
                  ["method.roth.mode=jvp"], ["method.roth.mode=auto"]):
        C.coerce(None, ["model.arch=resnet", "data.name=image_folder", "data.path=d", *extra])
    C.coerce(None, ["method.name=nt", "method.nt.noise=fixed", "method.nt.sigma_anneal=linear"])


@pytest.mark.parametrize("section,value,message", [
    ("run", C.RunConfig(steps=None), r"^run\.steps: must be an integer, got None"),
    ("run", C.RunConfig(steps=True), r"^run\.steps: must be an integer, got True"),
    ("optim", C.OptimConfig(lr_g=float("nan")), r"^optim\.lr_g: must be a finite number, got nan"),
    ("run", {"steps": 3}, r"^run: must be a RunConfig, got dict"),
    ("data", C.DataConfig(name="npz", path="x.npz", value_range=range(0, 2)),
     r"^data\.value_range: must be a list of 2 values \(a number, a number\), got range\(0, 2\)"),
])
def test_a_directly_built_config_is_type_checked(section, value, message):
    """What no loader made (a TrainConfig built in Python) is checked by validate() and coerce() alike."""
    cfg = dataclasses.replace(TrainConfig(), **{section: value})
    with pytest.raises(ConfigError, match=message):
        C.validate(cfg)
    with pytest.raises(ConfigError, match=message):
        C.coerce(cfg)  # coerce validates a TrainConfig given as is


def test_an_override_value_may_hold_an_equals_sign_and_keys_are_stripped():
    cfg = C.coerce(None, ["run.name=a=b", " run.steps = 5"])
    assert (cfg.run.name, cfg.run.steps) == ("a=b", 5)


@pytest.mark.parametrize("item,key", [("run.dir=runs/exp #2", "run.dir"), ("run.name=exp #1", "run.name"),
                                      ("model.g_hidden=[16, 8] # wide", "model.g_hidden"), ("run.name=#x", "run.name")])
def test_an_override_value_yaml_would_cut_at_a_comment_is_refused(item, key):
    """'run.dir=runs/exp #2' was read as runs/exp: a --resume continued that run instead of the one named."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: --set .* holds a '#' that YAML reads as a comment"):
        C.coerce(None, [item])


@pytest.mark.parametrize("key", ["run.name", "run.dir", "run.out_dir", "data.path"])
def test_a_nul_character_in_a_string_field_is_named(key):
    """The OS refused it later with "embedded null byte", naming no field (and exit 1, not a config error's 2)."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must not hold a NUL character, got 'a\\x00b'$"):
        C.coerce(None, [(key, "a\0b")])


def test_a_hash_yaml_keeps_is_text():
    cfg = C.coerce(None, ["run.name=exp#2", 'run.dir="runs/exp #2"', "data.name=npz", "data.path='a #b.npz'"])
    assert (cfg.run.name, cfg.run.dir, cfg.data.path) == ("exp#2", "runs/exp #2", "a #b.npz")


def test_threads_past_what_torch_takes_are_a_config_error():
    """run.threads=2**31 overflowed torch.set_num_threads after the run folder was made (and 100000 crashed it)."""
    with pytest.raises(ConfigError,
                       match=r"^run\.threads: must be in \[1, 1024\] \(torch's thread pool.*got 2147483648"):
        C.coerce(None, ["run.threads=2147483648"])
    assert C.coerce(None, ["run.threads=1024"]).run.threads == 1024


def test_a_mapping_as_overrides_is_refused_naming_its_type():
    with pytest.raises(ConfigError, match=r"^overrides: must be a list of 'key=value' strings, got dict$"):
        C.coerce(None, {"run.steps": 2})


def test_a_folder_given_as_config_names_it(tmp_path):
    with pytest.raises(ConfigError, match=rf"^config: {re.escape(str(tmp_path))} is a folder; give a YAML file$"):
        load_config(tmp_path)


def test_diff_names_nested_fields_by_their_dotted_path():
    a = TrainConfig()
    b = C.replace(a, **{"method.roth.gamma": 0.5, "run.steps": 7})
    assert C.diff(a, b) == [("method.roth.gamma", 0.1, 0.5), ("run.steps", 3000, 7)]
    assert C.diff(b, C.replace(b)) == []


def test_a_mapping_may_hold_section_objects():
    run = C.RunConfig(steps=5, name="obj")
    assert C.from_dict({"run": run}).run is run
    cfg = C.coerce({"run": run}, ["run.seed=1"])  # an override into a section given as an object keeps its fields
    assert (cfg.run.steps, cfg.run.name, cfg.run.seed) == (5, "obj", 1)


def test_to_dict_is_plain_lists_and_dicts():
    import json

    cfg = C.coerce(None, ["model.g_hidden=[16, 8]", "data.name=npz", "data.path=x.npz", "data.value_range=[0, 1]"])
    d = C.to_dict(cfg)
    assert d["model"]["g_hidden"] == [16, 8] and type(d["model"]["g_hidden"]) is list
    assert type(d["data"]["value_range"]) is list
    assert json.loads(json.dumps(d)) == d and C.from_dict(d) == cfg


def test_an_override_value_that_is_not_yaml_or_is_empty():
    assert C.parse_override("run.name=") == ("run.name", "")
    with pytest.raises(ConfigError, match=r"^run\.name: must be a non-empty name .*got ''$"):
        C.coerce(None, ["run.name="])
    assert C.parse_override("run.name=[x") == ("run.name", "[x")  # not valid YAML: the text as typed
    assert C.coerce(None, ["run.name=[x"]).run.name == "[x"


def test_apply_overrides_refuses_a_config_that_is_not_a_mapping():
    with pytest.raises(ConfigError, match=r"^config: must be a mapping of keys to values, got \[1, 2\]$"):
        C.apply_overrides([1, 2], ["run.steps=1"])
    assert C.apply_overrides(None, ["run.steps=1"]) == {"run": {"steps": 1}}


def test_numpy_scalars_and_paths_are_taken_as_the_values_they_hold():
    """fastgan.train's dict or TrainConfig built from numpy results or pathlib: np.int64 is no int, np.float32 no
    float, a Path no str, yet each holds a value of the field's type; numpy's booleans stay refused as numbers."""
    np = pytest.importorskip("numpy")
    from pathlib import Path

    from fastgan.config import from_dict

    cfg = from_dict({"run": {"steps": np.int64(3), "out_dir": Path("runs") / "a"},
                     "optim": {"lr_g": np.float32(0.5), "batch_size": np.float64(16.0)}})
    assert (cfg.run.steps, cfg.run.out_dir, cfg.optim.lr_g, cfg.optim.batch_size) == (3, str(Path("runs/a")), 0.5, 16)
    assert [type(v) for v in (cfg.run.steps, cfg.run.out_dir, cfg.optim.lr_g, cfg.optim.batch_size)] == \
        [int, str, float, int]
    for bad, match in (({"run": {"steps": np.bool_(True)}}, r"^run\.steps: must be an integer"),
                       ({"run": {"steps": np.float64(2.5)}}, r"^run\.steps: must be an integer"),
                       ({"optim": {"lr_g": np.bool_(False)}}, r"^optim\.lr_g: must be a number")):
        with pytest.raises(ConfigError, match=match):
            from_dict(bad)


def test_yaml_aliases_and_deep_nesting_give_one_short_error(tmp_path):
    """A few hundred bytes of YAML aliases made run.name a value whose repr in the error ran to 52 MB (each level
    times ten); a [[[...]]] nested past Python's recursion limit raised PyYAML's RecursionError."""
    value = "[x, x, x, x, x, x, x, x, x, x]"
    for i in range(7):  # each level: an anchored list and nine aliases of it, ten times the level below
        value = f"&a{i} {value}" if i == 0 else value
        value = f"[{value}, " + ", ".join([f"*a{i}"] * 9) + "]"
        value = f"&a{i + 1} {value}" if i < 6 else value
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(f"run:\n  name: {value}\n")
    assert len(laughs.read_text()) < 1000
    with pytest.raises(ConfigError, match=r"run\.name: must be a string, got \[\[\[\[") as e:
        load_config(laughs)
    assert len(str(e.value)) < 2000
    deep = tmp_path / "deep.yaml"
    deep.write_text("run:\n  name: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: not valid YAML: nested too deeply to parse"):
        load_config(deep)


# ------------------------------------------------------------------ from an audit of the Python API, 2026-12-06

@pytest.mark.parametrize("name", ["1e-4", "1e5", "0o17", "0x1F", "1E-4", "+1", ".5", "-.inf", "010", "plain"])
def test_what_fastgan_writes_reads_back_equal(tmp_path, name):
    """A run named 1e-4 (a learning rate) wrote `name: 1e-4`, plain by YAML 1.1's rules, which fastgan's YAML 1.2
    reading took for a number: the run folder's config.yaml was unreadable (compare listed it 'unreadable')."""
    cfg = C.coerce(None, [("run.name", name)])
    assert C.load_config(C.save_config(cfg, tmp_path / "c.yaml")) == cfg
    assert C.from_dict(C.yaml_load(C.yaml_dump(C.to_dict(cfg)))).run.name == name


def test_numpy_scalars_and_paths_in_a_trainconfig_built_in_python(tmp_path):
    """np.int64 / np.float32 / a Path set on a TrainConfig were refused (a dict's were taken), and np.float64 /
    np.str_ passed validate and then failed YAML's writing with a RepresenterError naming no field."""
    np = pytest.importorskip("numpy")
    cfg = dataclasses.replace(TrainConfig(), run=C.RunConfig(steps=np.int64(2), name=np.str_("sweep"),
                                                             out_dir=tmp_path),
                              optim=C.OptimConfig(lr_g=np.float64(1e-3), lr_d=np.float32(0.5), batch_size=np.int32(8)))
    got = C.coerce(cfg)
    assert (got.run.steps, got.run.name, got.run.out_dir, got.optim.lr_g, got.optim.lr_d, got.optim.batch_size) == \
        (2, "sweep", str(tmp_path), 1e-3, 0.5, 8)
    assert all(type(v) in (int, float, str) for v in (got.run.steps, got.run.name, got.run.out_dir, got.optim.lr_g,
                                                        got.optim.lr_d, got.optim.batch_size))
    assert C.load_config(C.save_config(cfg, tmp_path / "c.yaml")) == got  # to_dict writes them as builtins
    assert C.coerce({"run": {"name": np.str_("sweep")}}).run.name.__class__ is str


def test_a_str_enum_value_is_taken_as_its_characters():
    """str() of a (str, Enum) member is 'Name.member' on Python 3.11+: a run name given as one was renamed so."""
    import enum

    class Name(str, enum.Enum):
        baseline = "baseline"

    assert C.coerce({"run": {"name": Name.baseline}}).run.name == "baseline"
    cfg = dataclasses.replace(TrainConfig(), run=C.RunConfig(name=Name.baseline))
    assert C.coerce(cfg).run.name == "baseline" and type(C.coerce(cfg).run.name) is str


def test_a_section_built_directly_raises_config_error():
    from fastgan.data import DataConfig
    from fastgan.models import ModelConfig

    with pytest.raises(ConfigError, match=r"^model\.leaky_slope: only used by leaky ReLUs"):
        ModelConfig(leaky_slope=0.3)
    with pytest.raises(ConfigError, match=r"^data\.path: not used by data\.name='roth3d'"):
        DataConfig(path="/tmp/x.npz")


# ------------------------------------------------------------------ from an audit of the trainer's inputs, 2026-12-07

def test_a_section_that_is_aliased_list_gives_one_short_error(tmp_path):
    """A section given as a list of aliases (`run: [&a [...], [*a, ...]]`) was quoted whole in its error, 141 KB
    from 200 bytes of YAML (run.name's value was cut to a line, a section's was not); with a --set, the same."""
    x, a, b = (", ".join([s] * 30) for s in ("x", "*a", "*b"))
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(f"run: [&a [{x}], &b [{a}], [{b}]]\n")
    with pytest.raises(ConfigError, match=r"run: must be a mapping of keys to values, got \[\[") as e:
        load_config(laughs)
    assert len(str(e.value)) < 1000
    with pytest.raises(ConfigError, match=r"^run: must be a mapping, got \[\[") as e:
        C.coerce(laughs, ["run.steps=1"])
    assert len(str(e.value)) < 1000


@pytest.mark.parametrize("text, match", [
    # float() of an integer past float's range raised OverflowError: a traceback naming no field
    ("method:\n  roth:\n    gamma: 1" + "0" * 400, r"method\.roth\.gamma: must be a finite number .*got 1000"),
    ("optim:\n  lr_g: '-1" + "0" * 400 + "'", r"optim\.lr_g: must be a finite number .*got '-1000"),
    # past Python's 4300 digits of an integer's text: int()'s ValueError, no YAMLError, named neither file nor field
    ("run:\n  steps: " + "9" * 5000, r"big\.yaml:2:10: not valid YAML: an integer of 5000 characters: Exceeds the "
                                     r"limit"),
    # a hex integer reads (no limit for base 16), but repr() of it raised over the field's own error
    ("run:\n  steps: 0x" + "f" * 5000, r"run\.steps: must be <= 9223372036854775807 .*got an integer of 20000 bits$"),
    ("model:\n  g_hidden: [0x" + "f" * 5000 + "]", r"model\.g_hidden\[0\]: must be <= .*got an integer of 20000 bits$"),
    ("run: 0x" + "f" * 5000, r"run: must be a mapping of keys to values, got an integer of 20000 bits$"),
], ids=["float-field", "float-field-quoted", "decimal-digits", "hex-int-field", "hex-list-item", "hex-section"])
def test_integers_past_float_range_or_python_digits_name_the_field(tmp_path, text, match):
    p = tmp_path / "big.yaml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError, match=match) as e:
        load_config(p)
    assert len(str(e.value)) < 1000
    with pytest.raises(ConfigError, match=r"^method\.roth\.gamma: must be a finite number"):
        C.coerce({"method": {"roth": {"gamma": 10 ** 400}}})  # fastgan.train's dict


@pytest.mark.parametrize("item,key,name", [("run.dir=", "run.dir", "roth3d"), ("run.dir=' '", "run.dir", "roth3d"),
                                           ("data.path=", "data.path", "fashion_mnist"),
                                           ("data.path=''", "data.path", "npz")])
def test_an_empty_path_is_refused(item, key, name):
    """'--set run.dir=$DIR' with DIR unset was read as no run.dir (a new timestamped folder; a resume continued the
    latest run of run.name's), data.path= as the system's Fashion-MNIST, silently (a fuzz audit, 2026-12-07)."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: an empty path"):
        C.coerce(None, [item, f"data.name={name}"])


def test_a_stored_empty_path_reads_as_unset():
    """Accepted until 2026-12-07 and read as unset then: a stored config keeps reading so (resume, eval, sample)."""
    cfg = C.from_stored({"run": {"dir": ""}, "data": {"name": "fashion_mnist", "path": " "}})
    assert (cfg.run.dir, cfg.data.path) == (None, None)


# NTGAN Table 2 (ablation rows on Fashion-MNIST here): (noise, clean, lam, batch, sigma_anneal); "lambda" of rows
# (b), (e) and the annealed row's start sigma are not given by the paper (1, as the configs say)
TABLE2 = {"a-noise-only-gaussian": ("fixed", False, 1.0, "full", "none"),
          "b-noise-only-learned": ("generator", False, 1.0, "full", "none"),
          "c-noise-only-annealed": ("fixed", False, 1.0, "full", "linear"),  # "linearly annealed during the 100K"
          "d-clean-noise-gaussian": ("fixed", True, 1.0, "full", "none"),
          "e-clean-noise-learned-sigma": ("learned_sigma", True, 1.0, "full", "none"),
          "f-ntgan-lambda-0.1": ("generator", True, 0.1, "full", "none"),
          "g-ntgan-lambda-1": ("generator", True, 1.0, "full", "none"),
          "h-ntgan-lambda-10": ("generator", True, 10.0, "full", "none"),
          "i-ntgan-half-batch": ("generator", True, 1.0, "half", "none")}  # the alternative mini-batch, lambda = 1


@pytest.mark.parametrize("row", sorted(TABLE2))
def test_ntgan_table2_configs_follow_the_paper(row):
    """Section 3: "100K generator iterations", "mini-batch size of 64", Adam "learning rate of 10^-4 and
    beta1 = 0.5"; each ablation row's noise, clean samples, lambda and mini-batch scheme (Table 2)."""
    cfg = load_config(REPO / "configs" / f"ntgan-fmnist-{row}.yaml")
    o, nt = cfg.optim, cfg.method.nt
    assert cfg.method.units == {"nt"} and cfg.model.arch == "dcgan" and cfg.model.latent_dim == 128
    assert (o.optimizer, o.lr_g, o.lr_d, o.beta1, o.batch_size, cfg.run.steps) == ("adam", 1e-4, 1e-4, 0.5, 64,
                                                                                    100_000)
    assert (nt.noise, nt.clean, nt.lam, nt.batch, nt.sigma_anneal) == TABLE2[row] and nt.sigma == 1.0
    assert cfg.run.fd and cfg.method.loss == "minimax" and cfg.method.g_loss == "nonsaturating"


@pytest.mark.parametrize("name,loss,g_loss,lam", [("lsgan", "least_squares", "nonsaturating", 10.0),
                                                  ("mmgan", "minimax", "saturating", 0.1),
                                                  ("sngan", "minimax", "nonsaturating", 1.0)])
def test_ntgan_table3_configs_take_the_papers_lambdas(name, loss, g_loss, lam):
    """Table 3: MMGAN+NT lambda = 0.1, LSGAN+NT lambda = 10, SNGAN+NT lambda = 1 (the noise generator)."""
    cfg = load_config(REPO / "configs" / f"ntgan-fmnist-table3-{name}-nt.yaml")
    nt = cfg.method.nt
    assert (cfg.method.loss, cfg.method.g_loss, nt.noise, nt.clean, nt.lam) == (loss, g_loss, "generator", True, lam)
    assert cfg.model.spectral_norm == (name == "sngan")


def test_dfm_config_follows_the_paper():
    """DFM section 5: "sigma = 1", "lambda_denoise to 0.03/n_h", "fix lambda_adv to 1", Adam "learning rate of 10^-4
    and beta1 = 0.5", all parameters updated simultaneously; 10 groups of 5,000 samples for the score."""
    cfg = load_config(REPO / "configs" / "dfm-fmnist.yaml")
    d, o = cfg.method.dfm, cfg.optim
    assert cfg.method.units == {"dfm"} and cfg.method.update == "simultaneous"
    assert (d.sigma, d.lambda_denoise, d.lambda_adv) == (1.0, None, 1.0)  # None: 0.03 / n_h at the start
    assert (o.optimizer, o.lr_g, o.lr_d, o.beta1) == ("adam", 1e-4, 1e-4, 0.5)
    assert cfg.run.fd and cfg.run.fd_samples == 50_000
