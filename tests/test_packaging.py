"""The sdist carries what building _C and the README's commands need: every tracked file (bar .gitignore), so that
a wheel built from it (`python -m build`'s default, a published sdist) finds CMakeLists.txt and csrc/."""
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout: the sdist is compared with the files git tracks")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def test_the_sdist_holds_every_tracked_file(tmp_path):
    files = _tracked()
    src = tmp_path / "src"
    for f in files:  # a copy: sdist writes fastgan.egg-info beside setup.py
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sdist,) = (tmp_path / "dist").glob("fastgan-*.tar.gz")
    with tarfile.open(sdist) as tar:
        packed = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = sorted(set(files) - packed - {".gitignore"})
    assert not missing, f"tracked files the sdist lacks: {missing[:20]}"
    assert {"CMakeLists.txt", "csrc/module.cpp", "kernels/penalty.py", "MANIFEST.in"} <= packed


def test_the_package_version_is_the_distributions():
    """fastgan.__version__ (recorded in run_info.json and checkpoints) and pyproject.toml's are one."""
    import re

    import fastgan

    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"$', text, flags=re.M).group(1) == fastgan.__version__


def _compile_flags(build: Path, build_type: str, cuda: bool) -> dict:
    """{source file name: its compile command} of a CMake configuration of fastgan (nothing compiled)."""
    pybind11 = pytest.importorskip("pybind11")
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("no cmake")
    args = [cmake, str(ROOT), f"-DCMAKE_BUILD_TYPE={build_type}", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
            f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DFASTGAN_WITH_CUDA={'ON' if cuda else 'OFF'}"]
    if cuda:
        args.append(f"-DCMAKE_CUDA_COMPILER={cuda}")
    proc = subprocess.run(args, cwd=build, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {Path(c["file"]).name: c["command"] for c in json.loads((build / "compile_commands.json").read_text())}


@pytest.mark.parametrize("build_type", ["Debug", "RelWithDebInfo"])
def test_only_a_debug_build_is_unoptimised(tmp_path, build_type):
    """FASTGAN_BUILD_TYPE=Debug (setup.py's CMAKE_BUILD_TYPE) compiles the C++ without -O3, for stepping through the
    kernels, and the CUDA with -G (device debugging; nvcc's -O is for host code only); every other type ends with
    -O3 (RelWithDebInfo's own flags say -O2: CMake's Release default has -O3 already, so it would not tell). The
    CUDA sources too, where there is an nvcc."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    flags = _compile_flags(tmp_path, build_type, nvcc)
    for name in ["module.cpp"] + (["runtime.cu"] if nvcc else []):
        words = flags[name].split()
        levels = [w for w in words if w.startswith("-O")]
        if build_type == "Debug":
            assert "-O3" not in levels and "-g" in words, (name, flags[name])
            assert ("-G" in words) == name.endswith(".cu"), (name, flags[name])
        else:
            assert levels and levels[-1] == "-O3" and "-G" not in words, (name, flags[name])
