"""What would break a CUDA graph of a step, found without a GPU.

A CUDA graph replays the kernels of the call it captured: a value the step reads back to the host (`.item()`,
`bool(t)`, `nonzero`) fails the capture, and a Python number or shape that changes from call to call (a schedule
computed on the host, a batch size drawn in Python) is baked in at capture, so every replay silently reuses the
captured one. `capture_hazards(fn)` runs `fn` as `GraphedStep` would (eager warm-up calls, then the call it would
capture) on any device, the CPU included, records every ATen op of the captured call and of the call after it under
a dispatch mode, and reports host reads, draws from torch.Generators not registered with the graph, and any op
whose non-tensor arguments or tensor shapes differ between the two, with the line of the caller that issued it.
The kernels fastgan launches itself (its C++/CUDA backends through raw pointers, its Triton kernels) are invisible
to the mode: their launches are recorded beside the ops with their Python floats (a sigma or mu given as a number),
the rest of their arguments being pointers, strides and sizes of tensors the mode sees.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import importlib.util
import numbers
import os
import sys
import threading
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack
from torch.utils._pytree import tree_flatten

from .graph import _as_generators
from .ops._locks import ForkSafeLock

# ops whose result the host must see (a sync; inside a capture, an error)
_HOST_READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
               "aten::unique_consecutive", "aten::unique_dim", "aten::equal", "aten::is_nonzero",
               # linalg's error check (inv, solve, cholesky, ...; not their _ex forms) reads the info codes back
               # below the dispatcher (pytorch/pytorch#96632)
               "aten::_linalg_check_errors"}
# ops whose output size is the data's: their CUDA kernels read it back below the dispatcher (repeat_interleave only
# without output_size)
_SIZED_BY_VALUES = {"aten::bincount", "aten::repeat_interleave.Tensor"}
# indexing with a boolean mask (x[x > 0], x[mask] = v) runs nonzero inside the op's own kernel, unseen by the mode
# (torch >= 2.15 runs x[mask] = <number> as masked_fill_: no read, nothing to flag)
_MASK_INDEXING = {"aten::index.Tensor", "aten::index_put_.default", "aten::index_put.default",
                  "aten::_index_put_impl_.default"}
# torch.tensor(value) / torch.as_tensor(value): a host value copied in, compared by value
_FROM_HOST = {"aten::lift_fresh.default", "aten::lift_fresh_copy.default"}
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_THIS = str(Path(__file__).resolve())
_FASTGAN_DIR = str(Path(__file__).resolve().parent) + os.sep
_TRITON_PART = os.sep + "triton" + os.sep  # in the path of triton's launch glue


@functools.lru_cache(maxsize=None)
def _fastgan_dirs() -> tuple:
    """fastgan's package folder and its Triton kernels' (fastgan.kernels: beside the package in an editable
    install), found without importing the kernels."""
    spec = importlib.util.find_spec("fastgan.kernels")
    kernels = () if spec is None or not spec.submodule_search_locations else tuple(
        str(Path(d).resolve()) + os.sep for d in spec.submodule_search_locations)
    return (_FASTGAN_DIR, *kernels)


def _caller() -> str:
    """The line that issued the op: the innermost frame outside torch, triton and this module, and where that is
    fastgan's code, the step's line that called into fastgan before it (`step.py:12 (step), inside
    .../fastgan/reference/nt_losses.py:26 (_tempered)`). Frames above the checker's call of fn are not the step's."""
    f = sys._getframe(2)
    inner = None
    while f is not None:
        name = f.f_code.co_filename
        if name == _THIS and f.f_code.co_name == "capture_hazards":
            break
        if not (name.startswith(_TORCH_DIR) or _TRITON_PART in name or name == _THIS or name.startswith("<")):
            here = f"{name}:{f.f_lineno} ({f.f_code.co_name})"
            if not name.startswith(_fastgan_dirs()):
                return here if inner is None else f"{here}, inside {inner}"
            inner = inner or here
        f = f.f_back
    return inner or "?"


def _describe(leaf, by_value: bool = False) -> object:
    if isinstance(leaf, torch.Tensor):
        if by_value and leaf.numel() <= 64 and leaf.device.type != "meta":
            return ("tensor", tuple(leaf.shape), str(leaf.dtype), repr(leaf.detach().cpu().tolist()))
        return ("tensor", tuple(leaf.shape), str(leaf.dtype))
    if isinstance(leaf, float):
        return repr(leaf)  # NaN == NaN here
    if isinstance(leaf, (int, bool, str, type(None))):
        return leaf
    if isinstance(leaf, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(leaf)
    return type(leaf).__name__  # a generator, an opaque object: its identity is not compared


class _Recorder(TorchDispatchMode):
    def __init__(self, generators=()):
        super().__init__()
        self.ops: list[tuple[str, tuple, str]] = []
        self.generators = generators
        self.unregistered: list[str] = []
        self.host_reads: list[tuple[str, str]] = []
        # the storages of the tensors the ops read or wrote, held (while recording) so that no new tensor can take
        # the address of a freed one
        self.storages: dict[int, object] = {}
        # tolist()/numpy() of tensors no op had touched yet: host reads if an op reads or writes them later in the
        # call (_host_conversions_seen); their storages held, as above
        self.conversions: list[tuple[object, str, str]] = []
        self.optimizers: dict[int, str] = {}  # id -> the problem of an optimizer stepped without capturable=True

    def active(self) -> bool:
        """Whether the calling thread runs the step: this recorder is on its dispatch-mode stack (which torch hands
        on to the step's own worker threads, autograd's on a GPU); the patches are process-wide, and another
        thread's calls meanwhile are not the step's."""
        return self in _get_current_dispatch_mode_stack()

    def _registered(self, gen: torch.Generator) -> bool:
        # the dispatcher hands ops a new Python wrapper of the same generator: what it wraps is compared, by a probe
        # for the registered ones (the step's own), by state for the default generators (passed explicitly, they
        # need no registration either; not probed: other threads draw from them)
        defaults = [torch.default_generator]
        if gen.device.type == "cuda":
            defaults += list(torch.cuda.default_generators)
        return any(_same_generator(g, gen) for g in self.generators) or any(_same_state(g, gen) for g in defaults)

    def launch(self, name: str, args, kwargs, ints: bool = False) -> None:
        """A kernel launch the dispatcher does not see, with the Python floats it bakes in (the rest of a launch's
        arguments: pointers, strides and sizes of tensors the recorder sees, launch flags). ints: its Python ints
        and bools too (a Triton launch, whose tensors are passed as tensors: a step count or seed given as an int
        is baked in at capture like a float; fastgan._C's ints include raw pointers, which differ by call)."""
        if not self.active():
            return
        kinds = (float, int, bool) if ints else (float,)
        values = tuple(repr(x) for x in tree_flatten((args, kwargs))[0] if type(x) in kinds)
        self.ops.append((name, values, _caller()))

    def optimizer_step(self, opt, args, kwargs) -> None:
        if id(opt) in self.optimizers or not self.active():
            return
        groups = [g for g in opt.param_groups if "capturable" in g and not g["capturable"]]
        if groups:
            self.optimizers[id(opt)] = (f"{type(opt).__name__} steps with capturable=False at {_caller()}: torch "
                                        "refuses to capture its step() (its step count is read on the host); make "
                                        "it with capturable=True")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        name, where = func._schema.name + "." + (func._overloadname or "default"), _caller()
        self.ops.append((name, tuple(_describe(x, name in _FROM_HOST) for x in leaves), where))
        if func._schema.name in _HOST_READS or (name in _MASK_INDEXING and len(args) > 1 and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ()))) or (
                (func._schema.name in _SIZED_BY_VALUES or name in _SIZED_BY_VALUES)
                and kwargs.get("output_size") is None):
            self.host_reads.append((name, where))
        if any(isinstance(x, torch.Generator) and not self._registered(x) for x in leaves):
            self.unregistered.append(f"{name} at {where}")
        out = func(*args, **kwargs)
        for x in (*leaves, *tree_flatten(out)[0]):
            st = _storage(x) if isinstance(x, torch.Tensor) else None
            if st is not None:
                self.storages[st._cdata] = st
        return out


def _same_state(a: torch.Generator, b: torch.Generator) -> bool:
    return a.device == b.device and torch.equal(a.get_state(), b.get_state())


def _same_generator(a: torch.Generator, b: torch.Generator) -> bool:
    """Whether a and b are one generator (two Python wrappers of it, or the same one): equal states, and a change to
    b's state shows in a's; b's state is put back."""
    if not _same_state(a, b):
        return False
    saved = b.get_state()
    try:
        for seed in (0x5EED, 0xC0FFEE):  # a second probe where a's state happened to be the first's
            b.manual_seed(seed)
            if not torch.equal(b.get_state(), saved):
                return torch.equal(a.get_state(), b.get_state())
        return True  # b's state is a seeded one whatever the probe: indistinguishable, as before
    finally:
        b.set_state(saved)


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # a tensor without storage (a subclass, meta)
        return None


@contextlib.contextmanager
def _host_conversions_seen(rec: _Recorder):
    """Tensor.tolist(), .numpy() (np.asarray's path too) and .cpu() of a CPU tensor dispatch no op the recorder sees,
    and printing a tensor runs with the modes off, where on a GPU each copies to the host: recorded as host reads
    while `rec` records, for tensors the step's ops read or wrote (not those no op touched, host tensors on a GPU
    too: torch's RNG state snapshots, say). Not .to(device): on the CPU a step's .to(device) names the CPU, to be a
    GPU on the GPU."""
    real = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy", "cpu", "__repr__")}
    inside = []  # the conversion running: printing calls tolist() itself

    def seen(name):
        def method(self, *args, **kwargs):
            # not the recorder's own by-value descriptions
            st = _storage(self)
            if (sys._getframe(1).f_code.co_filename == _THIS or st is None or inside
                    or not rec.active()):
                return real[name](self, *args, **kwargs)
            inside.append(name)
            try:
                return _converted(self, st, "Tensor.__repr__ (print)" if name == "__repr__" else f"Tensor.{name}",
                                  real[name], args, kwargs)
            finally:
                inside.pop()
        return method

    def _converted(self, st, name_shown, real_method, args, kwargs):
        if st._cdata in rec.storages:
            rec.host_reads.append((name_shown, _caller()))
            return real_method(self, *args, **kwargs)
        # `sched.tolist()` before the step's first op on sched was missed: looked up when the call ends
        rec.conversions.append((st, name_shown, _caller()))
        out = real_method(self, *args, **kwargs)
        rec.storages.pop(st._cdata, None)  # numpy()'s own detach is not the step's op
        return out

    own = {name for name in real if name in vars(torch.Tensor)}  # tolist, numpy, cpu: inherited from TensorBase
    for name in real:
        setattr(torch.Tensor, name, seen(name))
    try:
        yield
    finally:
        for name, fn in real.items():
            if name in own:
                setattr(torch.Tensor, name, fn)
            else:  # inherited: set back, it would stay as a copy in torch.Tensor's own namespace
                delattr(torch.Tensor, name)
        rec.host_reads += [(op, where) for st, op, where in rec.conversions if st._cdata in rec.storages]


@contextlib.contextmanager
def _eager_path_while_recording(recorder: type = _Recorder):
    """fastgan's fused ops take their custom-op path under any dispatch mode (fastgan.ops._eager.ok), the recorder
    included, while a real run takes the eager path: the recorder would see each op as one opaque call and miss
    what its Python does (a host read in a backend's runner, say). Here modes of type `recorder` do not count."""
    from .ops import _eager

    real = _eager._dispatch_modes
    _eager._dispatch_modes = lambda: sum(not isinstance(m, recorder) for m in _get_current_dispatch_mode_stack())
    try:
        yield
    finally:
        _eager._dispatch_modes = real


def _triton_module(name: str):
    """triton's module `name`, imported where triton is installed (None where not): a step whose first call imports
    triton (fastgan's Triton backend does, lazily) would otherwise have its launches recorded in the next call only,
    a difference between the two calls that is the checker's (warmup=0)."""
    if name not in sys.modules and importlib.util.find_spec("triton") is None:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class _Launching:
    """fastgan._C as the backends call it, each function recorded by `rec` as a kernel launch."""

    def __init__(self, module, rec: _Recorder):
        self._module, self._rec = module, rec

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not callable(fn):
            return fn

        def launch(*args, **kwargs):
            self._rec.launch(f"fastgan._C.{name}", args, kwargs)
            return fn(*args, **kwargs)
        return launch


@contextlib.contextmanager
def _launches_seen(rec: _Recorder):
    """Kernel launches the dispatcher never sees, recorded with their floats while `rec` records: fastgan's C++/CUDA
    functions (fastgan._ext.C()) and Triton kernels (fastgan's, or the step's own: JITFunction.run, the
    interpreter's too); the optimizers' step() (torch refuses to capture one made without capturable=True)."""
    from . import _ext

    real_c = _ext.C
    _ext.C = lambda: _Launching(real_c(), rec)
    runs = []
    for mod, cls in (("triton.runtime.jit", "JITFunction"), ("triton.runtime.interpreter", "InterpretedFunction")):
        klass = getattr(_triton_module(mod), cls, None)
        if klass is not None and "run" in vars(klass):
            runs.append((klass, klass.run))

    def traced(real_run):
        def run(self, *args, **kwargs):
            rec.launch(f"Triton kernel {getattr(getattr(self, 'fn', None), '__name__', type(self).__name__)}", args,
                       kwargs, ints=True)
            return real_run(self, *args, **kwargs)
        return run

    for klass, real_run in runs:
        klass.run = traced(real_run)
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    hook = register_optimizer_step_pre_hook(rec.optimizer_step)
    try:
        yield
    finally:
        hook.remove()
        for klass, real_run in runs:
            klass.run = real_run
        _ext.C = real_c


@contextlib.contextmanager
def _capturable_optimizers_on_any_device():
    """Capturable Adam (what the graphed trainer uses: its step count stays on the device) refuses CPU tensors;
    its math is plain tensor ops, so let it run there while checking."""
    import torch.optim.adam as adam

    real = getattr(adam, "_get_capturable_supported_devices", None)
    if real is None:
        yield
        return
    checking = threading.get_ident()  # other threads' capturable Adam keeps refusing CPU tensors
    adam._get_capturable_supported_devices = lambda *a, **k: (
        [*real(*a, **k), "cpu"] if threading.get_ident() == checking else real(*a, **k))
    try:
        yield
    finally:
        adam._get_capturable_supported_devices = real


# held for a whole check (seconds): a plain RLock that another thread held at a fork stayed held in the child, whose
# every capture_hazards then blocked for good (an audit of forks, 2026-12-07)
_CHECKING = ForkSafeLock(threading.RLock)


def _short(value, width: int = 160) -> str:
    """repr of an argument's description, its middle cut where long (a host tensor's values)."""
    text = repr(value)
    return text if len(text) <= width else f"{text[:width // 2]} ... {text[-width // 2:]} ({len(text)} characters)"


def capture_hazards(fn: Callable[[], object], *, warmup: int = 3, before: Optional[Callable[[int], None]] = None,
                    generators: Iterable[torch.Generator] = (), limit: Optional[int] = 10) -> list[str]:
    """Problems a CUDA graph capture of `fn` would have, as messages (empty: none found).

    Calls `before(i)` (e.g. writing this call's schedules into their device tensors, as the trainer does between
    replays) and `fn()` for i = 1 .. warmup + 2: `warmup` eager calls as GraphedStep makes, the call it would
    capture, and one more to compare it with. `generators`: the torch.Generators you will give GraphedStep; a draw
    from any other explicit generator is reported (the default generator needs no registration). At most `limit`
    problems are listed (None: all). `warmup` is an int >= 0 (0 checks the first call as the captured one).
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable (the step), got {type(fn).__name__}")
    if before is not None and not callable(before):
        raise TypeError(f"before: expected a callable taking the call number, or None, got {type(before).__name__}")
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral):
        raise TypeError(f"warmup: expected an int, got {type(warmup).__name__}")
    if warmup < 0:
        raise ValueError(f"warmup: must be >= 0, got {warmup}")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, numbers.Integral):
            raise TypeError(f"limit: expected an int or None, got {type(limit).__name__}")
        # a limit below 1 would return [] (or drop the last problem, for -1) and hide what breaks the graph
        if limit < 1:
            raise ValueError(f"limit: must be >= 1 (or None for no limit), got {limit}")
        limit = int(limit)
    warmup = int(warmup)
    generators = _as_generators(generators)
    cap = limit if limit is not None else float("inf")
    traces = []
    # one check at a time: its patches are process-wide, and two checks' saves and restores interleaved left them
    # patched for good
    with _CHECKING, _capturable_optimizers_on_any_device(), _eager_path_while_recording():
        for i in range(1, warmup + 3):
            if before is not None:
                before(i)
            if i <= warmup:
                fn()
                continue
            with _Recorder(generators) as rec, _host_conversions_seen(rec), _launches_seen(rec):
                fn()
            traces.append(rec)
    captured, later = (rec.ops for rec in traces)
    unregistered = traces[0].unregistered
    problems = list(traces[0].optimizers.values())
    # a read repeated at one line (a loop over parameters, a non-capturable optimizer's per-parameter step count)
    # is one problem
    reads = collections.Counter(traces[0].host_reads)
    mask = "; boolean-mask indexing runs nonzero"
    problems += [f"host read in the captured call{f' ({n} times)' if n > 1 else ''}: {op} at {where} (a sync; a "
                 f"CUDA graph capture fails on it{mask if op in _MASK_INDEXING else ''})"
                 for (op, where), n in reads.items()]
    problems += [f"random draw from a torch.Generator not in `generators`: {op} (a generator other than the "
                 "default one must be registered with the graph: GraphedStep(generators=...))"
                 for op in unregistered[:limit]]
    diverged = False
    at_line: dict[str, list] = {}  # a line's first differing op: [its problem's index, how many more differ there]
    for k, (a, b) in enumerate(zip(captured, later)):
        if len(problems) >= cap:
            break
        if a[1] != b[1] and a[0] == b[0] and a[2] in at_line:  # one problem a line (a loader's indexing: 8 ops)
            at_line[a[2]][1] += 1
            continue
        if a[0] != b[0]:
            problems.append(f"op {k}: the captured call ran {a[0]} at {a[2]}, the next call {b[0]} at {b[2]} "
                            "(control flow that depends on the call: a replay repeats the captured path)")
            diverged = True
            break  # the traces are out of step from here on
        if a[1] != b[1]:
            at_line[a[2]] = [len(problems), 0]
            diff = next(((x, y) for x, y in zip(a[1], b[1]) if x != y), None)
            if diff is None:  # a list argument of another length (dim=[0] vs [0, 1], cat of 1 vs 2 tensors)
                problems.append(f"op {k} ({a[0]}) at {a[2]}: its arguments held {len(a[1])} values in the captured "
                                f"call and {len(b[1])} in the next (a list that changes length is baked into the "
                                "graph at capture)")
            else:
                problems.append(f"op {k} ({a[0]}) at {a[2]}: an argument was {_short(diff[0])} in the captured "
                                f"call and {_short(diff[1])} in the next (baked into the graph at capture; make it a "
                                "device tensor)")
    for index, more in at_line.values():
        if more:
            problems[index] += f"; {more} more op{'s' * (more > 1)} issued there differ{'s' * (more == 1)} too"
    if len(captured) != len(later) and not diverged:
        problems.append(f"the captured call ran {len(captured)} ops and the next one {len(later)} (control flow "
                        "that depends on the call: a replay repeats the captured path)")
    return problems[:limit]
