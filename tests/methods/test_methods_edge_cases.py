"""Edge cases of the methods as a user reaches them: fastgan.train(cfg) and fastgan.methods.Method."""
import pytest
import torch
from torch import nn

import fastgan
from fastgan.config import ConfigError, coerce
from fastgan.methods import Method
from fastgan.models import build_discriminator, build_generator, build_noise_generator

TINY = ["optim.batch_size=8", "model.g_hidden=[8]", "model.d_hidden=[8]", "run.steps=2", "run.log_every=1",
        "run.sample_every=0", "run.checkpoint_every=0", "run.progress=off", "run.tensorboard=false"]


def train(tmp_path, *overrides):
    return fastgan.train(None, overrides=[*TINY, f"run.dir={tmp_path / 'run'}", *overrides])


# the double backward of r1 / r2 / f, and of every penalty under NT's weights or learned noise, ran unreported:
# penalty_modes (and the CLI's "penalty gradients" line) said no penalty ran
@pytest.mark.parametrize("overrides", [
    ["method.roth.penalty=r1"], ["method.roth.penalty=r2"], ["method.loss=fgan", "method.roth.penalty=f"],
    ["method.name=roth+nt", "method.nt.noise=fixed"], ["method.name=roth+nt"],
    ["method.name=roth+nt", "method.nt.noise=learned_sigma", "method.roth.mode=auto"]])
def test_penalty_modes_report_every_double_backward(tmp_path, overrides):
    r = train(tmp_path, *overrides)
    assert "penalty" in r.losses
    assert r.penalty_modes == ("double_backward",)


@pytest.mark.parametrize("overrides", [[], ["method.name=roth+nt", "method.nt.noise=fixed"]], ids=["roth", "roth+nt"])
def test_f_penalty_of_a_batchnorm_d_trains_in_jvp_mode(tmp_path, overrides):
    """Omega_f of a non-linear g_f with D's batch statistics (T's own gradient) by reverse-over-forward
    (fastgan.ops.penalty_statistic), NT's mu-weighted rows included: reported as jvp, no double backward."""
    r = train(tmp_path, "method.loss=fgan", "method.roth.penalty=f", "method.f_divergence=js",
              "model.d_batchnorm=true", "method.roth.mode=jvp", *overrides)
    assert r.penalty_modes == ("jvp",)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in r.losses.values())


def test_nt_half_batches_with_dfm_need_two_clean_rows(tmp_path):
    # the denoiser trains on the m // 2 clean rows of a half batch, through training-mode BatchNorm
    with pytest.raises(ConfigError, match=r"^optim\.batch_size: .*half.*>= 4, got 3"):
        train(tmp_path, "method.name=nt+dfm", "method.nt.batch=half", "optim.batch_size=3")
    assert not (tmp_path / "run").exists()
    coerce(None, ["method.name=nt+dfm", "method.nt.batch=half", "optim.batch_size=4"])
    coerce(None, ["method.name=nt", "method.nt.batch=half", "optim.batch_size=3"])  # no denoiser: fine
    coerce(None, ["method.name=nt+dfm", "method.nt.batch=full", "optim.batch_size=2"])


def test_nt_half_batches_with_a_batchnorm_noise_generator_need_two_noisy_rows(tmp_path):
    # the noise generator (G's architecture) draws eps for the m - m // 2 noisy rows only
    gen = ["method.name=nt", "method.nt.noise=generator", "method.nt.batch=half", "model.g_batchnorm=true"]
    for arch in ("mlp", "goodfellow"):
        with pytest.raises(ConfigError, match=r"^optim\.batch_size: NT's noise generator .*>= 3, got 2"):
            train(tmp_path, *gen, f"model.arch={arch}", "optim.batch_size=2")
        assert not (tmp_path / "run").exists()
    assert train(tmp_path, *gen, "optim.batch_size=3").step == 2
    coerce(None, [*gen[:-1], "model.g_batchnorm=false", "optim.batch_size=2"])
    coerce(None, [*gen[:2], "method.nt.batch=full", "model.g_batchnorm=true", "optim.batch_size=2"])


def test_parzen_needs_two_test_samples_for_its_standard_error():
    with pytest.raises(ConfigError, match=r"^run\.parzen_test: must be >= 2 with run\.parzen"):
        coerce(None, ["run.parzen=true", "run.parzen_test=1"])
    coerce(None, ["run.parzen=true", "run.parzen_test=2"])
    coerce(None, ["run.parzen=false", "run.parzen_test=1"])  # not read


def test_adam_betas_of_one_are_config_errors():
    for key in ("beta1", "beta2"):
        with pytest.raises(ConfigError, match=rf"^optim\.{key}: must be < 1 for optim\.optimizer='adam'"):
            coerce(None, [f"optim.{key}=1"])
        coerce(None, [f"optim.{key}=1", "optim.optimizer=sgd"])  # SGD reads no betas
    coerce(None, ["optim.beta1=0.999999", "optim.beta2=0"])


def test_mlp_mode_with_maxout_discriminator_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^method\.roth\.mode: 'mlp' needs a discriminator made of Linear/Conv "
                                          r"layers.*model\.arch='goodfellow'"):
        coerce(None, ["method.roth.mode=mlp", "model.arch=goodfellow"])
    coerce(None, ["method.name=gan", "method.roth.mode=mlp", "model.arch=goodfellow"])  # roth off: unused
    coerce(None, ["method.roth.mode=auto", "model.arch=goodfellow"])


def test_f_penalty_of_a_non_linear_g_f_with_batchnorm_refuses_the_closed_form():
    """Omega_f differentiates T = g_f(psi); with D's batch statistics that is not g_f'(psi) grad psi, which the
    closed form gives: a config error before any data loads. jvp differentiates T (fastgan.ops.penalty_statistic)."""
    f_gan = ["method.loss=fgan", "method.roth.penalty=f", "method.roth.mode=mlp"]
    with pytest.raises(ConfigError, match=r"^method\.roth\.mode: 'mlp' differentiates D's logits psi, but Omega_f "
                                          r"for method\.f_divergence='gan' .*model\.d_batchnorm.*use 'jvp'"):
        coerce(None, [*f_gan, "model.d_batchnorm=true"])
    with pytest.raises(ConfigError, match=r"method\.f_divergence='reverse_kl'"):
        coerce(None, [*f_gan, "model.arch=dcgan", "method.f_divergence=reverse_kl"])  # DCGAN's D: BatchNorm
    coerce(None, [*f_gan, "model.d_batchnorm=true", "method.f_divergence=kl"])  # g_f(psi) = psi
    coerce(None, [*f_gan, "model.d_batchnorm=false"])
    for mode in ("auto", "jvp", "double_backward"):
        coerce(None, [*f_gan[:2], f"method.roth.mode={mode}", "model.d_batchnorm=true"])


@pytest.mark.parametrize("loss", ["least_squares", "wgan_gp"])
def test_saturating_g_loss_without_a_saturating_form_is_refused(loss):
    with pytest.raises(ConfigError, match=rf"^method\.g_loss: 'saturating' .*method\.loss={loss!r}"):
        coerce(None, ["method.name=gan", f"method.loss={loss}", "method.g_loss=saturating"])
    coerce(None, ["method.name=gan", f"method.loss={loss}", "method.g_loss=nonsaturating"])
    coerce(None, ["method.name=gan", "method.loss=fgan", "method.g_loss=saturating"])


def _method(name, dtype, *overrides, noise_net=None, shape=(3,)):
    cfg = coerce(None, [f"method.name={name}", "optim.batch_size=6", "model.g_hidden=[8]", "model.d_hidden=[8]",
                        *overrides])
    G = build_generator(cfg.model, shape).to(dtype)
    D = build_discriminator(cfg.model, shape).to(dtype)
    return Method(cfg, G, D, device="cpu", generator=torch.Generator().manual_seed(0), noise_net=noise_net)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name,overrides", [
    ("nt", []), ("nt", ["method.nt.noise=learned_sigma"]), ("nt", ["method.nt.noise=fixed"]),
    ("dfm", ["method.dfm.fused=false"]), ("roth+nt+dfm", ["method.dfm.fused=false"])])
def test_method_builds_its_noise_model_and_denoiser_in_the_models_dtype(dtype, name, overrides):
    M = _method(name, dtype, *overrides)
    for mod in (M.noise, M.denoiser):
        for t in ([] if mod is None else [*mod.parameters(), *mod.buffers()]):
            assert t.dtype == dtype or not t.is_floating_point()  # BatchNorm's num_batches_tracked: int64
    stats = M.train_step(1, lambda m: torch.randn(m, 3, dtype=dtype))
    assert all(torch.isfinite(v).all() for v in stats.values())


@pytest.mark.parametrize("noise_shape", [(1,), (2,), (3, 1, 1)])
def test_noise_net_of_another_shape_is_refused(noise_shape):
    # a (m, 1) noise would broadcast over the 3 coordinates: one shared noise value, penalty on a third of it
    cfg = coerce(None, ["model.g_hidden=[8]"])
    net = build_noise_generator(cfg.model, noise_shape)
    M = _method("nt", torch.float32, noise_net=net)
    with pytest.raises(ValueError, match=r"noise_net: .*sample shape \(3,\)"):
        M.train_step(1, lambda m: torch.randn(m, 3))


@pytest.mark.parametrize("clean", ["true", "false"])
def test_dfm_feature_pass_leaves_ds_running_statistics_to_the_batches_d_trains_on(clean):
    # nt+dfm: with noise-only batches (nt.clean=false) Phi(x) of the clean real batch needs a forward of its own;
    # D never trains on that batch, so its BatchNorm statistics must not take it in (they did: 3 updates, not 2)
    cfg = coerce(None, ["method.name=nt+dfm", "method.nt.noise=fixed", f"method.nt.clean={clean}",
                        "optim.batch_size=4", "model.arch=mlp", "model.d_batchnorm=true"])
    torch.manual_seed(0)
    G, D = build_generator(cfg.model, (3,)), build_discriminator(cfg.model, (3,))
    M = Method(cfg, G, D, device="cpu", generator=torch.Generator().manual_seed(1))
    bns = [m for m in D.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert bns
    x, d = torch.randn(4, 3), M.draws(4)
    with torch.no_grad():
        fake = G(d.z)
    before = [int(b.num_batches_tracked) for b in bns]
    out = M.d_objective(x, fake, d)
    assert out.denoiser_loss is not None
    for b, n0 in zip(bns, before):
        assert int(b.num_batches_tracked) - n0 == 2  # D's forwards of the real and the fake batch
    # D's real forward saved the running statistics the feature pass put back: its backward still runs
    (out.d_loss + out.denoiser_loss).backward()
    assert all(p.grad is not None for p in D.parameters())


@pytest.mark.parametrize("arch,shape,extra", [("mlp", (3,), ["model.d_batchnorm=true"]),
                                              ("dcgan", (1, 16, 16), ["data.name=fashion_mnist",
                                                                      "model.dcgan_width=4",
                                                                      "model.spectral_norm=true"])])
def test_dfm_generator_term_of_noise_only_batches_leaves_d_as_it_was(monkeypatch, arch, shape, extra):
    # G's DFM term with noise-only batches needs Phi of the clean fakes, a forward of D of its own: G gets the
    # gradients of a plain D.features(fake), while D's BatchNorm statistics and spectral-norm vectors move only
    # for the batch D sees (the graph keeps working though the buffers it saved are put back)
    from fastgan.methods import step

    cfg = coerce(None, ["method.name=nt+dfm", "method.nt.noise=fixed", "method.nt.clean=false",
                        "optim.batch_size=4", f"model.arch={arch}", *extra])

    def run(features):
        monkeypatch.setattr(step, "_features_without_side_effects", features)
        torch.manual_seed(0)
        G, D = build_generator(cfg.model, shape), build_discriminator(cfg.model, shape)
        M = Method(cfg, G, D, device="cpu", generator=torch.Generator().manual_seed(1))
        d = M.draws(4, for_d=False)
        loss, _ = M.g_objective(G(d.z), d)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in G.parameters()], [b.clone() for b in D.buffers()]

    loss, grads, buffers = run(step._features_without_side_effects)
    plain_loss, plain_grads, plain_buffers = run(lambda D, x, grad=False: D.features(x))
    assert torch.equal(loss, plain_loss)
    for a, b in zip(grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert any(not torch.equal(a, b) for a, b in zip(buffers, plain_buffers))  # the plain pass moved D's state
    bn = [m for m in build_discriminator(cfg.model, shape).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [b for b in buffers if b.dtype == torch.long]
    assert len(tracked) == len(bn) > 0 and all(int(t) == 1 for t in tracked)  # one training forward: G's batch


def test_adam_learning_rates_whose_first_step_overflows_float32_are_config_errors():
    """Adam's first step is lr / (1 - beta1): at lr 3e38 (under float32's largest value, so its range check took
    it) torch raised an overflow with a traceback in the first step."""
    with pytest.raises(ConfigError, match=r"^optim\.lr_d: Adam's first step is lr / \(1 - beta1\) = 6e\+38"):
        coerce(None, ["optim.lr_d=3e38"])
    with pytest.raises(ConfigError, match=r"^optim\.lr_noise: "):
        coerce(None, ["optim.lr_noise=2e38"])
    coerce(None, ["optim.lr_d=1.7e38"])
    coerce(None, ["optim.lr_d=3e38", "optim.optimizer=sgd"])


@pytest.mark.parametrize("name", ["roth", "roth+nt+dfm"])
def test_a_parameter_frozen_after_the_first_step_gets_no_gradient(name):
    """Method lists each module's parameters once (a walk of the module tree per backward cost ~6 us each, a
    profiling audit) but filters requires_grad at every step: a layer a user freezes mid-run stays where it is."""
    M = _method(name, torch.float32, "method.nt.noise=generator", "method.dfm.fused=false")
    M.train_step(1, lambda m: torch.randn(m, 3))
    frozen = [next(mod.parameters()) for mod in (M.G, M.D, M.noise, M.denoiser) if mod is not None]
    for p in frozen:
        p.requires_grad_(False)
        p.grad = None
    before = [p.detach().clone() for p in frozen]
    M.train_step(2, lambda m: torch.randn(m, 3))
    for p, b in zip(frozen, before):
        assert p.grad is None and torch.equal(p, b)
    assert all(p.grad is not None for p in M.D.parameters() if p.requires_grad)


@pytest.mark.parametrize("grad_off", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("mode", ["double_backward", "jvp", "auto"])
@pytest.mark.parametrize("penalty,f,batchnorm,weighted", [
    ("js", "gan", False, False), ("js", "gan", True, True), ("r1", "gan", True, True), ("r2", "gan", False, True),
    ("f", "kl", False, True), ("f", "gan", True, False), ("f", "gan", True, True)],
    ids=["js", "js-bn-weighted", "r1-bn-weighted", "r2-weighted", "f-kl-weighted", "f-gan-bn", "f-gan-bn-weighted"])
def test_the_regularizer_without_grad_gives_the_values_of_the_call_with_it(penalty, f, batchnorm, weighted, mode,
                                                                         grad_off):
    """Under no_grad / inference_mode regularizer returns the detached values of the call with grad enabled, and D's
    buffers advance as there, in every mode and penalty, as the ops' penalties do: Omega_f of a BatchNorm D raised
    there (jvp naming a wrong cause: "D's logits do not depend on its input x"), weighted penalties by the double
    backward too."""
    from fastgan.methods.roth import regularizer

    torch.manual_seed(0)
    layers = [nn.Linear(3, 8)] + ([nn.BatchNorm1d(8)] if batchnorm else []) + [nn.Tanh(), nn.Linear(8, 1)]
    D = nn.Sequential(*layers).double()
    start = {k: v.clone() for k, v in D.state_dict().items()}
    g = torch.Generator().manual_seed(4)
    xr, xf = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    w = (torch.rand(6, generator=g, dtype=torch.float64) / 6) if weighted else None
    want = regularizer(D, penalty, xr, xf, w, w, f=f, mode=mode)
    after = {k: v.clone() for k, v in D.state_dict().items()}
    D.load_state_dict(start)
    with grad_off():
        got = regularizer(D, penalty, xr.clone(), xf.clone(), None if w is None else w.clone(),
                          None if w is None else w.clone(), f=f, mode=mode)
    for a, b in zip(got, want):
        assert not a.requires_grad
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=0)
    for k, v in D.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_method_names_a_denoiser_narrower_than_ds_features():
    """model.denoiser_hidden below D's feature width: Method refuses it naming the key, as the trainer does (it raised
    the Denoiser's own 'hidden: ...' ValueError, naming no config key)."""
    cfg = coerce(None, ["method.name=dfm", "model.d_hidden=[6,5]", "model.denoiser_hidden=2", "optim.batch_size=4"])
    G, D = build_generator(cfg.model, (3,)), build_discriminator(cfg.model, (3,))
    with pytest.raises(ValueError, match=r"^model\.denoiser_hidden: .* feature width 5 .*got 2"):
        Method(cfg, G, D, device="cpu")
