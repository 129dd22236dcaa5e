"""Benchmarks: `pytest bench/ --benchmark-only` measures; `pytest bench/ --benchmark-disable` runs each once
as a smoke test (what CI does). On CPU only the reference and C++ backends are measured: the Triton
interpreter is a correctness tool, not a speed one."""
import ctypes
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# glibc hands a freed heap top back to the OS once it exceeds the trim threshold and serves blocks above the
# mmap threshold with fresh mappings, so a step that frees and re-allocates MB-sized tensors (a denoiser's weight
# gradients after zero_grad(set_to_none=True)) pays hundreds of page faults or none, depending on where the heap's
# top happens to lie. On the 2-core CPU this moved one benchmark's median by up to 50%, for whichever
# implementation the layout disfavoured. With both thresholds pinned every step reuses the heap, and CPU ratios
# compare the computations. Only when benchmarks are timed (not in the smoke runs of the test suite); recorded in
# each JSON's machine_info.
_MALLOPT = {"M_MMAP_THRESHOLD": (-3, 32 << 20), "M_TRIM_THRESHOLD": (-1, 1 << 30)}


def _pin_malloc() -> dict:
    if not sys.platform.startswith("linux"):
        return {}
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return {}
    return {name: value for name, (param, value) in _MALLOPT.items() if libc.mallopt(param, value) == 1}


MALLOC_PINNED: dict = {}


def pytest_configure(config):
    if not config.getoption("benchmark_disable", default=False):
        MALLOC_PINNED.update(_pin_malloc())


# optional: without pytest-benchmark, pytest names the missing `benchmark` fixture instead of an INTERNALERROR
@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    machine_info["glibc_mallopt"] = dict(MALLOC_PINNED)
    # fp32 convolutions run as TF32 by default on Ampere and newer (cuDNN's flag), fp32 matmuls do not: what a
    # GPU figure of a convnet's D update is made of (reading the flags initialises nothing)
    machine_info["torch_tf32"] = {"cudnn": bool(torch.backends.cudnn.allow_tf32),
                                  "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


def _warmed(fixture_type):
    class WarmedBenchmark(fixture_type):
        """pytest-benchmark's fixture with two untimed calls first: its calibration call (untimed) is the step's
        first, which pays for compilation, caches and allocations, and sets rounds = max_time / its duration, so
        a slow first call left the reference of a CPU pair with 5 rounds against the fused side's 273. Not in
        smoke runs (--benchmark-disable): there each step runs once."""

        WARMUP_CALLS = 2

        def __call__(self, fn, *args, **kwargs):
            if not self.disabled:
                for _ in range(self.WARMUP_CALLS):
                    fn(*args, **kwargs)
            return super().__call__(fn, *args, **kwargs)
    return WarmedBenchmark


@pytest.fixture
def benchmark(benchmark):
    # the plugin checks the funcarg's type: the instance's class is swapped for a subclass, not wrapped
    benchmark.__class__ = _warmed(type(benchmark))
    return benchmark


# A run stopped by SIGINT (tools/gpu_check.sh stops each stage at its limit that way) after a benchmark's stats were
# made but before its first timed round ended: pytest-benchmark's JSON writer took min() of no rounds and raised,
# leaving the --benchmark-json file (truncated at the start) empty, every finished benchmark lost. Such a benchmark
# is dropped before the writer runs.
@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    runs = getattr(session.config, "_benchmarksession", None)
    if runs is not None:
        runs.benchmarks[:] = [b for b in runs.benchmarks if b.stats is not None and b.stats.data]
    yield
