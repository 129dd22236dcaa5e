"""run.optim_impl: which of torch.optim's implementations (for-loop, foreach, fused) the run's optimizers step
with; auto takes fused on the CPU, where torch's own default is the for-loop update."""
import dataclasses
import json

import pytest
import torch

import fastgan
from fastgan.config import ConfigError
from fastgan.methods.step import optimizer_flags, optimizer_impl

from method_helpers import SHAPE, make
from test_train import TINY as TRAIN_TINY

SGD = ["optim.optimizer=sgd", "optim.momentum=0.5"]
TINY = [*TRAIN_TINY, "run.tensorboard=false"]


def _impls(M):
    return {k: optimizer_impl(o) for k, o in M.optimizers.items()}


def _steps(M, n=3):
    torch.manual_seed(3)
    for t in range(1, n + 1):
        M.update_schedules(t)
        M.train_step(t, lambda m: torch.randn(m, *SHAPE, dtype=torch.float64))


@pytest.mark.parametrize("opt", [[], SGD], ids=["adam", "sgd"])
@pytest.mark.parametrize("impl,want", [("auto", "fused"), ("fused", "fused"), ("foreach", "foreach"),
                                       ("for_loop", "for_loop")])
def test_each_choice_steps_every_optimizer_with_that_implementation(opt, impl, want):
    _, M = make("gan+nt+dfm", *opt, "method.nt.noise=generator", f"run.optim_impl={impl}")
    assert set(M.optimizers) == {"G", "D", "noise", "denoiser"}
    assert set(_impls(M).values()) == {want}
    before = [p.detach().clone() for p in M.G.parameters()]
    _steps(M, 2)  # torch accepts the flags for these parameters (float64 on the CPU) and steps them
    assert all(not torch.equal(a, p) for a, p in zip(before, M.G.parameters()))


def test_auto_leaves_cuda_and_graphed_runs_to_torchs_default():
    _, M = make("gan")
    run = M.cfg.run
    assert optimizer_flags(run, torch.device("cpu"), "adam") == {"foreach": None, "fused": True, "capturable": False}
    assert optimizer_flags(run, torch.device("cuda"), "adam") == {"foreach": None, "fused": None, "capturable": False}
    graphed = dataclasses.replace(run, cuda_graph=True)
    assert optimizer_flags(graphed, torch.device("cpu"), "adam") == {"foreach": None, "fused": None,
                                                                     "capturable": True}
    assert optimizer_flags(graphed, torch.device("cpu"), "sgd") == {"foreach": None, "fused": None}
    # what the user names is what runs, graphed or not
    fused = dataclasses.replace(graphed, optim_impl="fused")
    assert optimizer_flags(fused, torch.device("cuda"), "adam")["fused"] is True


@pytest.mark.parametrize("opt", [[], SGD], ids=["adam", "sgd"])
@pytest.mark.parametrize("saved,loaded", [("fused", "for_loop"), ("for_loop", "fused"), ("foreach", "fused")])
def test_a_loaded_state_runs_the_configs_implementation_not_the_saved_one(opt, saved, loaded):
    """load_state_dict restores the saved param groups' foreach / fused flags; run.optim_impl may change on
    resume, so the config's must be put back (and Adam's step counts moved to where it reads them)."""
    _, A = make("gan+dfm", *opt, f"run.optim_impl={saved}")
    _steps(A)
    _, B = make("gan+dfm", *opt, f"run.optim_impl={loaded}")
    B.load_state_dict(A.state_dict())
    assert set(_impls(B).values()) == {loaded}
    _steps(B, 1)


@pytest.mark.parametrize("opt", [[], SGD], ids=["adam", "sgd"])
def test_the_implementations_agree_to_rounding(opt):
    """The same updates: float64 trajectories of a few steps agree to ~1e-12 (fused orders its arithmetic
    differently, so not bit for bit)."""
    params = {}
    for impl in ("for_loop", "foreach", "fused"):
        _, M = make("roth", *opt, f"run.optim_impl={impl}")
        _steps(M, 4)
        params[impl] = torch.cat([p.detach().flatten() for m in M.modules.values() for p in m.parameters()])
    _, M0 = make("roth", *opt)
    start = torch.cat([p.detach().flatten() for m in M0.modules.values() for p in m.parameters()])
    moved = (params["for_loop"] - start).abs().max()
    assert moved > 1e-6  # the steps changed the parameters: agreement below means something
    for impl in ("foreach", "fused"):
        assert torch.allclose(params[impl], params["for_loop"], rtol=0, atol=1e-12 * float(moved)), impl


def test_the_run_records_its_implementations_and_may_change_them_on_resume(tmp_path):
    d = tmp_path / "r"
    fastgan.train(None, overrides=[*TINY, "run.steps=2", f"run.dir={d}"])
    assert json.loads((d / "run_info.json").read_text())["optimizers"] == {"G": "fused", "D": "fused"}
    fastgan.train(None, overrides=[*TINY, "run.steps=4", f"run.dir={d}", "run.optim_impl=for_loop"], resume=True)
    assert json.loads((d / "run_info.json").read_text())["optimizers"] == {"G": "for_loop", "D": "for_loop"}
    with pytest.raises(ConfigError, match=r"run\.optim_impl: .*'fast'"):
        fastgan.train(None, overrides=[*TINY, "run.steps=1", f"run.dir={tmp_path / 'z'}", "run.optim_impl=fast"])
    assert not (tmp_path / "z").exists()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("graphed", [False, True])
@pytest.mark.parametrize("opt", ["adam", "sgd"])
@pytest.mark.parametrize("impl,foreach,fused", [("for_loop", False, None), ("foreach", True, None),
                                                ("fused", None, True)])
def test_named_choices_set_torchs_flags_on_every_device(device, graphed, opt, impl, foreach, fused):
    """What the user names is what runs: for_loop must be foreach=False, not torch's default (foreach on CUDA
    tensors; a mutant passing None for it survived the CPU tests)."""
    _, M = make("gan")
    run = dataclasses.replace(M.cfg.run, optim_impl=impl, cuda_graph=graphed)
    flags = optimizer_flags(run, torch.device(device), opt)
    want = {"foreach": foreach, "fused": fused}
    if opt == "adam":
        want["capturable"] = graphed
    assert flags == want


@pytest.mark.parametrize("flags,on_device", [({"foreach": False, "fused": None, "capturable": False}, False),
                                             ({"foreach": None, "fused": True, "capturable": False}, True),
                                             ({"foreach": None, "fused": None, "capturable": True}, True)])
def test_resumed_adam_step_counts_go_where_the_implementation_reads_them(flags, on_device):
    """Fused and capturable Adam read their step counts on the parameters' device, the others on the CPU. On a
    CPU run both are the CPU (a mutant dropping fused from that rule survived the suite): parameters on the meta
    device tell them apart without a GPU."""
    from fastgan.methods.step import _set_flags

    p = torch.nn.Parameter(torch.empty(3, device="meta"))
    opt = torch.optim.Adam([p])
    opt.state[p] = {"step": torch.tensor(7.0)}
    _set_flags(opt, flags)
    step = opt.state[p]["step"]
    assert step.device.type == ("meta" if on_device else "cpu") and step.dtype == torch.float32
    assert opt.param_groups[0]["fused"] == flags["fused"]
