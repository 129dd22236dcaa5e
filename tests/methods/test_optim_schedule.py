"""optim.lr_decay / min_lr (pylearn2's ExponentialDecay) and optim.momentum_final / momentum_ramp_steps (its
MomentumAdjustor): the Goodfellow authors' learning-rate decay and momentum ramp."""
import math

import pytest
import torch

import fastgan
from fastgan import checkpoint as ckpt
from fastgan.config import ConfigError, coerce

from method_helpers import make

SGD = ["optim.optimizer=sgd", "optim.lr_g=0.1", "optim.lr_d=0.05", "optim.momentum=0.5"]


def _groups(M):
    return {k: [(g["lr"], g.get("momentum")) for g in opt.param_groups] for k, opt in M.optimizers.items()}


def test_every_optimizer_runs_iteration_ts_rate_and_momentum():
    _, M = make("gan+nt+dfm", *SGD, "method.nt.noise=generator", "optim.lr_noise=0.02", "optim.lr_denoiser=0.03",
                "optim.lr_decay=1.5", "optim.min_lr=0.01", "optim.momentum_final=0.7", "optim.momentum_ramp_steps=4")
    assert set(M.optimizers) == {"G", "D", "noise", "denoiser"}
    base = {"G": 0.1, "D": 0.05, "noise": 0.02, "denoiser": 0.03}
    for t in (1, 2, 3, 5, 9, 40):
        M.update_schedules(t)
        momentum = 0.5 + 0.2 * min(1.0, (t - 1) / 4)
        for k, groups in _groups(M).items():
            lr = max(base[k] / 1.5 ** (t - 1), 0.01)
            assert all(g == pytest.approx((lr, momentum), rel=1e-12) for g in groups), (k, t, groups)
    assert _groups(M)["G"][0] == pytest.approx((0.01, 0.7))  # the floor and the final momentum


def test_a_rate_below_min_lr_is_not_raised_to_it_and_adam_keeps_its_betas():
    _, M = make("gan", "optim.lr_g=0.001", "optim.lr_d=0.1", "optim.lr_decay=2", "optim.min_lr=0.01")
    M.update_schedules(1)
    assert _groups(M)["G"][0][0] == 0.001 and _groups(M)["D"][0][0] == 0.1
    M.update_schedules(20)
    assert _groups(M)["G"][0][0] == 0.001 and _groups(M)["D"][0][0] == 0.01
    assert all(g["betas"] == (0.5, 0.999) for g in M.optimizers["G"].param_groups)


def test_a_huge_decay_underflows_to_the_floor_instead_of_overflowing():
    _, M = make("gan", *SGD, "optim.lr_decay=1e30")
    M.update_schedules(10 ** 6)
    assert _groups(M)["D"][0][0] == 0.0


def test_without_a_schedule_the_optimizers_keep_their_settings():
    _, M = make("gan", *SGD)
    before = _groups(M)
    M.update_schedules(1000)
    assert _groups(M) == before == {"G": [(0.1, 0.5)], "D": [(0.05, 0.5)]}


def _run(tmp_path, name, steps, resume=False, *extra):
    return fastgan.train(None, overrides=[
        *SGD, "optim.batch_size=16", "model.g_hidden=[16]", "model.d_hidden=[16,16]", "method.name=roth",
        "optim.lr_decay=1.2", "optim.min_lr=0.02", "optim.momentum_final=0.9", "optim.momentum_ramp_steps=6",
        f"run.steps={steps}", f"run.dir={tmp_path / name}", "run.checkpoint_every=5", "run.sample_every=0",
        "run.progress=off", "run.tensorboard=false", *extra], resume=resume)


def test_the_trainer_steps_with_the_scheduled_values_and_resumes_bitwise(tmp_path, monkeypatch):
    seen = []
    step = torch.optim.SGD.step

    def recording(self, *a, **k):
        seen.append((self.param_groups[0]["lr"], self.param_groups[0]["momentum"]))
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    full = _run(tmp_path, "full", 10)
    # D then G each iteration (k = 1), each at iteration t's values
    for t in range(1, 11):
        momentum = 0.5 + 0.4 * min(1.0, (t - 1) / 6)
        assert seen[2 * t - 2] == pytest.approx((max(0.05 / 1.2 ** (t - 1), 0.02), momentum))
        assert seen[2 * t - 1] == pytest.approx((max(0.1 / 1.2 ** (t - 1), 0.02), momentum))
    assert len(seen) == 20
    rows = [r.split(",") for r in (full.out_dir / "metrics.csv").read_text().splitlines()]
    logged = [dict(zip(rows[0], r)) for r in rows[1:] if r[1]]
    assert [(int(r["step"]), float(r["lr_d"]), float(r["lr_g"]), float(r["momentum"])) for r in logged][-1] == \
        pytest.approx((10, 0.02, max(0.1 / 1.2 ** 9, 0.02), 0.9))  # the rates and momentum of the logged step
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    half = _run(tmp_path, "half", 5)
    resumed = _run(tmp_path, "half", 10, True)
    assert resumed.step == 10 and resumed.losses == full.losses
    a = ckpt.load(full.out_dir / "checkpoints/last.pt")["method"]
    b = ckpt.load(half.out_dir / "checkpoints/last.pt")["method"]
    for k in ("G", "D"):
        for name, v in a["modules"][k].items():
            assert torch.equal(v, b["modules"][k][name]), (k, name)
    assert not math.isclose(full.losses["d_loss"], _run(tmp_path, "plain", 10, False, "optim.lr_decay=1",
                                                         "optim.min_lr=0", "optim.momentum_final=null",
                                                         "optim.momentum_ramp_steps=0").losses["d_loss"])


@pytest.mark.parametrize("overrides, message", [
    (["optim.momentum_final=0.7", "optim.momentum_ramp_steps=10"], r"^optim\.momentum_final: SGD's momentum schedule"),
    (["optim.momentum=0.5"], r"^optim\.momentum: SGD's momentum, got 0\.5 with optim\.optimizer='adam'"),
    (["optim.optimizer=sgd", "optim.momentum_final=0.7"], r"^optim\.momentum_ramp_steps: the momentum schedule needs"),
    (["optim.optimizer=sgd", "optim.momentum_ramp_steps=10"], r"^optim\.momentum_ramp_steps: the momentum schedule"),
    (["optim.min_lr=1e-6"], r"^optim\.min_lr: the floor of decayed learning rates, but optim\.lr_decay=1"),
    (["optim.lr_decay=0.5"], r"^optim\.lr_decay: must be"),
    (["optim.lr_decay=1.01", "run.device=cuda", "run.cuda_graph=true"], r"^optim\.lr_decay / optim\.momentum_final"),
])
def test_schedules_that_cannot_run_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        coerce(None, overrides)
