"""What a function D's forward writes into tensors it did not make, caught as it happens, so that jvp can run the
forward a second time from the same state and leave the state as one forward leaves it.

jvp runs D's forward twice. An nn.Module D's buffers are swapped for copies during the second forward
(penalty_jvp._buffers_replaced); a function D's state (BatchNorm's running statistics and batch count, spectral
norm's vectors) lies wherever the function reaches it, so instead every write into a tensor the forward did not
create is seen here: an in-place method (``add_``, ``__setitem__``, ``+=``), an ``out=`` argument, and BatchNorm /
InstanceNorm's running statistics, which torch's kernels update inside the op.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_INPLACE_DUNDERS = frozenset({"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                              "__imod__", "__ipow__", "__imatmul__", "__iand__", "__ior__", "__ixor__",
                              "__ilshift__", "__irshift__"})


# In-place by name, but not writes of a tensor's values (autograd flags, metadata, storage swaps): copying values
# back after them would bump the version of a tensor autograd saved (x.detach().requires_grad_() in the replay)
# or fail on a changed shape.
_NOT_VALUE_WRITES = frozenset({"requires_grad_", "detach_", "share_memory_", "squeeze_", "unsqueeze_", "t_",
                               "transpose_", "swapdims_", "swapaxes_", "as_strided_", "rename_", "set_", "resize_",
                               "resize_as_"})


def _tensors(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


def _storage(t: torch.Tensor):
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):  # tensors without storage (sparse, some subclasses)
        return None
    return (t.device, ptr) if ptr else None


def _running_stats(func, args, kwargs) -> list:
    """The running-statistics tensors a batch/instance norm call updates inside torch's kernel."""
    if func is F.batch_norm:
        training = kwargs.get("training", args[5] if len(args) > 5 else False)
    elif func is F.instance_norm:
        training = kwargs.get("use_input_stats", args[5] if len(args) > 5 else True)
    else:
        return []
    if not training:
        return []
    stats = [kwargs.get(k, args[i] if len(args) > i else None) for i, k in ((1, "running_mean"), (2, "running_var"))]
    return [t for t in stats if isinstance(t, torch.Tensor)]


def _written(func, args, kwargs) -> list:
    name = getattr(func, "__name__", "")
    targets = []
    if args and isinstance(args[0], torch.Tensor) and name not in _NOT_VALUE_WRITES and (
            (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS):
        targets.append(args[0])
    if "out" in kwargs:
        _tensors(kwargs["out"], targets)
    return targets + _running_stats(func, args, kwargs)


class StateGuard(TorchFunctionMode):
    """While active, keeps a copy of every tensor the code is about to write in place that no op run under the
    guard created (a view of such a tensor included); `saved` lists (tensor, its values before the first write)."""

    def __init__(self):
        super().__init__()
        self._made: set = set()  # storages created under the guard: writes to them are the forward's own
        self.saved: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in _written(func, args, kwargs):
            key = _storage(t)
            if key is not None and key not in self._made and not any(t is s for s, _ in self.saved):
                self.saved.append((t, t.detach().clone()))
        out = func(*args, **kwargs)
        inputs = {_storage(t) for t in _tensors((args, kwargs), [])}
        for t in _tensors(out, []):
            key = _storage(t)
            if key is not None and key not in inputs:
                self._made.add(key)
        return out


def _write(pairs) -> None:
    # the earliest copy of a region is written last: it wins where views of one tensor overlap
    with torch.no_grad():
        for t, v in reversed(pairs):
            t.copy_(v)


@contextlib.contextmanager
def rerun_from(saved: list):
    """A block run with the tensors of `saved` (a StateGuard's, from an earlier run of the same code) put back to
    the values they had before that run; afterwards everything the block wrote is undone and those tensors hold
    their values of before the block again. The block sees the state the earlier run started from and leaves the
    state as that run left it."""
    with torch.no_grad():
        now = [(t, t.detach().clone()) for t, _ in saved]
    _write(saved)
    guard = StateGuard()
    try:
        with guard:
            yield
    finally:
        _write(guard.saved)
        _write(now)
