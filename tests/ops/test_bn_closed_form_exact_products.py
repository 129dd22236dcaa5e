"""The BatchNorm closed-form kernels' reductions form each product of two inputs in double (exact for float32) and
add in double, so the per-channel quantities that are one sum each -- q = mean(xhat t), d gamma = sum(rho xhat) +
rstd (sum(lam (t - mt)) - q sum(lam xhat)), d beta = sum(rho) -- land within an ulp or two of float64 on the same
float32 inputs. Cotangents and tangents 1e4-1e5 std off zero (rho ~ a W_out nearly the same for every sample) make
the products large while the sums cancel: products rounded to float32 err by thousands of ulps of the result there
(as torch's float32 reference does, so the 2x-oracle tests cannot see it)."""
from __future__ import annotations

import pytest
import torch

from fastgan.ops import bn_closed_form as K
from fastgan.reference import bn_closed_form as ref

from helpers import backend_device, every_backend_params

BACKENDS = every_backend_params()
EPS = 1e-5
ULPS = 4


def _within_ulps(got, truth, name):
    got = got.detach().cpu().double()
    scale = truth.abs().clamp_min(torch.finfo(torch.float32).tiny) * torch.finfo(torch.float32).eps
    err = ((got - truth).abs() / scale).max().item()
    assert err <= ULPS, f"{name}: {err:.1f} ulps from float64"


def _inputs(seed, shape=(4096, 3)):
    """(a float64 normal sampler, xhat, rstd of a normalized batch in float32)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    xhat, rstd = ref.stats(r(*shape) * 2 + 1, EPS)
    return r, xhat.float(), rstd.float()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mean", [1e4, 1e5])
@pytest.mark.parametrize("seed", range(3))
def test_q_of_a_tangent_far_off_zero_is_exact(backend, mean, seed):
    r, xhat, rstd = _inputs(seed)
    t = (mean + r(*xhat.shape)).float()
    dev = backend_device(backend)
    _, mt, q = K.centered(xhat.to(dev), t.to(dev), rstd.to(dev), None, backend=backend)
    _, mt64, q64 = ref.centered(xhat.double(), t.double(), rstd.double(), None)
    _within_ulps(q, q64, "q")
    _within_ulps(mt, mt64, "mt")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rho_mean,lam_mean", [(1e4, 0.0), (1e5, 0.0), (0.0, 1e4), (1e4, 1e4)])
@pytest.mark.parametrize("seed", range(3))
def test_dgamma_of_cotangents_far_off_zero_is_exact(backend, rho_mean, lam_mean, seed):
    r, xhat, rstd = _inputs(seed)
    shape = xhat.shape
    t = r(*shape).float()
    _, mt, q = (v.float() for v in ref.centered(xhat.double(), t.double(), rstd.double(), None))
    rho, lam = (rho_mean + r(*shape)).float(), (lam_mean + r(*shape)).float()
    gamma = (r(shape[1]) * 0.5 + 1).float()
    v32 = (rho, lam, xhat, t, rstd, gamma, mt, q)
    dev = backend_device(backend)
    _, dgamma, dbeta = K.vjp(*(v.to(dev) for v in v32), backend=backend)
    _, dgamma64, dbeta64 = ref.vjp(*(v.double() for v in v32))
    _within_ulps(dgamma, dgamma64, "dgamma")
    _within_ulps(dbeta, dbeta64, "dbeta")
