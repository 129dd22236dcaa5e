"""The cpu backend's C++ entry points are what runs, for every dtype each op takes and on both of its paths (the
eager autograd.Functions and the torch.library custom ops): dispatch counts are recorded by the Python wrappers,
so a wrapper that computed some dtype or shape in torch instead would still count as `cpu`; here each call of
fastgan._C's `*_cpu` functions is counted."""
import collections

import pytest
import torch
from torch import nn

from fastgan import _ext
from fastgan.ops import (Denoiser, _eager, bn_relu, denoiser_eager, grad_norm_penalty, js_penalty, noisy_clean_batch,
                         nt_losses)

HALF_TOO = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture
def calls(monkeypatch):
    real = _ext.C()
    counts = collections.Counter()

    class Counting:
        def __getattr__(self, name):
            attr = getattr(real, name)
            if not (callable(attr) and name.endswith("_cpu")):
                return attr

            def counted(*args, **kwargs):
                counts[name] += 1
                return attr(*args, **kwargs)
            return counted
    monkeypatch.setattr(_ext, "_load", lambda: (Counting(), None))
    return counts


@pytest.fixture(params=["eager", "custom_ops"])
def path(request, monkeypatch):
    if request.param == "custom_ops":
        monkeypatch.setattr(_eager, "ok", lambda *t: False)
        monkeypatch.setattr(_eager, "ok_on_one_device", lambda *t: False)
        monkeypatch.setattr(denoiser_eager, "_compiling", lambda: True)
    return request.param


def _ran(calls, step) -> dict:
    calls.clear()
    step()
    return dict(calls)


@pytest.mark.parametrize("dtype", HALF_TOO)
def test_penalty_noise_and_losses(calls, path, dtype):
    g = torch.randn(8, 5, dtype=dtype, requires_grad=True)
    l = torch.randn(8, dtype=dtype)
    assert _ran(calls, lambda: grad_norm_penalty(g, l, "js_real", backend="cpu").backward()) == {
        "penalty_forward_cpu": 1, "penalty_backward_cpu": 1}
    x = torch.randn(8, 5, dtype=dtype, requires_grad=True)
    s = torch.tensor(0.3, requires_grad=True)
    assert _ran(calls, lambda: sum(t.sum() for t in noisy_clean_batch(x, x * 2, s, backend="cpu")).backward()) == {
        "noisy_forward_cpu": 1, "noisy_backward_cpu": 1}
    lr = torch.randn(8, dtype=dtype, requires_grad=True)
    lf = torch.randn(8, dtype=dtype, requires_grad=True)
    assert _ran(calls, lambda: nt_losses(lr, lf, 0.3, backend="cpu").backward()) == {
        "nt_losses_forward_cpu": 1, "nt_losses_backward_cpu": 1}


@pytest.mark.parametrize("dtype", HALF_TOO)
def test_closed_form_penalty_with_batchnorm(calls, dtype):
    torch.manual_seed(0)
    D = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.Flatten(),
                      nn.Linear(4 * 36, 1)).to(dtype)
    xr, xf = torch.randn(6, 3, 8, 8, dtype=dtype), torch.randn(6, 3, 8, 8, dtype=dtype)
    # per batch: BatchNorm's statistics, its centred terms (forward and the penalty's pass), the penalty's terms,
    # and BatchNorm's vector-Jacobian product
    assert _ran(calls, lambda: js_penalty(D, xr, xf, mode="mlp", backend="cpu")[0].backward()) == {
        "bn_cf_stats_cpu": 2, "bn_cf_centered_cpu": 4, "penalty_terms_cpu": 2, "bn_cf_vjp_cpu": 2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_denoiser(calls, path, dtype):
    torch.manual_seed(0)
    den = Denoiser(6, 8, 2, backend="cpu", dtype=dtype)
    h = torch.randn(8, 6, dtype=dtype)
    hf = torch.randn(8, 6, dtype=dtype, requires_grad=True)
    layers = {"bn_relu_forward_cpu": 2}
    recon = {"recon_loss_forward_cpu": 1, "recon_loss_backward_cpu": 1}
    assert _ran(calls, lambda: den.loss(h).backward()) == {
        "corrupt_cpu": 1, **layers, **recon, "bn_relu_backward_cpu": 2}
    assert _ran(calls, lambda: den.generator_loss(hf).backward()) == {**layers, **recon}
    assert _ran(calls, lambda: den(hf).sum().backward()) == {**layers, "bn_relu_backward_cpu": 2}
    y = torch.randn(8, 8, dtype=dtype, requires_grad=True)
    norm = den.norms[0]
    assert _ran(calls, lambda: bn_relu(y, None, norm.weight, norm.bias, backend="cpu").sum().backward()) == {
        "bn_relu_forward_cpu": 1, "bn_relu_backward_cpu": 1}


def test_penalty_bindings_reject_bad_sizes():
    """The bindings' own checks, which the Python wrappers never reach (a tensor has no negative size); B = 0, so
    nothing is dereferenced."""
    C = _ext.C()
    with pytest.raises(ValueError, match="negative size"):
        C.penalty_forward_cpu(0, 0, 0, 0, 0, -1, 1, 1, 1, 0)
    with pytest.raises(ValueError, match="negative size"):
        C.penalty_terms_cpu(0, 0, 0, 0, 0, 0, 0, -1, 1, 1, 1, 0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="unknown weight code"):
        C.penalty_forward_cpu(0, 0, 0, 0, 0, 1, 1, 1, 1, 6)
    with pytest.raises(ValueError, match=r"split outside \[0, B\]"):
        C.penalty_terms_cpu(0, 0, 0, 0, 0, 0, 2, 1, 1, 1, 1, 0, 0, 3, 1.0)
