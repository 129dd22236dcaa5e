"""torch.library.custom_op whose schema inference also works on torch 2.4.

torch 2.4's infer_schema compares each annotation against its table of types as is: it resolves no string
annotations (every ops module has ``from __future__ import annotations``) and knows ``typing.List[T]`` but not
``list[T]``. Both came in torch 2.5. We hand it the resolved annotations with ``list[T]`` spelled
``typing.List[T]``, which every torch since 2.4 reads the same way.
"""
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


def custom_op(name: str, *, mutates_args):
    def wrap(fn):
        fn.__annotations__ = {k: _spelled_for_torch(v) for k, v in typing.get_type_hints(fn).items()}
        return torch.library.custom_op(name, mutates_args=mutates_args)(fn)

    return wrap
