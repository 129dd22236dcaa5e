"""What a function D's forward writes into tensors it did not create, caught as it happens, so that jvp can run the
forward a second time from the same state and leave the state as one forward leaves it.

jvp runs D's forward twice. An nn.Module D's buffers are swapped for copies during the second forward
(penalty_jvp._buffers_replaced); a function D's state (BatchNorm's running statistics and batch count, spectral
norm's vectors) lies wherever the function reaches it, so instead every write into a tensor the forward did not
create is seen here: an in-place method (``add_``, ``__setitem__``, ``+=``, ``torch._foreach_mul_``), an ``out=``
argument, ``inplace=True``, and BatchNorm / InstanceNorm's running statistics, which torch's kernels update inside
the op. Writes made in other threads (nn.DataParallel's replicas) are not seen: torch function modes are per thread.
"""
from __future__ import annotations

import contextlib
import functools
import inspect

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

_INPLACE_DUNDERS = frozenset({"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                              "__imod__", "__ipow__", "__imatmul__", "__iand__", "__ior__", "__ixor__",
                              "__ilshift__", "__irshift__"})
# In-place by name, but not writes of a tensor's values (autograd flags, metadata, storage swaps)
_NOT_VALUE_WRITES = frozenset({"requires_grad_", "detach_", "share_memory_", "squeeze_", "unsqueeze_", "t_",
                               "transpose_", "swapdims_", "swapaxes_", "as_strided_", "rename_", "set_", "resize_",
                               "resize_as_"})


def _tensors(obj) -> list:
    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _key(t: torch.Tensor):
    """What identifies t's memory: its storage (views share it); the object itself where there is none to read (a
    wrapper subclass); None for a lazy module's uninitialized parameter, which holds no values yet."""
    if isinstance(t, torch.nn.parameter.UninitializedTensorMixin):
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return ("object", id(t))
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


@functools.lru_cache(maxsize=None)
def _signature(func):
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def _inplace_flag(func, args, kwargs) -> bool:
    """torch.nn.functional's inplace=True (nn.LeakyReLU passes it positionally)."""
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    if getattr(func, "__module__", None) != "torch.nn.functional":
        return False
    sig = _signature(func)
    if sig is None or "inplace" not in sig.parameters:
        return False
    try:
        return bool(sig.bind(*args, **kwargs).arguments.get("inplace", False))
    except TypeError:
        return False


def _written(func, args, kwargs) -> list:
    name = getattr(func, "__name__", "")
    targets = []
    first = args[0] if args else kwargs.get("input")
    if name not in _NOT_VALUE_WRITES and (
            (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS
            or _inplace_flag(func, args, kwargs)):
        targets += _tensors(first)  # a tensor, or the list of a torch._foreach_*_ call
    if "out" in kwargs:
        targets += _tensors(kwargs["out"])
    return targets + _running_stats(func, args, kwargs)


def _refusal(func) -> str | None:
    """What a function D calls that the jvp pass cannot run (an nn.Module D is refused before it runs)."""
    if func is F.multi_head_attention_forward:
        return ("D runs an nn.MultiheadAttention, whose attention the jvp pass cannot reach "
                "(F.multi_head_attention_forward); call F.scaled_dot_product_attention in D's forward, which jvp runs")
    return None


class JvpRefused(ValueError):
    pass


class StateGuard(TorchFunctionMode):
    """While active, keeps a copy of every tensor the code is about to write in place that no op run under the
    guard created (a view of such a tensor included) and that is not one of `own` (D's input: D's writes into it
    are its own business, as in any forward); `saved` lists (tensor, its values before the first write). Leaving
    the guard by an exception puts those values back. `refuse`: raise JvpRefused on calls the jvp pass cannot run."""

    def __init__(self, own=(), refuse: bool = False):
        super().__init__()
        self._made: set = {k for k in map(_key, own) if k is not None}
        self._refuse = refuse
        self.saved: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = _refusal(func) if self._refuse else None
        if why is not None:
            raise JvpRefused(f"mode='jvp': {why} (mode='double_backward' runs it)")
        for t in _written(func, args, kwargs):
            key = _key(t)
            if key is not None and key not in self._made and not any(t is s for s, _ in self.saved):
                self.saved.append((t, t.detach().clone()))
        out = func(*args, **kwargs)
        inputs = {_key(t) for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            key = _key(t)
            if key is not None and key not in inputs:
                self._made.add(key)
        return out

    def __exit__(self, exc_type, exc, tb):
        out = super().__exit__(exc_type, exc, tb)
        if exc_type is not None:
            write(self.saved)
        return out


def _set_version(t: torch.Tensor, version: int) -> None:
    setter = torch._C._autograd._unsafe_set_version_counter
    try:
        setter((t,), (version,))
    except TypeError:  # torch < 2.6: one tensor, one version
        setter(t, version)


def write(pairs) -> None:
    """Each (tensor, values) written back, the earliest copy of a region last (it wins where views of one tensor
    overlap), without counting as a modification: the graph of the forward that ran in between saved some of these
    tensors with the values they get back (a state tensor updated in place, then multiplied), and autograd would
    refuse a changed version."""
    with torch.no_grad():
        for t, v in reversed(pairs):
            version = t._version
            t.detach().copy_(v)
            _set_version(t, version)


@contextlib.contextmanager
def rerun_from(saved: list, own=()):
    """A block run with the tensors of `saved` (a StateGuard's, from an earlier run of the same code) put back to
    the values they had before that run; afterwards everything the block wrote is undone and those tensors hold
    their values of before the block again. The block sees the state the earlier run started from and leaves the
    state as that run left it. `own`: as StateGuard's."""
    with torch.no_grad():
        now = [(t, t.detach().clone()) for t, _ in saved]
    write(saved)
    guard = StateGuard(own)
    try:
        with guard:
            yield
    finally:
        write(guard.saved)
        write(now)
