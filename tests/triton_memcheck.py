"""A memory check for Triton kernels run by the interpreter (TRITON_INTERPRET=1), like compute-sanitizer's memcheck
on a GPU: while `active()`, every load, store and atomic of a kernel must address elements inside one of the tensors
passed to that launch (each tensor's extent: from its first element to its last, by its strides), or the launch
fails naming the kernel, the access and the address. The interpreter itself reads and writes whatever raw address a
pointer holds, so an unmasked access past a tensor's end reads neighbouring memory or corrupts it, silently.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch

_state = threading.local()  # the running launch: (kernel name, [(lo, hi), ...]) or None


class TritonMemoryError(AssertionError):
    pass


def _extent(t: torch.Tensor) -> tuple[int, int] | None:
    if t.numel() == 0:
        return None
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))  # the last element's offset (strides are >= 0)
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def _tensors(args) -> list[torch.Tensor]:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (tuple, list)):
            out += _tensors(a)
        elif hasattr(a, "base") and isinstance(getattr(a, "base"), torch.Tensor):  # a TensorDescriptor
            out.append(a.base)
    return out


def _check(what: str, ptrs, mask, elsize: int) -> None:
    launch = getattr(_state, "launch", None)
    if launch is None:
        return
    name, extents = launch
    addr = np.asarray(ptrs.data, dtype=np.uint64).reshape(-1)
    on = np.ones(addr.shape, dtype=bool) if mask is None else np.asarray(mask.data, dtype=bool).reshape(-1)
    if on.shape != addr.shape:  # a scalar mask over a block of pointers
        on = np.broadcast_to(on, addr.shape)
    inside = np.zeros(addr.shape, dtype=bool)
    for lo, hi in extents:
        inside |= (addr >= np.uint64(lo)) & (addr + np.uint64(elsize) <= np.uint64(hi))
    bad = on & ~inside
    if bad.any():
        first = int(addr[bad][0])
        where = ""
        if extents:
            lo, hi = min(extents, key=lambda e: min(abs(first - e[0]), abs(first - e[1])))
            where = f"; the nearest tensor spans [{lo:#x}, {hi:#x})"
            if first >= hi:
                where += f", {first - hi} bytes past its end"
        raise TritonMemoryError(f"Triton kernel {name}: {what} of {int(bad.sum())} element(s) outside every tensor "
                                f"of the launch, first at {first:#x}{where}")


def _elsize(ptrs) -> int:
    return max(1, ptrs.get_element_ty().primitive_bitwidth // 8)


@contextlib.contextmanager
def active():
    """Checks every Triton launch made inside the block (the interpreter's; a no-op where there is none)."""
    import triton.runtime.interpreter as interp

    B, G = interp.InterpreterBuilder, interp.GridExecutor
    saved = {n: getattr(B, n) for n in ("create_masked_load", "create_masked_store", "create_atomic_rmw",
                                        "create_atomic_cas")}
    init_args = G._init_args_hst

    def init_args_checked(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        extents = [e for t in _tensors([*args_hst, *kwargs_hst.values()]) if (e := _extent(t)) is not None]
        _state.launch = (getattr(self.fn, "__name__", "?"), extents)
        return args_hst, kwargs_hst

    def load(self, ptrs, mask, *rest):
        _check("load", ptrs, mask, _elsize(ptrs))
        return saved["create_masked_load"](self, ptrs, mask, *rest)

    def store(self, ptrs, value, mask, *rest):
        _check("store", ptrs, mask, _elsize(ptrs))
        return saved["create_masked_store"](self, ptrs, value, mask, *rest)

    def rmw(self, op, ptr, val, mask, *rest):
        _check("atomic", ptr, mask, _elsize(ptr))
        return saved["create_atomic_rmw"](self, op, ptr, val, mask, *rest)

    def cas(self, ptr, *rest):
        _check("atomic compare-and-swap", ptr, None, _elsize(ptr))
        return saved["create_atomic_cas"](self, ptr, *rest)

    B.create_masked_load, B.create_masked_store, B.create_atomic_rmw, B.create_atomic_cas = load, store, rmw, cas
    G._init_args_hst = init_args_checked
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(B, n, f)
        G._init_args_hst = init_args
        _state.launch = None
