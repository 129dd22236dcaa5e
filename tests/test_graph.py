"""Whole training steps in one CUDA graph: fastgan.graph.GraphedStep and run.cuda_graph.

CPU: the config and argument errors. GPU (`cuda` marker): replays follow the eager trajectory (parameters and
random draws), every penalty mode and fused NT / DFM op captures, and the trainer's graphed runs match eager ones.
"""
import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan.config import ConfigError
from fastgan.graph import GraphedStep

from test_train import TINY, dcgan_roth, tiny_fashion_mnist  # noqa: F401 (a fixture)


def test_cuda_graph_needs_a_cuda_device(tmp_path):
    with pytest.raises(ConfigError, match="run.cuda_graph: CUDA graphs need run.device='cuda'"):
        fastgan.train(None, overrides=[*TINY, "run.steps=2", f"run.dir={tmp_path / 'x'}", "run.cuda_graph=true"])
    assert not (tmp_path / "x").exists()


def test_warmup_must_be_positive():
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        GraphedStep(lambda: None, warmup=0)


def test_cuda_graph_may_change_on_resume():
    assert "run.cuda_graph" in fastgan.config.RESUMABLE_FIELDS


def _adam_with_state(device, capturable):
    p = torch.nn.Parameter(torch.randn(3, device=device))
    opt = torch.optim.Adam([p], capturable=capturable)
    p.grad = torch.ones_like(p)
    opt.step()
    return p, opt


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_resume_switches_adam_between_capturable_fused_and_eager(device):
    from fastgan.methods.step import _set_flags

    p, saved = _adam_with_state(device, capturable=False)
    _, opt = _adam_with_state(device, capturable=False)
    opt.load_state_dict(saved.state_dict())
    step = lambda: opt.state[opt.param_groups[0]["params"][0]]["step"]  # noqa: E731
    _set_flags(opt, {"capturable": True, "foreach": None, "fused": None})
    assert opt.param_groups[0]["capturable"] is True
    assert step().device == p.device
    _set_flags(opt, {"capturable": False, "foreach": None, "fused": True})  # fused reads its counts on the device
    assert opt.param_groups[0]["fused"] is True and step().device == p.device
    opt.step()
    _set_flags(opt, {"capturable": False, "foreach": False, "fused": None})
    g = opt.param_groups[0]
    assert g["capturable"] is False and g["fused"] is None and g["foreach"] is False
    assert step().device.type == "cpu" and float(step()) == 2.0


# ------------------------------------------------------------------ GPU

def _d_and_step(mode, gen):
    torch.manual_seed(0)
    D = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 64),
                            torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 1)).cuda()
    opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999), capturable=True)

    def step():
        x_real = torch.randn(256, 3, device="cuda", generator=gen) * 0.5 + 1.0
        x_fake = torch.randn(256, 3, device="cuda", generator=gen)
        opt.zero_grad(set_to_none=True)
        pen, lr, lf = fastgan.ops.js_penalty(D, x_real, x_fake, mode=mode)
        loss = F.softplus(-lr).mean() + F.softplus(lf).mean() + pen
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "penalty": pen.detach()}
    return D, step


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["double_backward", "jvp", "mlp"])
def test_replays_follow_the_eager_trajectory(mode):
    gen_e = torch.Generator(device="cuda").manual_seed(3)
    D_e, step_e = _d_and_step(mode, gen_e)
    eager = [step_e()["loss"].item() for _ in range(12)]
    gen_g = torch.Generator(device="cuda").manual_seed(3)
    D_g, step_g = _d_and_step(mode, gen_g)
    graphed = GraphedStep(step_g, warmup=3, generators=(gen_g,))
    got = [graphed()["loss"].item() for _ in range(12)]
    assert graphed.captured and graphed.eager_calls == 3 and graphed.replays == 9
    torch.testing.assert_close(torch.tensor(got), torch.tensor(eager), rtol=1e-4, atol=1e-6)
    for a, b in zip(D_g.parameters(), D_e.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the registered generator advanced as the eager one did
    assert torch.equal(torch.randn(5, device="cuda", generator=gen_g), torch.randn(5, device="cuda", generator=gen_e))


@pytest.fixture
def eager_as_graphed(monkeypatch):
    """An eager run compared with a graphed one does the graphed run's arithmetic: Adam capturable (its on-device
    step count rounds the update differently) and cuDNN's deterministic algorithms (its default ones add in varying
    order). Either difference, a few ulps, Adam turns into steps of lr on parameters whose gradient is rounding noise
    (a bias before BatchNorm): on an H200, two eager DCGAN runs differed by 3e-3 after 12 steps, a capturable eager
    one from a plain one by 7e-3 on such a bias; with both set, the graphed runs matched the eager ones bit for bit."""
    class CapturableAdam(torch.optim.Adam):
        def __init__(self, params, *args, **kwargs):
            super().__init__(params, *args, **{**kwargs, "capturable": True})

    monkeypatch.setattr(torch.optim, "Adam", CapturableAdam)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


GRAPH_RUNS = {
    "roth-double_backward": ["method.name=roth"],
    "roth-jvp": ["method.name=roth", "method.roth.mode=jvp", "method.roth.schedule=anneal"],
    "roth-mlp": ["method.name=roth", "method.roth.mode=mlp"],
    # two graphs (iterations with and without the penalty), each captured by step 8 and replayed after
    "roth-lazy-jvp": ["method.name=roth", "method.roth.mode=jvp", "method.roth.every=2", "model.d_batchnorm=true"],
    "nt-fused-sigma": ["method.name=nt", "method.nt.noise=learned_sigma", "method.nt.fused=true"],
    "nt-generator-k2": ["method.name=nt", "method.d_steps=2"],
    "dfm-fused": ["method.name=dfm", "method.dfm.fused=true"],
    # DFM's features beside a penalty mode without D's forward_features: a separate forward, whose CUDA RNG save
    # and restore (torch.cuda.get_rng_state) raises during capture, so it is skipped there
    "roth+dfm-jvp": ["method.name=roth+dfm", "method.roth.mode=jvp"],
    # "auto" on CUDA: the closed form for the MLP D; with training-mode BatchNorm jvp, after its one-time check
    # against the double backward in the eager warm-ups (GRAPH_AUTO_MODES: which ran)
    "roth-auto": ["method.name=roth", "method.roth.mode=auto"],
    "roth-auto-batchnorm": ["method.name=roth", "method.roth.mode=auto", "model.d_batchnorm=true"],
    # Roth's Omega_f of that D: T = g_f(psi)'s gradient by jvp after auto's check of the statistic
    "roth-f-auto-batchnorm": ["method.name=roth", "method.loss=fgan", "method.roth.penalty=f",
                              "method.f_divergence=js", "method.roth.mode=auto", "model.d_batchnorm=true"],
}
GRAPH_AUTO_MODES = {"roth-auto": ("mlp",), "roth-auto-batchnorm": ("jvp",), "roth-f-auto-batchnorm": ("jvp",)}


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(GRAPH_RUNS))
def test_graphed_training_matches_eager_training(tmp_path, name, eager_as_graphed):
    over = [*TINY, "run.steps=12", "run.device=cuda", *GRAPH_RUNS[name]]
    eager = fastgan.train(None, overrides=[*over, f"run.dir={tmp_path / 'e'}"])
    graphed = fastgan.train(None, overrides=[*over, f"run.dir={tmp_path / 'g'}", "run.cuda_graph=true"])
    assert graphed.step == eager.step == 12
    for k, v in eager.losses.items():
        # the penalty is ~1e-4 here: no absolute slack of that size for it
        assert graphed.losses[k] == pytest.approx(v, rel=1e-3, abs=1e-9 if k == "penalty" else 1e-5), k
    for k in eager.models:
        for a, b in zip(graphed.models[k].parameters(), eager.models[k].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    if name in GRAPH_AUTO_MODES:
        assert tuple(graphed.penalty_modes) == tuple(eager.penalty_modes) == GRAPH_AUTO_MODES[name]


@pytest.mark.cuda
@pytest.mark.parametrize("batchnorm", [False, True], ids=["closed-form", "closed-form-batchnorm"])
def test_graphed_dcgan_closed_form_matches_eager(tmp_path, tiny_fashion_mnist, batchnorm, eager_as_graphed):
    """The convnet closed form (the DCGAN D, mode "mlp") captured in the trainer's CUDA graph."""
    over = [*dcgan_roth(tiny_fashion_mnist, batchnorm, "mlp"), "run.steps=12", "run.device=cuda"]
    eager = fastgan.train(None, overrides=[*over, f"run.dir={tmp_path / 'e'}"])
    graphed = fastgan.train(None, overrides=[*over, f"run.dir={tmp_path / 'g'}", "run.cuda_graph=true"])
    assert graphed.step == eager.step == 12
    for k in eager.models:
        for a, b in zip(graphed.models[k].parameters(), eager.models[k].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.cuda
def test_graphed_run_resumes_eagerly(tmp_path):
    over = [*TINY, "run.device=cuda", "method.name=roth", f"run.dir={tmp_path / 'r'}"]
    first = fastgan.train(None, overrides=[*over, "run.steps=8", "run.cuda_graph=true"])
    second = fastgan.train(None, overrides=[*over, "run.steps=12"], resume=True)
    assert first.step == 8 and second.step == 12
    assert all(torch.isfinite(p).all() for p in second.generator.parameters())


# last: a failed capture leaves the CUDA context usable, but nothing after it in this file depends on that
@pytest.mark.cuda
def test_a_host_read_inside_the_step_is_a_clear_error():
    x = torch.ones(4, device="cuda")
    graphed = GraphedStep(lambda: x * float(x.sum()), warmup=1)
    graphed()
    with pytest.raises(fastgan.graph.GraphCaptureError, match="could not be captured in a CUDA graph"):
        graphed()
