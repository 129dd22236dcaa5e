"""fastgan's CUDA and CPU C++ kernels under the sanitizers, in the CUDA emulator: on a GPU, compute-sanitizer's memcheck
finds a kernel reading or writing past a tensor, or a vector access through a misaligned address; on the CPU, the
emulated kernels are built with -fsanitize=address,undefined (tools/cuda_emu/build.py, sanitize="address") and run
in a Python process with the sanitizer's runtime preloaded, so every access to a tensor torch allocated is checked
against the allocation's poisoned red zones, and every 16-byte pack access against its alignment. (The NaN-padded
inputs of tests/ops/test_cuda_emulated.py catch stray reads that change a result; this catches stray writes too,
reads whose value is never used, and misaligned vector accesses, which x86 performs without complaint.)

A child process runs tests/ops/test_cuda_emulated.py (every kernel variant and launch site) this way, another the
op tests' reference/cpu cases with the sanitized module as fastgan._C (its CPU kernels are csrc/cpu's); a control
launch with a size one past its tensors must be reported, so the check is known to be live."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cuda_emu_build

TESTS = Path(__file__).resolve().parent
build = cuda_emu_build()
RUNTIME = build.asan_preload()
if RUNTIME is None or build.cuda_include() is None:
    pytest.skip("needs the compiler's AddressSanitizer runtime and the CUDA toolkit's headers (both on CI's machine)",
                allow_module_level=True)


def _run(args: list[str], tmp_path: Path, timeout: int, **env) -> tuple[subprocess.CompletedProcess, str]:
    """Runs `python args` with the sanitizers preloaded; returns the process and their error reports (AddressSanitizer
    writes them to files, UndefinedBehaviorSanitizer to stderr: a child pytest must not capture at the fd level, or
    a report printed just before the abort is lost)."""
    log = tmp_path / "asan"
    env = dict(os.environ, LD_PRELOAD=RUNTIME, FASTGAN_CUDA_EMU_SANITIZE="address",
               ASAN_OPTIONS=f"detect_leaks=0:log_path={log}",  # Python's own allocations are not leaks to chase
               UBSAN_OPTIONS="print_stacktrace=1", OMP_NUM_THREADS="2", **env)  # the threaded loops too
    run = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout,
                         cwd=tmp_path)
    reports = "".join(p.read_text() for p in sorted(tmp_path.glob("asan.*")))
    # the runtime warns once that it does not fully model swapcontext (the emulator's fibers); not an error
    reports = "\n".join(line for line in reports.splitlines() if "makecontext/swapcontext" not in line)
    ub = run.stderr.find("runtime error:")
    return run, reports + (run.stderr[max(0, run.stderr.rfind("\n", 0, ub)):] if ub >= 0 else "")


CONTROL = r"""
import sys
import torch
sys.path.insert(0, sys.argv[2])
from helpers import cuda_emu_build
b = cuda_emu_build()
C = b.load(b.build())
assert C.emu_sanitizer == "address", C.emu_sanitizer
h, noise, out = (torch.zeros(64, dtype=torch.float64) for _ in range(3))
# out = h + sigma * noise over n elements: the tensors hold 64
C.corrupt_cuda(h.data_ptr(), noise.data_ptr(), out.data_ptr(), 1.0, 1, 64 + int(sys.argv[1]), 0)
print("returned")
"""


@pytest.mark.parametrize("overrun", [0, 1])
def test_control_launch_past_the_tensors_is_reported(tmp_path, overrun):
    run, reports = _run(["-c", CONTROL, str(overrun), str(TESTS)], tmp_path, timeout=600)
    if overrun == 0:
        assert run.returncode == 0 and "returned" in run.stdout, run.stderr[-3000:] + reports
        assert reports == ""
    else:
        assert run.returncode != 0 and "returned" not in run.stdout
        assert "ERROR: AddressSanitizer: heap-buffer-overflow" in reports, reports[-3000:] + run.stderr[-2000:]
        assert "corrupt" in reports  # the stack names the emulated kernel's launch


PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable", "-p", "no:xdist", "--capture=sys"]


def _assert_clean(run, reports, at_least: int):
    assert reports == "", reports[-6000:]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed and int(passed.group(1)) >= at_least and "failed" not in run.stdout, run.stdout[-2000:]


def test_every_emulated_kernel_variant_is_clean(tmp_path):
    run, reports = _run([*PYTEST, str(TESTS / "ops" / "test_cuda_emulated.py")], tmp_path, timeout=1200)
    _assert_clean(run, reports, 160)


def test_cpu_kernels_are_clean(tmp_path):
    """The op tests' reference/cpu cases with the sanitized module as fastgan._C (its CPU kernels are csrc/cpu's,
    built with the same sanitizers): the C++ backend's vector loops and their tails, bad-argument checks (C++
    throws) included. A loop bound of the denoiser's corruption made `i <= numel` is reported there."""
    modules = [str(TESTS / "ops" / f"test_{m}.py") for m in ("extension_in_use", "penalty", "noise", "nt_losses",
                                                            "denoiser", "bn_closed_form")]
    run, reports = _run([*PYTEST, *modules, "-k", "not triton and not cuda"], tmp_path, timeout=1200,
                        FASTGAN_TEST_EXTENSION="emulated")
    _assert_clean(run, reports, 400)
