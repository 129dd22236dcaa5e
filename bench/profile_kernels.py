"""Per-kernel GPU time behind issue 5's unmet goals, from torch.profiler (CUPTI): the denoiser's loss step at the
launch-bound and the GEMM-bound ends (the reference, the fused backends, the fused step's GEMMs alone) and
nt_losses' forward at N = 16M per side. Kernel durations only, no launch gaps and no host: where a step's GPU time
goes, kernel by kernel, and the bandwidth of nt_losses' kernels themselves (bench_bandwidth.py's figure is a
call's, host work included where it outlasts the L2 flush before it).

    python bench/profile_kernels.py [--steps 20] > profile.md       (on a GPU: tools/gpu_check.sh quick runs it)
    python bench/profile_kernels.py --device cpu --steps 1           (a smoke run: the top-level CPU ops instead)
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
from bench_denoiser import _setup, gemms_step, loss_step  # noqa: E402

DENOISER = {"cuda": [(512, 3, 64), (2048, 3, 512)], "cpu": [(64, 2, 16)]}  # (n_h, depth, B)
IMPLS = {"cuda": ("reference", "gemms", "cuda", "triton"), "cpu": ("reference", "gemms", "cpu")}
NT_N = {"cuda": 1 << 24, "cpu": 1 << 12}
NT_BACKENDS = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}
TOP = 12


def _short(name: str, width: int = 90) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def kernels_per_step(step, steps: int, device: str) -> dict:
    """{name: [calls, µs]} per step: the CUDA kernels (and copies, fills) a step launched, or on CPU its top-level
    ops; one warm-up step first (Triton compiles, the allocator settles)."""
    step()
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    want = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    table = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type != want or (not cuda and e.cpu_parent is not None):
            continue
        # not kernels: a synchronize's wait and user ranges, which torch's own profiler-based timing drops too
        # (torch/_inductor/runtime/benchmarking.py)
        if cuda and (e.name == "Context Sync" or getattr(e, "is_user_annotation", False)):
            continue
        table[e.name][0] += 1
        table[e.name][1] += e.time_range.elapsed_us()
    return {name: [calls / steps, us / steps] for name, (calls, us) in table.items()}


def section(title: str, table: dict, device: str, extra: str = "") -> str:
    total_us = sum(us for _, us in table.values())
    calls = sum(c for c, _ in table.values())
    what = ("kernels", "launches", "kernel") if device == "cuda" else ("top-level ops", "ops", "op")
    lines = [f"### {title}", "", f"{total_us:.1f} µs of {what[0]} per step, {calls:g} {what[1]}{extra}", "",
             f"| {what[2]} | per step | µs per step | share |", "|---|---|---|---|"]
    for name, (c, us) in sorted(table.items(), key=lambda kv: -kv[1][1])[:TOP]:
        lines.append(f"| `{_short(name)}` | {c:g} | {us:.1f} | {us / total_us if total_us else 0:.0%} |")
    if len(table) > TOP:
        rest = sorted(table.items(), key=lambda kv: -kv[1][1])[TOP:]
        lines.append(f"| ({len(rest)} others) | {sum(c for _, (c, _) in rest):g} | "
                     f"{sum(us for _, (_, us) in rest):.1f} | |")
    return "\n".join(lines) + "\n"


def denoiser_sections(device: str, steps: int) -> list[str]:
    out = []
    for n_h, depth, B in DENOISER[device]:
        totals = {}
        for impl in IMPLS[device]:
            den, net, h, noise = _setup(device, "reference" if impl == "gemms" else impl, n_h, depth, B)
            step = gemms_step(den, h) if impl == "gemms" else (lambda i=impl: loss_step(i, den, net, h, noise))
            table = kernels_per_step(step, steps, device)
            totals[impl] = sum(us for _, us in table.values())
            ratio = (f"; the reference's kernel time / this: {totals['reference'] / totals[impl]:.2f}"
                     if impl != "reference" and totals.get("reference") and totals[impl] else "")
            out.append(section(f"denoiser loss step nh{n_h}-d{depth}-B{B}: {impl}", table, device, ratio))
    return out


def nt_losses_sections(device: str, steps: int) -> list[str]:
    from fastgan.ops import nt_losses

    n = NT_N[device]
    lr, lf = torch.randn(n, device=device), torch.randn(n, device=device)
    mu = torch.rand((), device=device)
    nbytes = 4 * n * 4  # read 2n logits, write 2n JS weights (as bench_bandwidth.py counts)
    out = []
    for backend in NT_BACKENDS[device]:
        with torch.no_grad():
            table = kernels_per_step(lambda b=backend: nt_losses(lr, lf, mu, js_weights=True, backend=b), steps,
                                     device)
        us = sum(t for _, t in table.values())
        out.append(section(f"nt_losses forward, N={n} a side: {backend}", table, device,
                           f"; {nbytes / us / 1e3:.0f} GB/s over the kernels' time" if us else ""))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible to torch (--device cpu for a smoke run)")
    label = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"## Kernels per step on {label} (torch.profiler, {a.steps} steps after one warm-up)\n")
    for text in denoiser_sections(a.device, a.steps) + nt_losses_sections(a.device, a.steps):
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
