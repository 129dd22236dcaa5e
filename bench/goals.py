"""Issue 5's goals, read off pytest-benchmark JSON: which are met on the device that ran them.

    python bench/goals.py bench/results/h100-2026-11-24.json [more.json ...]

Accepts plain ``--benchmark-json`` files and the composite files of bench/results/ (a dict whose values hold
pytest-benchmark runs). Prints one markdown table per goal:
  * memory-bound kernels: fraction of a device copy's GB/s (bench_bandwidth.py), goal >= 0.8, of eager calls;
    beside them, for information, the same kernels replayed from a CUDA graph (extra_info graphed), without the
    calls' host work;
  * the D update with the penalty replayed from a CUDA graph, ratio to the unregularized one
    (bench_graph_step.py), goal <= 1.3; beside it, for information, the amortized ratio with lazy regularization
    (method.roth.every=k: a different algorithm, so it does not count for the goal), and the graphed updates of
    Ds the goal does not name (extra_info penalty_goal=False: the ResNet D), information too;
  * the denoiser's loss step, speed-up over the nn.Sequential reference (graphed, else eager), goal >= 2 on a GPU;
    beside it, where bench_graph_step.py measured the fused step's GEMMs alone ("gemms", never a row of the goal),
    the ceiling reference / those GEMMs, which a fused step whose GEMMs are torch's cannot exceed (a row whose
    ceiling is under the goal says it is beyond reach there); and per case, from the reference's graphed step, the
    float32 rate the goal asks of the step's GEMMs (their FLOPs in half the reference's time) beside the GPU's
    float32 FMA peak where known: float32 GEMMs on the FMA units (cuBLAS's with TF32 off, and the fused
    backends') cannot run faster than that peak. The Triton
    backend on its fused tl.dot GEMMs ("triton-tl.dot", "triton-tl.dot-bf16x6", ...) has rows, for information: no
    verdict, no ceiling;
  * on the CPU, fused time / baseline time ("torch" where measured, else "reference"), goal <= 1; beside it, the
    D update per penalty mode against the double backward (bench_penalty_modes.py).
Ratios come from benchmarks of the same file, so from one run on one device. With --costs (bench/costs.py's JSON)
the graphed D updates are also listed beside their counted FLOP and kernel-launch ratios, the compute-bound and
launch-bound expectations. When the files hold a GPU run, a last section names the cases issue 5's GPU goals ask
for that no file measured (a benchmark renamed, failed, or cut by a time limit drops its row, not the table).
"""
from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict

BANDWIDTH_GOAL = 0.8
PENALTY_RATIO_GOAL = 1.3
DENOISER_SPEEDUP_GOAL = 2.0
CPU_RATIO_GOAL = 1.0
FUSED = ("cpu", "cuda", "triton")
GPU_FUSED = ("cuda", "triton")
TL_DOT = "triton-tl.dot"  # impls the Triton denoiser on its own fused GEMMs (FASTGAN_DENOISER_TRITON_GEMM=tl.dot...)
# the cases issue 5's GPU goals name: the D update per penalty mode for the MLP D (B=512) and the DCGAN32 D (B=64
# and 256), as bench_graph_step.py's models; the denoiser at n_h 512/2048, depth 3/6, B 64/512; the bandwidth of the
# batch doubling (forward and backward) and of the losses
PENALTY_CASES = [("MLP", 512), ("DCGAN32", 64), ("DCGAN32", 256)]
PENALTY_FAMILY = {"mlp_tanh": "MLP", "mlp_leaky": "MLP", "dcgan32": "DCGAN32", "dcgan32_b256": "DCGAN32"}
PENALTY_MODES = ("double_backward", "jvp", "mlp")
DENOISER_GRID = [(n_h, depth, B) for n_h in (512, 2048) for depth in (3, 6) for B in (64, 512)]
BANDWIDTH_OPS = ("noisy_clean_batch", "noisy_clean_batch_backward", "nt_losses", "nt_losses_backward")
# float32 FMA peak, TFLOP/s, of the GPUs lent so far (torch's device names): SMs x 128 float32 lanes x 2 FLOP x
# boost clock, 132 x 128 x 2 x 1.98 GHz for both (NVIDIA's datasheets: 67 TFLOPS FP32 for H100 SXM and H200 SXM).
# Exact names only: an H100 PCIe or H200 NVL has fewer SMs or a lower clock.
FP32_FMA_PEAK_TFLOPS = {"NVIDIA H200": 66.9, "NVIDIA H100 80GB HBM3": 66.9}


def denoiser_gemm_flops(n_h: int, depth: int, B: int) -> int:
    """FLOPs of the GEMMs of one denoiser loss step (forward + backward) of bench_graph_step.py's Denoiser(n_h,
    depth): depth + 1 Linear layers n_h x n_h, each with a forward and a weight-gradient GEMM, and all but the first
    an input-gradient GEMM (the step's input takes none): 3 depth + 2 GEMMs of 2 B n_h^2 FLOPs, the reference's and
    the fused backends' alike (tests/test_bench_goals.py holds it to bench/costs.py's count of the reference)."""
    return (3 * depth + 2) * 2 * B * n_h * n_h


def runs(doc) -> list[dict]:
    """The pytest-benchmark runs in a loaded JSON document (one run, or a composite of several)."""
    if isinstance(doc, dict) and "benchmarks" in doc:
        return [doc]
    if isinstance(doc, dict):
        return [v for v in doc.values() if isinstance(v, dict) and "benchmarks" in v]
    return []


def _median(b: dict) -> float:
    return b["stats"]["median"]


# A ratio, fraction or time that is not a finite positive number (a zero median, a NaN or an infinity in the JSON:
# a broken timer, a failed copy baseline, a hand-edited file) is no measurement: its row says so rather than
# "met" (a zero time, an infinite speed-up) or "not met" (a NaN), and a zero baseline does not abort the report.
INVALID = "invalid"


def _measured(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _judged(value, ok):
    """ok(value), or INVALID where value is not a finite positive number."""
    return ok(value) if _measured(value) else INVALID


def _ratio(num, den) -> float:
    """num / den of two medians, NaN unless both are finite positive numbers."""
    return num / den if _measured(num) and _measured(den) else math.nan


def _info_rows(benchmarks, key, also, ok):
    """(name, extra_info[also], extra_info[key], ok(value)) for each benchmark whose extra_info has `key`."""
    return [(b["name"], b["extra_info"].get(also), b["extra_info"][key], _judged(b["extra_info"][key], ok))
            for b in benchmarks if key in b.get("extra_info", {})]


_DTYPE_BYTES = {"torch.float32": 4, "torch.float64": 8, "torch.bfloat16": 2, "torch.float16": 2}


def _recounted(b: dict) -> dict:
    """The penalty backward's traffic as bench_bandwidth counts it since 2026-12-03: the gradient read and written
    plus three per-row vectors (the upstream, the logits read, their gradient written). Files written before
    counted a fourth per-row vector (11-17% high at F = 3, under 0.1% at F = 3072); such a row, told by its
    bytes_moved, comes back with its GB/s and fraction of copy recomputed on three, its time as measured."""
    info = b.get("extra_info") or {}
    if info.get("op") != "grad_norm_penalty_backward" or "fraction_of_copy" not in info:
        return b
    shape = (b.get("params") or {}).get("shape")  # pytest-benchmark writes null for a benchmark without any
    if not shape:
        return b
    (B, F), g = shape, _DTYPE_BYTES.get(info.get("dtype"))
    per_row = None if g is None else (info["bytes_moved"] - 2 * B * F * g) / B
    if per_row not in (16, 8):  # four float32 (or half) per-row vectors; 12 or 6 when counted as today
        return b
    scale = (info["bytes_moved"] - B * per_row / 4) / info["bytes_moved"]
    fixed = {**info, "bytes_moved": info["bytes_moved"] * scale, "GB_per_s": info["GB_per_s"] * scale,
             "fraction_of_copy": info["fraction_of_copy"] * scale}
    return {**b, "extra_info": fixed}


def bandwidth_rows(benchmarks, graphed: bool = False):
    # the reference is a baseline; benchmarks with bandwidth_goal=False are sized to be read, not for the goal;
    # graphed=True: the rows replayed from a CUDA graph (information beside the goal's eager calls)
    fused = [_recounted(b) for b in benchmarks if b.get("extra_info", {}).get("backend") in FUSED
             and b["extra_info"].get("bandwidth_goal", True) and bool(b["extra_info"].get("graphed")) == graphed]
    return _info_rows(fused, "fraction_of_copy", "GB_per_s", lambda f: f >= BANDWIDTH_GOAL)


def _penalty_goal_row(b: dict) -> bool:
    """A D update of a D the goal names (bench_graph_step.py marks the others penalty_goal=False)."""
    return b.get("extra_info", {}).get("penalty_goal", True) is not False


def graph_rows(benchmarks):
    """The graphed D updates against the goal; the reference backend's double backward (today's straightforward
    code) is the baseline the goal improves on: its rows carry None, "baseline", not a verdict. Ds outside the
    goal's cases are graph_info_rows'."""
    rows = _info_rows([b for b in benchmarks if _penalty_goal_row(b)], "ratio_vs_unregularized", "ms_per_update",
                      lambda r: r <= PENALTY_RATIO_GOAL)
    reference = {b["name"] for b in benchmarks if b.get("extra_info", {}).get("backend") == "reference"}
    return [(n, ms, r, None if n in reference else ok) for n, ms, r, ok in rows]


def graph_info_rows(benchmarks):
    """The graphed D updates of Ds the goal does not name (penalty_goal=False: the ResNet D), for information:
    (name, ms, ratio to the unregularized update, whether <= the goal's ratio)."""
    return _info_rows([b for b in benchmarks if not _penalty_goal_row(b)], "ratio_vs_unregularized",
                      "ms_per_update", lambda r: r <= PENALTY_RATIO_GOAL)


def lazy_rows(benchmarks):
    return _info_rows(benchmarks, "amortized_ratio_vs_unregularized", "ms_per_update",
                      lambda r: r <= PENALTY_RATIO_GOAL)


_ID = re.compile(r"^(?P<test>[^\[]+)\[(?P<dev>cpu|cuda)-(?P<impl>[a-z]+)-(?P<rest>.*)\]$")


def _groups(benchmarks):
    """{(test, device, case): {impl: median s}} for benchmarks named test[device-impl-case]."""
    groups = defaultdict(dict)
    for b in benchmarks:
        m = _ID.match(b["name"])
        if m:
            groups[(m["test"], m["dev"], m["rest"])][m["impl"]] = _median(b)
    return groups


def _eager_denoiser(benchmarks):
    """(test, case, impl, ms, speed-up) of the eager CUDA denoiser benchmarks, against their reference."""
    out = []
    for (test, dev, case), impls in sorted(_groups(benchmarks).items()):
        if dev != "cuda" or not test.startswith("test_denoiser") or "reference" not in impls:
            continue
        out += [(test, case, impl, impls[impl] * 1e3, _ratio(impls["reference"], impls[impl])) for impl in FUSED
                if impl in impls]
    return out


def _tile_sweep(b: dict) -> bool:
    """A row of bench_denoiser_tiles.py: a tile configuration tried, not the denoiser the goal measures."""
    return "tiles" in b.get("extra_info", {})


def _denoiser_goal_row(b: dict) -> bool:
    """A graphed fused denoiser step: neither a tile tried nor the fused step's GEMMs alone (the ceiling's
    measure: bench_graph_step.py gives it no speed-up, and a speed-up it had would not be the goal's)."""
    return not _tile_sweep(b) and b.get("extra_info", {}).get("impl") != "gemms" \
        and "speedup_vs_reference" in b.get("extra_info", {})


def _ceiling_and_verdict(info: dict):
    """A fused step with torch's GEMMs: its ceiling and whether it meets the goal. The Triton backend on its own
    tl.dot GEMMs: information (not a case of the goal; torch's GEMMs do not bound it): neither."""
    if str(info.get("impl")).startswith(TL_DOT):
        return None, None
    return info.get("gemm_ceiling"), _judged(info["speedup_vs_reference"], lambda s: s >= DENOISER_SPEEDUP_GOAL)


def denoiser_rows(benchmarks):
    """(name, ms per step, speed-up over the reference, ceiling reference / the step's GEMMs or None, ok): graphed
    where measured, else eager (no ceiling)."""
    rows = [(b["name"] + " (graphed)", b["extra_info"].get("ms_per_step"), b["extra_info"]["speedup_vs_reference"],
             *_ceiling_and_verdict(b["extra_info"])) for b in benchmarks if _denoiser_goal_row(b)]
    if rows:
        return rows
    return [(f"{test}[cuda-{impl}-{case}] (eager)", ms, s, None, _judged(s, lambda v: v >= DENOISER_SPEEDUP_GOAL))
            for test, case, impl, ms, s in _eager_denoiser(benchmarks)]


def denoiser_rate_rows(benchmarks):
    """(case, GEMM GFLOP a step, reference ms, the reference's GEMM TFLOP/s, TFLOP/s for the goal, the GPU's float32
    FMA peak or None) per case of the graphed reference step."""
    rows = []
    for b in benchmarks:
        info = b.get("extra_info", {})
        if info.get("impl") != "reference" or _tile_sweep(b) or not info.get("ms_per_step") \
                or not b["name"].startswith("test_graphed_denoiser_loss"):
            continue
        n_h, depth, B, ms = info["n_h"], info["depth"], info["B"], info["ms_per_step"]
        flops = denoiser_gemm_flops(n_h, depth, B)
        rows.append((f"nh{n_h}-d{depth}-B{B}", flops / 1e9, ms, flops / (ms * 1e9),
                     DENOISER_SPEEDUP_GOAL * flops / (ms * 1e9), FP32_FMA_PEAK_TFLOPS.get(info.get("device"))))
    return rows


def _rate_against_peak(rate: float, peak: float | None) -> str:
    if peak is None:
        return "unknown for this GPU"
    return f"{peak:.1f}: **beyond it**, no float32 GEMM on the FMA units can" if rate > peak else f"{peak:.1f}"


def cpu_rows(benchmarks):
    rows = []
    for (test, dev, case), impls in sorted(_groups(benchmarks).items()):
        base = "torch" if "torch" in impls else "reference" if "reference" in impls else None
        if dev != "cpu" or base is None or "cpu" not in impls:
            continue
        r = _ratio(impls["cpu"], impls[base])
        rows.append((f"{test}[{case}]", base, r, _judged(r, lambda v: v <= CPU_RATIO_GOAL)))
    return rows


def _mode_ran(info: dict) -> str:
    return f"{info['mode']} ({info['auto_mode']})" if info.get("auto_mode") else info["mode"]


def cpu_mode_rows(benchmarks):
    """The penalty's gradient modes on CPU (bench_penalty_modes.py) against the double backward of the same D:
    (name, mode, ratio of medians, ok); mode "auto" names the mode it ran where recorded ("auto (double_backward)")."""
    return [(b["name"], _mode_ran(b["extra_info"]), b["extra_info"]["ratio_vs_double_backward_median"],
             b["extra_info"]["ratio_vs_double_backward_median"] <= CPU_RATIO_GOAL)
            for b in benchmarks if b.get("extra_info", {}).get("device") == "cpu"
            and "ratio_vs_double_backward_median" in b["extra_info"] and "every" not in b["extra_info"]]


def cost_rows(benchmarks, costs: dict | None):
    """(name, measured ratio, counted FLOP ratio, counted op ratio) for the graphed fused D updates whose (model,
    mode) bench/costs.py counted (the counts are the fused ops'; the reference backend runs other kernels)."""
    if not costs:
        return []
    counted = {(r["model"], r["mode"]): r for r in costs.get("rows", [])}
    rows = []
    for b in benchmarks:
        info = b.get("extra_info", {})
        c = counted.get((info.get("model"), info.get("mode")))
        # the counts are the JS penalty's: not an f-GAN row's (extra_info f) of the same model and mode
        if (c is not None and "ratio_vs_unregularized" in info and info.get("backend") != "reference"
                and "f" not in info):
            rows.append((b["name"], info["ratio_vs_unregularized"], c["flops_vs_unregularized"],
                         c["kernels_vs_unregularized"]))
    return rows


_DENOISER_CASE = re.compile(r"nh(?P<n_h>\d+)-d(?P<depth>\d+)-B(?P<B>\d+)")


def missing(benchmarks) -> list[tuple[str, list[str]]]:
    """(goal, the cases it names that no benchmark here measured) for each of issue 5's GPU goals with a gap."""
    penalty, denoiser, bandwidth = set(), set(), set()
    for b in benchmarks:
        info = b.get("extra_info", {})
        if "ratio_vs_unregularized" in info and info.get("backend") != "reference" \
                and info.get("model") in PENALTY_FAMILY and "f" not in info:  # the JS penalty's (f-GAN: information)
            penalty.add((PENALTY_FAMILY[info["model"]], info.get("batch"), info.get("mode")))
        if _denoiser_goal_row(b):
            denoiser.add((info.get("n_h"), info.get("depth"), info.get("B"), info.get("impl")))
        if "fraction_of_copy" in info and info.get("backend") in GPU_FUSED and not info.get("graphed"):
            bandwidth.add((info.get("op"), info["backend"]))
    if not any(impl in GPU_FUSED for *_, impl in denoiser):  # no graphed denoiser: the eager rows answer the goal
        for _, case, impl, _, _ in _eager_denoiser(benchmarks):
            m = _DENOISER_CASE.search(case)
            if m:
                denoiser.add((int(m["n_h"]), int(m["depth"]), int(m["B"]), impl))
    gaps = [
        ("D update with the penalty", [f"{fam} B={B} {mode}" for fam, B in PENALTY_CASES for mode in PENALTY_MODES
                                         if (fam, B, mode) not in penalty]),
        ("denoiser", [f"nh{n}-d{d}-B{B} {impl}" for n, d, B in DENOISER_GRID for impl in GPU_FUSED
                      if (n, d, B, impl) not in denoiser]),
        ("bandwidth", [f"{op} {be}" for op in BANDWIDTH_OPS for be in GPU_FUSED if (op, be) not in bandwidth]),
    ]
    return [(goal, cases) for goal, cases in gaps if cases]


def gpu_label(benchmarks) -> str | None:
    """The GPU a run's benchmarks ran on (their extra_info's device), or None for a CPU run."""
    return next((b["extra_info"]["device"] for b in benchmarks if b.get("extra_info", {}).get("device")
                 not in (None, "cpu")), None)


def missing_report(benchmarks, device: str = "") -> str:
    gaps = missing(benchmarks)
    where = f" on {device}" if device else ""
    if not gaps:
        return f"### Issue 5's GPU goals{where}: every case they name was measured\n"
    lines = [f"### Issue 5's GPU goals{where}: cases not measured in these files (renamed, failed, skipped or time "
             "limit)", ""]
    lines += [f"- {goal}: {', '.join(cases)}" for goal, cases in gaps]
    return "\n".join(lines) + "\n"


def _verdict(ok) -> str:
    if ok is INVALID:
        return "**invalid** (not a finite positive measurement)"
    return "baseline" if ok is None else "met" if ok else "**not met**"


def _yes(ok) -> str:
    """An information table's "<= goal" column."""
    return "invalid" if ok is INVALID else "yes" if ok else "no"


def _denoiser_verdict(ok, ceiling) -> str:
    """A denoiser row's verdict; one whose GEMMs alone leave less than the goal says so: no fusion around torch's
    GEMMs can meet it there."""
    if ok is None:
        return "information (tl.dot GEMMs)"
    if ok is not INVALID and not ok and ceiling is not None and ceiling < DENOISER_SPEEDUP_GOAL:
        return f"**not met** (its GEMMs alone allow {ceiling:.2f}x: beyond reach with torch's GEMMs)"
    return _verdict(ok)


# Sequential CPU runs on the shared 2-core machine move a ratio by several percent between runs (bench/bench_noise.py's
# interleaved A/B is the finer test): a "not met" this close to parity says so.
CPU_PARITY = 1.05


def _cpu_verdict(r: float, ok: bool) -> str:
    return _verdict(ok) + (f" (within {CPU_PARITY - 1:.0%}: parity within run-to-run noise)"
                           if ok is not INVALID and not ok and r <= CPU_PARITY else "")


def _counted_where(costs: dict | None, commit: str | None) -> str:
    """A note under the counted costs when they were not counted on the measured code."""
    counted = (costs or {}).get("commit")
    if counted and commit and counted == commit:
        return ""
    return (f"(counted at commit {counted or 'unrecorded'} on {(costs or {}).get('date', '?')}, measured at commit "
            f"{commit or 'unrecorded'}: the counts describe the counted code, which may differ from the measured "
            "one; `python bench/costs.py --json FILE` counts the code at hand)")


def report(benchmarks, costs: dict | None = None, commit: str | None = None) -> str:
    """commit: the measured run's (pytest-benchmark's commit_info.id), compared with the costs' own."""
    out = []
    sections = [
        (f"Bandwidth (goal: >= {BANDWIDTH_GOAL} of a device copy)", ["benchmark", "GB/s", "of copy", "goal"],
         [(n, f"{g:.0f}" if g else "", f"{f:.2f}", _verdict(ok)) for n, g, f, ok in bandwidth_rows(benchmarks)]),
        ("Bandwidth replayed from a CUDA graph (information: the same kernels without the call's host work)",
         ["benchmark", "GB/s", "of copy", f">= {BANDWIDTH_GOAL}"],
         [(n, f"{g:.0f}" if g else "", f"{f:.2f}", _yes(ok))
          for n, g, f, ok in bandwidth_rows(benchmarks, graphed=True)]),
        (f"D update with the penalty, graphed (goal: <= {PENALTY_RATIO_GOAL}x unregularized)",
         ["benchmark", "ms", "ratio", "goal"],
         [(n, f"{ms:.3f}" if ms else "", f"{r:.2f}", _verdict(ok)) for n, ms, r, ok in graph_rows(benchmarks)]),
        ("D update with the penalty, graphed, cases outside the goal (information: the ResNet D, the f-GAN "
         "regularizer)",
         ["benchmark", "ms", "ratio", f"<= {PENALTY_RATIO_GOAL}"],
         [(n, f"{ms:.3f}" if ms else "", f"{r:.2f}", _yes(ok))
          for n, ms, r, ok in graph_info_rows(benchmarks)]),
        ("Lazy regularization, graphed: amortized ratio per update (information: a different algorithm, not the "
         "goal)", ["benchmark", "ms", "amortized ratio", f"<= {PENALTY_RATIO_GOAL}"],
         [(n, f"{ms:.3f}" if ms else "", f"{r:.2f}", _yes(ok)) for n, ms, r, ok in lazy_rows(benchmarks)]),
        (f"Denoiser (goal: >= {DENOISER_SPEEDUP_GOAL}x the reference on a GPU)",
         ["benchmark", "ms", "speed-up", "ceiling (reference / its GEMMs)", "goal"],
         [(n, f"{ms:.3f}" if ms else "", f"{s:.2f}", f"{c:.2f}" if c else "", _denoiser_verdict(ok, c))
          for n, ms, s, c, ok in denoiser_rows(benchmarks)]),
        (f"Denoiser: the float32 rate {DENOISER_SPEEDUP_GOAL:g}x asks of its GEMMs (information: 3 depth + 2 GEMMs of "
         f"2 B n_h^2 FLOPs a step, in 1/{DENOISER_SPEEDUP_GOAL:g} of the reference's graphed step)",
         ["case", "GEMM GFLOP a step", "reference ms", "reference TFLOP/s", f"TFLOP/s for {DENOISER_SPEEDUP_GOAL:g}x",
          "float32 FMA peak (TFLOP/s)"],
         [(c, f"{g:.2f}", f"{ms:.3f}", f"{r:.1f}", f"{need:.1f}", _rate_against_peak(need, peak))
          for c, g, ms, r, need, peak in denoiser_rate_rows(benchmarks)]),
        ("CPU (goal: fused no slower than the baseline)", ["benchmark", "baseline", "fused / baseline", "goal"],
         [(n, base, f"{r:.2f}", _cpu_verdict(r, ok)) for n, base, r, ok in cpu_rows(benchmarks)]),
        ("CPU, D update per penalty mode against the double backward (\"auto\" takes \"mlp\" where the D allows it, "
         "batch statistics included, except MLPs with Tanh/Sigmoid; else the double backward: jvp is not used on CPU)",
         ["benchmark", "mode", "time / double backward", "<= 1"],
         [(n, mode, f"{r:.2f}", _yes(ok)) for n, mode, r, ok in cpu_mode_rows(benchmarks)]),
        ("Graphed D update against its counted costs (bench/costs.py; ratios to the unregularized update)",
         ["benchmark", "measured", "FLOPs", "kernel launches"],
         [(n, f"{m:.2f}", f"{fl:.2f}", f"{k:.2f}") for n, m, fl, k in cost_rows(benchmarks, costs)]),
    ]
    for title, header, rows in sections:
        if not rows:
            continue
        out += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        if title.startswith("Graphed D update against its counted costs"):
            note = _counted_where(costs, commit)
            out += ["", note] if note else []
        out.append("")
    return "\n".join(out) if out else "no benchmark of a goal in these files"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="pytest-benchmark JSON files (or bench/results/ composites)")
    ap.add_argument("--costs", help="bench/costs.py's JSON, to list the graphed D updates beside their counts")
    args = ap.parse_args(argv)
    costs = None
    if args.costs:
        with open(args.costs) as f:
            costs = json.load(f)
        if not any("model" in r and "mode" in r for r in costs.get("rows", [])):
            ap.error(f"--costs {args.costs}: not bench/costs.py's JSON (no rows with a model and a mode; "
                     "bench/costs_denoiser.py's file counts the denoiser, not the D updates)")
    # the runs of one GPU at one commit, across files (tools/gpu_check.sh quick writes two): an older file of the same
    # GPU given beside a new run does not hide the new run's gaps
    per_gpu = defaultdict(list)
    for path in args.files:
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            # pytest-benchmark leaves an empty file when every benchmark was skipped or failed before timing (or, before
            # bench/conftest.py dropped unfinished benchmarks, when the run was interrupted inside one)
            print(f"## {path}: no benchmark results: every benchmark skipped, failed before timing, or the run "
                  f"interrupted ({type(e).__name__}: {e})\n")
            continue
        found = runs(doc)
        if not found:
            print(f"## {path}: no pytest-benchmark run in this file\n")
        for run in found:
            device = run.get("machine_info", {}).get("cpu", {}).get("brand_raw", "")
            gpu = gpu_label(run["benchmarks"])
            if gpu is not None:
                per_gpu[(gpu, run.get("commit_info", {}).get("id"))] += run["benchmarks"]
            print(f"## {path}: {gpu or device} ({run.get('datetime', '')})\n")
            print(report(run["benchmarks"], costs, run.get("commit_info", {}).get("id")))
    commits = defaultdict(set)
    for gpu, commit in per_gpu:
        commits[gpu].add(commit)
    for (gpu, commit), benchmarks in per_gpu.items():  # one GPU's gaps are not hidden by another's results
        label = gpu if len(commits[gpu]) == 1 else f"{gpu} at commit {(commit or 'unrecorded')[:8]}"
        print(missing_report(benchmarks, label))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
