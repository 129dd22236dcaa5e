"""When a fused op may skip the torch.library dispatcher, and how it then runs.

A custom op call costs Python time in the dispatcher (schema parsing, default filling, the generated
autograd.Function): 40-46 us more than this path for nt_losses' forward and backward at N = 512 on a 2-core CPU
(tools/custom_op_overhead.py), as much as the whole call here, more than the kernels at small sizes. Outside
tracing, each op runs the same kernel runners and the same backward formulas through plain
torch.autograd.Functions instead; the custom ops stay the path for torch.compile / export, fake and meta
tensors, tensor subclasses, Python dispatch modes (FakeTensorMode, make_fx, FlopCounterMode, ...) and functorch
transforms, which all need an op they can see or re-dispatch.
"""
from __future__ import annotations

import sys

import torch

_modules = sys.modules
_is_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_active = torch._C._are_functorch_transforms_active
_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_grad_enabled = torch.is_grad_enabled
_PLAIN = (torch.Tensor, torch.nn.Parameter)  # Parameter keeps torch's dispatch (no __torch_function__)
_PLAIN_OR_NONE = frozenset((*_PLAIN, type(None)))
# torch 2.4's custom ops fail inside grad/jvp even on constants (its setup_context error); 2.13's run them
_CONSTANTS_UNDER_TRANSFORMS = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)


def ok(*tensors) -> bool:
    """True when plain autograd.Functions may run the kernels on `tensors` (None entries are skipped)."""
    if _is_compiling() or _dispatch_modes():
        return False
    if _functorch_active():  # each op's entry has refused what it cannot differentiate
        return False
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN or t.is_meta or _is_wrapped(t)):
            return False
    if not _backwards_skipped and "torch._dynamo" in _modules:
        dynamo_loaded()
    return True


# The Functions below run where Dynamo does not trace (outside compiled code, or in the eager parts of a compiled
# step: penalty.eager_under_compile), but a compiled function's loss.backward() runs their backward with Dynamo's
# frame callback still set, and Dynamo compiles each as a new frame, breaking at the first kernel call: a second of
# compiling and a warning naming fastgan._C for a js_penalty step on a conv D, ~10% of each later step at B = 4.
# Once Dynamo is loaded (by then nothing has compiled them yet) their backwards' code is marked to be skipped,
# nested calls included: no cost to a call, compiled or not. torch versions without the per-code strategy (2.4)
# keep Dynamo's default.
_FUNCTIONS: list = []
_backwards_skipped = False


def function(cls):
    """Class decorator for the eager torch.autograd.Functions (see _FUNCTIONS)."""
    _FUNCTIONS.append(cls)
    if _backwards_skipped:
        _skip_backward(cls)
    return cls


def dynamo_loaded() -> None:
    """Mark the Functions' backwards (once; called where Dynamo is found loaded)."""
    global _backwards_skipped
    if _backwards_skipped:
        return
    _backwards_skipped = True
    for cls in _FUNCTIONS:
        _skip_backward(cls)


def _skip_backward(cls) -> None:
    try:
        from torch._dynamo.eval_frame import set_code_exec_strategy
        from torch._dynamo.types import FrameAction, FrameExecStrategy

        set_code_exec_strategy(cls.backward.__code__, FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP))
    except (ImportError, AttributeError, TypeError, RuntimeError):  # a private API: where it differs, the default
        pass


def refuse_differentiating_transforms(tensors, module=None) -> None:
    """torch.func's differentiating transforms cannot go through fastgan's ops: a custom op with registered
    autograd gets zero tangents under jvp/jacfwd (a silently wrong derivative), and grad/jacrev refuse its
    autograd.Functions with a message about setup_context. vmap works (torch runs the op per sample), and so do
    inputs the transform does not differentiate (not functorch-wrapped: constants to it). tensors: the op's,
    lists of tensors flattened; module: a Denoiser's own (its parameters count as its tensors) or a penalty's D."""
    from torch._C._functorch import TransformType
    from torch._functorch import pyfunctorch

    kinds = {i.key() for i in pyfunctorch.retrieve_all_functorch_interpreters()}
    kind = TransformType.Jvp if TransformType.Jvp in kinds else TransformType.Grad if TransformType.Grad in kinds \
        else None
    if kind is None:
        return
    seen = []
    for t in tensors:
        seen += t if isinstance(t, (list, tuple)) else [t]
    # a penalty of D is refused whatever it is given: it takes D's input gradient with torch.autograd, which
    # functorch's transforms do not allow inside them; torch 2.4 runs no custom op inside them, constants or not
    if module is None and _CONSTANTS_UNDER_TRANSFORMS and \
            not any(isinstance(t, torch.Tensor) and _is_wrapped(t) for t in seen):
        return
    raise NotImplementedError(
        f"fastgan's ops do not support torch.func's {'jvp/jacfwd' if kind == TransformType.Jvp else 'grad/jacrev/vjp'}"
        " transforms of their inputs, nor tensors made inside the transformed function, which the transform wraps "
        "too (under jvp torch gives custom ops zero tangents); differentiate with "
        "torch.autograd (loss.backward(), torch.autograd.grad, create_graph=True for higher orders), or transform "
        "the plain-PyTorch formulas in fastgan.reference")


def ok_on_one_device(first, *others) -> bool:
    """ok(first, *others) for tensors already checked to be on first's device (the denoiser's two dozen, where
    ok's per-tensor questions cost ~0.5 us each): the others are only asked their type (a subclass among them).
    Meta-ness is the device's, and functorch's wrappers exist only while a transform is active."""
    return ok(first) and _PLAIN_OR_NONE.issuperset(map(type, others))


def needs_graph(*tensors) -> bool:
    """Whether autograd would record a node for an op on `tensors`; when not, the runner is called directly."""
    if not _grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def apply_of(cls):
    """cls.apply without autograd.Function.apply's Python prologue (functorch checks, setup_context binding),
    which `ok` has made moot: only for Functions without setup_context, on tensors that passed `ok`."""
    return super(torch.autograd.Function, cls).apply
