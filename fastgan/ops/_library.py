"""torch.library.custom_op whose schema inference also works on torch 2.4.

torch 2.4's infer_schema compares each annotation against its table of types as is: it resolves no string
annotations (every ops module has ``from __future__ import annotations``) and knows ``typing.List[T]`` but not
``list[T]``. Both came in torch 2.5. We hand it the resolved annotations with ``list[T]`` spelled
``typing.List[T]``, which every torch since 2.4 reads the same way.
"""
import functools
import inspect
import types
import typing

import torch


def _spelled_for_torch(tp):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not args:
        return tp
    args = tuple(_spelled_for_torch(a) for a in args)
    if origin is list:
        return typing.List[args]
    if origin is tuple:
        return tuple[args]
    if origin is typing.Union or origin is getattr(types, "UnionType", None):  # Optional[T], T | None
        return typing.Union[args]
    return tp


def _dense_arguments(fn, names: list, strided, written):
    """fn called with its tensor arguments (and list elements) contiguous, except those named in `strided`, which
    its kernels read through their strides; an argument it writes (`written`) must be contiguous already. The
    kernels take data pointers: a view read as a dense array gives another tensor's values, silently, and the
    public functions pass dense tensors but torch.ops.fastgan.* is callable by anyone."""
    def dense(name, t):
        if not isinstance(t, torch.Tensor) or name in strided or t.is_contiguous():
            return t
        if name in written:
            raise ValueError(f"{name} must be contiguous (it is written in place), got strides {t.stride()}")
        return t.contiguous()

    def call(*args, **kwargs):
        args = [[dense(n, t) for t in a] if isinstance(a, (list, tuple)) else dense(n, a) for n, a in zip(names, args)]
        return fn(*args, **{n: dense(n, a) for n, a in kwargs.items()})

    return functools.wraps(fn)(call)


# the device types each backend's kernels address: the cpu kernels dereference a CUDA tensor's pointer on the host
# (a segfault), the cuda ones a CPU tensor's on the device (Triton checks its own pointers)
_DEVICE_TYPES = {"reference": None, "cpu": ("cpu",), "cuda": ("cuda",), "triton": ("cuda", "cpu")}


def _named_tensors(names, args, kwargs):
    for n, a in [*zip(names, args), *kwargs.items()]:
        items = a if isinstance(a, (list, tuple)) else (a,)
        for i, t in enumerate(items):
            if isinstance(t, torch.Tensor):
                yield (f"{n}[{i}]" if isinstance(a, (list, tuple)) else n), t


def _checked_arguments(fn, op: str, names: list, kernels: bool = True):
    """fn called once its tensors are strided and on one device, and (kernels: the implementation, not the fake)
    its backend is one whose kernels address that device: torch.ops.fastgan.* is callable by anyone, and the
    kernels take data pointers (a sparse tensor has none). A meta tensor among CPU ones dispatches to the fake,
    which gave uninitialised CPU tensors."""
    def call(*args, **kwargs):
        first = None
        for n, t in _named_tensors(names, args, kwargs):
            if t.layout != torch.strided:
                raise TypeError(f"{op}: {n} must be a strided (dense) tensor, got layout {t.layout}")
            if first is None:
                first = (n, t.device)
            elif t.device != first[1]:
                raise ValueError(f"{op}: {n} is on {t.device} but {first[0]} is on {first[1]}; one device")
        if not kernels:
            return fn(*args, **kwargs)
        backend = kwargs["backend"] if "backend" in kwargs else args[names.index("backend")]
        if backend not in _DEVICE_TYPES:
            raise ValueError(f"{op}: backend must be one of {tuple(_DEVICE_TYPES)}, got {backend!r}")
        types = _DEVICE_TYPES[backend]
        if first is not None and types is not None and first[1].type not in types:
            from ._dispatch import status  # the dispatcher's word (tests run the cuda backend in an emulator)

            ok, why = status(backend, first[1])
            if not ok:
                raise ValueError(f"{op}: {first[0]} is on {first[1]}: {why}")
        return fn(*args, **kwargs)

    return functools.wraps(fn)(call)


def custom_op(name: str, *, mutates_args, strided=()):
    """torch.library.custom_op(name, mutates_args=...) whose implementation and fake see contiguous tensors
    (_dense_arguments), except the arguments named in `strided`; its implementation's arguments checked first
    (_checked_arguments)."""
    def wrap(fn):
        fn.__annotations__ = {k: _spelled_for_torch(v) for k, v in typing.get_type_hints(fn).items()}
        names = list(inspect.signature(fn).parameters)
        if "backend" not in names:
            raise TypeError(f"{name}: a fastgan op takes its backend as an argument named 'backend'")
        op = torch.library.custom_op(name, mutates_args=mutates_args)(
            _checked_arguments(_dense_arguments(fn, names, strided, mutates_args), name, names))
        register_fake = op.register_fake
        op.register_fake = lambda fake: register_fake(
            _checked_arguments(_dense_arguments(fake, names, strided, ()), name, names, kernels=False))
        return op

    return wrap
