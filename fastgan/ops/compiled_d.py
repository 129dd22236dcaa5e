"""A discriminator that is, or calls, torch.compile'd code, run by the penalty's modes as its Python source.

torch.compile's AOT autograd has no double backward ("does not currently support double backward") and its compiled
graph is an autograd.Function without a forward-mode formula, so neither the double backward nor the jvp pass can
differentiate through it; the closed form never runs D's forward. A compiled D is unwrapped (`uncompiled`); compiled
code D reaches otherwise (a compiled submodule, a function D calling a compiled module) runs eagerly while the
penalty calls D (`eager_compiled_code`), through torch.compile's "force_eager" stance (torch >= 2.6).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading

import torch

from ._locks import ForkSafeLock

# torch.compile's stance is process-wide: set for the duration of D's forward it also makes compiled code other
# threads run meanwhile take the eager path (slower, same values)


def uncompiled(D):
    """The module a torch.compile'd D wraps (D itself otherwise): every mode runs it. A compiled training step
    (torch.compile of the function calling the penalty) is traced as usual."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # not imported: D cannot be compiled
    if eval_frame is not None and isinstance(D, eval_frame.OptimizedModule):
        return D._orig_mod
    return D


_SETTER = None


def _stance_setter():
    """(eval_frame module, the force_eager stance, Dynamo's eval-frame callback query) where torch has stances (2.6+)
    and Dynamo is loaded, else None. The stance is set by assigning eval_frame._stance, as torch.compiler.set_stance
    does, without its per-call import (which alone takes 7-19 us; D is called twice per penalty)."""
    global _SETTER
    if _SETTER is None:
        eval_frame = sys.modules.get("torch._dynamo.eval_frame")
        if eval_frame is None:
            return None  # loaded later perhaps: asked again next time
        if not hasattr(eval_frame, "DynamoStance") or not hasattr(eval_frame, "_stance"):
            _SETTER = False
        else:
            from torch._C._dynamo.eval_frame import get_eval_frame_callback

            _SETTER = (eval_frame, eval_frame.DynamoStance("force_eager"), get_eval_frame_callback)
    return _SETTER or None


class _Stance:
    """force_eager while any thread is inside D's call: the stance is one process-wide value, so entries are
    counted (under a lock) and the stance found at the first entry is put back at the last exit. Saving and
    restoring per entry let two threads' interleaved calls leave it at force_eager for good, or reset it under a
    thread still inside D. Entries are counted per thread: a child forked while other threads were inside D keeps
    only the forking thread's (_after_fork_in_child); with the process-wide count it kept the stance at
    force_eager for good, so torch.compile'd code in the child never compiled."""
    __slots__ = ("eval_frame", "stance")
    _lock = ForkSafeLock()
    _depth = 0
    _owners: dict = {}  # thread ident -> that thread's open entries
    _saved = None
    _set = None  # (eval_frame, the force_eager stance) the first entry set, for the fork handler

    def __init__(self, eval_frame, stance):
        self.eval_frame, self.stance = eval_frame, stance

    def __enter__(self):
        me = threading.get_ident()
        with _Stance._lock:
            if _Stance._depth == 0:
                _Stance._saved = self.eval_frame._stance
                _Stance._set = (self.eval_frame, self.stance)
                self.eval_frame._stance = self.stance
            _Stance._depth += 1
            _Stance._owners[me] = _Stance._owners.get(me, 0) + 1

    def __exit__(self, *exc):
        me = threading.get_ident()
        with _Stance._lock:
            _Stance._depth -= 1
            left = _Stance._owners.get(me, 1) - 1
            if left > 0:
                _Stance._owners[me] = left
            else:
                _Stance._owners.pop(me, None)
            if _Stance._depth == 0:
                if self.eval_frame._stance is self.stance:  # not set by someone else meanwhile
                    self.eval_frame._stance = _Stance._saved
                _Stance._saved = _Stance._set = None


def _after_fork_in_child() -> None:
    """Only the forking thread survives a fork: the entries of the others, which will never exit, are dropped, and
    the stance they kept at force_eager is put back when the forking thread holds none itself."""
    me = threading.get_ident()
    mine = _Stance._owners.get(me, 0)
    _Stance._owners = {me: mine} if mine else {}
    if not mine and _Stance._set is not None:  # (_set, not _depth: a fork inside another thread's last exit)
        eval_frame, stance = _Stance._set
        if eval_frame._stance is stance:
            eval_frame._stance = _Stance._saved
        _Stance._saved = _Stance._set = None
    _Stance._depth = mine


os.register_at_fork(after_in_child=_after_fork_in_child)


_NO_OP = contextlib.nullcontext()


def eager_compiled_code():
    """A context in which torch.compile'd code runs as its Python source; a no-op where nothing can have been
    compiled (Dynamo not loaded), inside a region torch.compile traces or runs (the stance cannot change there: the
    penalty's eager parts run outside it, see penalty.eager_under_compile), and on torch < 2.6, which has no
    stances (there a compiled module inside D fails in torch: pass D's uncompiled modules)."""
    setter = _stance_setter()
    if setter is None:
        return _NO_OP
    eval_frame, stance, callback = setter
    if callback() not in (None, False):
        return _NO_OP
    return _Stance(eval_frame, stance)


def support() -> tuple[bool, str]:
    """(whether compiled code inside a D runs eagerly under the penalty here, why not): for `fastgan info`, which
    may import Dynamo (the penalty never does)."""
    if not hasattr(torch.compiler, "set_stance"):
        return False, "torch < 2.6 has no torch.compile stances: pass D's uncompiled modules to the penalty"
    import torch._dynamo.eval_frame as eval_frame  # noqa: F401 (sys.modules, for _stance_setter)

    if _stance_setter() is None:
        return False, ("this torch's torch._dynamo.eval_frame lacks the _stance / DynamoStance fastgan sets: pass D's "
                       "uncompiled modules to the penalty")
    return True, ""
