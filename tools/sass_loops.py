"""Instructions per element of a kernel's loops, from its SASS, without a GPU: each loop (a backward branch) with its
instruction count, MUFU.EX2 count (one exponential an element in the loss kernels) and instructions per exponential.

    python tools/sass_loops.py csrc/cuda/nt_losses.cu 'forward_kernelIfLb1E' [--arch 90]

Compiles the file with nvcc as the build does (-O3), disassembles it with the cuobjdump that triton bundles. The
README's "instructions a logit" figures for nt_losses' forward are this tool's (tests/test_cuda_compile.py holds
them).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ADDR = re.compile(r"/\*([0-9a-f]{4,6})\*/")


def nvcc() -> str | None:
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def cuobjdump() -> str:
    from triton.backends.nvidia import compiler  # triton bundles NVIDIA's binary tools

    return str(Path(compiler.__file__).parent / "bin" / "cuobjdump")


def compile_cubin(source: Path, arch: int, cubin: Path) -> str:
    """Compiles source for sm_<arch> into cubin, as the build does; returns ptxas -v's report (registers, spills)."""
    run = subprocess.run([nvcc(), "-std=c++17", "-O3", f"-arch=sm_{arch}", f"-I{ROOT / 'csrc' / 'include'}",
                          "-Xptxas", "-v", "-cubin", "-o", str(cubin), str(source)], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source} for sm_{arch}:\n{run.stderr[-3000:]}")
    return run.stderr


def disassemble(cubin: Path) -> str:
    return subprocess.run([cuobjdump(), "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout


def sass(source: Path, arch: int) -> str:
    """The SASS of every kernel in source, compiled for sm_<arch>."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        compile_cubin(source, arch, cubin)
        return disassemble(cubin)


def function(sass_text: str, pattern: str) -> list[str]:
    """The instructions (NOPs included: a branch may land on one) of the one kernel whose mangled name matches
    pattern."""
    bodies = [f for f in re.split(r"\n\s*Function : ", sass_text)[1:] if re.search(pattern, f.split()[0])]
    if len(bodies) != 1:
        raise ValueError(f"{len(bodies)} kernels match {pattern!r}")
    return [line for line in bodies[0].splitlines() if _ADDR.search(line)]


def loops(instructions: list[str]) -> list[dict]:
    """Each backward branch's loop: its first and last instruction, size (NOPs not counted), exponentials, and size
    per exponential."""
    index = {int(_ADDR.search(line).group(1), 16): i for i, line in enumerate(instructions)}
    out = []
    for i, line in enumerate(instructions):
        m = re.search(r"\bBRA (0x[0-9a-f]+)", line)
        if m and int(m.group(1), 16) < int(_ADDR.search(line).group(1), 16):
            body = [b for b in instructions[index[int(m.group(1), 16)]:i + 1] if "NOP" not in b]
            ex2 = sum("MUFU.EX2" in b for b in body)
            out.append({"first": index[int(m.group(1), 16)], "last": i, "instructions": len(body), "ex2": ex2,
                        "per_ex2": len(body) / ex2 if ex2 else None,
                        "ldg128": sum("LDG.E.128" in b for b in body)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("kernel", help="regular expression matched against the mangled kernel names")
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args()
    for loop in loops(function(sass(args.source, args.arch), args.kernel)):
        per = f"{loop['per_ex2']:.1f}" if loop["per_ex2"] else "-"
        print(f"loop {loop['first']}-{loop['last']}: {loop['instructions']} instructions, {loop['ex2']} MUFU.EX2 "
              f"({per} an exponential), {loop['ldg128']} 16-byte loads")


if __name__ == "__main__":
    main()
