"""The Philox noise stream's state (``NoiseState``: seed, offset and ticket in one int64 tensor on the device)
and the per-device default state used when a call gives none."""
from __future__ import annotations

import numbers
import os
from typing import Optional, Union

import torch

from .._errors import first_line
from . import _dispatch
from ._locks import ForkSafeLock
# the draws' lock, which manual_seed, set_state, get_state and clone take too: a CPU draw from another thread reads
# the seed and writes the offset with the GIL released, and a reset between the two left the new seed with the old
# stream's offset (an audit of the ops in threads, 2026-12-06)
from .noise_runners import _draw_lock


class NoiseState:
    """(seed, offset) of the Philox noise stream, kept on `device` as one int64 tensor [seed, offset, ticket].

    The kernels read it and advance the offset on the device (no host sync), so the same NoiseState can be
    used inside a captured CUDA graph. Reading ``seed``/``offset`` copies to the host (a sync).
    """

    def __init__(self, seed: int = 0, device: Union[str, torch.device] = "cpu"):
        seed = _check_seed(seed)
        dev = _check_device(device)
        try:
            # not an inference tensor even when made under inference_mode: its draws, manual_seed and set_state
            # update it in place, which torch refuses for inference tensors outside inference_mode
            with torch.inference_mode(False):
                self.tensor = torch.tensor([seed, 0, 0], dtype=torch.int64, device=dev)
        except (RuntimeError, AssertionError) as e:
            if dev is None or dev.type in ("cpu", "cuda"):
                raise  # the device exists: this is some other failure
            # other backends (mps, xpu, ...) parse on every build but fail when torch was built without them
            raise ValueError(f"device: {device!r} cannot hold tensors in this torch build ({first_line(e)})") from None

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @property
    def seed(self) -> int:
        return int(self.tensor[0])

    @property
    def offset(self) -> int:
        return int(self.tensor[1])

    def manual_seed(self, seed: int) -> "NoiseState":
        """Restart the stream at `seed` (offset 0), in place."""
        new = torch.tensor([_check_seed(seed), 0, 0], dtype=torch.int64)
        with _draw_lock(self.tensor):
            self.tensor.copy_(new)
        return self

    def get_state(self) -> torch.Tensor:
        """CPU copy of [seed, offset, ticket], for checkpoints."""
        with _draw_lock(self.tensor):
            return self.tensor.detach().cpu().clone()

    def set_state(self, state: torch.Tensor) -> "NoiseState":
        if not isinstance(state, torch.Tensor) or state.dtype != torch.int64 or tuple(state.shape) != (3,):
            raise ValueError("state must be an int64 tensor of shape (3,) from NoiseState.get_state()")
        if state.is_meta:  # holds no values to set (torch's "Cannot copy out of meta tensor" otherwise)
            raise ValueError("state is a meta tensor, which holds no values: give NoiseState.get_state()'s tensor")
        _check_state_values(state)  # a host copy, as get_state's own; set_state is rare
        with _draw_lock(self.tensor):
            self.tensor.copy_(state)
        return self

    def clone(self) -> "NoiseState":
        other = NoiseState.__new__(NoiseState)
        with torch.inference_mode(False), _draw_lock(self.tensor):  # as in __init__; whole, as get_state
            other.tensor = self.tensor.clone()
        return other

    def __repr__(self) -> str:
        return f"NoiseState(device={self.device})"


def _check_device(device) -> Optional[torch.device]:
    """The device as a torch.device (None: torch's default), or a ValueError naming the argument. CUDA is asked
    about only when a CUDA device was named, so a CPU NoiseState never touches it."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        why = "" if isinstance(device, str) else f" ({first_line(e)})"
        raise ValueError(f"device: {device!r} is not a device torch can parse{why}; expected e.g. 'cpu', 'cuda' or "
                         "'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {str(dev)!r} asked for, but torch sees no CUDA device; use 'cpu'")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device: {str(dev)!r} asked for, but this machine has {n} CUDA device"
                             f"{'s' if n != 1 else ''} (cuda:0 .. cuda:{n - 1})")
    return dev


def _check_seed(seed, low: int = 0, high: int = 2**63, span: str = "[0, 2**63)") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not low <= int(seed) < high:
        raise ValueError(f"seed must be in {span}, got {seed}")
    return int(seed)


def stream_seed(seed: int) -> int:
    """A NoiseState seed for a program seeded with `seed` (torch.manual_seed(seed)): a different Philox key.

    torch's CUDA generator draws from the same Philox4x32-10 with key = its seed and counter (offset/4, 0,
    thread, 0), so a NoiseState seeded with that same number would hand its first counters' words to torch's
    thread 0 too: the noise eps and some of torch's draws (latents, indices) would be functions of the same bits.
    splitmix64's finalizer of seed ^ "fastgan!" gives an unrelated key. `seed` in torch.manual_seed's range,
    [-2**63, 2**64), a negative one wrapped to 2**64 + seed as torch wraps it: every bit of the seed reaches the
    key (s and s + 2**63 shared one before 2026-12-04, when the trainer passed seed % 2**63)."""
    seed = _check_seed(seed, -2**63, 2**64, "[-2**63, 2**64) (torch.manual_seed's range)")
    z = (seed % 2**64) ^ 0x6661737467616E21
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) % 2**63


_default_states: dict = {}
_default_lock = ForkSafeLock()


def default_noise_state(device: Union[str, torch.device]) -> NoiseState:
    """The state used when none is given: one per device, seeded on first use from torch's default CPU
    generator (so torch.manual_seed makes it reproducible; a later one does not reset it). A forked child (a
    DataLoader worker, which torch seeds) seeds its own on its first use."""
    device = _check_device(device) if not isinstance(device, torch.device) else device
    if device is None:
        raise ValueError("device must be a torch.device or a device string such as 'cpu' or 'cuda:0', got None")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    state = _default_states.get(device)
    if state is None:
        with _default_lock:  # threads making their first draw at once share one state
            state = _default_states.get(device)
            if state is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
                state = _default_states[device] = NoiseState(seed, device)
    return state


def _after_fork_in_child() -> None:
    _default_states.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@_dispatch._constant_under_compile
def _default_state_tensor(device: torch.device) -> torch.Tensor:
    # Dynamo runs this at trace time and keeps the tensor in the graph: a first use inside torch.compile then
    # draws the seed and creates the state once, as an eager call does (traced, the seed's .item() raised and
    # the state would be created anew on every call)
    return default_noise_state(device).tensor


def _check_state_values(state: torch.Tensor) -> None:
    seed, offset, ticket = state.tolist()
    # ticket != 0: the cuda and triton kernels' last-program test would never pass, nor advance the offset
    if seed < 0 or offset < 0 or ticket != 0:
        raise ValueError(f"state must be [seed >= 0, offset >= 0, 0] as NoiseState.get_state() returns, "
                         f"got {[seed, offset, ticket]}")
