#!/usr/bin/env bash
# Everything a lent GPU should check, in one call (the machine starts bare and keeps nothing):
# build _C with CUDA, the `cuda`-marked tests, short CUDA trainings, and the GPU benchmarks.
# Usage (on the GPU machine, from the repo root): OUT=<dir> bash tools/gpu_check.sh [quick|tests|bench|all|sanitize|tiles]
# Logs and the benchmark JSON go to $OUT. Stages have their own time limits so the call ends in time: `tests`
# (build + cuda tests + two short trainings) and `bench` (build + GPU benchmarks + goals table) each fit in one
# 600 s call of the device tool; `all` needs about 900 s. `quick` (about 480 s: build, cuda tests, the benchmarks
# of the goals: bandwidth, graphed D updates, graphed denoiser, then lazy regularization) is for a session with 15
# minutes of device time in all: its stages' limits are cut so that the call ends within QUICK_LIMIT (570) s of its
# start whatever the build took, and it writes $OUT/bench-bandwidth.json and $OUT/bench-graph.json; with time left
# (an H200 needed 209 s for those), a per-kernel profile of the denoiser step and nt_losses ($OUT/profile.md), the
# default job eager and graphed ($OUT/train.log) and the tile sweep of the
# tiles the kernels pick beside the sweep's earlier winners ($OUT/tiles.json). At most 8 files in $OUT: what the
# device tool returns.
# A stage stopped at its limit gets SIGINT (then KILL 30 s later): pytest still prints its -rfE summary and
# pytest-benchmark writes the JSON of the benchmarks that finished (timeout's default SIGTERM left neither: an empty
# JSON, no list of failures). Each stage prints its exit status; 124 means it was stopped at its limit. A stage
# that failed otherwise does not stop the next ones, but is named again at the end (FAILED: ...) and the script
# exits 1 (it exited 0 whatever its stages gave).
# `sanitize` (opt-in, not yet run on a GPU: written in a session without one) runs the CUDA C++ backend's `cuda`
# tests under compute-sanitizer's memcheck, racecheck and synccheck (the CPU runs the same kernels under
# AddressSanitizer and a race check in tools/cuda_emu; these see the hardware: inter-block behaviour, real shared
# memory, the GPU's own faults), SANITIZE_LIMIT seconds per tool. `tiles`
# (opt-in, about 150 s, most of it Triton compiling each configuration) sweeps the Triton denoiser's GEMM tile
# sizes on its graphed loss step (bench/bench_denoiser_tiles.py), the data kernels/denoiser_gemm.py's tiles were
# chosen from (an H200, 2026-12-04).
set -u
what=${1:-all}
case $what in  # a mistyped stage would otherwise build, run nothing and end with exit 0
  quick|tests|bench|all|sanitize|tiles) ;;
  *) echo "usage: OUT=<dir> bash tools/gpu_check.sh [quick|tests|bench|all|sanitize|tiles] (got '$what')"; exit 2;;
esac
OUT=${OUT:-/tmp/fastgan-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# a GPU run must not skip the Triton tests for want of a usable triton (tests/conftest.py)
export FASTGAN_REQUIRE_TRITON=1
failed=()  # what did not run through (see status below)
nvidia-smi -L || failed+=("nvidia-smi")
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" || failed+=("import torch, triton")
start=$(date +%s)
# stop a command at its limit with SIGINT (see above), KILL if it is still running 30 s later
stop_at() { timeout -s INT -k 30 "$@"; }
said() { case $1 in 0) echo "exit 0";; 124) echo "exit 124: stopped at its time limit";;
                    137) echo "exit 137: killed";; *) echo "exit $1";; esac; }
# a stage's status line; a stage that failed (any exit but 0, or 124: stopped at its limit, whose unfinished cases
# goals.py names) is listed again at the end and makes the script exit 1 (after the stages that follow it ran: the
# device tool's rc says whether every stage ran through, the logs say which did not)
status() { echo "$1: $(said "$2")"; case $2 in 0|124) ;; *) failed+=("$1 (exit $2)");; esac; }
FASTGAN_CUDA=1 FASTGAN_CUDA_ARCH=${FASTGAN_CUDA_ARCH:-90} CMAKE_BUILD_PARALLEL_LEVEL=16 \
  stop_at ${BUILD_LIMIT:-360} python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 \
  || { rc=$?; tail -40 "$OUT/build.log"; echo "build: $(said $rc)"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
fastgan info | tee -a "$OUT/build.log"; (( PIPESTATUS[0] == 0 )) || failed+=("fastgan info")
# per-test limits where pytest-timeout is installed (the lent GPU image has it); without it pytest would refuse the flag
per_test() { python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout=$1"; }
COSTS=$(ls bench/results/costs-2*.json | tail -1)  # bench/costs.py's latest (costs-denoiser-* counts something else)
# the default job on the GPU, eager and graphed: wall seconds for 2000 steps, each stopped at $1 s
default_job() {
  ( bad=0
    for graph in false true; do
      t0=$SECONDS
      timeout "$1" fastgan train --set run.device=cuda run.steps=2000 run.log_every=500 run.out_dir=/tmp/runs \
        run.name=graph-$graph run.cuda_graph=$graph run.progress=off 2>&1 | tail -2
      rc=${PIPESTATUS[0]}
      echo "run.cuda_graph=$graph: $(( SECONDS - t0 )) s wall, $(said "$rc")"
      case $rc in 0|124) ;; *) bad=$rc;; esac
    done
    exit $bad ) 2>&1 | tee "$OUT/train.log"
  status "default job" "${PIPESTATUS[0]}"
}
# the Triton denoiser's GEMM tiles on its graphed loss step, stopped at $1 s (-k: TILES_K, every configuration)
tile_sweep() {
  stop_at "$1" python3 -m pytest bench/bench_denoiser_tiles.py ${TILES_K:+-k "$TILES_K"} --benchmark-only -q \
    -p no:cacheprovider --benchmark-min-rounds=5 --benchmark-max-time=0.1 --benchmark-warmup=on \
    --benchmark-json "$OUT/tiles.json" --benchmark-columns=median,iqr,rounds --benchmark-sort=name 2>&1 | tail -30
  status "tile sweep" "${PIPESTATUS[0]}"
}

if [[ $what == quick ]]; then
  # cap WANT RESERVE: WANT s, or fewer (not under 30) so that RESERVE s are left before QUICK_LIMIT s from the start
  cap() { local want=$1 left=$(( ${QUICK_LIMIT:-570} - SECONDS - $2 )) floor=$(( $1 < 30 ? $1 : 30 ))
          (( left < want )) && want=$(( left > floor ? left : floor )); echo "$want"; }
  bw_limit=${BW_LIMIT:-60}; graph_limit=${GRAPH_LIMIT:-240}  # 140 ran every case on an H200 before the 24 denoiser cases of 2026-12-04 (GEMMs alone, tl.dot)
  # the graphed benchmarks keep at least graph_min s (63 s for their 63 cases on an H200, 100 cases now, the last 21
  # information only: lazy updates, the ResNet D, the f-GAN regularizer), the bandwidth ones bw_limit s before them
  graph_min=150
  # the tests first: 440 cuda tests since 2026-12-07 (325 took 87-100 s on an H200), most of the code they check
  # never run on a GPU
  lim=$(cap ${TEST_LIMIT:-240} $(( bw_limit + graph_min + 15 )))
  echo "cuda tests: limit $lim s"
  stop_at "$lim" python3 -m pytest tests -m cuda -q -p no:cacheprovider -rfE --maxfail=40 $(per_test 60) \
    --benchmark-disable 2>&1 | tee "$OUT/tests.log" | tail -40
  status "cuda tests" "${PIPESTATUS[0]}"
  # the goals' benchmarks, one JSON per file: a timed-out or crashed file loses no other's results. Warm-up: one
  # round (do_bench warms the bandwidth kernels itself; a graph is warm from its capture). Left out here (the
  # `bench` stage has them): the reference backends' GB/s, and the BatchNorm passes at sizes not held to the goal.
  bench_args=(--benchmark-only -q -p no:cacheprovider -rfE --benchmark-min-rounds=5 --benchmark-max-time=0.1
              --benchmark-warmup=on --benchmark-warmup-iterations=1 --benchmark-columns=median,iqr,rounds
              --benchmark-sort=name)
  # its reserve is the graph's minimum, not its whole limit: tests that ran to their own limit left bw_limit +
  # graph_min, and reserving graph_limit here cut the bandwidth stage to 30 s, its last cases (nt_losses' backward
  # and graphed rows, the BatchNorm passes: goal cases never measured) the first dropped
  lim=$(cap "$bw_limit" $(( graph_min + 5 )))
  echo "bandwidth benchmarks: limit $lim s"
  stop_at "$lim" python3 -m pytest bench/bench_bandwidth.py \
    -k "${BW_K:-not reference and (not bn_closed_form or large)}" "${bench_args[@]}" \
    --benchmark-json "$OUT/bench-bandwidth.json" 2>&1 | tail -40
  status "bandwidth benchmarks" "${PIPESTATUS[0]}"
  # the graphed D updates (penalty goal), the graphed denoiser (denoiser goal), then lazy regularization and the
  # ResNet D (last in the file: information only, the first to go when the limit cuts the run short)
  lim=$(cap "$graph_limit" 5)
  echo "graphed benchmarks: limit $lim s"
  stop_at "$lim" python3 -m pytest bench/bench_graph_step.py "${bench_args[@]}" \
    --benchmark-json "$OUT/bench-graph.json" 2>&1 | tail -80
  status "graphed benchmarks" "${PIPESTATUS[0]}"
  python3 bench/goals.py "$OUT/bench-bandwidth.json" "$OUT/bench-graph.json" --costs "$COSTS" | tee "$OUT/goals.md"
  status "goals table" "${PIPESTATUS[0]}"
  # the time left before QUICK_LIMIT (an H200 finished the above in 209 of 570 s on 2026-12-04): where the denoiser
  # step's and nt_losses' GPU time goes, kernel by kernel (torch.profiler; the unmet goals), the default job, then
  # the tile sweep at the tiles the kernels pick and the sweep's earlier winners, each only where time is left
  # (the device tool returns 8 files: build.log, tests.log, the two JSONs, goals.md, profile.md, train.log,
  # tiles.json)
  left=$(( ${QUICK_LIMIT:-570} - SECONDS - 15 ))
  if (( left >= 60 )); then
    stop_at $(( left < 120 ? left / 2 : 60 )) python3 bench/profile_kernels.py >"$OUT/profile.md" 2>&1
    status "kernel profile" $?
  fi
  left=$(( ${QUICK_LIMIT:-570} - SECONDS - 15 ))
  if (( left >= 90 )); then default_job $(( left / 2 < 60 ? left / 2 : 60 )); fi
  left=$(( ${QUICK_LIMIT:-570} - SECONDS - 45 ))  # stop_at's 30 s before KILL, then the sweep's summary
  if (( left >= 45 )); then TILES_K=${TILES_K:-reference or default or 16x32x32 or (64x64x32 and not x8)} tile_sweep "$left"; fi
fi
if [[ $what == tests || $what == all ]]; then
  stop_at ${TEST_LIMIT:-300} python3 -m pytest tests -m cuda -q -p no:cacheprovider -rfE --maxfail=40 $(per_test 120) \
    --benchmark-disable 2>&1 | tee "$OUT/tests.log" | tail -60
  status "cuda tests" "${PIPESTATUS[0]}"
  default_job 150
fi
if [[ $what == bench || $what == all ]]; then
  stop_at ${BENCH_LIMIT:-420} python3 -m pytest bench -k "${BENCH_K:-cuda or graph or host_cost or bandwidth}" --benchmark-only -q -p no:cacheprovider \
    --benchmark-min-rounds=20 --benchmark-max-time=0.3 --benchmark-warmup=on \
    --benchmark-json "$OUT/bench.json" --benchmark-columns=median,iqr,rounds \
    --benchmark-sort=name 2>&1 | tee "$OUT/bench.log" | tail -150
  status "benchmarks" "${PIPESTATUS[0]}"
  # the counts of the code just measured (a CPU count, about a minute), else the committed ones, flagged by goals.py
  timeout 240 python3 bench/costs.py --json "$OUT/costs.json" >"$OUT/costs.log" 2>&1 && COSTS="$OUT/costs.json"
  # which of issue 5's goals this GPU meets, and the graphed updates beside their counted costs
  python3 bench/goals.py "$OUT/bench.json" --costs "$COSTS" | tee "$OUT/goals.md"
  status "goals table" "${PIPESTATUS[0]}"
fi
if [[ $what == tiles || ( $what == quick && -s $OUT/tiles.json ) ]]; then
  [[ $what == tiles ]] && tile_sweep ${TILES_LIMIT:-300}
  python3 - "$OUT/tiles.json" <<'PY'
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:  # empty when every case was skipped or failed before timing
    sys.exit(f"{sys.argv[1]}: no tile results ({type(e).__name__}: {e})")
rows = [b["extra_info"] for b in doc["benchmarks"] if "ms_per_step" in b["extra_info"]]
for r in sorted(rows, key=lambda r: (r["n_h"], r["B"], r["ms_per_step"])):
    print(f"nh{r['n_h']} d{r['depth']} B{r['B']} {r['impl']:9s} {r['tiles']:10s} {r['ms_per_step']:.4f} ms"
          f"  vs reference {r.get('speedup_vs_reference', 0):.2f}x  vs default {r.get('speedup_vs_default', 0):.2f}x")
PY
  status "tile table" $?
fi
if [[ $what == sanitize ]]; then
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  if [[ -z $cs ]]; then echo "compute-sanitizer not found"; exit 1; fi
  for tool in memcheck racecheck synccheck; do
    # the cuda backend only: Triton's and torch's own kernels are not fastgan's to fix here
    stop_at ${SANITIZE_LIMIT:-150} "$cs" --tool $tool --error-exitcode 86 --print-limit 20 --target-processes all \
      python3 -m pytest tests/ops/test_penalty.py tests/ops/test_noise.py tests/ops/test_nt_losses.py \
      tests/ops/test_denoiser.py tests/ops/test_bn_closed_form.py -m cuda -k "cuda and not triton" -q \
      -p no:cacheprovider -x 2>&1 | tee "$OUT/sanitize-$tool.log" | tail -15
    rc=${PIPESTATUS[0]}
    echo "compute-sanitizer $tool: exit $rc (86: errors found; 124: time limit)"
    case $rc in 0|124) ;; *) failed+=("compute-sanitizer $tool (exit $rc)");; esac
  done
fi
echo "total: $(( $(date +%s) - start )) s"
if (( ${#failed[@]} )); then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
