"""Kernels launched by one DFM denoiser training step (loss forward + backward, as bench/bench_denoiser.py times
it), counted on CPU with the op sequence a GPU runs, per implementation:

  * reference: the nn.Sequential (Linear, BatchNorm1d, ReLU) and torch autograd: torch ops that launch a kernel;
  * torch GEMMs + fused layers (the "cuda" backend, and "triton" by default: same structure, counted as "triton";
    the "cpu" backend the same but for its weight gradients, a GEMM a layer where the GPU backends batch those of
    layers sharing a shape into one bmm): torch ops + fastgan's kernels (Triton launches counted under the
    interpreter);
  * Triton, fused GEMMs (FASTGAN_DENOISER_TRITON_GEMM=tl.dot, kernels/denoiser_gemm.py): torch ops + Triton
    launches.

Replayed from a CUDA graph at small sizes (B = 64, n_h = 512: every GEMM is a few microseconds) the step costs
roughly kernels x a per-kernel floor, so these counts bound what each implementation can gain there. The fused
GEMMs take the tiles an H200 would (GPU_TILES): how many column tiles the output layer spans decides whether the
per-sample loss needs a sum of its tiles' partials, a launch the interpreter's wide tiles would not count.

    TRITON_INTERPRET=1 python bench/costs_denoiser.py [--json bench/results/costs-denoiser-<date>.json]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: Triton launches on CPU tensors

sys.path.insert(0, os.path.dirname(__file__))
from costs import Costs, write_rows  # noqa: E402

IMPLS = ("reference", "cpu", "triton", "triton-tl.dot")
LABELS = {"reference": "reference (nn.Sequential)",
          "cpu": "torch GEMMs + fused layers (cpu backend: a dW GEMM a layer)",
          "triton": "torch GEMMs + fused layers (cuda backend; triton's default)",
          "triton-tl.dot": "Triton, fused GEMMs (FASTGAN_DENOISER_TRITON_GEMM=tl.dot)"}
TL_DOT = "triton-tl.dot"
GPU_TILES = (132, 9)  # (SMs, compute capability major) of the GPU whose tile rule the fused GEMMs count with: an H200


class _StepCosts(Costs):
    """Costs that skip the torch ops the Triton interpreter issues inside a launch (its copies of the arguments:
    on a GPU the launch is one kernel)."""
    paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.paused:
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)


def step_kernels(impl: str, n_h: int = 64, depth: int = 3, B: int = 64) -> dict:
    """{"torch_ops": n, "fastgan_kernels": n, "total": n, "ops": {...}} of one step after a warm-up step."""
    from fastgan.ops.denoiser_backends import TRITON_GEMM_ENV

    env = os.environ.get(TRITON_GEMM_ENV)
    os.environ[TRITON_GEMM_ENV] = "tl.dot" if impl == TL_DOT else "torch"
    try:
        return _step_kernels("triton" if impl == TL_DOT else impl, n_h, depth, B)
    finally:
        if env is None:
            del os.environ[TRITON_GEMM_ENV]
        else:
            os.environ[TRITON_GEMM_ENV] = env


def _step_kernels(impl: str, n_h: int, depth: int, B: int) -> dict:
    from triton.runtime.interpreter import InterpretedFunction

    from bench_denoiser import _setup, loss_step
    from fastgan.kernels import denoiser_gemm
    from fastgan.ops import denoiser_backends as dk
    from fastgan.ops import denoiser_eager

    den, net, h, noise = _setup("cpu", impl, n_h, depth, B)

    def step():
        loss_step(impl, den, net, h, noise)

    step()
    calls = {"n": 0}
    saved = {}
    for name in ("bn_fwd", "bn_bwd", "recon_fwd", "recon_bwd", "corrupt"):
        saved[name] = getattr(dk._Cpu, name)

        def counted(*a, _f=saved[name]):
            calls["n"] += 1
            return _f(*a)

        setattr(dk._Cpu, name, staticmethod(counted))
    real_getitem = InterpretedFunction.__getitem__

    def getitem(self, grid):
        launch = real_getitem(self, grid)

        def counted(*a, **k):
            calls["n"] += 1
            costs.paused = True
            try:
                return launch(*a, **k)
            finally:
                costs.paused = False

        return counted

    costs = _StepCosts()
    InterpretedFunction.__getitem__ = getitem
    # the eager Functions, which a step runs outside any dispatch mode: under the counting mode the ops would
    # take the custom ops (as for fake tensors), a different sequence
    custom_ops, denoiser_eager._custom_ops = denoiser_eager._custom_ops, lambda *tensors: False
    tiles, denoiser_gemm._tiles = denoiser_gemm._tiles, lambda M, N, t: denoiser_gemm.gpu_rule(M, N, *GPU_TILES,
                                                                                              t.dtype)
    try:
        with costs:
            step()
    finally:
        denoiser_gemm._tiles = tiles
        denoiser_eager._custom_ops = custom_ops
        InterpretedFunction.__getitem__ = real_getitem
        for name, f in saved.items():
            setattr(dk._Cpu, name, staticmethod(f))
    return {"torch_ops": costs.kernels, "fastgan_kernels": calls["n"], "total": costs.kernels + calls["n"],
            "ops": dict(costs.ops.most_common())}


def table(depths=(3, 6), n_h: int = 64, B: int = 64) -> list[dict]:
    rows = []
    for depth in depths:
        base = None
        for impl in IMPLS:
            c = step_kernels(impl, n_h, depth, B)
            base = base or c["total"]
            rows.append({"impl": impl, "label": LABELS[impl], "depth": depth, **c, "vs_reference": c["total"] / base})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    rows = table()
    for r in rows:
        print(f"depth {r['depth']}  {r['label']:62s} {r['total']:4d} kernels ({r['torch_ops']} torch, "
              f"{r['fastgan_kernels']} fastgan)  {r['vs_reference']:.2f}x the reference's")
    if a.json:
        write_rows(a.json, "kernels per denoiser training step (loss forward + backward), counted on CPU",
                   "TRITON_INTERPRET=1 python bench/costs_denoiser.py", rows)


if __name__ == "__main__":
    main()
