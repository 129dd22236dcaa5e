"""A CPU stand-in for CUDA-graph capture and replay, to check the trainer's graphed steps without a GPU.

Capture: the step runs once under a TorchDispatchMode that records every ATen op (its function, arguments and
outputs). Replay: each recorded op runs again on the same tensor objects (fixed addresses, as a graph's) and its
result is copied into the recorded outputs; none of the Python around the ops runs again, as in a CUDA graph. So a
value the step computes on the host once (a schedule read with float(), a tensor rebound instead of written in
place) stays frozen at its captured value, as on a GPU. Draws from torch generators give fresh numbers on every
replay, as a generator registered with a graph does. Kernels called through raw pointers are invisible to the
recorder: run the reference backend, or keep fastgan's custom ops (custom_ops=True), each then one recorded op.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fastgan.graph_check import _eager_path_while_recording
from fastgan.methods.step import _set_flags, optimizer_flags


class Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _replay(ops, problems):
    with torch._C._AutoDispatchBelowAutograd(), torch.no_grad():
        for func, args, kwargs, out in ops:
            new = func(*args, **kwargs)
            for o, n in zip(tree_flatten(out)[0], tree_flatten(new)[0]):
                if not isinstance(o, torch.Tensor):
                    continue
                if o.shape != n.shape:
                    problems.append(f"{func}: shape {tuple(o.shape)} at capture, {tuple(n.shape)} at replay")
                elif o.numel() and not (o.data_ptr() == n.data_ptr() and o.stride() == n.stride()):
                    torch.ops.aten.copy_.default(o, n)


class EmulatedGraphedStep:
    """fastgan.graph.GraphedStep's interface on the CPU: `warmup` eager calls, one recorded call, then replays."""
    instances: list = []
    custom_ops = False

    def __init__(self, fn, *, warmup=3, generators=(), device=None):
        self.fn, self.warmup = fn, warmup
        self.eager_calls = self.replays = 0
        self.ops, self.out, self.problems = None, None, []
        EmulatedGraphedStep.instances.append(self)

    @property
    def captured(self):
        return self.ops is not None

    def __call__(self):
        if self.ops is None and self.eager_calls < self.warmup:
            self.eager_calls += 1
            return self.fn()
        if self.ops is None:
            # the recorder alone must not send the ops to their custom-op (traced) path, unless asked to
            paths = contextlib.nullcontext() if self.custom_ops else _eager_path_while_recording(Recorder)
            with paths, Recorder() as rec:
                self.out = self.fn()
            self.ops = rec.ops
            return self.out
        _replay(self.ops, self.problems)
        self.replays += 1
        return self.out


def optimizers_as_graphed(method) -> None:
    """Give a CPU-built method's optimizers the flags a run.cuda_graph run builds them with (capturable Adam,
    torch's default implementation, not auto's CPU choice of fused)."""
    run = dataclasses.replace(method.cfg.run, cuda_graph=True)
    for opt in method.optimizers.values():
        _set_flags(opt, optimizer_flags(run, method.device, method.cfg.optim.optimizer))
