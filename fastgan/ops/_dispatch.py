"""Backend selection shared by every fused op.

Backends: "reference" (plain torch, fastgan/reference), "cpu" (C++ in _C), "cuda" (CUDA C++ in _C),
"triton" (kernels/, on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1).
An explicitly requested backend that cannot run raises BackendUnavailable; it never falls back.
Automatic selection picks the fastest usable backend and records what it chose in ``counts``, so tests
(and users) can assert which kernel actually ran.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import importlib.util
import os
import sys
import threading
import warnings

import torch

from .. import _ext
from ._locks import ForkSafeLock, ThreadStack

BACKENDS = ("reference", "cpu", "cuda", "triton")

# (op name, backend) -> number of calls that reached that backend's kernel (exact in eager mode; inside
# torch.compile the kernels' own counts are not reliable, see the README). A defaultdict(int), not a Counter:
# record() runs inside torch.compile (the closed-form penalty is traced), and Dynamo cannot trace a Counter's
# __setitem__ on torch 2.4, nor its __missing__ (a key's first count) on 2.8; a defaultdict it can, on 2.4-2.14.
counts: collections.defaultdict = collections.defaultdict(int)


class BackendUnavailable(RuntimeError):
    pass


class FallbackWarning(UserWarning):
    """Automatic selection found no fused kernel for this device and ran the reference."""


def record(op: str, backend: str) -> None:
    counts[(op, backend)] += 1


# Run by Dynamo when it traces a call, not baked into the compiled code: traced, the += made Dynamo guard on the
# count's value, so every call of a compiled function recompiled it until torch's recompile limit sent it back to
# eager. Inside compiled code the counts therefore count traces, not calls.
record._dynamo_marked_constant = True


# fastgan.ops and torch (torch.compiler.disable's wrapper, Module.__call__ between a user's forward and an op)
_SKIPPED_DIRS = tuple(os.path.dirname(os.path.abspath(f)) + os.sep for f in (__file__, torch.__file__))


def caller_stacklevel() -> int:
    """warnings.warn's stacklevel that names the first frame outside fastgan.ops and torch (a user's line, or the
    trainer's method), for a warning raised by the function calling this: the public functions reach it through
    varying depths (js_penalty, gradient_penalty, ...)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def triton_interpret() -> bool:
    # as triton reads it (its getenv_bool): "1", "y", "yes", "on", "true", any case, nothing else
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "y", "yes", "on", "true")


# Triton before 3.4 draws another Philox stream from tl.randn4x with 64-bit counters (Philox on 64-bit words, not
# Philox4x32-10 on the counter's two halves as fastgan's CPU/CUDA kernels and reference do), and its compiled
# kernels take tl.float64 scalar arguments as float32. torch 2.4-2.7 pin such versions.
TRITON_MIN = (3, 4)


@functools.lru_cache(maxsize=None)
def triton_version() -> tuple[int, ...] | None:
    """The installed triton's (major, minor), from its metadata (the `triton` or `pytorch-triton` distribution;
    importing triton is slow), once per process: backend resolution runs on every op call."""
    import importlib.metadata

    for dist in ("triton", "pytorch-triton"):
        try:
            v = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return tuple(int(p) for p in v.split("+")[0].split(".")[:2] if p.isdigit())
    return None


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def triton_import_error() -> str:
    """Why the installed triton fails to import ("" when it imports: a build for another torch or CUDA, a missing
    library), once per process. Asked only where the Triton backend would run: importing triton is slow."""
    try:
        import triton  # noqa: F401
    except Exception as e:  # an ImportError (a missing symbol or library), or what triton's own start-up raises
        return f"{type(e).__name__}: {e}"
    return ""


@functools.lru_cache(maxsize=None)
def kernels_installed() -> bool:
    """Whether fastgan's Triton kernels (the package's fastgan.kernels, kernels/ in the source tree) can be found:
    not when fastgan is imported from a source checkout that is not installed in editable mode."""
    return importlib.util.find_spec("fastgan.kernels") is not None


def triton_status(device: torch.device) -> tuple[bool, str]:
    if not triton_installed():
        return False, "triton is not installed (pip install triton)"
    if not kernels_installed():
        return False, ("fastgan.kernels is not importable (fastgan imported from a source checkout that is not "
                       "installed with pip install -e .?)")
    version = triton_version()
    if version is not None and version < TRITON_MIN:
        need = ".".join(map(str, TRITON_MIN))
        return False, (f"triton {'.'.join(map(str, version))} is older than {need} (its random normals and "
                       f"float64 scalars differ from fastgan's other backends); pip install 'triton>={need}' "
                       "(with --no-deps beside a torch that pins an older one) or use backend='cuda'")
    if device.type == "cpu" and not triton_interpret():
        return False, "triton runs on CPU tensors only under TRITON_INTERPRET=1"
    if device.type not in ("cuda", "cpu"):
        return False, f"triton does not support device type {device.type!r}"
    broken = triton_import_error()
    if broken:
        return False, f"triton is installed but does not import ({broken})"
    return True, ""


# Triton's interpreter swaps triton.language's functions for its own around each launch and back after it
# (triton 3.6, runtime/interpreter.py): two threads' launches interleaved break each other ("Did you forget to add
# @triton.jit ?"), so interpreted launches run one at a time.
_INTERPRETER_LOCK = ForkSafeLock(threading.RLock)


def on_device(t: torch.Tensor):
    """The guard for launching a Triton kernel on t: on a GPU its device (Triton launches on the *current* CUDA
    device and its stream, not on the tensors' device); for CPU tensors, which run in the interpreter, a lock."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else _INTERPRETER_LOCK


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for device's type; False for types autocast does not know (meta)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4 spelling
        return torch.is_autocast_enabled() if device.type == "cuda" else torch.is_autocast_cpu_enabled()
    except RuntimeError:  # "unknown device type for autocast"
        return False


def autocast_float16(device: torch.device) -> bool:
    """Whether autocast is on for device's type and casts to float16 (whose range ends at 65504)."""
    if not autocast_enabled(device):
        return False
    try:
        return torch.get_autocast_dtype(device.type) == torch.float16
    except (AttributeError, RuntimeError):  # torch < 2.4 spelling
        get = torch.get_autocast_gpu_dtype if device.type == "cuda" else torch.get_autocast_cpu_dtype
        return get() == torch.float16


def no_autocast(device: torch.device):
    """A context with autocast off for device's type (a no-op when it is off): fused paths that take the
    parameters' dtype (the denoiser, the penalty's closed form) must not have their GEMMs autocast to half."""
    return torch.autocast(device.type, enabled=False) if autocast_enabled(device) else contextlib.nullcontext()


def autocast_off(backward):
    """For the backward of an op whose forward runs with autocast off (the fused denoiser): autograd runs a
    backward under the autocast state of the thread calling .backward(), so inside `with torch.autocast(...)` its
    GEMMs gave half products that the kernels, reading raw pointers in the parameters' dtype, overran."""
    @functools.wraps(backward)
    def run(ctx, *grads):
        for g in grads:
            if isinstance(g, torch.Tensor):
                with no_autocast(g.device):
                    return backward(ctx, *grads)
        return backward(ctx, *grads)
    return run


def status(backend: str, device: torch.device) -> tuple[bool, str]:
    """Whether `backend` can run on tensors of `device`, and the reason when it cannot."""
    if not isinstance(backend, str):
        # before any ==: np.array(["cpu"]) == "cpu" is a one-element array, truthy, so it ran (and then failed as a
        # dict key in some ops, numpy's "unhashable type" naming nothing)
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "reference":
        return True, ""
    if backend == "cpu":
        if device.type != "cpu":
            return False, f"the cpu backend needs CPU tensors, got {device.type}"
        return _ext.available()
    if backend == "cuda":
        if device.type != "cuda":
            return False, f"the cuda backend needs CUDA tensors, got {device.type}"
        return _ext.cuda_status(device)
    if backend == "triton":
        return triton_status(device)
    raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")


_warned: set = set()


def _constant_under_compile(fn):
    """What torch.compiler.assume_constant_result does (Dynamo runs `fn` at trace time and bakes the answer
    into the graph), without importing torch._dynamo, which would import triton when fastgan is imported."""
    fn._dynamo_marked_constant = True
    return fn


# os.environ's own dict (bytes keys on POSIX): an unset variable is found absent there without the KeyError that
# os.environ.get raises and catches, ~0.5 us of every op call made without backend=. Writes through os.environ
# (monkeypatch.setenv, patch.dict) update it; os.putenv reaches neither.
_ENV = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("FASTGAN_BACKEND") if isinstance(_ENV, dict) and hasattr(os.environ, "encodekey") \
    else None


def forced_backend() -> str | None:
    """FASTGAN_BACKEND's backend (None when unset or empty); an unknown name is a ValueError naming the variable."""
    if _ENV_KEY is not None and _ENV_KEY not in _ENV:
        return None
    forced = os.environ.get("FASTGAN_BACKEND") or None
    if forced is not None and forced not in BACKENDS:
        raise ValueError(f"FASTGAN_BACKEND: must be one of {BACKENDS} (or unset), got {forced!r}")
    return forced


class _Override:
    __slots__ = ("backend",)

    def __init__(self, backend: str):
        self.backend = backend


# use_backend's entries (an _Override per block), innermost last. A process-wide stack, not a
# ContextVar: autograd runs CUDA backward passes on its own threads, which would not see a context variable set
# by the thread that called backward(). A block removes its own entry (by identity) when it ends: blocks of
# several threads interleave, and popping the top would remove another thread's block and leave this one's.
_overrides: list = []


@contextlib.contextmanager
def use_backend(backend: str):
    """Ops called inside with no backend= of their own run on `backend` (checked at each call: one that cannot run
    raises BackendUnavailable naming use_backend). It wins over FASTGAN_BACKEND; an explicit backend= wins over it.
    A torch.compile'd function keeps the backend it was traced with (the choice is baked into its graph)."""
    if not isinstance(backend, str) or backend not in BACKENDS:  # a str first: see _checks.choice
        raise ValueError(f"use_backend: backend must be one of {BACKENDS}, got {backend!r}")
    entry = _Override(backend)
    _overrides.append(entry)
    try:
        yield
    finally:
        _overrides.remove(entry)  # one C call under the GIL; an _Override equals itself only


# Backwards that resolve their own kernels run under pin(the request their forward saw): per thread (a backward runs
# on the thread that executes it), over use_backend's process-wide blocks.
_pins = ThreadStack()


def requested_backend() -> tuple[str | None, str]:
    """(the backend ops run on when given no backend=, or None for each op's best; how it was asked for, "" when
    it was not)."""
    pins = _pins.stack
    if pins:
        return pins[-1]
    top = _overrides[-1:]  # one read: another thread's block may end meanwhile
    if top:
        return top[0].backend, f"use_backend({top[0].backend!r})"
    forced = forced_backend()
    return forced, (f"FASTGAN_BACKEND={forced!r}" if forced is not None else "")  # no format on every op call


class _Pin:
    __slots__ = ("request",)

    def __init__(self, request):
        self.request = request

    def __enter__(self):
        _pins.stack.append(self.request)

    def __exit__(self, *exc):
        _pins.stack.pop()


def pin(request: tuple[str | None, str]):
    """Ops called inside with no backend= of their own resolve as under `request`, a requested_backend() taken
    earlier (None: each op's best), whatever use_backend blocks are open now, in any thread: for backwards that
    resolve their own kernels, so that they run where their forward ran, not where a block around backward() (or
    another thread's) points."""
    if torch.compiler.is_compiling():
        # Dynamo traces an autograd.Function's backward with its forward, in the forward's block, and refuses a
        # write to state outside it ("HOP: Unsafe side effect"): the pin is the trace's context already. A plain
        # nullcontext, not a generator context manager: under one, torch 2.8's Dynamo broke the graph in the closed
        # form's backward (dilated Conv1d, Conv3d + training BatchNorm), so fullgraph=True failed there
        return contextlib.nullcontext()
    return _Pin(request)


def best_fused(device: torch.device) -> tuple[str | None, list[str]]:
    """(the first usable fused backend for `device`, or None; why each one before it cannot run): what resolve
    takes when no backend is named or forced."""
    reasons = []
    for cand in ("cuda", "triton") if device.type == "cuda" else ("cpu",):
        ok, why = status(cand, device)
        if ok:
            return cand, reasons
        reasons.append(f"{cand}: {why}")
    return None, reasons


_CPU = torch.device("cpu")


@_constant_under_compile
def resolve_cpu(op: str, backend: str | None) -> str:
    """resolve(op, <CPU>, backend) for CPU tensors, the same answer and errors: the cpu backend, named, asked for
    (requested_backend) or taken as the best, where _C loads, is answered without resolve's layers. For the ops'
    calls on CPU tensors, where these were measured: inside a training step a Python call costs 2-4x what it costs
    timed alone (caches the step's torch work evicts), and resolve's ~0.5 us alone was ~5 us of a ~75 us
    noisy_clean_batch forward and backward (2026-12-07, interleaved A/B on the 2-core EPYC)."""
    asked = backend if backend is not None else requested_backend()[0]  # None: the best, "cpu" on CPU tensors
    if (asked is None or (type(asked) is str and asked == "cpu")) and _ext.available()[0]:
        return "cpu"
    return resolve(op, _CPU, backend)


@_constant_under_compile
def resolve(op: str, device: torch.device, backend: str | None) -> str:
    """The backend to run `op` with on `device`: `backend` if given (checked), else the best usable one.

    use_backend(<name>), or else FASTGAN_BACKEND=<name> in the environment, forces a backend for every op called
    without one (still checked).
    """
    named = None  # formatted only for the error (~0.15 us a call)
    if backend is None:
        backend, named = requested_backend()
    if backend is not None:
        ok, why = status(backend, device)
        if not ok:
            raise BackendUnavailable(f"{op}: {named or f'backend {backend!r}'} cannot run here: {why}")
        return backend
    best, reasons = best_fused(device)
    if best is not None:
        return best
    key = (op, device.type)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"{op}: no fused backend for {device.type} tensors ({'; '.join(reasons)}); "
                      "running the reference implementation", FallbackWarning,
                      stacklevel=caller_stacklevel())
    return "reference"
