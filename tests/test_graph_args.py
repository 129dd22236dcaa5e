"""Bad arguments to fastgan.graph.GraphedStep and fastgan.graph_check.capture_hazards: an error naming the
argument at the call that made it, never one from deep inside torch at the first step."""
import subprocess
import sys

import pytest
import torch

from fastgan.graph import GraphCaptureError, GraphedStep
from fastgan.graph_check import capture_hazards


@pytest.mark.parametrize("fn", [None, 3, "step"])
def test_graphed_step_fn_must_be_callable(fn):
    with pytest.raises(TypeError, match="^fn: expected a callable"):
        GraphedStep(fn)


@pytest.mark.parametrize("warmup", [1.5, "3", True, None])
def test_graphed_step_warmup_must_be_an_int(warmup):
    with pytest.raises(TypeError, match="^warmup: expected an int"):
        GraphedStep(lambda: None, warmup=warmup)


def test_graphed_step_warmup_must_be_positive():
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        GraphedStep(lambda: None, warmup=-2)


def test_graphed_step_generators_must_be_cuda_generators():
    with pytest.raises(ValueError, match=r"^generators\[0\]: a CUDA graph replays draws from CUDA generators only"):
        GraphedStep(lambda: None, generators=(torch.Generator(),))
    with pytest.raises(ValueError, match=r"^generators\[0\]: .* on cpu"):
        GraphedStep(lambda: None, generators=torch.Generator())
    with pytest.raises(TypeError, match=r"^generators\[0\]: expected a torch.Generator, got int"):
        GraphedStep(lambda: None, generators=[0])
    with pytest.raises(TypeError, match="^generators: expected an iterable of torch.Generator, got NoneType"):
        GraphedStep(lambda: None, generators=None)


def test_graphed_step_without_cuda_says_so(monkeypatch):
    # before: constructed fine, then torch's "torch.cuda.Stream requires CUDA support" at the first call
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GraphCaptureError, match="CUDA graphs need a CUDA device"):
        GraphedStep(lambda: None)


def test_importing_the_graph_modules_does_not_touch_cuda():
    code = ("import torch\n"
            "def no(*a, **k): raise AssertionError('torch.cuda.is_available() called at import')\n"
            "torch.cuda.is_available = no\n"
            "import fastgan.graph, fastgan.graph_check\n"
            "assert not torch.cuda.is_initialized()\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _step():
    x = torch.ones(4)
    return lambda: x * 2


@pytest.mark.parametrize("warmup, exc", [(-1, ValueError), (1.5, TypeError), ("3", TypeError), (False, TypeError)])
def test_capture_hazards_warmup_must_be_a_non_negative_int(warmup, exc):
    with pytest.raises(exc, match="^warmup: "):
        capture_hazards(_step(), warmup=warmup)


@pytest.mark.parametrize("limit, exc", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_capture_hazards_limit_must_be_positive(limit, exc):
    # limit 0 returned [] and -1 dropped the last problem: both hid what breaks the graph
    with pytest.raises(exc, match="^limit: "):
        capture_hazards(_step(), limit=limit)


def test_capture_hazards_limit_none_lists_everything_and_warmup_0_is_allowed():
    x = torch.ones(4)
    calls = []

    def step():
        calls.append(1)
        a = float(x.sum())  # three host reads, on three lines (reads at one line are one problem)
        b = float(x[0])
        return x * a + b + float(x[1])

    assert len(capture_hazards(step, warmup=0, limit=None)) == 3 and len(calls) == 2
    assert len(capture_hazards(step, limit=2)) == 2


def test_capture_hazards_other_arguments():
    with pytest.raises(TypeError, match="^fn: expected a callable"):
        capture_hazards(None)
    with pytest.raises(TypeError, match="^before: expected a callable"):
        capture_hazards(_step(), before=3)
    with pytest.raises(TypeError, match=r"^generators\[1\]: expected a torch.Generator, got str"):
        capture_hazards(_step(), generators=(torch.Generator(), "g"))
    assert capture_hazards(_step(), generators=torch.Generator()) == []  # any device: the check runs on the CPU


def test_a_failed_capture_names_the_steps_own_error_first():
    """torch.cuda.graph's exit ends the capture after the step raised, and that raises in turn: the error the
    step raised is the one to name (the first of the __context__ chain), the capture's own after it."""
    from fastgan.graph import _first_cause

    try:
        try:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")
        except RuntimeError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as e:
        got = _first_cause(e)
    assert got == ("RuntimeError: CUDA error: operation not permitted when stream is capturing (then, ending the "
                   "capture: RuntimeError: CUDA error: operation failed due to a previous error during capture)")
    assert _first_cause(ValueError("alone")) == "ValueError: alone"
    assert _first_cause(KeyError()) == "KeyError"


def test_a_failed_capture_names_the_first_error_of_a_longer_chain():
    from fastgan.graph import _first_cause

    try:
        try:
            try:
                raise RuntimeError("the step's own error")
            except RuntimeError:
                raise RuntimeError("second")
        except RuntimeError:
            raise RuntimeError("third")
    except RuntimeError as e:
        got = _first_cause(e)
    assert got == "RuntimeError: the step's own error (then, ending the capture: RuntimeError: third)"
