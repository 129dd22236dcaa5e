"""What ptxas makes of csrc/cuda/nt_losses.cu's forward and backward for each architecture the build targets (sm_75, 80, 90),
without a GPU: the occupancy their __launch_bounds__ ask for is met without spilling, and the packed variants read
and write in 16-byte accesses. Their speed rests on both (each thread keeps 64 bytes of logits in flight,
csrc/cuda/nt_losses.cu); a change of the code or of nvcc that loses either shows here, not only on a GPU."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import tool_module

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "cuda" / "nt_losses.cu"
REGISTERS_PER_SM = 65536
THREADS = 256  # kThreads
# (accumulation type as mangled, packed) -> blocks an SM must hold (forward_blocks_per_sm in the source, the
# backward's too)
BLOCKS = {("f", True): 3, ("d", True): 2, ("f", False): 2, ("d", False): 2}


# tools/sass_loops.py: it compiles and disassembles as the build does (triton bundles cuobjdump)
TOOL = tool_module("sass_loops.py", "fastgan_sass_loops")


@pytest.fixture(scope="module", params=["75", "80", "90"])
def compiled(request, tmp_path_factory):
    """(arch, its ptxas -v report, its SASS)."""
    if TOOL.nvcc() is None:
        pytest.skip("no nvcc on this machine: the CUDA kernels are not built here")
    arch = request.param
    cubin = tmp_path_factory.mktemp(f"sm{arch}") / "nt_losses.cubin"
    log = TOOL.compile_cubin(SOURCE, int(arch), cubin)
    return arch, log, TOOL.disassemble(cubin)


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
    arch, log, _ = compiled
    kernels = _kernels(log, kernel)
    assert set(kernels) == set(BLOCKS), log[-2000:]
    for key, (registers, spill) in kernels.items():
        assert spill == 0, (arch, kernel, key, spill)
        assert REGISTERS_PER_SM // (registers * THREADS) >= BLOCKS[key], (arch, kernel, key, registers)


@pytest.mark.parametrize("compiled", ["90"], indirect=True)  # counted on the H100/H200's architecture
def test_packed_forward_loop_instructions_per_logit(compiled):
    """The float forward's full-round loop in the D loss with JS weights (the bandwidth row's case: the largest of
    the rounds with 16 exponentials, one a logit, and 4 packed loads) takes at most 44 instructions a logit on
    sm_90 (40 with nt::log1p_unit's series, 56 with log1pf, 88 before either rewrite, tools/sass_loops.py): the
    arithmetic bounds this forward as much as the traffic, so a change of the code or of nvcc that costs
    instructions there shows here."""
    _, _, sass = compiled
    loops = TOOL.loops(TOOL.function(sass, r"forward_kernelIfLb1E"))
    rounds = [lp for lp in loops if lp["ex2"] == 16 and lp["ldg128"] == 4]
    assert len(rounds) == 3, loops  # the loss with weights, the loss alone, the weights alone
    assert max(lp["per_ex2"] for lp in rounds) <= 44, rounds


@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_packed_kernels_move_16_byte_packs(compiled, kernel):
    arch, _, sass = compiled
    for acc in ("f", "d"):
        for packed in (True, False):
            body = "\n".join(TOOL.function(sass, rf"{kernel}_kernelI{acc}Lb{int(packed)}E"))
            loads = len(re.findall(r"\bLDG\.E\.128\b", body))
            stores = len(re.findall(r"\bSTG\.E\.128\b", body))
            # a round's kPacks = 4 packs of logits read, and of JS weights (forward) or gradients (backward) written,
            # 16 bytes at a time
            if packed:
                assert loads >= 4 and stores >= 4, (arch, kernel, acc, loads, stores)
            else:
                assert loads == stores == 0, (arch, kernel, acc, loads, stores)
