"""Builds fastgan._C with CMake. No torch needed at build time.

Switches (environment variables):
  FASTGAN_CUDA=auto|0|1   build CUDA kernels when nvcc is found (auto), never (0), or fail without nvcc (1)
  FASTGAN_CUDA_ARCH       ';'-separated SM list, default "75;80;90"; TORCH_CUDA_ARCH_LIST is respected when set
  CUDACXX, CUDA_HOME      the nvcc, or the toolkit, to build with (before nvcc on PATH)
  FASTGAN_BUILD_TYPE      CMake build type, default Release
  CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# Turing (T4, RTX 20xx: the oldest nvcc 13 builds), Ampere (sm_86/89 run sm_80's code), Hopper; newer GPUs
# JIT-compile sm_90's PTX. Keep in step with CMakeLists.txt.
DEFAULT_CUDA_ARCH = "75;80;90"


def find_nvcc(required=False):
    """CUDACXX, then CUDA_HOME's nvcc (a toolkit named on purpose, as torch's builds take it), then nvcc on PATH,
    CUDA_PATH's, /usr/local/cuda's. A CUDACXX or CUDA_HOME that names no nvcc is said, not skipped silently (a typo
    would build with another toolkit, or none): an error when CUDA is required (FASTGAN_CUDA=1), else a note."""
    def in_home(home):
        return str(Path(home) / "bin" / "nvcc") if home else None

    def as_command(c):  # CUDACXX may be a command name, as CMake takes it
        bare = c and os.sep not in c and (os.altsep is None or os.altsep not in c)
        return (shutil.which(c) or c) if bare else c

    for var, cand in (("CUDACXX", as_command(os.environ.get("CUDACXX"))),
                      ("CUDA_HOME", in_home(os.environ.get("CUDA_HOME")))):
        if not cand:
            continue
        if Path(cand).exists():
            return cand
        why = f"{var}={os.environ[var]} names no nvcc ({cand} does not exist)"
        if required:
            raise RuntimeError(f"FASTGAN_CUDA=1 but {why}")
        print(f"fastgan: {why}; looking for nvcc on PATH, in CUDA_PATH and in /usr/local/cuda instead", flush=True)
    for cand in (shutil.which("nvcc"), in_home(os.environ.get("CUDA_PATH")), in_home("/usr/local/cuda")):
        if cand and Path(cand).exists():
            return cand
    return None


def nvcc_release(nvcc):
    """"13.0" from `nvcc --version`, or None."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def release_major(release):
    """13 of "13.0"; None for None."""
    return int(release.split(".")[0]) if release else None


def nvcc_major(nvcc):
    return release_major(nvcc_release(nvcc))


# One entry of CMake's CUDA_ARCHITECTURES as fastgan._ext.arch_runs_on reads it back at run time to tell whether the
# kernels run on a GPU (tests/test_cuda_archs.py holds the two equal): "80", "90a", "90-real", "100f-virtual"
CUDA_ARCH_ENTRY = re.compile(r"(\d+?)(\d)([af]?)(?:-(real|virtual))?")
# torch's named architectures (torch.utils.cpp_extension), as TORCH_CUDA_ARCH_LIST may give them
TORCH_NAMED_ARCHS = {"Kepler+Tesla": "3.7", "Kepler": "3.5+PTX", "Maxwell+Tegra": "5.3", "Maxwell": "5.0;5.2+PTX",
                     "Pascal": "6.0;6.1+PTX", "Volta+Tegra": "7.2", "Volta": "7.0+PTX", "Turing": "7.5+PTX",
                     "Ampere+Tegra": "8.7", "Ampere": "8.0;8.6+PTX", "Ada": "8.9+PTX", "Hopper": "9.0+PTX",
                     "Blackwell+Tegra": "11.0", "Blackwell": "10.0;10.3;12.0;12.1+PTX"}


def _fastgan_archs(raw):
    items = [a for a in re.split(r"[;\s,]+", raw.strip()) if a]
    for a in items:
        if not CUDA_ARCH_ENTRY.fullmatch(a):
            why = (" (CMake's all, all-major and native are not taken: fastgan reports the architectures it was built "
                   "for and checks them against the GPU at run time)" if a in ("all", "all-major", "native") else "")
            raise RuntimeError(f"FASTGAN_CUDA_ARCH: cannot use {a!r}{why}; list SM numbers, e.g. 75;80;90 or 90a")
    if not items:
        raise RuntimeError(f"FASTGAN_CUDA_ARCH={raw!r} names no architecture; e.g. 75;80;90")
    return ";".join(items)


def cuda_archs(nvcc_version=None):
    """The SM list for CMake: FASTGAN_CUDA_ARCH (unset or empty: the default), else TORCH_CUDA_ARCH_LIST (a list made
    for torch, e.g. in a Docker image), whose architectures this nvcc cannot build are dropped with a note (nvcc 13
    builds sm_75 and newer); "+PTX" needs no flag: CMake's plain architecture numbers embed PTX beside the machine
    code. torch's named architectures (Ampere, Hopper, ...) are expanded; its "native" is taken as unset."""
    torch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if torch_list == "native":
        print("fastgan: TORCH_CUDA_ARCH_LIST=native: building the default architectures", flush=True)
        torch_list = ""
    if torch_list and not os.environ.get("FASTGAN_CUDA_ARCH"):
        archs = []
        items = [i for i in re.split(r"[;\s,]+", torch_list) if i]
        items = [x for i in items for x in TORCH_NAMED_ARCHS.get(i, i).split(";")]
        for item in items:
            m = re.fullmatch(r"(\d+)\.(\d+)(a?)(\+PTX)?", item)
            if not m:
                raise RuntimeError(f"TORCH_CUDA_ARCH_LIST: cannot parse {item!r}")
            arch = f"{m.group(1)}{m.group(2)}{m.group(3)}"
            if arch not in archs:
                archs.append(arch)
        if nvcc_version is not None and nvcc_version >= 13:
            dropped = [a for a in archs if int(re.match(r"\d+", a).group()) < 75]
            archs = [a for a in archs if a not in dropped]
            if dropped:
                print(f"fastgan: TORCH_CUDA_ARCH_LIST: skipping sm_{', sm_'.join(dropped)} (nvcc {nvcc_version} builds "
                      "sm_75 and newer)", flush=True)
            if not archs:
                raise RuntimeError(f"TORCH_CUDA_ARCH_LIST={torch_list!r}: nvcc {nvcc_version} builds none of these "
                                   "architectures (sm_75 and newer); set FASTGAN_CUDA_ARCH, or FASTGAN_CUDA=0")
        return ";".join(archs)
    return _fastgan_archs(os.environ.get("FASTGAN_CUDA_ARCH") or DEFAULT_CUDA_ARCH)


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("fastgan needs cmake >= 3.18 on PATH to build fastgan._C (apt-get install cmake, or pip install cmake)")
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)

        mode = os.environ.get("FASTGAN_CUDA", "auto").lower()
        if mode not in ("auto", "0", "1"):
            raise RuntimeError(f"FASTGAN_CUDA must be auto, 0 or 1, got {mode!r}")
        nvcc = find_nvcc(required=mode == "1") if mode != "0" else None
        if mode == "1" and nvcc is None:
            raise RuntimeError("FASTGAN_CUDA=1 but nvcc was not found (set CUDACXX or CUDA_HOME)")
        with_cuda = nvcc is not None

        cfg = os.environ.get("FASTGAN_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DFASTGAN_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
        ]
        release = nvcc_release(nvcc) if with_cuda else None
        archs = cuda_archs(release_major(release)) if with_cuda else ""
        if with_cuda:
            args += [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DFASTGAN_CUDA_ARCH={archs}"]
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        # A cache from another generator or CUDA setting would make cmake refuse or build the wrong thing.
        cache = build_temp / "CMakeCache.txt"
        if cache.exists():
            cache.unlink()
        cuda = f"yes, sm {archs}, {nvcc} (CUDA {release or '?'})" if with_cuda else "no"
        print(f"fastgan: building _C (CUDA: {cuda})", flush=True)
        subprocess.run([cmake, str(ROOT), *args], cwd=build_temp, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run([cmake, "--build", ".", "--config", cfg, "-j", jobs], cwd=build_temp, check=True)


setup(
    # configs/ is installed as fastgan.configs (data only): `fastgan train NAME` finds a shipped config by name
    packages=find_packages(include=["fastgan", "fastgan.*"]) + ["fastgan.kernels", "fastgan.configs"],
    package_dir={"fastgan.kernels": "kernels", "fastgan.configs": "configs"},
    # the classifier behind fastgan.metrics.fmnist_scores (made by tools/train_fmnist_classifier.py)
    package_data={"fastgan.metrics": ["fmnist_classifier.pt"],
                  "fastgan.configs": ["*.yaml", "*/*.yaml", "*.yml", "*/*.yml"]},
    ext_modules=[CMakeExtension("fastgan._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
