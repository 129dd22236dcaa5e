"""The trainer's fused-op options: method.roth.mode (the penalty's gradient mode), method.dfm.fused
(fastgan.ops.Denoiser) and method.nt.fused (noisy_clean_batch + nt_losses). Each: the fused op ran
(_dispatch.counts), gradients equal the plain path given the same randomness, training and resume work."""
import pytest
import torch

import fastgan
from fastgan import _ext
from fastgan import checkpoint as ckpt
from fastgan.config import ConfigError, coerce
from fastgan.methods.step import Draws
from fastgan.ops import _dispatch, gradient_penalty
from fastgan.ops.noise import philox_normal

from method_helpers import SHAPE, assert_close, d_setup, draws, grads, make  # noqa: E402
BACKEND = "cpu" if _ext.available()[0] else "reference"


def counted(*keys):
    return {k: _dispatch.counts[k] for k in keys}


# ---------------------------------------------------------------- config

def test_new_keys_defaults_and_validation():
    m = coerce(None).method
    assert (m.roth.mode, m.nt.fused, m.dfm.fused) == ("double_backward", False, True)
    with pytest.raises(ConfigError, match=r"method\.roth\.mode: must be one of"):
        coerce(None, ["method.roth.mode=fast"])
    with pytest.raises(ConfigError, match=r"method\.nt\.fused: must be true or false"):
        coerce(None, ["method.name=nt", "method.nt.fused=1"])
    with pytest.raises(ConfigError, match=r"method\.dfm\.fused: must be true or false"):
        coerce(None, ["method.dfm.fused=yes"])
    with pytest.raises(ConfigError, match=r"method\.nt\.fused: .*clean=true"):
        coerce(None, ["method.name=nt", "method.nt.fused=true", "method.nt.clean=false", "method.nt.noise=fixed"])
    for mode in ("jvp", "mlp"):
        with pytest.raises(ConfigError, match=r"method\.roth\.mode: .*learned noise"):
            coerce(None, ["method.name=roth+nt", f"method.roth.mode={mode}", "method.nt.noise=learned_sigma"])
    coerce(None, ["method.name=roth+nt", "method.roth.mode=auto", "method.nt.noise=generator"])  # auto is fine
    # mlp needs a D the closed form supports: a maxout D is a clear error at build time
    with pytest.raises(ValueError, match=r"method\.roth\.mode: 'mlp' needs a discriminator made of Linear/Conv layers"):
        make("roth", "method.roth.mode=mlp", "model.arch=goodfellow", "model.d_hidden=[6]")


def test_a_graphed_dropout_d_takes_the_double_backward_for_auto_and_refuses_jvp():
    """jvp cannot replay dropout masks inside a CUDA graph capture. Before: "auto" took jvp in the eager warm-ups
    (its check passes there) and the capture then raised after three steps; "jvp" failed the same way."""
    drop = ("model.arch=goodfellow", "model.d_hidden=[6]")
    _, M = make("roth", "method.roth.mode=auto", "run.cuda_graph=true", "run.device=auto", *drop)
    assert M.penalty_mode == "double_backward"
    with pytest.raises(ValueError, match=r"^method\.roth\.mode: 'jvp' replays D's forward, which cannot replay "
                                         r"D's dropout masks in a CUDA graph \(run\.cuda_graph=true\)"):
        make("roth", "method.roth.mode=jvp", "run.cuda_graph=true", "run.device=auto", *drop)
    assert make("roth", "method.roth.mode=auto", *drop)[1].penalty_mode == "auto"  # eager: auto decides per call
    no_dropout = ("model.d_input_dropout=0", "model.d_dropout=0")
    graphed = ("run.cuda_graph=true", "run.device=auto")
    assert make("roth", "method.roth.mode=auto", *graphed, *drop, *no_dropout)[1].penalty_mode == "auto"


# ---------------------------------------------------------------- Roth: penalty modes

def test_mlp_discriminator_as_sequential_is_its_forward():
    _, M = make("roth")
    x = torch.randn(5, *SHAPE, dtype=torch.float64)
    assert torch.equal(M.D.as_sequential()(x).reshape(-1), M.D(x))
    P = list(M.D.parameters())
    assert [id(p) for p in M.D.as_sequential().parameters()] == [id(p) for p in P]
    for weight in ("js_real", "js_fake", "one"):
        a, _ = gradient_penalty(M.D, x, weight, mode="double_backward")
        b, _ = gradient_penalty(M.D, x, weight, mode="mlp")
        assert_close(grads(b, P), grads(a, P), weight, rtol=1e-10, atol=1e-13)


# "auto" on CPU: the closed form for the LeakyReLU MLP D, the double backward for the default tanh one (its curvature
# chain leaves the closed form no faster there: penalty_jvp.AUTO_CLOSED_FORM_SMOOTH_DEVICES)
@pytest.mark.parametrize("mode,ran,act", [("mlp", "mlp", "tanh"), ("jvp", "jvp", "tanh"),
                                          ("auto", "double_backward", "tanh"), ("auto", "mlp", "leaky_relu")])
@pytest.mark.parametrize("case", [
    ["method.name=roth"],
    ["method.name=roth", "method.roth.penalty=r1"],
    ["method.name=roth", "method.roth.penalty=r2", "method.loss=least_squares"],
    ["method.name=roth", "method.roth.penalty=f", "method.loss=fgan", "method.f_divergence=kl"],
    ["method.name=roth+nt", "method.nt.noise=fixed"],
    ["method.name=roth+nt", "method.nt.noise=fixed", "method.nt.batch=half"],
    # NT's mu-weights with a constant weight: psi -> coef * ones has no graph (w' = 0), which jvp's and the
    # closed form's derivative of the weight once refused
    ["method.name=roth+nt", "method.nt.noise=fixed", "method.roth.penalty=r1"],
    ["method.name=roth+nt", "method.nt.noise=fixed", "method.roth.penalty=f", "method.loss=fgan",
     "method.f_divergence=pearson"],
    ["method.name=roth", "method.roth.penalty=f", "method.loss=fgan", "method.f_divergence=gan"],
    ["method.name=roth", "method.roth.penalty=f", "method.loss=fgan", "method.f_divergence=squared_hellinger"],
    ["method.name=roth+nt", "method.nt.noise=fixed", "method.roth.penalty=f", "method.loss=fgan",
     "method.f_divergence=js"],
], ids=["js", "r1", "r2", "f-kl", "js-nt", "js-nt-half", "r1-nt", "f-pearson-nt", "f-gan", "f-hellinger",
        "f-js-nt"])
def test_penalty_mode_matches_double_backward(case, mode, ran, act):
    _, M = make(case[0].split("=")[1], *case[1:], f"method.roth.mode={mode}", f"model.mlp_activation={act}")
    assert M.penalty_mode == mode
    x, fake, d = d_setup(M)
    P = list(M.D.parameters())
    before = counted(("gradient_penalty", ran), ("grad_norm_penalty", "reference"))
    out = M.d_objective(x, fake, d)
    assert _dispatch.counts[("gradient_penalty", ran)] > before[("gradient_penalty", ran)]
    # NT's mu-weighted rows too: a named weight's terms on the fused kernel, scaled per sample (SampleWeighted),
    # where under jvp they ran on the reference backend until 2026-12-06; and every f-divergence's weight is a named
    # one (the non-constant ones, callables until 2026-12-07, ran on the reference backend in every mode)
    assert _dispatch.counts[("grad_norm_penalty", "reference")] == before[("grad_norm_penalty", "reference")]
    got = grads(out.d_loss, P)
    M.penalty_mode = "double_backward"
    want_out = M.d_objective(x, fake, d)
    assert torch.allclose(out.d_loss, want_out.d_loss, rtol=1e-10)
    assert_close(got, grads(want_out.d_loss, P), f"{case} {mode}")


@pytest.mark.parametrize("penalty", ["js", "r1"])
def test_mlp_mode_with_training_mode_batchnorm_matches_double_backward(penalty):
    """model.d_batchnorm: BatchNorm1d with batch statistics in D, run by mode="mlp" (mlp_penalty_bn)."""
    _, M = make("roth", f"method.roth.penalty={penalty}", "model.d_batchnorm=true", "method.roth.mode=mlp")
    assert any(isinstance(m, torch.nn.BatchNorm1d) and m.training for m in M.D.modules())
    x, fake, d = d_setup(M)
    P = list(M.D.parameters())
    before = counted(("gradient_penalty", "mlp"))
    out = M.d_objective(x, fake, d)
    assert _dispatch.counts[("gradient_penalty", "mlp")] > before[("gradient_penalty", "mlp")]
    got = grads(out.d_loss, P)
    M.penalty_mode = "double_backward"
    want_out = M.d_objective(x, fake, d)
    assert torch.allclose(out.d_loss, want_out.d_loss, rtol=1e-10)
    assert_close(got, grads(want_out.d_loss, P), f"{penalty} bn")


def test_auto_mode_keeps_the_double_backward_for_learned_noise():
    _, M = make("roth+nt", "method.roth.mode=auto", "method.nt.noise=learned_sigma")
    x, fake, d = d_setup(M)
    out = M.d_objective(x, fake, d)
    PN = list(M.noise.parameters())
    got = grads(out.noise_loss, PN)
    M.penalty_mode = "double_backward"
    assert_close(got, grads(M.d_objective(x, fake, d).noise_loss, PN), "noise")


def test_dfm_features_with_a_fused_penalty_mode():
    _, M = make("roth+dfm", "method.roth.mode=mlp")
    x, fake, d = d_setup(M)
    PR = list(M.denoiser.parameters())
    buffers = [b.clone() for b in M.D.buffers()]
    got = grads(M.d_objective(x, fake, d).denoiser_loss, PR)
    M.penalty_mode = "double_backward"
    assert_close(got, grads(M.d_objective(x, fake, d).denoiser_loss, PR), "r")
    assert all(torch.equal(a, b) for a, b in zip(buffers, M.D.buffers()))


# ---------------------------------------------------------------- DFM: fastgan.ops.Denoiser

@pytest.mark.parametrize("name,extra", [("dfm", []), ("roth+nt+dfm", ["method.nt.noise=fixed"])])
def test_fused_denoiser_matches_the_plain_one(name, extra):
    _, M = make(name, "method.dfm.lambda_adv=0.7", *extra)
    assert M.fused_denoiser is not None and M.fused_denoiser.net is M.denoiser.net
    x, fake, d = d_setup(M)
    PR = list(M.denoiser.parameters())
    keys = (("denoiser_loss", BACKEND), ("recon_loss", BACKEND))
    before = counted(*keys)
    out = M.d_objective(x, fake, d)
    got_r = grads(out.denoiser_loss, PR)
    dg = draws(M, for_d=False)
    PG = list(M.G.parameters())
    got_g = grads(M.g_objective(M.G(dg.z), dg)[0], PG)
    assert all(_dispatch.counts[k] > before[k] for k in keys), (before, counted(*keys))
    # the hidden layers' Linear bias cancels in training-mode BatchNorm: the fused gradient is exactly 0
    for lin in M.denoiser.net[:-1:3]:
        assert torch.count_nonzero(grads(out.denoiser_loss, [lin.bias])[0]) == 0
    fused, M.fused_denoiser = M.fused_denoiser, None
    want = M.d_objective(x, fake, d).denoiser_loss
    assert torch.allclose(out.denoiser_loss, want, rtol=1e-12)
    assert_close(got_r, grads(want, PR), "r")
    assert_close(got_g, grads(M.g_objective(M.G(dg.z), dg)[0], PG), "G")
    # both generator terms leave the denoiser's running statistics alone (the denoiser's loss moves them)
    for M.fused_denoiser in (None, fused):
        stats = [b.clone() for b in M.denoiser.buffers()]
        M.g_objective(M.G(dg.z), dg)
        assert all(torch.equal(a, b) for a, b in zip(stats, M.denoiser.buffers()))
        M.d_objective(x, fake, d)
        assert not torch.equal(stats[0], next(M.denoiser.buffers()))


def test_plain_and_fused_dfm_steps_leave_the_same_running_statistics():
    """A whole simultaneous step (the denoiser's loss is built, then G's term, then both backpropagate): the
    denoiser's BatchNorm statistics move by its loss on corrupted real features only, in both paths."""
    out = []
    for fused in ("true", "false"):
        _, M = make("dfm", f"method.dfm.fused={fused}")
        assert (M.fused_denoiser is not None) == (fused == "true")
        before = [b.clone() for b in M.denoiser.buffers()]
        g = torch.Generator().manual_seed(5)
        M.train_step(1, lambda m: torch.randn(m, *SHAPE, generator=g, dtype=torch.float64))
        after = [b.clone() for b in M.denoiser.buffers()]
        assert not torch.equal(before[0], after[0])
        out.append(after)
    for a, b in zip(*out):
        assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- NT: noisy_clean_batch + nt_losses

def _same_eps_draws(M, d):
    """The draws the plain path needs to see the fused path's eps: the next Philox normals of noise_state."""
    n = M.batch_size - M.batch_size // 2 if M.cfg.method.nt.batch == "half" else M.batch_size
    z = philox_normal(M.noise_state.clone(), n * SHAPE[0]).reshape(n, *SHAPE).double()
    return Draws(**{**vars(d), "eps_draws": z})


@pytest.mark.parametrize("noise", ["fixed", "learned_sigma", "generator"])
@pytest.mark.parametrize("batch", ["full", "half"])
def test_fused_nt_matches_plain_given_the_same_eps(noise, batch):
    cfg, M = make("nt", f"method.nt.noise={noise}", f"method.nt.batch={batch}", "method.nt.fused=true",
                  "method.nt.sigma=0.7")
    assert M.nt_fused and M.noise_state.seed == fastgan.ops.stream_seed(cfg.run.seed) != cfg.run.seed
    x, fake, d = d_setup(M)
    assert (d.eps_draws is None) == (noise != "generator")
    plain_d = _same_eps_draws(M, d) if noise != "generator" else d
    keys = (("noisy_clean_batch", BACKEND), ("nt_losses", BACKEND))
    before = counted(*keys)
    P, PN = list(M.D.parameters()), list(M.noise.parameters())
    out = M.d_objective(x, fake, d)
    got_d = grads(out.d_loss, P)
    got_n = grads(out.noise_loss, PN) if out.noise_loss is not None else None
    assert all(_dispatch.counts[k] > before[k] for k in keys)
    M.nt_fused = False
    want = M.d_objective(x, fake, plain_d)
    assert torch.allclose(out.d_loss, want.d_loss, rtol=1e-6)
    assert_close(got_d, grads(want.d_loss, P), "D", rtol=1e-6, atol=1e-9)
    if got_n is not None:
        assert_close(got_n, grads(want.noise_loss, PN), "noise", rtol=1e-6, atol=1e-9)
    # G step: the noise state moved on, so the generator's batch gets fresh eps
    M.nt_fused = True
    dg = draws(M, for_d=False)
    plain_g = _same_eps_draws(M, dg) if noise != "generator" else dg
    PG = list(M.G.parameters())
    got_g = grads(M.g_objective(M.G(dg.z), dg)[0], PG)
    M.nt_fused = False
    assert_close(got_g, grads(M.g_objective(M.G(dg.z), plain_g)[0], PG), "G", rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("noise", ["fixed", "learned_sigma"])
@pytest.mark.parametrize("batch", ["full", "half"])
def test_simultaneous_fused_nt_gives_g_the_eps_of_d(monkeypatch, noise, batch):
    """DFM's simultaneous update takes every loss on one set of draws: the plain path's G batch reuses D's eps,
    so the fused op draws G's again from the Philox stream as it stood before D's batches."""
    from fastgan.methods import nt as nt_mod

    _, M = make("nt+dfm", f"method.nt.noise={noise}", f"method.nt.batch={batch}", "method.nt.fused=true")
    assert M.update_kind == "simultaneous" and M.nt_fused
    seen, build = [], nt_mod.fused_build

    def spy(x_real, x_fake, *args, **kw):
        out = build(x_real, x_fake, *args, **kw)
        seen.append((x_fake, out[1]))  # G's samples and the fake batch D saw
        return out
    monkeypatch.setattr(nt_mod, "fused_build", spy)
    g = torch.Generator().manual_seed(3)
    offset = M.noise_state.offset
    M.train_step(1, lambda m: torch.randn(m, *SHAPE, generator=g, dtype=torch.float64))
    assert len(seen) == 2 and M.noise_state.offset > offset  # D's batches moved the stream; G drew from a copy
    (fake_d, xf_d), (fake_g, xf_g) = seen
    assert torch.equal(fake_d, fake_g.detach()) and torch.equal(xf_d, xf_g.detach())
    h = 0 if batch == "full" else len(fake_d) // 2
    assert not torch.allclose(xf_d[-len(fake_d) + h:], fake_d[h:])  # the noisy rows have noise
    M.train_step(2, lambda m: torch.randn(m, *SHAPE, generator=g, dtype=torch.float64))
    assert not torch.equal(seen[2][1] - seen[2][0].repeat(2 if batch == "full" else 1, *[1] * len(SHAPE)),
                           xf_d - fake_d.repeat(2 if batch == "full" else 1, *[1] * len(SHAPE)))  # new eps


def test_fused_nt_keeps_the_plain_losses_for_other_loss_types():
    _, M = make("nt", "method.nt.noise=fixed", "method.nt.fused=true", "method.loss=least_squares")
    x, fake, d = d_setup(M)
    plain_d = _same_eps_draws(M, d)
    before = counted(("noisy_clean_batch", BACKEND), ("nt_losses", BACKEND))
    out = M.d_objective(x, fake, d)
    assert _dispatch.counts[("noisy_clean_batch", BACKEND)] > before[("noisy_clean_batch", BACKEND)]
    assert _dispatch.counts[("nt_losses", BACKEND)] == before[("nt_losses", BACKEND)]
    M.nt_fused = False
    assert torch.allclose(out.d_loss, M.d_objective(x, fake, plain_d).d_loss, rtol=1e-6)


def test_noise_state_is_saved_and_restored():
    _, M = make("nt", "method.nt.noise=fixed", "method.nt.fused=true")
    x, fake, d = d_setup(M)
    M.d_objective(x, fake, d)
    state = M.state_dict()
    assert state["noise_state"][1] > 0
    _, M2 = make("nt", "method.nt.noise=fixed", "method.nt.fused=true")
    M2.load_state_dict(state)
    assert torch.equal(M2.noise_state.get_state(), M.noise_state.get_state())
    del state["noise_state"]
    with pytest.raises(ValueError, match="NoiseState"):
        M2.load_state_dict(state)


# ---------------------------------------------------------------- training

TINY = ["optim.batch_size=16", "model.g_hidden=[16]", "model.d_hidden=[16,16]", "run.log_every=1",
        "run.sample_every=0", "run.checkpoint_every=0", "run.num_samples=64", "run.progress=off",
        "run.tensorboard=false"]
FUSED = ["method.name=roth+nt+dfm", "method.nt.noise=fixed", "method.nt.fused=true", "method.roth.mode=mlp",
         "method.dfm.fused=true", "method.roth.schedule=anneal", "method.nt.sigma_anneal=linear",
         "method.roth.anneal_steps=10", "method.nt.anneal_steps=12"]


def run(tmp_path, *overrides, steps=3, name="t", resume=False):
    return fastgan.train(None, overrides=[*TINY, f"run.steps={steps}", f"run.dir={tmp_path / name}", *overrides],
                         resume=resume)


@pytest.mark.parametrize("overrides,ops", [
    (FUSED, [("gradient_penalty", "mlp"), ("noisy_clean_batch", BACKEND), ("nt_losses", BACKEND),
             ("denoiser_loss", BACKEND), ("recon_loss", BACKEND)]),
    (["method.name=roth+nt", "method.nt.noise=learned_sigma", "method.nt.fused=true", "method.roth.mode=auto"],
     [("noisy_clean_batch", BACKEND), ("noisy_clean_batch_backward", BACKEND), ("nt_losses", BACKEND)]),
    (["method.name=roth", "method.roth.mode=jvp", "method.roth.penalty=r1"], [("gradient_penalty", "jvp")]),
    (["method.name=nt", "method.nt.noise=generator", "method.nt.fused=true", "method.nt.batch=half"],
     [("noisy_clean_batch", BACKEND), ("nt_losses", BACKEND)]),
], ids=["roth-nt-dfm-fused", "nt-learned-sigma", "roth-jvp", "nt-generator-half"])
def test_fused_options_train(tmp_path, overrides, ops):
    before = counted(*ops)
    r = run(tmp_path, *overrides)
    assert r.step == 3 and all(torch.isfinite(torch.tensor(v)) for v in r.losses.values())
    for k in ops:
        assert _dispatch.counts[k] > before[k], k


def test_resume_5_plus_5_equals_10_with_fused_options(tmp_path):
    full = run(tmp_path, *FUSED, steps=10, name="full")
    run(tmp_path, *FUSED, steps=5, name="half")
    resumed = run(tmp_path, *FUSED, steps=10, name="half", resume=True)
    assert resumed.step == 10
    a = ckpt.load(full.out_dir / "checkpoints/last.pt")
    b = ckpt.load(resumed.out_dir / "checkpoints/last.pt")
    assert int(a["method"]["noise_state"][1]) > 0
    assert torch.equal(a["method"]["noise_state"], b["method"]["noise_state"])
    for part in ("modules", "optimizers"):
        fa, fb = _flat(a["method"][part]), _flat(b["method"][part])
        assert fa.keys() == fb.keys()
        for k in fa:
            assert (torch.equal(fa[k], fb[k]) if torch.is_tensor(fa[k]) else fa[k] == fb[k]), k
    assert resumed.losses == full.losses


def _flat(tree, prefix=""):
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}/{k}"))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_flat(v, f"{prefix}/{i}"))
    else:
        out[prefix] = tree
    return out


def test_fused_nt_noise_keys_differ_for_seeds_torch_tells_apart():
    """run.seed takes torch.manual_seed's signed range; s and s + 2**63 (for negative s) are different torch seeds,
    and got the same Philox key while the trainer passed seed % 2**63 (an audit's repro: -1 and 2**63 - 1)."""
    keys = {make("nt", "method.nt.noise=fixed", "method.nt.fused=true", f"run.seed={s}")[1].noise_state.seed
            for s in (-1, 2**63 - 1, 0)}
    assert len(keys) == 3


def test_the_fused_denoiser_follows_the_denoisers_mode_whole_or_one_layer():
    """The fused denoiser's layers are the denoiser's; each use puts them in the denoiser's mode, as a
    Module.train(mode) every call did (now only when a flag differs): the denoiser in eval mode, and one BatchNorm
    a user switched to eval while the denoiser's own flag stays training (refused by the fused loss otherwise)."""
    _, M = make("dfm")
    x, fake, d = d_setup(M)
    M.denoiser.net[1].eval()
    M.d_objective(x, fake, d)
    assert all(m.training for m in M.fused_denoiser.modules()) and M.denoiser.net[1].training
    M.denoiser.eval()
    M.d_objective(x, fake, d)
    assert not any(m.training for m in M.fused_denoiser.modules())


def test_method_wraps_a_plain_sequential_denoiser_in_the_fused_op():
    # Method(denoiser=<the reference architecture, an nn.Sequential>) with dfm.fused was refused (it looked for .net)
    from fastgan.config import coerce
    from fastgan.methods.step import Method
    from fastgan.models import build_discriminator, build_generator
    from fastgan.reference.denoiser import make_denoiser

    cfg = coerce(None, ["method.name=dfm", "optim.batch_size=6", "model.g_hidden=[7]", "model.d_hidden=[6,5]"])
    G, D = build_generator(cfg.model, (3,)), build_discriminator(cfg.model, (3,))
    net = make_denoiser(D.feature_dim, 8, 2)
    M = Method(cfg, G, D, device="cpu", denoiser=net)
    assert M.fused_denoiser is not None and M.fused_denoiser.net is net
    M.train_step(1, lambda m: torch.randn(m, 3))
