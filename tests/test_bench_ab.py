"""The interleaved A/B commands of bench/ (benchutil.ab; `python bench/bench_penalty.py`, `python bench/bench_noise.py`)
run and print one row per case with every impl and the base's ratio 1: a smoke test of what docs/benchmarks.md
quotes, not a timing (tests don't time)."""
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import bench_module

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(script: str, *args: str) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env,
                         timeout=600, cwd=BENCH)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def test_ab_pairs_each_rep_with_the_base():
    util = bench_module("benchutil", "ab_benchutil")
    calls = {"a": 0, "b": 0}

    def step(k):
        return lambda: calls.__setitem__(k, calls[k] + 1)
    stats, ratios = util.ab({"a": step("a"), "b": step("b")}, reps=4, calls=3, warm=2, base="b")
    assert ratios["b"] == 1.0 and set(stats) == set(ratios) == {"a", "b"}
    assert calls == {"a": 3 + 4 * (2 + 3), "b": 3 + 4 * (2 + 3)}  # warm-up, then warm and timed calls per rep
    assert all(med >= low >= 0 for med, low in stats.values())


def test_penalty_ab_command():
    lines = _run("bench_penalty.py", "--reps", "1", "--calls", "1", "--warm", "0")
    rows = [line for line in lines if line.startswith("D update")]
    assert [r.split()[2] for r in rows] == ["mlp", "dcgan32"], lines
    for row in rows:
        assert re.search(r"reference +[\d.]+ \( *[\d.]+\) x1\.000 +cpu .* none ", row), row


def test_noise_ab_command():
    lines = _run("bench_noise.py", "--reps", "1", "--calls", "1", "--impls", "torch,cpu", "-k", "m=512 S=(2,) double")
    rows = [line for line in lines if line.startswith("noisy_clean_batch")]
    assert len(rows) == 3, lines  # float, sigma, eps
    assert all(re.search(r"torch +[\d.]+ \( *[\d.]+\) x1\.00 +cpu ", r) for r in rows), rows
