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


def custom_op(name: str, *, mutates_args, strided=()):
    """torch.library.custom_op(name, mutates_args=...) whose implementation and fake see contiguous tensors
    (_dense_arguments), except the arguments named in `strided`."""
    def wrap(fn):
        fn.__annotations__ = {k: _spelled_for_torch(v) for k, v in typing.get_type_hints(fn).items()}
        names = list(inspect.signature(fn).parameters)
        op = torch.library.custom_op(name, mutates_args=mutates_args)(
            _dense_arguments(fn, names, strided, mutates_args))
        register_fake = op.register_fake
        op.register_fake = lambda fake: register_fake(_dense_arguments(fake, names, strided, ()))
        return op

    return wrap
