"""Tile sizes of the Triton denoiser's fused GEMMs (kernels/denoiser_gemm.py, FASTGAN_DENOISER_TRITON_GEMM=tl.dot,
set here), swept on a GPU: the loss step
(forward + backward) replayed from a CUDA graph per (BM, BN, BK), every GEMM of the step with the same
tiles, beside the shape-chosen default (`_tiles`, written without a GPU: untuned) and the nn.Sequential
reference captured the same way. The data for choosing `_tiles`; GPU only, and not part of the goals.

    pytest bench/bench_denoiser_tiles.py --benchmark-only --benchmark-json out.json
    (tools/gpu_check.sh tiles)

extra_info: tiles ("default" or "BMxBNxBK"), ms_per_step, speedup_vs_reference, speedup_vs_default.
"""
from __future__ import annotations

import pytest
import torch

from bench_graph_step import _capture, _replay_ms
from bench_denoiser import _setup, loss_step
from benchutil import device_label, triton_gemm_mode

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the tile sweep needs a CUDA device")

SIZES = [(512, 3, 64), (2048, 3, 512)]  # (n_h, depth, B): the launch-bound end and the GEMM-bound end
# float32 tiles that compile for sm_90 without spills at 4 warps (tests/test_triton_compile.py checks the default
# ones; a config that spills is measured all the same: that is what the sweep is for)
TILES = [None, (16, 16, 16), (16, 32, 32), (32, 32, 16), (32, 32, 32), (32, 64, 16), (32, 64, 32), (64, 64, 16),
         (64, 64, 32), (64, 64, 32, 8), (128, 64, 32, 8)]  # (BM, BN, BK[, warps: 4])
_ms: dict = {}


def _label(tiles) -> str:
    return "default" if tiles is None else "x".join(map(str, tiles))


CASES = [("reference", None, s) for s in SIZES] + [("triton", t, s) for s in SIZES for t in TILES]


@pytest.mark.parametrize("impl,tiles,size", CASES,
                         ids=[f"{i}-{_label(t)}-nh{s[0]}-d{s[1]}-B{s[2]}" for i, t, s in CASES])
def test_denoiser_tiles(benchmark, monkeypatch, impl, tiles, size):
    from fastgan.kernels import denoiser_gemm

    monkeypatch.setattr(denoiser_gemm, "TILES", tiles)
    calls = triton_gemm_mode(monkeypatch, "tl.dot")  # the Triton backend's own GEMMs, whose tiles these are
    n_h, depth, B = size
    den, net, h, noise = _setup("cuda", impl, n_h, depth, B)

    def step():
        loss_step(impl, den, net, h, noise)

    graph = _capture(step)
    assert bool(calls) == (impl == "triton"), "the Triton denoiser's tl.dot GEMMs did not run"
    ms = _replay_ms(benchmark, graph)
    benchmark.extra_info.update(impl=impl, tiles=_label(tiles), n_h=n_h, depth=depth, B=B,
                                device=device_label("cuda"))
    if ms is None:
        return
    _ms[(impl, _label(tiles), size)] = ms
    benchmark.extra_info["ms_per_step"] = ms
    for key, base in (("speedup_vs_reference", _ms.get(("reference", "default", size))),
                      ("speedup_vs_default", _ms.get(("triton", "default", size)))):
        if base and impl == "triton":
            benchmark.extra_info[key] = base / ms
