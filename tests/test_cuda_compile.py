"""What ptxas makes of csrc/cuda/nt_losses.cu's forward and backward for each architecture the build targets (sm_75, 80, 90),
without a GPU: the occupancy their __launch_bounds__ ask for is met without spilling, and the packed variants read
and write in 16-byte accesses. Their speed rests on both (each thread keeps 64 bytes of logits in flight,
csrc/cuda/nt_losses.cu); a change of the code or of nvcc that loses either shows here, not only on a GPU."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "cuda" / "nt_losses.cu"
REGISTERS_PER_SM = 65536
THREADS = 256  # kThreads
# (accumulation type as mangled, packed) -> blocks an SM must hold (forward_blocks_per_sm in the source, the
# backward's too)
BLOCKS = {("f", True): 3, ("d", True): 2, ("f", False): 2, ("d", False): 2}


def _nvcc() -> str:
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        pytest.skip("no nvcc on this machine: the CUDA kernels are not built here")
    return nvcc


def _cuobjdump() -> str:
    from triton.backends.nvidia import compiler  # triton bundles NVIDIA's binary tools (CI installs triton)

    path = Path(compiler.__file__).parent / "bin" / "cuobjdump"
    assert path.is_file(), path
    return str(path)


@pytest.fixture(scope="module", params=["75", "80", "90"])
def compiled(request, tmp_path_factory):
    arch = request.param
    cubin = tmp_path_factory.mktemp(f"sm{arch}") / "nt_losses.cubin"
    run = subprocess.run([_nvcc(), "-std=c++17", "-O3", f"-arch=sm_{arch}", f"-I{ROOT / 'csrc' / 'include'}",
                          "-Xptxas", "-v", "-cubin", "-o", str(cubin), str(SOURCE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return arch, cubin, run.stderr


def _kernels(ptxas_log: str, kernel: str) -> dict:
    """{(type, packed): (registers, spill bytes)} of the forward or backward kernels, from ptxas -v."""
    out = {}
    for m in re.finditer(r"Compiling entry function '(\S+)'.*?\n(.*?)Used (\d+) registers", ptxas_log, re.S):
        k = re.search(rf"{kernel}_kernelI([fd])Lb([01])E", m.group(1))
        if k:
            spill = sum(int(b) for b in re.findall(r"(\d+) bytes spill (?:stores|loads)", m.group(2)))
            out[(k.group(1), k.group(2) == "1")] = (int(m.group(3)), spill)
    return out


@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_kernels_hold_their_blocks_without_spilling(compiled, kernel):
    arch, _, log = compiled
    kernels = _kernels(log, kernel)
    assert set(kernels) == set(BLOCKS), log[-2000:]
    for key, (registers, spill) in kernels.items():
        assert spill == 0, (arch, kernel, key, spill)
        assert REGISTERS_PER_SM // (registers * THREADS) >= BLOCKS[key], (arch, kernel, key, registers)


def _sass_loops():
    spec = importlib.util.spec_from_file_location("fastgan_sass_loops", ROOT / "tools" / "sass_loops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packed_forward_loop_instructions_per_logit():
    """The float forward's full-round loop in the D loss with JS weights (the bandwidth row's case: the largest of
    the rounds with 16 exponentials, one a logit, and 4 packed loads) takes at most 60 instructions a logit on
    sm_90 (56 when written; 88 before, tools/sass_loops.py): the arithmetic bounds this forward as much as the
    traffic, so a change of the code or of nvcc that costs instructions there shows here."""
    _nvcc()
    tool = _sass_loops()
    loops = tool.loops(tool.function(tool.sass(SOURCE, 90), r"forward_kernelIfLb1E"))
    rounds = [lp for lp in loops if lp["ex2"] == 16 and lp["ldg128"] == 4]
    assert len(rounds) == 3, loops  # the loss with weights, the loss alone, the weights alone
    assert max(lp["per_ex2"] for lp in rounds) <= 60, rounds


@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_packed_kernels_move_16_byte_packs(compiled, kernel):
    arch, cubin, _ = compiled
    sass = subprocess.run([_cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    functions = re.split(r"\n\s*Function : ", sass)
    for acc in ("f", "d"):
        for packed in (True, False):
            body = [f for f in functions if re.match(rf"\S*{kernel}_kernelI{acc}Lb{int(packed)}E", f)]
            assert len(body) == 1, (arch, acc, packed)
            loads = len(re.findall(r"\bLDG\.E\.128\b", body[0]))
            stores = len(re.findall(r"\bSTG\.E\.128\b", body[0]))
            # a round's kPacks = 4 packs of logits read, and of JS weights (forward) or gradients (backward) written,
            # 16 bytes at a time
            if packed:
                assert loads >= 4 and stores >= 4, (arch, kernel, acc, loads, stores)
            else:
                assert loads == stores == 0, (arch, kernel, acc, loads, stores)
