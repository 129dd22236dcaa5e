"""Memory bandwidth of the fused elementwise/reduction kernels on a GPU, against a device-to-device copy of
the same device (the achievable ceiling), at sizes large enough that launch and host costs vanish.

    pytest bench/bench_bandwidth.py --benchmark-only [--benchmark-json out.json]

Times come from triton.testing.do_bench (CUDA events, L2 flushed, median) and go to extra_info with the
minimal traffic of each pass (each input read once, each output written once) as GB_per_s and as
fraction_of_copy. The pytest-benchmark timing of the same call (with a synchronisation) is kept beside it.
Forward and backward are timed apart: the backward alone is torch.autograd.grad on a retained graph.
"""
from __future__ import annotations

import pytest
import torch

from fastgan.ops import NoiseState, noisy_clean_batch, nt_losses
from fastgan.ops import penalty as P
from fastgan.reference import penalty as ref_penalty

from benchutil import device_label

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="bandwidth is measured on a CUDA device")
_copy_gbs: dict = {}


def _do_bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e-3  # seconds


def _record(benchmark, fn, nbytes, **info):
    sec = _do_bench(fn)

    def synced():
        fn()
        torch.cuda.synchronize()

    benchmark(synced)
    gbs = nbytes / sec / 1e9
    benchmark.extra_info.update(device=device_label("cuda"), bytes_moved=nbytes, event_ms=sec * 1e3,
                                GB_per_s=gbs, **info)
    if info.get("op") != "copy":
        benchmark.extra_info["fraction_of_copy"] = gbs / _copy_rate()
    return gbs


def _copy_args():
    x = torch.randn(1 << 28, device="cuda")  # 1 GiB
    return x, torch.empty_like(x)


def _copy_rate() -> float:
    """GB/s of a device copy: test_00_device_copy's, or measured here where it did not run in this process (a -k
    selection, another xdist worker), so that no row goes without its fraction_of_copy (goals.py drops such rows)."""
    if "copy" not in _copy_gbs:
        x, y = _copy_args()
        _copy_gbs["copy"] = 2 * x.numel() * 4 / _do_bench(lambda: y.copy_(x)) / 1e9
        del x, y
    return _copy_gbs["copy"]


def test_00_device_copy(benchmark):
    x, y = _copy_args()
    _copy_gbs["copy"] = _record(benchmark, lambda: y.copy_(x), 2 * x.numel() * 4, op="copy")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
@pytest.mark.parametrize("shape", [(1 << 24, 3), (65536, 3 * 32 * 32)], ids=["B16M-F3", "B64k-F3072"])
@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_penalty(benchmark, pass_, shape, backend, dtype):
    B, F_ = shape
    g = torch.randn(B, F_, device="cuda", dtype=dtype, requires_grad=True)
    l = torch.randn(B, device="cuda", requires_grad=True)
    run = (lambda: P.grad_norm_penalty(g, l, "js_real", "none", backend=backend)) if backend != "reference" else \
        (lambda: ref_penalty.grad_norm_penalty(g, l, "js_real", "none"))
    gsz, lsz = g.element_size(), 4
    if pass_ == "forward":
        with torch.no_grad():
            nbytes = B * F_ * gsz + 2 * B * lsz  # read g and the logits, write one value per row
            _record(benchmark, run, nbytes, op="grad_norm_penalty", backend=backend, dtype=str(dtype))
        return
    out = run()
    up = torch.randn_like(out)
    nbytes = 2 * B * F_ * gsz + 3 * B * lsz  # read g, write dg; read logits and the upstream, write dlogits
    _record(benchmark, lambda: torch.autograd.grad(out, (g, l), up, retain_graph=True), nbytes,
            op="grad_norm_penalty_backward", backend=backend, dtype=str(dtype))


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_noisy_clean_batch(benchmark, pass_, backend):
    m, F_ = 16384, 3 * 32 * 32
    xr = torch.randn(m, F_, device="cuda", requires_grad=True)
    xf = torch.randn(m, F_, device="cuda", requires_grad=True)
    state = NoiseState(0, "cuda")
    run = lambda: noisy_clean_batch(xr, xf, 0.5, "double", state=state, backend=backend)  # noqa: E731
    if pass_ == "forward":
        with torch.no_grad():
            # read x_real, x_fake (2 m F); write [x; x+eps] twice (4 m F); eps is drawn in the kernel
            _record(benchmark, run, 6 * m * F_ * 4, op="noisy_clean_batch", backend=backend)
        return
    r, f = run()
    gr, gf = torch.randn_like(r), torch.randn_like(f)
    # read both upstream gradients (4 m F), write dx_real, dx_fake (2 m F)
    _record(benchmark, lambda: torch.autograd.grad((r, f), (xr, xf), (gr, gf), retain_graph=True),
            6 * m * F_ * 4, op="noisy_clean_batch_backward", backend=backend)


# logits a side for nt_losses' rows: 64M, 1 GiB moved by the forward. At 16M (until 2026-12-05) the forward moved
# 256 MiB, ~64 us at an H200's copy speed, less than the op's ~90 us of host work a call, part of which do_bench's
# events take in: the row understated the kernels, against this file's rule of sizes where host costs vanish.
NT_N = 1 << 26


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_nt_losses(benchmark, backend):
    n = NT_N
    lr = torch.randn(n, device="cuda", requires_grad=True)
    lf = torch.randn(n, device="cuda", requires_grad=True)
    mu = torch.rand((), device="cuda")
    with torch.no_grad():
        # read 2 n logits, write 2 n JS weights (the loss is one scalar)
        _record(benchmark, lambda: nt_losses(lr, lf, mu, js_weights=True, backend=backend), 4 * n * 4,
                op="nt_losses", backend=backend)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_nt_losses_backward(benchmark, backend):
    n = NT_N
    lr = torch.randn(n, device="cuda", requires_grad=True)
    lf = torch.randn(n, device="cuda", requires_grad=True)
    out = nt_losses(lr, lf, torch.rand((), device="cuda"), js_weights=True, backend=backend)
    ups = (torch.ones((), device="cuda"), torch.randn(n, device="cuda"), torch.randn(n, device="cuda"))
    # read 2 n logits and 2 n weights' gradients, write 2 n logits' gradients
    _record(benchmark, lambda: torch.autograd.grad(out, (lr, lf), ups, retain_graph=True), 6 * n * 4,
            op="nt_losses_backward", backend=backend)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_nt_losses_graphed(benchmark, backend):
    """test_nt_losses replayed from a CUDA graph: the same kernels without the op's host work. The op's Python (checks,
    dispatch, allocation) costs ~90 us a call on the 2-core CI machine; do_bench's events include the part of it
    that outlasts the L2 flush enqueued before each call, so the eager figure may understate the kernels. The
    difference between the two rows says how much."""
    n = NT_N
    lr = torch.randn(n, device="cuda")
    lf = torch.randn(n, device="cuda")
    mu = torch.rand((), device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.no_grad():
        with torch.cuda.stream(s):
            for _ in range(3):  # Triton compiles, the allocator settles
                nt_losses(lr, lf, mu, js_weights=True, backend=backend)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            nt_losses(lr, lf, mu, js_weights=True, backend=backend)
    _record(benchmark, g.replay, 4 * n * 4, op="nt_losses", backend=backend, graphed=True)


# The closed-form penalty's BatchNorm passes (fastgan/ops/bn_closed_form.py): the first BatchNorm of the DCGAN32 D at
# width 64 and B=64, a large layer for the bandwidth, and few channels over large maps (one CUDA block per channel).
BN_SHAPES = {"dcgan-64x64x16x16": (64, 64, 16, 16), "large-256x128x32x32": (256, 128, 32, 32),
             "few-channels-64x4x128x128": (64, 4, 128, 128)}
# elements moved per element of the layer, minimal traffic: stats reads h and writes xhat; centered reads xhat, t and
# writes its output; vjp reads rho, lam, xhat, t and writes d h (the per-channel vectors are negligible)
BN_TRAFFIC = {"stats": 2, "centered": 3, "vjp": 5}


@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
@pytest.mark.parametrize("shape", list(BN_SHAPES))
@pytest.mark.parametrize("op", list(BN_TRAFFIC))
def test_bn_closed_form(benchmark, op, shape, backend):
    from fastgan.ops import bn_closed_form as K

    dims = BN_SHAPES[shape]
    h, t, rho, lam = (torch.randn(dims, device="cuda") for _ in range(4))
    gamma = torch.rand(dims[1], device="cuda") + 0.5
    xhat, rstd = K.stats(h, 1e-5, backend="cuda")
    _, mt, q = K.centered(xhat, t, rstd, gamma, backend="cuda")
    run = {"stats": lambda: K.stats(h, 1e-5, backend=backend),
           "centered": lambda: K.centered(xhat, t, rstd, gamma, backend=backend),
           "vjp": lambda: K.vjp(rho, lam, xhat, t, rstd, gamma, mt, q, backend=backend)}[op]
    # information, not the bandwidth goal (issue 5 sets it for the batch doubling and the losses): each channel is one
    # block that reads its plane in more passes than the minimal traffic counts (the statistics' reductions, then
    # the elementwise pass), and the smaller layers are launch-bound
    _record(benchmark, run, BN_TRAFFIC[op] * h.numel() * 4, op=f"bn_closed_form.{op}", backend=backend,
            shape=list(dims), bandwidth_goal=False)
