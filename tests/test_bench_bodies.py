"""The GPU-only denoiser benchmarks' bodies run on CPU tensors, graph capture and replay replaced by direct calls:
each impl sets up the path it is named for (the Triton backend's tl.dot GEMMs where asked, checked inside the
benchmark), records the extra_info goals.py reads, and leaves the environment as it found it. Named *_triton: Triton
on CPU tensors, run where the interpreter is (tests/conftest.py). The graphed D updates' body likewise, on small
CPU Ds with the C++ kernels standing in for the cuda backend's."""
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


@pytest.fixture
def d_update_on_cpu(on_cpu, monkeypatch):
    """bench_graph_step's D-update body on CPU: the benchmark's Ds at width 4, B=4, Adam not capturable (torch
    refuses capturable=True on CPU), the cuda backend's penalty on the cpu kernels."""
    graph, _ = on_cpu
    case, d_update_fn = graph._case, graph.d_update_fn
    monkeypatch.setattr(graph, "_case", lambda model, device: case(model, "cpu", width=4, batch=4))
    monkeypatch.setattr(graph, "_adam", lambda D: graph.torch.optim.Adam(D.parameters(), lr=1e-4))
    monkeypatch.setattr(graph, "d_update_fn", lambda D, opt, xr, xf, mode, backend=None, **kw: d_update_fn(
        D, opt, xr, xf, mode, "cpu" if backend == "cuda" else backend, **kw))
    return graph


def test_graphed_d_update_rows_of_the_resnet_d_are_information(d_update_on_cpu):
    """The ResNet D's rows (test_graphed_d_update_info): every mode listed runs, trains D and records its ratio to
    the unregularized update of the same session, marked penalty_goal=False (goals.py's information table)."""
    graph = d_update_on_cpu
    assert [m for m, _, _ in graph.INFO_CASES] == ["resnet32"] * 3
    assert all(mode != "mlp" for _, mode, _ in graph.INFO_CASES)  # the closed form refuses residual shortcuts
    assert graph.INFO_CASES[0][1] == "unregularized"  # first: the others' ratios need it
    infos = {}
    for model, mode, backend in graph.INFO_CASES:
        b = _Benchmark()
        graph.test_graphed_d_update_info(b, model, mode, backend)
        infos[mode] = b.extra_info
    for mode, info in infos.items():
        assert info["penalty_goal"] is False and info["model"] == "resnet32" and info["batch"] == 4
        assert info["ms_per_update"] == 1.0
        assert ("ratio_vs_unregularized" in info) == (mode != "unregularized"), mode
    assert infos["jvp"]["ratio_vs_unregularized"] == 1.0


def test_graphed_d_update_goal_rows_keep_their_extra_info(d_update_on_cpu):
    """The goal's cases through the same body: no penalty_goal key (goals.py holds them to the goal)."""
    graph = d_update_on_cpu
    for model, mode, backend in [("dcgan32", "unregularized", None), ("dcgan32", "double_backward", "cuda")]:
        b = _Benchmark()
        graph.test_graphed_d_update(b, model, mode, backend)
        assert "penalty_goal" not in b.extra_info
    assert b.extra_info["ratio_vs_unregularized"] == 1.0


def test_graphed_d_update_rows_of_the_f_gan_regularizer_are_information(d_update_on_cpu, monkeypatch):
    """The f-GAN rows (test_graphed_d_update_f_gan): Omega_f of the BatchNorm DCGAN D runs in the mode named, trains
    D and records its ratio to the unregularized f-GAN update (not the JS one), extra_info f and penalty_goal=False."""
    graph = d_update_on_cpu
    from fastgan.ops import _dispatch

    assert {mode for _, mode in graph.F_CASES} == {"unregularized", "double_backward", "jvp"}
    # a JS update's time: no f-GAN ratio may read it
    monkeypatch.setitem(graph._ms, ("dcgan32", "unregularized", None, None), 1e9)
    infos = {}
    for model, mode in [c for c in graph.F_CASES if c[0] == "dcgan32"]:
        b = _Benchmark()
        _dispatch.counts.clear()
        graph.test_graphed_d_update_f_gan(b, model, mode)
        if mode != "unregularized":
            assert _dispatch.counts.get(("gradient_penalty", mode)), (mode, dict(_dispatch.counts))
        infos[mode] = b.extra_info
    for mode, info in infos.items():
        assert info["penalty_goal"] is False and info["f"] == "gan" and info["model"] == "dcgan32"
        assert info.get("ratio_vs_unregularized") == (None if mode == "unregularized" else 1.0), mode
