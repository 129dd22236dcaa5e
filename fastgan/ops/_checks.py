"""Argument validation shared by the ops: one clear error naming the offending argument."""
from __future__ import annotations

import torch
from torch.autograd import forward_ad as _fwAD

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def transforms_active() -> bool:
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def no_differentiating_transform(*tensors, module=None) -> None:
    """At each public op's entry: under torch.func's jvp/jacfwd/grad/jacrev, an op on tensors the transform
    differentiates, and any penalty of a D (module=D), is refused with what to use instead
    (_eager.refuse_differentiating_transforms); an op on constants runs. is_compiling first, so Dynamo never
    traces the functorch query."""
    if transforms_active():
        from ._eager import refuse_differentiating_transforms

        refuse_differentiating_transforms(tensors, module)
    no_dual(*tensors)


class ForwardModeRefused(NotImplementedError):
    """mode="jvp" cannot run D's forward in forward mode: fastgan's own reasons, and (penalty_jvp) torch's, which
    it quotes, with D's state and the random generators put back as before the call."""


def no_dual(*tensors) -> None:
    """Inside a torch.autograd.forward_ad dual level (mode="jvp" runs D's forward in one): the ops' custom autograd
    has no forward-mode rule, so a dual input's tangent was dropped, silently (a D calling noisy_clean_batch gave a
    jvp penalty with no gradient)."""
    if _fwAD._current_level < 0 or torch.compiler.is_compiling():
        return
    for t in tensors:
        if isinstance(t, torch.Tensor) and _fwAD.unpack_dual(t).tangent is not None:
            raise ForwardModeRefused(
                "fastgan's ops have no forward-mode derivative, and this call's input is a forward-mode dual tensor "
                "(gradient_penalty(mode='jvp'), or 'auto' choosing it, runs D's forward in forward mode: a D that "
                "calls a fastgan op needs mode='double_backward')")


def outside_inference(t: torch.Tensor) -> torch.Tensor:
    """t, or a normal copy of it when it was made under torch.inference_mode() and this call runs outside it:
    autograd can neither make an inference tensor require grad nor save it for a backward."""
    if not torch.compiler.is_compiling() and t.is_inference() and not torch.is_inference_mode_enabled():
        return t.clone()
    return t


def tensor(name: str, x, *, min_dim: int = 0) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float32, float64, float16 or bfloat16), got {x.dtype}")
    if x.layout is not torch.strided:  # the kernels read data pointers, which a sparse tensor does not have
        raise TypeError(f"{name} must be a strided (dense) tensor, got layout {x.layout}; call .to_dense()")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}")
    return x


def one_per_sample(logits: torch.Tensor, batch: int | None = None) -> bool:
    """Whether logits hold one value per sample (of a batch of `batch`, where given): (B,), or (B, 1, ..., 1) as a D
    ending in a one-channel convolution returns (B, 1, 1, 1)."""
    if batch is not None and logits.shape[:1] != (batch,):
        return False
    d = logits.dim()
    if d == 1:  # the common shapes without the generator's ~0.4 us: nt_losses checks two a call
        return True
    if d == 2:
        return logits.shape[1] == 1
    return d > 2 and all(n == 1 for n in logits.shape[1:])


def same_device(**tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; "
                             "move them to the same device")


def choice(name: str, value, allowed) -> None:
    # a str first: `in` compares a numpy array elementwise, whose truth is ambiguous (numpy's ValueError, naming
    # nothing) or, for one element, that element's (np.array(["sum"]) passed, then failed as a dict key)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def flag(name: str, value) -> bool:
    """A documented bool: True/False (numpy's too) or the ints 0 and 1; anything else, a string above all ("False"
    is truthy), is refused rather than read by its truth value."""
    if isinstance(value, bool):  # first and alone: the common case, and all that torch 2.4's Dynamo can trace
        return value
    if (isinstance(value, int) and value in (0, 1)) or (type(value).__module__ == "numpy" and
                                                         type(value).__name__ in ("bool", "bool_")):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 if any input is float64, else float32 (also for half inputs)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def finite(v: float) -> bool:
    """Whether a float is finite, also when torch.compile traces it symbolically (a Python float argument that
    changes between calls): math.isfinite cannot take that symbolic float, arithmetic can (inf - inf is nan)."""
    return v - v == 0


def op_shapes(op: str, *specs) -> None:
    """At a custom op's entry: torch.ops.fastgan.* are public, and their kernels take raw pointers sized from one
    argument, so an argument of another size was read (or written) past its end. Each (name, tensor or None, shape)
    must have that shape; a shape entry None takes any size there."""
    for name, t, shape in specs:
        if t is None:
            continue
        if t.dim() != len(shape) or any(s is not None and d != s for d, s in zip(t.shape, shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
            raise ValueError(f"fastgan::{op}: {name} must have shape {want}, got {tuple(t.shape)}")


def _spelled(dtypes) -> str:
    names = [str(d) for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def op_dtypes(op: str, base, *named, allowed=FLOAT_DTYPES, want=None, why=None) -> torch.dtype:
    """At a custom op's entry, beside op_shapes: the kernels read every pointer as one element type, so an argument
    of another dtype was read past its end (a float32 beside float64: heap corruption) or as garbage. base =
    (name, tensor) with a dtype in `allowed`; each (name, tensor or None) of `named` must have `want` (default:
    base's dtype; `why` says where it comes from). Returns base's dtype."""
    bname, b = base
    if b.dtype not in allowed:
        raise TypeError(f"fastgan::{op}: {bname} must be {_spelled(allowed)}, got {b.dtype}")
    want = b.dtype if want is None else want
    for name, t in named:
        if t is not None and t.dtype != want:
            raise TypeError(f"fastgan::{op}: {name} must be {_spelled([want])} ({why or 'as ' + bname}), got "
                            f"{t.dtype}")
    return b.dtype


def op_code(op: str, name: str, value: int, allowed) -> None:
    """At a custom op's entry: an integer code (weight, kind, reduction) the kernels switch on, or a count they
    index with, must be one they know."""
    if value not in allowed:
        shown = f"{allowed.start}..{allowed.stop - 1}" if isinstance(allowed, range) else str(tuple(allowed))
        raise ValueError(f"fastgan::{op}: {name} must be in {shown}, got {value!r}")
