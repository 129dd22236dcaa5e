"""What would break a CUDA graph of a step, found without a GPU.

A CUDA graph replays the kernels of the call it captured: a value the step reads back to the host (`.item()`,
`bool(t)`, `nonzero`) fails the capture, and a Python number or shape that changes from call to call (a schedule
computed on the host, a batch size drawn in Python) is baked in at capture, so every replay silently reuses the
captured one. `capture_hazards(fn)` runs `fn` as `GraphedStep` would (eager warm-up calls, then the call it would
capture) on any device, the CPU included, records every ATen op of the captured call and of the call after it under
a dispatch mode, and reports host reads, draws from torch.Generators not registered with the graph, and any op
whose non-tensor arguments or tensor shapes differ between the two, with the line of the caller that issued it.
The kernels fastgan calls through raw pointers (its C++/CUDA backends) are invisible to the mode; their launch
arguments are sizes and pointers of tensors the mode does see.
"""
from __future__ import annotations

import contextlib
import numbers
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .graph import _as_generators

# ops whose result the host must see (a sync; inside a capture, an error)
_HOST_READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
               "aten::unique_consecutive", "aten::unique_dim", "aten::equal", "aten::is_nonzero"}
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


def _caller() -> str:
    """The innermost frame outside torch and this module: the line of user or fastgan code that issued the op."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if not (name.startswith(_TORCH_DIR) or name == _THIS or name.startswith("<")):
            return f"{name}:{f.f_lineno} ({f.f_code.co_name})"
        f = f.f_back
    return "?"


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

    def _registered(self, gen: torch.Generator) -> bool:
        # the dispatcher hands ops a new Python wrapper of the same generator: compare what it wraps (a generator's
        # state is its own; two distinct generators in the same state are not told apart)
        return any(g.device == gen.device and torch.equal(g.get_state(), gen.get_state()) for g in self.generators)

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


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # a tensor without storage (a subclass, meta)
        return None


@contextlib.contextmanager
def _host_conversions_seen(rec: _Recorder):
    """Tensor.tolist() and .numpy() (np.asarray's path too) of a CPU tensor dispatch no op the recorder sees, where on
    a GPU they copy to the host: recorded as host reads while `rec` records, for tensors the step's ops read or
    wrote (not those no op touched, host tensors on a GPU too: torch's RNG state snapshots, say)."""
    real = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def seen(name):
        def method(self, *args, **kwargs):
            # not the recorder's own by-value descriptions
            st = _storage(self)
            if sys._getframe(1).f_code.co_filename == _THIS or st is None:
                return real[name](self, *args, **kwargs)
            if st._cdata in rec.storages:
                rec.host_reads.append((f"Tensor.{name}", _caller()))
                return real[name](self, *args, **kwargs)
            # `sched.tolist()` before the step's first op on sched was missed: looked up when the call ends
            rec.conversions.append((st, f"Tensor.{name}", _caller()))
            out = real[name](self, *args, **kwargs)
            rec.storages.pop(st._cdata, None)  # numpy()'s own detach is not the step's op
            return out
        return method

    for name in real:
        setattr(torch.Tensor, name, seen(name))
    try:
        yield
    finally:
        for name, fn in real.items():
            setattr(torch.Tensor, name, fn)
        rec.host_reads += [(op, where) for st, op, where in rec.conversions if st._cdata in rec.storages]


@contextlib.contextmanager
def _eager_path_while_recording(recorder: type = _Recorder):
    """fastgan's fused ops take their custom-op path under any dispatch mode (fastgan.ops._eager.ok), the recorder
    included, while a real run takes the eager path: the recorder would see each op as one opaque call and miss
    what its Python does (a host read in a backend's runner, say). Here modes of type `recorder` do not count."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    from .ops import _eager

    real = _eager._dispatch_modes
    _eager._dispatch_modes = lambda: sum(not isinstance(m, recorder) for m in _get_current_dispatch_mode_stack())
    try:
        yield
    finally:
        _eager._dispatch_modes = real


@contextlib.contextmanager
def _capturable_optimizers_on_any_device():
    """Capturable Adam (what the graphed trainer uses: its step count stays on the device) refuses CPU tensors;
    its math is plain tensor ops, so let it run there while checking."""
    import torch.optim.adam as adam

    real = getattr(adam, "_get_capturable_supported_devices", None)
    if real is None:
        yield
        return
    adam._get_capturable_supported_devices = lambda *a, **k: [*real(*a, **k), "cpu"]
    try:
        yield
    finally:
        adam._get_capturable_supported_devices = real


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
    with _capturable_optimizers_on_any_device(), _eager_path_while_recording():
        for i in range(1, warmup + 3):
            if before is not None:
                before(i)
            if i <= warmup:
                fn()
                continue
            with _Recorder(generators) as rec, _host_conversions_seen(rec):
                fn()
            traces.append(rec)
    captured, later = (rec.ops for rec in traces)
    unregistered = traces[0].unregistered
    problems = [f"host read in the captured call: {op} at {where} (a sync; a CUDA graph capture fails on it"
                f"{'; boolean-mask indexing runs nonzero' if op in _MASK_INDEXING else ''})"
                for op, where in traces[0].host_reads]
    problems += [f"random draw from a torch.Generator not in `generators`: {op} (a generator other than the "
                 "default one must be registered with the graph: GraphedStep(generators=...))"
                 for op in unregistered[:limit]]
    diverged = False
    for k, (a, b) in enumerate(zip(captured, later)):
        if len(problems) >= cap:
            break
        if a[0] != b[0]:
            problems.append(f"op {k}: the captured call ran {a[0]} at {a[2]}, the next call {b[0]} at {b[2]} "
                            "(control flow that depends on the call: a replay repeats the captured path)")
            diverged = True
            break  # the traces are out of step from here on
        if a[1] != b[1]:
            diff = next(((x, y) for x, y in zip(a[1], b[1]) if x != y), None)
            if diff is None:  # a list argument of another length (dim=[0] vs [0, 1], cat of 1 vs 2 tensors)
                problems.append(f"op {k} ({a[0]}) at {a[2]}: its arguments held {len(a[1])} values in the captured "
                                f"call and {len(b[1])} in the next (a list that changes length is baked into the "
                                "graph at capture)")
            else:
                problems.append(f"op {k} ({a[0]}) at {a[2]}: an argument was {diff[0]!r} in the captured call and "
                                f"{diff[1]!r} in the next (baked into the graph at capture; make it a device tensor)")
    if len(captured) != len(later) and not diverged:
        problems.append(f"the captured call ran {len(captured)} ops and the next one {len(later)} (control flow "
                        "that depends on the call: a replay repeats the captured path)")
    return problems[:limit]
