"""The trainer's graphed step (run.cuda_graph) replayed by a CPU stand-in for CUDA graphs (tests/graph_emu.py),
against the eager run: after its warm-up the step is recorded op by op and its ops alone run again, so a value
computed on the host at capture (a schedule, a step count, a draw) or a tensor rebound rather than written in place
would freeze, and the run would leave the eager trajectory. No GPU has replayed several of these configurations;
tests/test_graph.py's `cuda` tests do it on a GPU. Adam is made capturable on both sides, as the graphed trainer
makes it."""
import dataclasses
import importlib
import math
import warnings

import pytest
import torch

from fastgan import config as C
from fastgan.graph_check import _capturable_optimizers_on_any_device
from fastgan.methods import roth
from fastgan.ops import _dispatch, penalty_jvp

from graph_emu import EmulatedGraphedStep, Recorder, optimizers_as_graphed
from test_train import TINY as TRAIN_TINY

T = importlib.import_module("fastgan.train")
TINY = [*TRAIN_TINY, "run.log_every=1", "run.tensorboard=false"]


def _run(tmp, overrides, graph, backend, steps=12, resume=False):
    cfg = C.coerce(None, [*TINY, f"run.steps={steps}", f"run.dir={tmp}", *overrides])
    with _dispatch.use_backend(backend), _capturable_optimizers_on_any_device(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = T._Run(cfg, resume=resume, progress=False)
        optimizers_as_graphed(run.method)
        if graph:  # the config check wants a CUDA device: the flag is set on the built run
            run.cfg = dataclasses.replace(run.cfg, run=dataclasses.replace(run.cfg.run, cuda_graph=True))
        return run.run()


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(T, "GraphedStep", EmulatedGraphedStep)
    monkeypatch.setattr(EmulatedGraphedStep, "instances", [])
    # a graphed run's config.yaml as the CPU reads it back on resume
    to_dict = C.to_dict
    monkeypatch.setattr(T.C, "to_dict", lambda cfg: to_dict(dataclasses.replace(
        cfg, run=dataclasses.replace(cfg.run, cuda_graph=False))))
    return EmulatedGraphedStep


def _assert_same_run(graphed, eager, steps):
    for k in eager.models:
        for (name, a), b in zip(graphed.models[k].named_parameters(), eager.models[k].parameters()):
            assert torch.equal(a, b), f"{k}.{name}"
    assert graphed.losses == eager.losses
    assert graphed.penalty_modes == eager.penalty_modes


DROPOUT_D = ["model.arch=goodfellow", "model.maxout_pieces=2", "model.g_hidden=[16]", "model.d_hidden=[16,16]",
             "model.latent_dim=4"]
# Roth's f-GAN regularizer where D's BatchNorm couples the samples: T = g_f(psi)'s own gradient
F_JVP = ["method.loss=fgan", "method.roth.penalty=f", "method.f_divergence=js"]
CONFIGS = {
    "roth-double-backward": ["method.name=roth"],
    "roth-mlp-anneal": ["method.name=roth", "method.roth.mode=mlp", "method.roth.schedule=anneal"],
    "roth-lazy-anneal-k2": ["method.name=roth", "method.roth.every=2", "method.roth.schedule=anneal",
                            "method.d_steps=2"],
    "roth-f-kl-batchnorm": ["method.name=roth", "method.loss=fgan", "method.roth.penalty=f",
                            "method.f_divergence=kl", "model.d_batchnorm=true"],
    # T = g_f(psi)'s own gradient by reverse-over-forward (fastgan.ops.penalty_statistic): its slope and root taken
    # with autograd inside the step
    "roth-f-js-batchnorm-jvp": ["method.name=roth", "method.loss=fgan", "method.roth.penalty=f",
                                "method.f_divergence=js", "model.d_batchnorm=true", "method.roth.mode=jvp"],
    "nt-generator-k2": ["method.name=nt", "method.nt.noise=generator", "method.d_steps=2"],
    "nt-learned-sigma": ["method.name=nt", "method.nt.noise=learned_sigma"],
    "nt-fixed-anneal-half": ["method.name=nt", "method.nt.noise=fixed", "method.nt.sigma_anneal=linear",
                             "method.nt.batch=half"],
    "roth+nt+dfm": ["method.name=roth+nt+dfm", "method.nt.noise=learned_sigma"],
    # noise-only batches with DFM: D's features of the clean batches in forwards of their own, whose dropout masks
    # are drawn from the stream as any forward's (a restore of the generator's state is not replayed)
    "nt+dfm-noise-only-dropout": ["method.name=nt+dfm", "method.nt.clean=false", *DROPOUT_D],
    "wgan-gp": ["method.name=gan", "method.loss=wgan_gp"],
    # run.optim_impl=fused under a graph: the fused kernels advance Adam's step counts on the device
    "roth-fused-adam": ["method.name=roth", "run.optim_impl=fused"],
    "gan-fused-sgd": ["method.name=gan", "optim.optimizer=sgd", "optim.momentum=0.5", "run.optim_impl=fused"],
}
# fastgan's own kernels (the cpu backend) through their custom ops, each one recorded op: the Philox state advances
# inside the noise op, the denoiser's statistics inside its op
CUSTOM_OP_CONFIGS = {
    "nt-fused-learned-sigma": ["method.name=nt", "method.nt.noise=learned_sigma", "method.nt.fused=true"],
    "roth+nt+dfm-fused": ["method.name=roth+nt+dfm", "method.nt.fused=true", "method.dfm.fused=true"],
}


@pytest.mark.parametrize("name", [*CONFIGS, *CUSTOM_OP_CONFIGS])
def test_replays_follow_the_eager_run(tmp_path, emulated, monkeypatch, name):
    custom = name in CUSTOM_OP_CONFIGS
    overrides = {**CONFIGS, **CUSTOM_OP_CONFIGS}[name]
    monkeypatch.setattr(EmulatedGraphedStep, "custom_ops", custom)
    backend = "cpu" if custom else "reference"
    eager = _run(tmp_path / "e", overrides, False, backend)
    graphed = _run(tmp_path / "g", overrides, True, backend)
    graphs = EmulatedGraphedStep.instances
    assert graphs and all(g.captured and g.replays > 0 and not g.problems for g in graphs)
    _assert_same_run(graphed, eager, 12)


@pytest.mark.parametrize("penalty", [[], F_JVP], ids=["js", "f"])
def test_auto_takes_jvp_in_the_warm_up_and_replays_it(tmp_path, emulated, monkeypatch, penalty):
    """`auto` as on a GPU: its one-time check (a host read) runs in the eager warm-up and picks jvp for a BatchNorm
    MLP D; while capturing it would take the double backward. Likewise for Roth's Omega_f of that D ("f"), whose
    check compares the statistic's jvp with its double backward."""
    monkeypatch.setattr(penalty_jvp, "AUTO_JVP_DEVICES", {"cuda", "cpu"})
    monkeypatch.setattr(penalty_jvp, "AUTO_CLOSED_FORM_BATCH_STATS_DEVICES", set())
    monkeypatch.setattr(penalty_jvp, "_capturing", lambda device: any(
        isinstance(m, Recorder) for m in torch.utils._python_dispatch._get_current_dispatch_mode_stack()))
    overrides = ["method.name=roth", "method.roth.mode=auto", "model.d_batchnorm=true", "method.roth.every=2",
                 "method.d_steps=2", *penalty]
    eager = _run(tmp_path / "e", overrides, False, "reference")
    graphed = _run(tmp_path / "g", overrides, True, "reference")
    assert graphed.penalty_modes == ("jvp",)
    _assert_same_run(graphed, eager, 12)


@pytest.mark.parametrize("overrides", [
    ["method.name=roth", "method.roth.every=4", "method.roth.schedule=anneal", "method.roth.anneal_steps=12"],
    # the warm-ups after the resume run eagerly: their features forwards draw dropout masks as the replays' do
    ["method.name=nt+dfm", "method.nt.clean=false", *DROPOUT_D]], ids=["roth-lazy-anneal", "nt+dfm-dropout"])
def test_a_graphed_run_resumed_graphed_follows_the_eager_run(tmp_path, emulated, overrides):
    eager = _run(tmp_path / "e", overrides, False, "reference")
    _run(tmp_path / "g", overrides, True, "reference", steps=6)
    graphed = _run(tmp_path / "g", overrides, True, "reference", resume=True)
    for k in eager.models:
        for a, b in zip(graphed.models[k].parameters(), eager.models[k].parameters()):
            assert torch.equal(a, b), k


def test_the_stand_in_sees_a_schedule_rebound_instead_of_written_in_place(tmp_path, emulated, monkeypatch):
    """The check can fail: γ(t) rebound to a new tensor each step (not written in place) freezes at its captured
    value in a graph, and the stand-in's replays show it."""
    def rebinding_update(self, t):
        self.value = torch.tensor(math.exp(min(float(t), self.total) * (self._log_alpha / self.total)) * self.gamma0)
        return self.value

    monkeypatch.setattr(roth.GammaSchedule, "update", rebinding_update)
    overrides = ["method.name=roth", "method.roth.schedule=anneal", "method.roth.alpha=0.001",
                 "method.roth.anneal_steps=12"]
    eager = _run(tmp_path / "e", overrides, False, "reference")
    graphed = _run(tmp_path / "g", overrides, True, "reference")
    assert graphed.losses["gamma"] != eager.losses["gamma"]
    assert not all(torch.equal(a, b) for a, b in zip(graphed.models["D"].parameters(),
                                                      eager.models["D"].parameters()))
