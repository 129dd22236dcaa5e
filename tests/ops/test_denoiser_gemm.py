"""The Triton backend's fused-GEMM denoiser paths (FASTGAN_DENOISER_TRITON_GEMM=tl.dot, kernels/denoiser_gemm.py:
GEMMs in tl.dot with the corruption, BatchNorm, ReLU, loss and their backward fused around them) against the
reference, on grids of many tiles (small tiles forced), with ragged edges, both BatchNorm modes and every input
gradient."""
import copy

import pytest
import torch
from torch.autograd import gradcheck

from fastgan.ops import _dispatch, denoiser_loss
from fastgan.reference import denoiser as ref
from ops.test_denoiser import _functional_params, assert_within_twice, delta, make_pair, state
from helpers import gpu_division

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(autouse=True)
def tl_dot_gemms(monkeypatch):
    """Every test here runs the tl.dot GEMMs, which the Triton backend takes only when asked (torch's by default)."""
    monkeypatch.setenv("FASTGAN_DENOISER_TRITON_GEMM", "tl.dot")


@pytest.fixture
def small_tiles(monkeypatch):
    """16 x 16 tiles, 16-deep steps: B=37 is three row tiles (the last ragged), 40 hidden features three column
    tiles, so every cross-tile combination (statistics, loss partials, column sums) runs."""
    from fastgan.kernels import denoiser_gemm

    monkeypatch.setattr(denoiser_gemm, "TILES", (16, 16, 16))


@pytest.fixture
def no_layer_kernels(monkeypatch):
    """The per-layer Triton kernels (torch GEMMs between them) must not run: the GEMM path replaces them. (The
    generator term's ||h - target||² after the network is its own op, kernels/denoiser.py's recon kernels.)"""
    from fastgan.kernels import denoiser as per_layer

    def refuse(*_a, **_k):
        raise AssertionError("a per-layer Triton kernel ran instead of the fused GEMM path")

    for name in ("bn_forward", "bn_backward"):
        monkeypatch.setattr(per_layer, name, refuse)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_many_tiles_match_reference_float64_triton(device, training, depth, small_tiles, no_layer_kernels):
    den, net = make_pair(n=20, hidden=40, depth=depth, backend="triton", training=training, seed=depth)
    den, net = den.to(device), net.to(device)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(37, 20, generator=g, dtype=torch.float64).to(device).requires_grad_()
    noise = torch.randn(37, 20, generator=g, dtype=torch.float64).to(device)
    before = dict(_dispatch.counts)
    per_sample = den.loss(h, noise, detach=False, reduction="none")
    w = torch.rand(37, generator=g, dtype=torch.float64).to(device)  # a non-uniform upstream gradient
    (per_sample * w).sum().backward()
    d = delta(before)
    assert d[("denoiser_loss", "triton")] == 1 and d[("denoiser_loss_backward", "triton")] == 1

    h_ref = h.detach().clone().requires_grad_()
    expected = ref.denoiser_loss(net, h_ref, noise, reduction="none")
    (expected * w).sum().backward()
    torch.testing.assert_close(per_sample, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-10, atol=1e-12)
    got, want = state(den.net), state(net)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
def test_generator_target_many_tiles_triton(device, training, small_tiles, no_layer_kernels):
    den, net = make_pair(n=20, hidden=40, depth=2, backend="triton", training=training, seed=5)
    den, net = den.to(device), net.to(device)
    hf = torch.randn(37, 20, dtype=torch.float64, device=device, requires_grad=True)
    hf_ref = hf.detach().clone().requires_grad_()
    before = dict(_dispatch.counts)
    den.generator_loss(hf).backward()
    assert delta(before)[("denoiser_forward", "triton")] == 1
    ref.generator_loss(net, hf_ref).backward()
    torch.testing.assert_close(hf.grad, hf_ref.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_every_input_triton(training, small_tiles, no_layer_kernels):
    """h (also the target), the noise and every parameter, across a 2 x 2 tile grid (B=20, width 17)."""
    weights, biases, gammas, betas, rms, rvs = _functional_params(depth=2, F=17, H=18, seed=3)
    g = torch.Generator().manual_seed(4)
    h = torch.randn(20, 17, generator=g, dtype=torch.float64).requires_grad_()
    noise = torch.randn(20, 17, generator=g, dtype=torch.float64).requires_grad_()
    n_w = 3

    def fn(h, noise, *p):
        w, b = list(p[:n_w]), list(p[n_w:2 * n_w])
        ga, be = list(p[2 * n_w:2 * n_w + 2]), list(p[2 * n_w + 2:])
        return denoiser_loss(h, w, b, ga, be, [r.clone() for r in rms], [v.clone() for v in rvs], noise=noise,
                             sigma=0.7, training=training, reduction="none", backend="triton")

    before = dict(_dispatch.counts)
    assert gradcheck(fn, (h, noise, *weights, *biases, *gammas, *betas), fast_mode=True)
    assert delta(before)[("denoiser_loss_backward", "triton")] > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
def test_fp32_many_tiles_within_twice_reference_error_triton(device, training, small_tiles, set_matmul_tf32):
    if device == "cuda":
        set_matmul_tf32(False)  # IEEE fp32 on both sides
    _fp32_within_twice_reference_error(device, training, 20, 40, 37)


@pytest.mark.parametrize("ulps", [-2, 2])
def test_fp32_with_a_gpus_division_triton(monkeypatch, ulps, small_tiles):
    """The fused GEMMs with float32 `/` rounded as a GPU may (div.full, within 2 ulp; helpers.gpu_division): the
    float64 reciprocals seeded in float32 (_recip) and the rest still hold the 2x rule."""
    gpu_division(monkeypatch, ulps)
    _fp32_within_twice_reference_error("cpu", True, 20, 40, 37)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["tl.dot-tf32x3", "tl.dot-bf16x6"])
@pytest.mark.parametrize("n,hidden,B", [(20, 40, 37), (256, 512, 128)])
def test_fp32_emulated_products_within_twice_reference_error_triton(mode, n, hidden, B, monkeypatch, set_matmul_tf32):
    """The tensor-core emulations of a float32 product (written without a GPU): held to the rule every backend is,
    against cuBLAS's IEEE float32, at a small and a realistic depth of sum."""
    from fastgan.ops import denoiser_backends

    emulation = mode.split("-")[1]
    if torch.cuda.get_device_capability()[0] < 8 or emulation not in denoiser_backends._triton_dot_precisions():
        pytest.skip(f"{emulation} needs sm_80 or newer and a triton offering it (refused there: "
                    "tests/ops/test_denoiser_triton_gemms.py)")
    monkeypatch.setenv("FASTGAN_DENOISER_TRITON_GEMM", mode)
    set_matmul_tf32(False)
    assert denoiser_backends.dot_precision(torch.empty(1, device="cuda")) == emulation
    _fp32_within_twice_reference_error("cuda", True, n, hidden, B)


def _fp32_within_twice_reference_error(device, training, n, hidden, B):
    master, _ = make_pair(n=n, hidden=hidden, depth=3, training=training, seed=7)
    master = master.float().double().to(device)  # float64 truth of the float32 inputs, not of their originals
    g = torch.Generator().manual_seed(8)
    h = (torch.randn(B, n, generator=g, dtype=torch.float64) * 2 + 0.5).float().double().to(device)
    noise = torch.randn(B, n, generator=g, dtype=torch.float64).float().double().to(device)
    truth_net = copy.deepcopy(master.net)
    tl = ref.denoiser_loss(truth_net, h, noise)
    tl.backward()
    fused = copy.deepcopy(master).float()
    fused.backend = "triton"
    fl = fused.loss(h.float(), noise.float())
    fl.backward()
    ref_net = copy.deepcopy(master.net).float()
    rl = ref.denoiser_loss(ref_net, h.float(), noise.float())
    rl.backward()
    truth = {"loss": tl.detach(), **state(truth_net)}
    got = {"loss": fl.detach(), **state(fused.net)}
    base = {"loss": rl.detach(), **state(ref_net)}
    for k, t in truth.items():
        if t.dtype != torch.int64:
            assert_within_twice(k, got[k], base[k], t)


def test_empty_batch_in_eval_mode_triton(no_layer_kernels):
    """B = 0 (eval mode only): one row of programs with every row masked; zero gradients, untouched buffers."""
    den, net = make_pair(n=12, hidden=16, depth=2, backend="triton", training=False)
    h = torch.empty(0, 12, dtype=torch.float64)
    per_sample = den.loss(h, torch.empty_like(h), reduction="none")
    assert per_sample.shape == (0,)
    per_sample.sum().backward()
    for k, p in den.net.named_parameters():
        assert torch.equal(p.grad, torch.zeros_like(p)), k
    for (k, b), (_, b_ref) in zip(den.net.named_buffers(), net.named_buffers()):
        assert torch.equal(b, b_ref), k


@pytest.mark.triton
@pytest.mark.parametrize("call", ["loss", "forward"])
def test_float64_gemms_need_a_triton_whose_dot_takes_float64(monkeypatch, call):
    """triton 3.4 (torch 2.8's) asserts "Unsupported lhs dtype fp64" in tl.dot: the backend says what to use."""
    den, _ = make_pair(backend="triton")  # float64
    h = torch.randn(5, 12, dtype=torch.float64)
    def run(d, x):
        if call == "loss":
            return d.loss(x, torch.zeros_like(x))
        with torch.no_grad():  # the whole-network GEMM path (with grad the forward runs torch's GEMMs per layer)
            return d(x)

    installed = _dispatch.triton_version()
    monkeypatch.setattr(_dispatch, "triton_version", lambda: (3, 4))
    with pytest.raises(_dispatch.BackendUnavailable, match=r"float64 GEMMs need triton >= 3\.5.*found triton 3\.4"):
        run(den, h)
    run(den.float(), h.float())  # float32 runs on 3.4
    if installed >= (3, 5):  # (the suite's triton; on a real 3.4 the float64 GEMMs fail, as refused above)
        monkeypatch.setattr(_dispatch, "triton_version", lambda: (3, 5))
        run(den.double(), h)
