"""Which GEMMs the Triton denoiser runs: torch's with the Triton layer kernels around them by default, the fused
tl.dot kernels (kernels/denoiser_gemm.py) with FASTGAN_DENOISER_TRITON_GEMM=tl.dot, and each path checked to be
the one that ran. Their results against the reference: tests/ops/test_denoiser*.py (default) and
tests/ops/test_denoiser_gemm.py (tl.dot). Named *_triton: Triton on CPU tensors, run where the interpreter is
(tests/conftest.py)."""
from __future__ import annotations

import types

import pytest
import torch

from denoiser_helpers import assert_loss_step_matches_reference, make_pair

ENV = "FASTGAN_DENOISER_TRITON_GEMM"
LAYER_KERNELS = ("bn_forward", "bn_backward", "recon_forward", "recon_backward", "corrupt")
GEMM_PATHS = ("loss_forward", "loss_backward", "forward")


def _count_calls(monkeypatch, module, names, refuse=False) -> dict:
    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(module, name)

        def wrapped(*a, _name=name, _real=real, **k):
            if refuse:
                raise AssertionError(f"{module.__name__}.{_name} ran on the other GEMM path")
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(module, name, wrapped)
    return calls


def _step(den):
    h = torch.randn(9, 12, dtype=torch.float64)
    den.loss(h).backward()
    den.generator_loss(h.clone().requires_grad_()).backward()


@pytest.mark.parametrize("value", [None, "", "torch"])
def test_torch_gemms_by_default_triton(monkeypatch, value):
    from fastgan.kernels import denoiser as layers
    from fastgan.kernels import denoiser_gemm

    if value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, value)
    _count_calls(monkeypatch, denoiser_gemm, GEMM_PATHS, refuse=True)
    calls = _count_calls(monkeypatch, layers, LAYER_KERNELS)
    _step(make_pair(depth=2, backend="triton")[0])
    # depth 2: two BatchNorm layers each way, one corruption; the recon kernels for the loss and the generator term
    assert calls == {"bn_forward": 4, "bn_backward": 2, "recon_forward": 2, "recon_backward": 2, "corrupt": 1}


def test_tl_dot_gemms_when_asked_triton(monkeypatch):
    from fastgan.kernels import denoiser as layers
    from fastgan.kernels import denoiser_gemm

    monkeypatch.setenv(ENV, "tl.dot")
    _count_calls(monkeypatch, layers, ("bn_forward", "bn_backward", "corrupt"), refuse=True)
    calls = _count_calls(monkeypatch, denoiser_gemm, GEMM_PATHS)
    _step(make_pair(depth=2, backend="triton")[0])
    assert calls == {"loss_forward": 1, "loss_backward": 1, "forward": 1}


def test_other_backends_ignore_the_variable(monkeypatch):
    from fastgan.kernels import denoiser_gemm

    monkeypatch.setenv(ENV, "tl.dot")
    _count_calls(monkeypatch, denoiser_gemm, GEMM_PATHS, refuse=True)
    _step(make_pair(depth=2, backend="cpu")[0])


def test_an_unknown_value_is_refused_by_name_triton(monkeypatch):
    monkeypatch.setenv(ENV, "cublas")
    den, _ = make_pair(depth=2, backend="triton")
    with pytest.raises(ValueError, match=r"^FASTGAN_DENOISER_TRITON_GEMM='cublas' in the environment: expected "
                                         r"one of 'torch', 'tl\.dot'"):
        den.loss(torch.randn(9, 12, dtype=torch.float64))


@pytest.mark.parametrize("forward_gemm,backward_gemm", [("torch", "tl.dot"), ("tl.dot", "torch")])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("depth", [0, 3])
def test_a_backward_may_take_the_other_path_triton(monkeypatch, forward_gemm, backward_gemm, training, depth):
    """The variable is read at each call, so it may change between a loss and its backward: both paths save the
    same tensors ([x0, (y, out, shift, invstd) per hidden layer, z]), and either backward reads either's,
    gradients into h and the noise included."""
    den, net = make_pair(n=12, hidden=20, depth=depth, backend="triton", training=training, seed=3)
    h, noise = (torch.randn(11, 12, dtype=torch.float64, requires_grad=True) for _ in range(2))
    monkeypatch.setenv(ENV, forward_gemm)
    loss = den.loss(h, noise, detach=False)
    monkeypatch.setenv(ENV, backward_gemm)
    loss.backward()
    assert_loss_step_matches_reference(den, net, loss, h, noise)



def _fake(dtype=torch.float32, device="cuda"):
    """What dot_precision reads of a tensor (a CUDA device object initialises nothing)."""
    return types.SimpleNamespace(dtype=dtype, device=torch.device(device, 0) if device == "cuda" else
                                 torch.device(device))


@pytest.mark.parametrize("mode", ["tl.dot-tf32x3", "tl.dot-bf16x6"])
def test_an_emulated_product_is_asked_of_float32_on_sm80_and_newer(monkeypatch, set_matmul_tf32, mode):
    from fastgan.ops import _dispatch, denoiser_backends as db

    emulation = mode.split("-")[1]
    monkeypatch.setenv(ENV, mode)
    set_matmul_tf32(False)
    monkeypatch.setattr(db, "_triton_dot_precisions", lambda: ("tf32", "tf32x3", "ieee", "bf16x3", "bf16x6"))
    capability = {"value": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    assert db.dot_precision(_fake()) == emulation
    assert db.fused_gemms("triton")
    # float64 and CPU tensors (the interpreter): not asked; TF32 allowed: still the emulation, asked for by name
    assert db.dot_precision(_fake(torch.float64)) is None
    assert db.dot_precision(_fake(device="cpu")) is None
    set_matmul_tf32(True)
    assert db.dot_precision(_fake()) == emulation
    monkeypatch.setattr(torch.version, "hip", "6.2")
    with pytest.raises(_dispatch.BackendUnavailable, match=rf"{emulation} is an NVIDIA tensor-core emulation; on ROCm"):
        db.dot_precision(_fake())
    monkeypatch.setattr(torch.version, "hip", None)
    capability["value"] = (7, 5)
    with pytest.raises(_dispatch.BackendUnavailable, match=rf"^{ENV}='{mode}': {emulation} products run on the "
                                                           r"tensor cores of sm_80 and newer, this GPU is sm_75"):
        db.dot_precision(_fake())
    capability["value"] = (8, 0)
    monkeypatch.setattr(db, "_triton_dot_precisions", lambda: ("tf32", "ieee"))
    with pytest.raises(_dispatch.BackendUnavailable, match=rf"this triton's tl.dot offers no {emulation} "
                                                           r"\(it offers tf32, ieee\)"):
        db.dot_precision(_fake())
    monkeypatch.setenv(ENV, "tl.dot")
    assert db.dot_precision(_fake()) is None


def test_this_triton_offers_both_emulations():
    """triton 3.6 does (3.4's and 3.5.1's tl.dot offer tf32, tf32x3 and ieee, read from their wheels): a triton
    without one skips, naming what it offers, and the mode is refused there (above)."""
    from fastgan.ops import denoiser_backends as db

    offered = set(db._triton_dot_precisions())
    if not {"tf32x3", "bf16x6"} <= offered:
        pytest.skip(f"this triton's tl.dot offers {sorted(offered)}")
    assert {"tf32x3", "bf16x6"} <= offered


@pytest.mark.parametrize("mode", ["tl.dot-tf32x3", "tl.dot-bf16x6"])
def test_on_cpu_tensors_an_emulation_mode_runs_the_fused_gemms_in_ieee_triton(monkeypatch, mode):
    """The interpreter runs tl.dot in IEEE whatever it is asked: the fused GEMMs, given no precision, as "tl.dot"."""
    from fastgan.kernels import denoiser_gemm

    monkeypatch.setenv(ENV, mode)
    seen = []
    real = denoiser_gemm.loss_forward
    monkeypatch.setattr(denoiser_gemm, "loss_forward", lambda *a, **k: seen.append(k["precision"]) or real(*a, **k))
    den, _ = make_pair(depth=2, backend="triton", training=False)
    den = den.float()
    h, noise = torch.randn(9, 12), torch.randn(9, 12)
    loss = den.loss(h, noise)
    assert seen == [None]
    monkeypatch.setenv(ENV, "tl.dot")
    assert torch.equal(den.loss(h, noise), loss)
