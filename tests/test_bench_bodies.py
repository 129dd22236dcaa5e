"""The GPU-only denoiser benchmarks' bodies run on CPU tensors, graph capture and replay replaced by direct calls:
each impl sets up the path it is named for (the Triton backend's tl.dot GEMMs where asked, checked inside the
benchmark), records the extra_info goals.py reads, and leaves the environment as it found it. Named *_triton: Triton
on CPU tensors, run where the interpreter is (tests/conftest.py)."""
import os

import pytest

from helpers import bench_module

ENV = "FASTGAN_DENOISER_TRITON_GEMM"


class _Benchmark:
    def __init__(self):
        self.extra_info = {}


@pytest.fixture
def on_cpu(monkeypatch):
    """bench_graph_step and bench_denoiser_tiles with a small CPU setup, no graph and a replay of one direct call."""
    graph, tiles, bd = (bench_module(n, f"bodies_{n}") for n in ("bench_graph_step", "bench_denoiser_tiles",
                                                                   "bench_denoiser"))
    setup = lambda device, impl, n_h, depth, B: bd._setup("cpu", impl, 16, 2, 8)  # noqa: E731
    for m in (graph, tiles):
        monkeypatch.setattr(m, "_capture", lambda step: step() or step)
        monkeypatch.setattr(m, "_replay_ms", lambda benchmark, step: step() or 1.0)
        monkeypatch.setattr(m, "device_label", lambda device: "cpu")
    monkeypatch.setattr(graph, "denoiser_setup", setup)
    monkeypatch.setattr(tiles, "_setup", setup)
    monkeypatch.delenv(ENV, raising=False)
    return graph, tiles


@pytest.mark.triton
def test_graphed_denoiser_rows_triton(on_cpu):
    graph, _ = on_cpu
    infos = {}
    for impl in ("reference", "gemms", "cuda", "triton", "triton-tl.dot"):
        b = _Benchmark()
        with pytest.MonkeyPatch.context() as mp:
            if impl == "cuda":  # the cuda backend's glue on CPU tensors: the cpu kernels stand in
                mp.setitem(graph.DENOISER_BACKEND, "cuda", "cpu")
            graph.test_graphed_denoiser_loss(b, mp, 512, 3, 64, impl)
        assert ENV not in os.environ
        infos[impl] = b.extra_info
    assert "speedup_vs_reference" not in infos["gemms"] and infos["gemms"]["ceiling_vs_reference"] == 1.0
    for impl in ("cuda", "triton", "triton-tl.dot"):
        assert infos[impl]["speedup_vs_reference"] == 1.0 and infos[impl]["gemm_ceiling"] == 1.0, impl


@pytest.mark.triton
def test_the_tl_dot_check_fails_when_the_variable_is_not_read_triton(on_cpu, monkeypatch):
    graph, _ = on_cpu
    from fastgan.ops import denoiser_backends

    monkeypatch.setattr(denoiser_backends, "TRITON_GEMM_ENV", "SOME_OTHER_VARIABLE")
    with pytest.MonkeyPatch.context() as mp, pytest.raises(AssertionError, match="tl.dot GEMMs did not run"):
        graph.test_graphed_denoiser_loss(_Benchmark(), mp, 512, 3, 64, "triton-tl.dot")


@pytest.mark.triton
def test_an_emulated_row_checks_its_precision_triton(on_cpu):
    """On CPU tensors the fused GEMMs take no emulation (the interpreter has no bf16x6): the row named for one
    refuses to time them, as it would on a GPU where the variable was not honoured."""
    graph, _ = on_cpu
    with pytest.MonkeyPatch.context() as mp, \
            pytest.raises(AssertionError, match=r"triton-tl.dot-bf16x6: the fused GEMMs ran with precision \[None"):
        graph.test_graphed_denoiser_loss(_Benchmark(), mp, 512, 3, 512, "triton-tl.dot-bf16x6")
    assert ENV not in os.environ


@pytest.mark.triton
def test_tile_sweep_rows_triton(on_cpu):
    _, sweep = on_cpu
    for impl, tiles in [("reference", None), ("triton", None), ("triton", (16, 16, 16))]:
        b = _Benchmark()
        with pytest.MonkeyPatch.context() as mp:
            sweep.test_denoiser_tiles(b, mp, impl, tiles, (512, 3, 64))
        assert ENV not in os.environ
        assert b.extra_info["tiles"] == ("default" if tiles is None else "16x16x16")
        assert ("speedup_vs_reference" in b.extra_info) == (impl == "triton")
