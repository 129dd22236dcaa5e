"""A whole training step replayed from one CUDA graph.

A small GAN step is bound by the host: hundreds of kernel launches, each with Python, dispatcher and autograd
bookkeeping around it, while the GPU idles (bench/bench_graph_step.py measures both). Capturing the step once
and replaying it leaves only the GPU's own work. What makes a step capturable: every tensor it reads or writes
lives at a fixed address (parameters, optimizer state, buffers; the step's own temporaries come from the
graph's private pool), every random number comes from a generator registered with the graph or from a device
counter (fastgan.ops.NoiseState), nothing reads a value back to the host, and schedules (gamma(t), sigma(t))
are device tensors written between replays. fastgan's methods are written that way; `GraphedStep` is the
capture/replay mechanics, usable around any such function.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Callable, Iterable

import torch


class GraphCaptureError(RuntimeError):
    """The step could not be captured; the message names the cause (e.g. a host read inside the step)."""


def _as_generators(generators) -> tuple:
    """`generators` (one torch.Generator or an iterable of them) as a tuple, each checked."""
    if isinstance(generators, torch.Generator):
        return (generators,)
    try:
        generators = tuple(generators)
    except TypeError:
        raise TypeError(f"generators: expected an iterable of torch.Generator, got {type(generators).__name__}"
                        ) from None
    for i, gen in enumerate(generators):
        if not isinstance(gen, torch.Generator):
            raise TypeError(f"generators[{i}]: expected a torch.Generator, got {type(gen).__name__}")
    return generators


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _first_cause(e: BaseException) -> str:
    """The error the step raised, where the capture's end replaced it with its own (the first in the chain of
    __context__s), then the one that replaced it."""
    chain = [e]
    while chain[-1].__context__ is not None and chain[-1].__context__ not in chain and len(chain) < 8:
        chain.append(chain[-1].__context__)
    first = _line(chain[-1])
    return first if len(chain) == 1 else f"{first} (then, ending the capture: {_line(e)})"


def _graph_device(device, generators: tuple) -> torch.device:
    """The CUDA device the step runs on: `device`, else the generators', else the current one (with its index)."""
    if device is None:
        device = generators[0].device if generators else torch.device("cuda")
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"device: expected a CUDA device such as 'cuda:1', got {device!r} ({e})") from None
    if device.type != "cuda":
        raise ValueError(f"device: a CUDA graph runs on a CUDA device, got {device}")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    for i, gen in enumerate(generators):
        index = gen.device.index if gen.device.index is not None else torch.cuda.current_device()
        if index != device.index:
            raise ValueError(f"generators[{i}]: on {gen.device}, but the step runs on {device}; a graph replays "
                             f"draws from generators on its own device")
    return device


class GraphedStep:
    """Calls `fn()` eagerly `warmup` times (on a side stream, as CUDA graph capture requires), captures the
    next call into a CUDA graph, and from then on replays it.

    fn returns a pytree of tensors (e.g. a dict of detached losses); after capture each call returns the same
    static tensors, overwritten by every replay. `generators`: CUDA torch.Generators (or one) that fn draws from
    (besides the default one); each replay advances them like an eager call would. `device`: the CUDA device the
    step's tensors live on (default: the generators', else the current device), made current around every call,
    so that a step on cuda:1 is captured on cuda:1 whichever device is current. Needs a CUDA device:
    without one the constructor raises GraphCaptureError (use fastgan.graph_check.capture_hazards on the CPU).
    """

    def __init__(self, fn: Callable[[], object], *, warmup: int = 3, generators: Iterable[torch.Generator] = (),
                 device=None):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable (the step), got {type(fn).__name__}")
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral):
            raise TypeError(f"warmup: expected an int, got {type(warmup).__name__}")
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (the eager calls settle the allocator, autograd and "
                             f"lazily built state such as optimizer moments), got {warmup}")
        generators = _as_generators(generators)
        for i, gen in enumerate(generators):
            if gen.device.type != "cuda":
                raise ValueError(f"generators[{i}]: a CUDA graph replays draws from CUDA generators only, got a "
                                 f"generator on {gen.device}")
        # queried here, not at import: importing fastgan must not touch the CUDA driver
        if not torch.cuda.is_available():
            raise GraphCaptureError("CUDA graphs need a CUDA device, and torch sees none (torch.cuda.is_available() "
                                    "is False); run the step eagerly, or check it on the CPU with "
                                    "fastgan.graph_check.capture_hazards")
        self.device = _graph_device(device, generators)
        self.fn, self.warmup = fn, int(warmup)
        self.generators = generators
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_calls = 0
        self.replays = 0
        self._out = None
        self._stream = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _side_stream(self):
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        return self._stream

    def _capture(self) -> None:
        g = torch.cuda.CUDAGraph()
        for gen in self.generators:
            if not hasattr(g, "register_generator_state"):
                raise GraphCaptureError(f"this torch ({torch.__version__}) cannot replay draws from a torch.Generator "
                                        "in a CUDA graph (CUDAGraph.register_generator_state is missing)")
            g.register_generator_state(gen)
        torch.cuda.synchronize(self.device)
        previous = torch.cuda.current_stream(self.device)
        try:
            with torch.cuda.graph(g, stream=self._side_stream()):
                out = self.fn()
        except Exception as e:  # the capture is invalidated: say what broke it, keep the traceback
            # torch.cuda.graph's exit ends the capture even after an error, and that can raise in turn
            # (cudaErrorStreamCaptureInvalidated), skipping the exit of its stream context
            torch.cuda.set_stream(previous)
            raise GraphCaptureError(f"the step could not be captured in a CUDA graph: {_first_cause(e)}") from e
        self.graph, self._out = g, out

    def __call__(self):
        # the step's device made current throughout: its kernels run on the current stream of the tensors'
        # device, and a capture stream or capture check on another device (cuda:0 for a step on cuda:1) would
        # capture nothing while the step ran eagerly, every replay then doing nothing
        with torch.cuda.device(self.device):
            if self.graph is None and self.eager_calls < self.warmup:
                self.eager_calls += 1
                s = self._side_stream()
                try:
                    with torch.cuda.stream(s), warnings.catch_warnings():
                        # capturable optimizers warn that they step outside a capture: these calls exist to precede
                        # one
                        warnings.filterwarnings("ignore", message=r".*capturable=True.*without CUDA graph capture",
                                                category=UserWarning)
                        return self.fn()
                finally:
                    # also when fn raised: a caller that goes on eagerly must not read what the side stream writes
                    torch.cuda.current_stream(self.device).wait_stream(s)
            if self.graph is None:
                self._capture()
            self.graph.replay()
            self.replays += 1
            return self._out
