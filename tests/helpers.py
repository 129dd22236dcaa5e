"""Shared test helpers (imported as `helpers`; tests/ is on sys.path via conftest)."""
from __future__ import annotations

import functools
from pathlib import Path

import torch


def assert_close_to_oracle(impl: torch.Tensor, ref_low: torch.Tensor, ref64: torch.Tensor, *, factor: float = 2.0,
                           floor: float | None = None, name: str = "") -> None:
    """|impl - ref64| <= factor * |ref_low - ref64| + floor, the acceptance rule for every fused op:
    an implementation may be at most `factor` times as far from the float64 truth as PyTorch's own
    reference computed in the same low precision. `floor` (default: a few ulps of the output dtype times
    the magnitude) covers elements where the reference happens to be exact."""
    # on the host: a test may compute its oracles from the CPU tensors it moved to the GPU for the kernel
    impl, ref_low, ref64 = (t.detach().to("cpu", torch.float64) for t in (impl, ref_low, ref64))
    assert impl.shape == ref64.shape, f"{name}: shape {tuple(impl.shape)} != {tuple(ref64.shape)}"
    err = (impl - ref64).abs().max().item() if impl.numel() else 0.0
    ref_err = (ref_low - ref64).abs().max().item() if impl.numel() else 0.0
    if floor is None:
        floor = 4 * torch.finfo(torch.float32).eps * (ref64.abs().max().item() if impl.numel() else 0.0)
    bound = factor * ref_err + floor
    assert err <= bound, f"{name}: max error {err:.3e} exceeds {factor} x reference error {ref_err:.3e} + {floor:.1e}"


def bench_module(name: str, alias: str | None = None):
    """A bench/ module loaded as pytest loads it there (bench/ on sys.path for its own imports), under `alias`."""
    import importlib.util
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    sys.path.insert(0, bench)
    try:
        spec = importlib.util.spec_from_file_location(alias or f"bench_{name}", f"{bench}/{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(bench)
    return module


def backend_calls(op: str, backend: str) -> int:
    from fastgan.ops import _dispatch

    return _dispatch.counts[(op, backend)]


def auto_rules_as_on_cuda() -> dict:
    """penalty_jvp's device sets with "cpu" placed as "cuda" is: jvp (after its check) for the Ds the closed form
    leaves to it, BatchNorm with batch statistics included, where on CPU it runs the closed form or the double
    backward; the closed form for Tanh/Sigmoid Ds, which on CPU get the double backward."""
    from fastgan.ops import penalty_jvp as pj

    return {"AUTO_JVP_DEVICES": pj.AUTO_JVP_DEVICES | {"cpu"},
            "AUTO_CLOSED_FORM_BATCH_STATS_DEVICES": pj.AUTO_CLOSED_FORM_BATCH_STATS_DEVICES - {"cpu"},
            "AUTO_CLOSED_FORM_SMOOTH_DEVICES": pj.AUTO_CLOSED_FORM_SMOOTH_DEVICES | {"cpu"}}


def auto_as_on_cuda(monkeypatch) -> None:
    """"auto" choosing for CPU tensors as on CUDA (auto_rules_as_on_cuda)."""
    from fastgan.ops import penalty_jvp

    for name, value in auto_rules_as_on_cuda().items():
        monkeypatch.setattr(penalty_jvp, name, value)


def tool_module(relative: str, name: str):
    """A script under tools/ (not a package) as a module named `name`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "tools" / relative)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cuda_emu_build():
    """tools/cuda_emu/build.py as a module."""
    return tool_module("cuda_emu/build.py", "fastgan_cuda_emu_build")


@functools.lru_cache(maxsize=None)
def load_cuda_emu():
    """The emulated module (built, or taken from the build cache), loaded once per process: the conftest's fixture
    and FASTGAN_TEST_EXTENSION=emulated share it."""
    import os

    import pytest

    if os.environ.get("FASTGAN_CUDA_EMU_SANITIZE") and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        raise pytest.UsageError("FASTGAN_CUDA_EMU_SANITIZE=address needs the AddressSanitizer runtime preloaded: "
                                "LD_PRELOAD=\"$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)\" "
                                "(tests/test_cuda_emu_sanitized.py runs it so)")
    build = cuda_emu_build()
    return build.load(build.build())


def cuda_emulated() -> bool:
    """Whether this test runs the cuda backend in the emulator (emulate_cuda), on CPU tensors."""
    from fastgan import _ext

    return bool(getattr(_ext.C(), "cuda_emulated", False))


def every_backend_params():
    """"cpu", "triton" and "cuda" twice: on CPU tensors through the CUDA emulator (tests/conftest.py), and on a GPU
    (marked `cuda`)."""
    import pytest

    return ["cpu", "triton", "cuda", pytest.param("cuda", marks=pytest.mark.cuda, id="cuda-gpu")]


def backend_device(backend: str) -> str:
    """The device of a test's tensors for `backend` from every_backend_params(): CUDA for the GPU's cuda case."""
    return "cuda" if backend == "cuda" and not cuda_emulated() else "cpu"


def emulate_cuda(monkeypatch, module):
    """backend="cuda" on CPU tensors runs `module`'s emulated CUDA kernels (tools/cuda_emu) for this test:
    the extension is swapped, CUDA device guards become no-ops, streams are the default (0), and the dispatcher
    lets the cuda backend take CPU tensors. Everything else, the Python glue included, is what runs on a GPU."""
    import contextlib

    from fastgan import _ext
    from fastgan.ops import _dispatch

    status = _dispatch.status
    monkeypatch.setattr(_ext, "C", lambda: module)
    monkeypatch.setattr(_ext, "stream_handle", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(_dispatch, "status",
                        lambda backend, device: (True, "") if backend == "cuda" else status(backend, device))


def require_fashion_mnist() -> None:
    """Skips a test that reads the real Fashion-MNIST where it is not installed; under .ci/run, which installs it
    and sets FASTGAN_REQUIRE_DATA=1, a missing set is a failure, not a skip."""
    import os

    import pytest

    from fastgan.data.idx import FASHION_MNIST_DIR

    if not Path(FASHION_MNIST_DIR).is_dir():
        if os.environ.get("FASTGAN_REQUIRE_DATA") == "1":
            pytest.fail(f"{FASHION_MNIST_DIR} missing: apt-get install -y dataset-fashion-mnist")
        pytest.skip(f"{FASHION_MNIST_DIR} missing (apt-get install -y dataset-fashion-mnist)")


def gpu_division(monkeypatch, ulps: int) -> None:
    """Triton's float32 `/` as a GPU may round it, under the interpreter (which divides exactly): every float32 quotient
    moved `ulps` ulps, the same way (the worst for a sum). On a GPU `/` is PTX's div.full, within 2 ulp of the
    quotient; tl.math.div_rn is exact on both (the interpreter's precise_divf, not patched)."""
    import numpy as np
    from triton.runtime.interpreter import InterpreterBuilder

    exact = InterpreterBuilder.create_fdiv
    toward = np.float32(np.inf if ulps > 0 else -np.inf)

    def div_full(self, lhs, rhs):
        out = exact(self, lhs, rhs)
        if out.data.dtype == np.float32:
            for _ in range(abs(ulps)):
                out.data = np.nextafter(out.data, toward)
        return out

    monkeypatch.setattr(InterpreterBuilder, "create_fdiv", div_full)
    # it took: a kernel's `/` goes through the patched builder (a triton whose interpreter divided elsewhere would
    # leave every such test vacuous)
    assert _divided_once(1.0, 3.0) != torch.tensor(1.0 / 3.0).item(), "the interpreter's float32 division is unpatched"


def _divided_once(a: float, b: float) -> float:
    """a / b in float32 by a one-element Triton kernel (the interpreter, on CPU tensors)."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(a_ptr, b_ptr, o_ptr):
        tl.store(o_ptr, tl.load(a_ptr) / tl.load(b_ptr))

    out = torch.empty(1)
    kernel[(1,)](torch.tensor([a]), torch.tensor([b]), out)
    return out.item()


def gpu_exp(monkeypatch) -> None:
    """Triton's float32 tl.exp as a GPU computes it, under the interpreter (numpy's exact exp): sm_90's lowering is
    ex2.approx of psi * log2(e) rounded to float32, whose rounding alone errs ~30 ulp at |psi| ~ 60 (emulated here
    with an exact exp2: the best case). float64 exp (libdevice's on a GPU) stays exact."""
    import numpy as np
    from triton.runtime.interpreter import InterpreterBuilder

    exact = InterpreterBuilder.create_exp
    log2e = np.float32(np.log2(np.e))

    def ex2_of_product(self, arg):
        out = exact(self, arg)
        if out.data.dtype == np.float32:
            out.data = np.exp2((arg.data * log2e).astype(np.float32).astype(np.float64)).astype(np.float32)
        return out

    monkeypatch.setattr(InterpreterBuilder, "create_exp", ex2_of_product)
    assert _exp_once(60.0) != torch.tensor(60.0, dtype=torch.float64).exp().float().item(), \
        "the interpreter's float32 exp is unpatched"


def _exp_once(a: float) -> float:
    """exp(a) in float32 by a one-element Triton kernel (the interpreter, on CPU tensors)."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(a_ptr, o_ptr):
        tl.store(o_ptr, tl.exp(tl.load(a_ptr)))

    out = torch.empty(1)
    kernel[(1,)](torch.tensor([a]), out)
    return out.item()


def full_disk() -> OSError:
    """A full disk's error as a file object's write raises it: ENOSPC, naming no file."""
    import errno
    import os

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class StoppingFile:
    """A file object whose writes stop with `error` (default: a full disk's) once `room` bytes are written: a disk
    filling up, or a signal's exception arriving mid-write. Over a buffered file (what open() gives) it fails at
    the write; over a raw one (`open(..., buffering=0)`, wrapped by io.BufferedWriter) at the flush, as a disk does."""

    def __init__(self, f, room, error=None):
        self.f, self.room, self.error = f, room, error if error is not None else full_disk()

    def write(self, b):
        n = memoryview(b).nbytes
        if n > self.room:
            raise self.error
        self.room -= n
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


class _NoJvp(torch.autograd.Function):
    """tanh without a forward-mode rule: jvp cannot run a D holding it, auto's check fails."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2)


class NoJvpTanh(torch.nn.Module):
    """An activation module jvp cannot run (_NoJvp)."""

    def forward(self, x):
        return _NoJvp.apply(x)
