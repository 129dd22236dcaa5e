"""Module hooks a path would skip: the closed-form penalty and the fused denoiser compute their layers' math without
calling the layers' forwards, and jvp's dual forward runs backward hooks on the wrong gradient, so a hook there
would silently not act as the user meant. The closed form and jvp also refuse hooks registered for every module
(global_hooks); the Denoiser checks its layers' own only: a global hook (profilers, module trackers) runs for the
Denoiser as one module, not for its layers. Plain loops: plan() runs inside torch.compile."""
from __future__ import annotations

import torch.nn.modules.module as _module

FORWARD = ("_forward_hooks", "_forward_pre_hooks")
BACKWARD = ("_backward_hooks", "_backward_pre_hooks")
ALL = FORWARD + BACKWARD


def has_hooks(m, kinds: tuple = ALL) -> bool:
    """Whether module m itself has hooks of these kinds (not its children)."""
    for a in kinds:
        if getattr(m, a, None):
            return True
    return False


def global_hooks(kinds: tuple = ALL) -> bool:
    """Whether hooks of these kinds are registered for every module (torch.nn.modules.module.register_module_*)."""
    for a in kinds:
        if getattr(_module, "_global" + a, None):
            return True
    return False


def where_hooked(D, kinds: tuple = ALL) -> str | None:
    """Where hooks of these kinds act on module D ("D.net.0 has ... hooks", "global module ... hooks are
    registered"), or None; names are only built when one is found, as this runs on every call."""
    what = "backward" if kinds == BACKWARD else "forward" if kinds == FORWARD else "forward/backward"
    if global_hooks(kinds):
        return f"global module {what} hooks are registered"
    for m in D.modules():
        if has_hooks(m, kinds):
            break
    else:
        return None
    for name, m in D.named_modules():
        if has_hooks(m, kinds):
            return f"D{'.' + name if name else ''} has {what} hooks"
    return None
