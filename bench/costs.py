"""Device-independent costs of one discriminator update per penalty gradient mode, counted (not timed) on CPU:
the matmul/convolution FLOPs (torch.utils.flop_counter's formulas) and the number of tensor ops that launch a
kernel (views, allocations and host reads excluded; each fastgan custom op counts once), under a TorchDispatchMode.

Replayed from a CUDA graph, an update costs roughly FLOPs / throughput + kernels x a per-kernel floor: the FLOP
ratio to the unregularized update is what a compute-bound update can reach (DCGAN32 at width 64, B=64: 33 GFLOP
per plain update, 1.8 ms on the H100), the kernel ratio what a launch-bound one can (the small MLPs).

    python bench/costs.py [--models mlp_leaky,dcgan32,...] [--width 64] [--json bench/results/costs-<date>.json]

Models: bench_penalty_modes.py's Ds ("resnet32", Roth et al.'s ResNet D, since 2026-12-06: not a case of the
issue's goals, counted without mode "mlp", which cannot run its residual shortcuts; --width is its resnet_width).

The count runs the op sequence a GPU runs: js_penalty's joint real+fake closed-form pass (penalty_jvp.
JOINT_MLP_DEVICES: on CUDA at any size, on CPU for MLPs up to JOINT_MLP_MAX_ROWS) is switched on, the CPU-only
blocked batch contractions (closed_form_maps.BLOCKED_SUM_DEVICES) off, and Adam steps with foreach=True (CUDA's
default).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, os.path.dirname(__file__))
from bench_penalty_modes import _case, d_update_fn  # noqa: E402

MODES = ("unregularized", "double_backward", "jvp", "mlp")
MODELS = ("mlp_leaky", "mlp_tanh", "dcgan32", "dcgan32_b256", "dcgan32_nobn", "resnet32")
NO_CLOSED_FORM = ("resnet32",)  # Ds that mode "mlp" refuses (residual shortcuts): counted in the other modes


def modes_of(model: str) -> tuple[str, ...]:
    return tuple(m for m in MODES if m != "mlp") if model in NO_CLOSED_FORM else MODES
# ops that launch no kernel of their own: allocation, aliasing, host reads (a graph-captured update has none)
_NO_KERNEL = {"aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty", "aten.new_empty_strided",
              "aten.detach", "aten.lift_fresh", "aten.alias", "aten._local_scalar_dense", "aten.set_",
              "aten.resize_", "aten.is_same_size", "aten._has_same_storage_numel"}


class Costs(TorchDispatchMode):
    """FLOPs and kernel-launching ops (by name) of everything run inside it."""

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            self.flops += flop_registry[packet](*args, **kwargs, out_val=out)
        name = str(packet)
        if not func.is_view and name not in _NO_KERNEL and not name.startswith("profiler."):
            self.ops[name] += 1
        return out

    @property
    def kernels(self) -> int:
        return sum(self.ops.values())


def update_costs(model: str, mode: str, width: int = 64, batch: int | None = None) -> Costs:
    """The costs of one D update (after one warm-up update: Adam's state exists, as in a training run)."""
    from fastgan.ops import closed_form_maps, penalty_jvp

    D, xr, xf = _case(model, "cpu", width, batch)  # the GPU runs' width by default, counted on CPU
    opt = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.5, 0.999), foreach=True)
    update = d_update_fn(D, opt, xr, xf, mode)
    added = "cpu" not in penalty_jvp.JOINT_MLP_DEVICES
    removed = "cpu" in closed_form_maps.BLOCKED_SUM_DEVICES
    penalty_jvp.JOINT_MLP_DEVICES.add("cpu")
    closed_form_maps.BLOCKED_SUM_DEVICES.discard("cpu")
    try:
        update()
        costs = Costs()
        with costs:
            update()
    finally:
        if added:
            penalty_jvp.JOINT_MLP_DEVICES.discard("cpu")
        if removed:
            closed_form_maps.BLOCKED_SUM_DEVICES.add("cpu")
    return costs


def table(models=MODELS, width: int = 64, batch: int | None = None) -> list[dict]:
    rows = []
    for model in models:
        base = None
        for mode in modes_of(model):
            c = update_costs(model, mode, width, batch)
            base = base or c
            rows.append({"model": model, "mode": mode,
                         "width": width if model.startswith(("dcgan", "resnet")) else None,
                         "gflop": c.flops / 1e9, "kernels": c.kernels,
                         "flops_vs_unregularized": c.flops / base.flops,
                         "kernels_vs_unregularized": c.kernels / base.kernels,
                         "top_ops": dict(c.ops.most_common(12))})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    rows = table(a.models.split(","), a.width)
    for r in rows:
        print(f"{r['model']:14s} {r['mode']:16s} {r['gflop']:9.3f} GFLOP ({r['flops_vs_unregularized']:.2f}x)  "
              f"{r['kernels']:5d} kernels ({r['kernels_vs_unregularized']:.2f}x)")
    if a.json:
        write_rows(a.json, "costs of one D update per penalty mode, counted on CPU (device-independent)",
                   f"python bench/costs.py --width {a.width} --models {a.models}", rows)


def _commit() -> str | None:
    """The counted tree's commit ("-dirty" with uncommitted changes to tracked files), None outside a git checkout:
    goals.py compares it with the benchmark run's before putting counts beside measured ratios."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def write_rows(path: str, what: str, how: str, rows: list[dict]) -> None:
    """A counting script's JSON for bench/results/: what was counted, when, at which commit, with which torch, how
    to redo it."""
    out = {"what": what, "date": datetime.date.today().isoformat(), "commit": _commit(), "torch": torch.__version__,
           "how": how, "rows": rows}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
