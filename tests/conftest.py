import os
import sys

import pytest
import torch

# `import helpers` from any test directory (importlib mode puts nothing on sys.path).
sys.path.insert(0, os.path.dirname(__file__))

# Triton kernels run on CPU tensors through the interpreter; it must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _one_process_per_core():
    """Under pytest-xdist (-n auto: one worker per core) each worker's torch would also start a thread per core;
    the oversubscribed OpenMP threads spin at their barriers (a training step 4x slower on 2 busy cores), so each
    worker gets its share of the cores. Tests of threaded paths set their own (@pytest.mark.threads(n))."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        share = str(max(1, cores // int(workers)))
        os.environ.setdefault("OMP_NUM_THREADS", share)  # fastgan._C's OpenMP loops read it when it first loads
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_configure(config):
    _one_process_per_core()
    config.addinivalue_line("markers", "threads(n): run the test with n torch/OpenMP threads (its threaded paths)")
    config.addinivalue_line("markers", "triton: needs a triton that fastgan's Triton backend can use (>= 3.4)")
    # FASTGAN_TEST_EXTENSION=emulated: every test uses the CUDA emulator's module (tools/cuda_emu) as fastgan._C,
    # whose CPU kernels are csrc/cpu's too: with FASTGAN_CUDA_EMU_SANITIZE=address, the cpu backend's kernels run
    # under the sanitizers (tests/test_cuda_emu_sanitized.py; tests/ops/test_extension_in_use.py checks the swap).
    if os.environ.get("FASTGAN_TEST_EXTENSION") == "emulated":
        from helpers import load_cuda_emu

        from fastgan import _ext

        module = load_cuda_emu()
        _ext._load = lambda: (module, None)
    else:
        from fastgan import _ext

        built, why = _ext.available()
        if not built:
            # e.g. `python -m pytest` in a checkout beside a non-editable install: the current directory on sys.path
            # shadows the installed package, and the ops ran their reference with a FallbackWarning, not the kernels
            raise pytest.UsageError(f"the tests need fastgan's built extension: {why}")



@pytest.fixture
def set_matmul_tf32():
    """set_matmul_tf32(flag) sets torch.backends.cuda.matmul.allow_tf32 for the test, restored after it. Not with
    monkeypatch: pytest 9.2 restores an attribute that is no data descriptor by deleting it from the instance, which
    the cuBLAS settings object (plain __getattr__ / __setattr__) never holds, and fails at teardown."""
    old = torch.backends.cuda.matmul.allow_tf32

    def set_(flag: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = flag

    yield set_
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(autouse=True)
def _marked_threads(request):
    """@pytest.mark.threads(n): tests of the kernels' threaded paths keep them under pytest-xdist's one thread."""
    mark = request.node.get_closest_marker("threads")
    if mark is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(mark.args[0])
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _subnormals_kept():
    """torch 2.4's inductor loads its CPU kernels from a library built with -ffast-math, and loading it turns on
    flush-to-zero for the process (gcc's crtfastmath): every test after an inductor test then ran float32 without
    subnormals (test_f_penalty_saturated's squared_hellinger at psi = -38 read 17x past its bound after
    test_penalty.py's inductor test; torch 2.13 leaves them on). Each test leaves them as torch's default has them."""
    yield
    if torch.tensor([1e-39]).mul(1.0).item() == 0:
        torch.set_flush_denormal(False)


@pytest.fixture(scope="session", autouse=True)
def _triton_memcheck():
    """Every Triton kernel the interpreter runs (the triton backend on CPU tensors) has its loads, stores and atomics
    checked against the launch's tensors (tests/triton_memcheck.py)."""
    import importlib.util

    from fastgan.ops._dispatch import triton_interpret

    if not triton_interpret() or importlib.util.find_spec("triton") is None:
        yield
        return
    import triton_memcheck

    with triton_memcheck.active():
        yield


@pytest.fixture
def auto_jvp_on_cpu(monkeypatch):
    """"auto" as it chooses on CUDA (jvp where the closed form does not run), for tests on CPU tensors."""
    from helpers import auto_as_on_cuda

    auto_as_on_cuda(monkeypatch)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        from fastgan.ops._dispatch import triton_interpret

        if not triton_interpret():
            # Triton on CPU tensors needs the interpreter, which this process (GPU visible) does not run;
            # those tests are the CPU run's (CUDA_VISIBLE_DEVICES= pytest, or CI)
            skip = pytest.mark.skip(reason="Triton on CPU tensors runs under TRITON_INTERPRET=1, without a GPU")
            for item in items:
                if item.get_closest_marker("cuda") is None and _a_triton_test(item):
                    item.add_marker(skip)
        _skip_triton_where_it_cannot_run(items, torch.device("cuda"))
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible to torch on this machine)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:  # not `"cuda" in item.keywords`: ids are keywords too
            item.add_marker(skip)
    _skip_triton_where_it_cannot_run(items, torch.device("cpu"))


def _skip_triton_where_it_cannot_run(items, device):
    """Without a triton fastgan's backend can use (none, or one older than 3.4: torch 2.5-2.7 pin 3.1-3.3, and a
    newer one breaks their torch.compile), the Triton tests skip, saying why, as the CUDA ones do without a GPU;
    FASTGAN_REQUIRE_TRITON=1 (CI) makes that a collection error instead."""
    from fastgan.ops import _dispatch

    ok, why = _dispatch.triton_status(device)
    if ok:
        return
    if os.environ.get("FASTGAN_REQUIRE_TRITON") == "1":
        raise pytest.UsageError(f"FASTGAN_REQUIRE_TRITON=1, but fastgan's triton backend cannot run here: {why}")
    skip = pytest.mark.skip(reason=f"fastgan's triton backend cannot run here: {why}")
    for item in items:
        if _a_triton_test(item):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """triton 3.4 (torch 2.8's) has no float64 tl.dot: the Triton denoiser's float64 GEMMs raise BackendUnavailable
    there, as documented; such a test skips with that reason instead of failing (never on triton >= 3.5)."""
    outcome = yield
    from fastgan.ops import _dispatch, denoiser_backends

    version = _dispatch.triton_version()
    if not outcome.excinfo or version is None or version >= denoiser_backends.TRITON_FLOAT64_DOT:
        return
    exc, seen = outcome.excinfo[1], set()
    while exc is not None and id(exc) not in seen:  # torch.library.opcheck re-raises it as its own error
        if type(exc).__name__ == "BackendUnavailable" and "float64 GEMMs need triton" in str(exc):
            outcome.force_exception(pytest.skip.Exception(str(exc), _use_item_location=True))
            return
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__


def _runs_the_triton_backend(item) -> bool:
    """A test parametrized with backend="triton", or named for it (test_..._triton)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("backend") == "triton" or getattr(item, "originalname", item.name).endswith("_triton")


def _a_triton_test(item) -> bool:
    """A test of fastgan's Triton backend or kernels: parametrized or named for it (test_..._triton, test_triton_...)
    or marked `triton`; without the `cuda` mark, one on CPU tensors (the interpreter's)."""
    return (_runs_the_triton_backend(item) or getattr(item, "originalname", item.name).startswith("test_triton")
            or item.get_closest_marker("triton") is not None)


# ---------------------------------------------------------------- the CUDA kernels on the CPU
# A test parametrized with backend="cuda" that is not marked `cuda` runs on CPU tensors: its `cuda` backend
# is fastgan's CUDA C++ kernels compiled for the emulator of tools/cuda_emu (host threads as CUDA threads,
# real barriers and warp shuffles), called through the same Python code as on a GPU.

@pytest.fixture(scope="session")
def cuda_emu_module():
    from helpers import cuda_emu_build, load_cuda_emu

    if cuda_emu_build().cuda_include() is None:
        pytest.skip("the CUDA emulator compiles against the CUDA toolkit's headers: none found (set CUDA_HOME)")
    return load_cuda_emu()


@pytest.fixture(autouse=True)
def _emulated_cuda_backend(request):
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if params.get("backend") == "cuda" and request.node.get_closest_marker("cuda") is None:
        from helpers import emulate_cuda

        emulate_cuda(request.getfixturevalue("monkeypatch"), request.getfixturevalue("cuda_emu_module"))
