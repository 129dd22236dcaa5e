"""GraphedStep on a CUDA device that is not the current one (run.device=cuda:1 while cuda:0 is current).

Before: the side stream and the capture were made on the current device, while the step's kernels ran on
cuda:1's own current stream: the capture recorded nothing, the step ran eagerly once, and every replay did
nothing (parameters frozen at the step the graph was captured). torch.cuda is replaced by a stand-in that
keeps a current device the way torch's device and stream contexts do, so this runs without a GPU."""
import contextlib

import pytest
import torch

from fastgan.graph import GraphedStep


class _FakeCuda:
    def __init__(self, current: int):
        self.current, self.log = current, []
        fake = self

        class Stream:
            def __init__(self, device=None, **kw):
                self.device = torch.device("cuda", fake._index(device))

            def wait_stream(self, other):
                fake.log.append(("wait", self.device.index, other.device.index))

        class CUDAGraph:
            def register_generator_state(self, gen):
                pass

            def replay(self):
                fake.log.append(("replay", fake.current))

        self.Stream, self.CUDAGraph = Stream, CUDAGraph

    def _index(self, device):
        if device is None:
            return self.current
        device = torch.device(device)
        return device.index if device.index is not None else self.current

    @contextlib.contextmanager
    def _switch(self, index):
        before, self.current = self.current, index
        try:
            yield
        finally:
            self.current = before

    def install(self, monkeypatch):
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "device", lambda d: self._switch(self._index(d)))
        monkeypatch.setattr(cuda, "Stream", self.Stream)
        monkeypatch.setattr(cuda, "CUDAGraph", self.CUDAGraph)
        monkeypatch.setattr(cuda, "current_stream", lambda device=None: self.Stream(device))
        # as torch's StreamContext: a stream of another device makes that device current
        monkeypatch.setattr(cuda, "stream", lambda s: self._switch(s.device.index))
        monkeypatch.setattr(cuda, "synchronize", lambda device=None: self.log.append(("sync", self._index(device))))
        monkeypatch.setattr(cuda, "set_stream", lambda s: None)

        @contextlib.contextmanager
        def graph(g, stream=None, **kw):
            self.log.append(("capture on", stream.device.index))
            with self._switch(stream.device.index):
                yield

        monkeypatch.setattr(cuda, "graph", graph)


def test_a_step_on_another_device_is_warmed_captured_and_replayed_there(monkeypatch):
    fake = _FakeCuda(current=0)
    fake.install(monkeypatch)
    seen = []
    step = GraphedStep(lambda: seen.append(fake.current), warmup=2, device="cuda:1")
    assert step.device == torch.device("cuda", 1)
    for _ in range(4):
        step()
    assert seen == [1, 1, 1]  # two warm-ups, then the captured call
    assert ("capture on", 1) in fake.log and ("capture on", 0) not in fake.log
    assert [e for e in fake.log if e[0] == "replay"] == [("replay", 1), ("replay", 1)]
    assert ("sync", 1) in fake.log and ("sync", 0) not in fake.log
    assert all(e[1:] == (1, 1) for e in fake.log if e[0] == "wait")
    assert fake.current == 0  # the caller's current device is left as it was


def test_the_device_defaults_to_the_current_one_with_its_index(monkeypatch):
    fake = _FakeCuda(current=2)
    fake.install(monkeypatch)
    assert GraphedStep(lambda: None).device == torch.device("cuda", 2)
    assert GraphedStep(lambda: None, device="cuda").device == torch.device("cuda", 2)


@pytest.mark.parametrize("device, match", [("cpu", "^device: a CUDA graph runs on a CUDA device, got cpu"),
                                           ("gpu7", "^device: expected a CUDA device such as 'cuda:1', got 'gpu7'"),
                                           (3.5, "^device: expected a CUDA device")])
def test_a_device_that_is_not_cuda_is_refused(monkeypatch, device, match):
    _FakeCuda(current=0).install(monkeypatch)
    with pytest.raises(ValueError, match=match):
        GraphedStep(lambda: None, device=device)


def test_the_warm_ups_silence_the_capturable_optimizers_warning_only(monkeypatch, recwarn):
    # each warm-up's capturable Adam said "step() is running without CUDA graph capture": by design here
    import warnings

    _FakeCuda(current=0).install(monkeypatch)

    def fn():
        warnings.warn("This instance was constructed with capturable=True or some of all the param_groups came with "
                      "capturable=True, but step() is running without CUDA graph capture. If you never ...",
                      UserWarning)
        warnings.warn("something else", UserWarning)

    GraphedStep(fn, warmup=1)()
    assert [str(w.message) for w in recwarn] == ["something else"]


def test_a_warm_up_that_raises_still_joins_the_side_stream(monkeypatch):
    # a caller that catches the error and goes on eagerly must not read what the side stream may still write
    fake = _FakeCuda(current=0)
    fake.install(monkeypatch)

    def fn():
        raise RuntimeError("out of memory")

    step = GraphedStep(fn, warmup=2, device="cuda:1")
    with pytest.raises(RuntimeError, match="out of memory"):
        step()
    waits = [e for e in fake.log if e[0] == "wait"]
    assert waits[-1] == ("wait", 1, 1), "the caller's stream waits on the side stream after a failed warm-up"
    assert len(waits) == 2  # the side stream on the caller's (before fn), the caller's on the side stream (after)
    assert fake.current == 0
