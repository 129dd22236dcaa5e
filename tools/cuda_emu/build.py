"""Builds fastgan's native module with its CUDA kernels running on the CUDA emulator (cuda_emu.h), for tests.

    python tools/cuda_emu/build.py [out_dir]     # prints the path of the built _C module

The module is fastgan._C's binding code (csrc/module.cpp, csrc/cpu/*.cpp) compiled with FASTGAN_WITH_CUDA,
linked with csrc/cuda/*.cu compiled by the host C++ compiler (g++ -std=c++20) against the CUDA toolkit's
headers (types, half/bfloat16 conversions; no libcudart), each `<<<...>>>` launch rewritten for the emulator.
Its `*_cuda` entry points take host pointers. Builds are cached by a hash of every input (sources, flags,
compiler), under $FASTGAN_CUDA_EMU_CACHE or ~/.cache/fastgan/cuda_emu, with a lock for parallel test workers.
"""
from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CXX = os.environ.get("CXX", "g++")
FLAGS = ["-std=c++20", "-O1", "-fPIC", "-pthread", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function",
         "-DFASTGAN_WITH_CUDA=1", '-DFASTGAN_CUDA_ARCHS="emulated"']
# -Bsymbolic: the module's calls of its own CUDA runtime functions (cudaGetLastError, ...) bind to the emulator's
# definitions, not to a libcudart that a CUDA build of torch loaded into the process first
LINK_FLAGS = ["-shared", "-pthread", "-Wl,-Bsymbolic"]


# AddressSanitizer: every global-memory access of the emulated kernels is checked against the tensors' allocations
# (torch allocates host tensors with malloc, which the preloaded runtime pads with poisoned red zones): what
# compute-sanitizer's memcheck does on a GPU, for reads and writes alike. With it UndefinedBehaviorSanitizer, whose
# alignment check stands in for the GPU's "misaligned address" fault: the 16-byte packs of the vector paths are
# alignas types, so a vector access through a misaligned pointer is reported (x86 would just load it); and signed
# index overflow. Every report aborts.
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def asan_preload() -> str | None:
    """LD_PRELOAD for a process loading the sanitized module (Python itself is not instrumented): the compiler's
    AddressSanitizer runtime, and its C++ library, which the runtime must see at start-up to intercept C++ throws
    (the binding code throws for bad arguments); None when the compiler has no such runtime."""
    paths = []
    for lib in ("libasan.so", "libstdc++.so"):
        r = subprocess.run([CXX, f"-print-file-name={lib}"], capture_output=True, text=True)
        path = r.stdout.strip()
        if r.returncode != 0 or not os.path.isabs(path) or not os.path.exists(path):
            return None
        paths.append(path)
    return " ".join(paths)


def cuda_include() -> Path | None:
    """The CUDA toolkit's include directory (headers only are used), or None."""
    for base in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if base and (Path(base) / "include" / "cuda_runtime.h").is_file():
            return Path(base) / "include"
    return None


def _kernel_start(src: str, j: int) -> int:
    """Index where the kernel expression ending at src[j] (just before '<<<') begins: identifiers, '::' and
    template argument lists."""
    k, depth = j, 0
    while k > 0:
        c = src[k - 1]
        if c == ">":
            depth += 1
        elif c == "<":
            depth -= 1
        elif depth == 0 and not (c.isalnum() or c in "_:"):
            break
        k -= 1
    return k


def _closing_paren(src: str, p: int) -> int:
    depth = 0
    for q in range(p, len(src)):
        if src[q] == "(":
            depth += 1
        elif src[q] == ")":
            depth -= 1
            if depth == 0:
                return q
    raise ValueError(f"unbalanced launch arguments at offset {p}")


def rewrite_launches(src: str, name: str = "kernel.cu") -> str:
    """`kernel<<<cfg>>>(args)` -> `::emu::Launch(cfg).run("name:line", __PRETTY_FUNCTION__, [&] { kernel(args); })`
    (newlines kept, so line numbers still match the source)."""
    out, i = [], 0
    while (j := src.find("<<<", i)) >= 0:
        k = _kernel_start(src, j)
        e = src.index(">>>", j)
        m = re.compile(r"\s*\(").match(src, e + 3)
        if m is None:
            raise ValueError(f"no argument list after the launch at offset {j}")
        q = _closing_paren(src, m.end() - 1)
        kernel, cfg, args = src[k:j].strip(), src[j + 3:e], src[m.end():q]
        out.append(src[i:k])
        site = f"{name}:{src.count(chr(10), 0, j) + 1}"
        out.append(f'::emu::Launch({cfg}).run("{site}", __PRETTY_FUNCTION__, [&] {{ {kernel}({args}); }})')
        i = q + 1
    out.append(src[i:])
    return "".join(out)


def mark_shared(src: str) -> str:
    """`__shared__ T a[N], b;` -> the same, then `::emu::shared_region(&a, sizeof(a));` for each variable, on the
    same line (the emulator poisons each at its block's first use, see cuda_emu.h)."""
    def calls(m: re.Match) -> str:
        names = [re.findall(r"[A-Za-z_]\w*", re.sub(r"\[[^\]]*\]", "", piece))[-1] for piece in m.group(1).split(",")]
        return m.group(0) + "".join(f" ::emu::shared_region(&{n}, sizeof({n}));" for n in names)

    return re.sub(r"__shared__\s+([^;{}()]+);", calls, src)


def launch_sites() -> set[str]:
    """Every kernel launch in csrc/cuda, as "file.cu:line" (what the emulated module's emu_launches() reports)."""
    sites = set()
    for src in _sources()[1]:
        text = src.read_text()
        sites |= {f"{src.name}:{text.count(chr(10), 0, m.start()) + 1}" for m in re.finditer("<<<", text)}
    return sites


def _sources():
    host = [ROOT / "csrc" / "module.cpp", *sorted((ROOT / "csrc" / "cpu").glob("*.cpp")), HERE / "cuda_emu.cpp"]
    cuda = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    return host, cuda


def _includes(cuda_inc: Path) -> list[str]:
    import pybind11

    return ["-I", str(ROOT / "csrc" / "include"), "-I", str(HERE), "-isystem", str(cuda_inc),
            "-isystem", pybind11.get_include(), "-isystem", sysconfig.get_paths()["include"]]


def _key(host, cuda, cuda_inc, extra) -> str:
    h = hashlib.sha256()
    version = subprocess.run([CXX, "--version"], capture_output=True, text=True).stdout
    for part in (version, " ".join(FLAGS + extra + LINK_FLAGS), str(cuda_inc), sys.version):
        h.update(part.encode())
    for path in [*host, *cuda, HERE / "cuda_emu.h", *sorted((ROOT / "csrc" / "include").rglob("*"))]:
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build(out_dir: str | os.PathLike | None = None, sanitize: str | None = None) -> Path:
    """Path of the emulated module (built if its cached copy is missing or stale). sanitize="address" (default:
    $FASTGAN_CUDA_EMU_SANITIZE) builds it with AddressSanitizer and UndefinedBehaviorSanitizer (SANITIZE_FLAGS): load
    it only in a process started with asan_preload() in LD_PRELOAD."""
    sanitize = sanitize if sanitize is not None else os.environ.get("FASTGAN_CUDA_EMU_SANITIZE") or None
    if sanitize not in (None, "address"):
        raise ValueError(f"sanitize must be None or 'address', got {sanitize!r}")
    extra = SANITIZE_FLAGS if sanitize else []
    cuda_inc = cuda_include()
    if cuda_inc is None:
        raise RuntimeError("the CUDA emulator needs the CUDA toolkit's headers (cuda_runtime.h): set CUDA_HOME")
    host, cuda = _sources()
    base = Path(out_dir or os.environ.get("FASTGAN_CUDA_EMU_CACHE", Path.home() / ".cache" / "fastgan" / "cuda_emu"))
    key = _key(host, cuda, cuda_inc, extra)
    out = base / key
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: the temporary directory still works
        out = Path(tempfile.gettempdir()) / "fastgan_cuda_emu" / key
        out.mkdir(parents=True, exist_ok=True)
    target = out / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _compile(out, target, host, cuda, cuda_inc, extra)
    return target


def _compile(out: Path, target: Path, host, cuda, cuda_inc, flags) -> None:
    inc = _includes(cuda_inc)
    jobs = []
    for src in cuda:
        rewritten = out / (src.stem + "_emu.cpp")
        rewritten.write_text(f'#line 1 "{src}"\n' + mark_shared(rewrite_launches(src.read_text(), src.name)))
        jobs.append((rewritten, ["-include", str(HERE / "cuda_emu.h")]))
    jobs += [(src, []) for src in host]

    def compile_one(job):
        src, extra = job
        obj = out / (src.stem + ".o")
        cmd = [CXX, *FLAGS, *flags, *inc, *extra, "-c", str(src), "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"compiling {src} for the CUDA emulator failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}")
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        objs = list(pool.map(compile_one, jobs))
    tmp = target.with_suffix(".tmp")
    cmd = [CXX, *LINK_FLAGS, *flags, *map(str, objs), "-o", str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"linking the CUDA emulator module failed:\n{r.stderr[-6000:]}")
    os.replace(tmp, target)  # atomic: a concurrent reader never sees half a module
    for obj in objs:
        obj.unlink()


def load(path: str | os.PathLike):
    """Imports the emulated module from `path` (module name _C, not registered in sys.modules)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_C", str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else None))
