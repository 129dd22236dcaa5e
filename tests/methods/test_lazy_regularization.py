"""method.roth.every (lazy regularization): the penalty in the D updates of iterations 1, 1 + k, 1 + 2k, ...
weighted gamma * k, the plain D loss in the others; every iteration reports the latest penalty."""
import pytest
import torch

from fastgan.config import ConfigError, coerce
from fastgan.reference import methods as ref

from method_helpers import assert_close, d_setup, grads, make


@pytest.mark.parametrize("mode", ["double_backward", "jvp", "mlp"])
def test_penalty_only_every_kth_iteration_weighted_by_k(mode):
    k = 3
    cfg, M = make("roth", "method.roth.gamma=0.7", f"method.roth.every={k}", f"method.roth.mode={mode}")
    P = list(M.D.parameters())
    x, fake, d = d_setup(M)
    seen, kept = [], []
    for t in range(1, 8):
        x = x + 0.1  # new data every iteration: a penalty recomputed in a plain iteration would differ
        M.update_schedules(t)
        out = M.d_objective(x, fake, d)
        kept.append(out.stats)
        regularized = (t - 1) % k == 0
        want = ref.roth_js_d_loss(M.D, x, fake, 0.7 * k) if regularized else ref.gan_d_loss(M.D, x, fake)
        assert_close(grads(out.d_loss, P), grads(want, P), f"D at t={t}")
        seen.append(float(out.stats["penalty"]))
        if regularized:
            omega = float((ref.roth_js_d_loss(M.D, x, fake, 2.0) - ref.gan_d_loss(M.D, x, fake)).detach())
            assert seen[-1] == pytest.approx(omega, rel=1e-9, abs=0)
        else:  # the latest penalty, from the last regularized iteration
            assert seen[-1] == seen[-2]
        assert float(out.stats["gamma"]) == pytest.approx(0.7)
    # each iteration's stats keep their values after later iterations
    assert [float(st["penalty"]) for st in kept] == seen


def test_default_regularizes_every_iteration():
    cfg, M = make("roth", "method.roth.gamma=0.4")
    assert cfg.method.roth.every == 1
    P = list(M.D.parameters())
    x, fake, d = d_setup(M)
    for t in (1, 2, 5):
        M.update_schedules(t)
        got = grads(M.d_objective(x, fake, d).d_loss, P)
        assert_close(got, grads(ref.roth_js_d_loss(M.D, x, fake, 0.4), P), f"D at t={t}")


def test_training_iterations_alternate(monkeypatch):
    from fastgan.methods import roth as roth_mod

    calls = []
    orig = roth_mod.regularizer
    monkeypatch.setattr(roth_mod, "regularizer", lambda *a, **kw: (calls.append(1), orig(*a, **kw))[1])
    cfg, M = make("roth", "method.roth.every=2", "method.d_steps=2")
    per_iter = []
    for t in range(1, 6):
        before = len(calls)
        M.train_step(t, lambda m: torch.randn(m, 3, dtype=torch.float64))
        per_iter.append(len(calls) - before)
    assert per_iter == [2, 0, 2, 0, 2]  # both D steps of iterations 1, 3, 5


def test_every_must_be_positive():
    with pytest.raises(ConfigError, match=r"method\.roth\.every"):
        coerce(None, ["method.roth.every=0"])
