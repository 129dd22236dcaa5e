"""bench/profile_kernels.py, the per-kernel breakdown tools/gpu_check.sh quick writes to profile.md: its table
and a smoke run on CPU (the GPU run profiles CUDA kernels instead of top-level ops, otherwise the same code)."""
import pytest
import torch
from helpers import bench_module

pk = bench_module("profile_kernels", "bench_profile_kernels")


def test_a_section_sorts_by_time_and_folds_the_tail(monkeypatch):
    monkeypatch.setattr(pk, "TOP", 2)
    table = {"fill": [1, 2.0], "gemm_a": [2, 30.0], "bn": [3, 8.0], "copy": [1, 0.0]}
    text = pk.section("t", table, "cuda", "; x")
    assert "40.0 µs of kernels per step, 7 launches; x" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    assert rows == ["| `gemm_a` | 2 | 30.0 | 75% |", "| `bn` | 3 | 8.0 | 20% |"]
    assert "| (2 others) | 2 | 2.0 | |" in text
    assert "µs of top-level ops per step, 7 ops" in pk.section("t", table, "cpu")


def test_smoke_run_on_cpu(capsys):
    assert pk.main(["--device", "cpu", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    for impl in ("reference", "gemms", "cpu"):
        assert f"### denoiser loss step nh64-d2-B16: {impl}" in out
    gemms = out.split("nh64-d2-B16: gemms")[1].split("###")[0]
    # depth 2, n_h = n_features: 3 forward GEMMs, 2 input gradients, 3 weight gradients (the cpu backend's: on a
    # GPU they are one bmm)
    assert "| `aten::mm` | 8 |" in gemms and "aten::bmm" not in gemms, gemms
    assert "the reference's" in gemms
    assert "### nt_losses forward, N=4096 a side: cpu" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(SystemExit) as e:
        pk.main(["--steps", "1"])
    assert e.value.code == 2
