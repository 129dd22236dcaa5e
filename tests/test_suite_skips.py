"""The suite's own rule for the Triton tests (tests/conftest.py): where fastgan's triton backend cannot run (no
triton, or one older than 3.4 as torch 2.5-2.7 pin), they skip naming the reason, as the CUDA tests do without a
GPU; FASTGAN_REQUIRE_TRITON=1 (CI, tools/gpu_check.sh) makes that an error, so nothing is skipped there unseen.
Before: every Triton test failed on such a machine (633 on torch 2.5.1 with its triton 3.1)."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fastgan.ops import _dispatch

# tests/conftest.py by path: `import conftest` can find bench's, which pytest also loaded
_spec = importlib.util.spec_from_file_location("fastgan_tests_conftest", Path(__file__).with_name("conftest.py"))
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)


class _Item:
    def __init__(self, name, backend=None, marker=None):
        self.name = self.originalname = name
        self.callspec = SimpleNamespace(params={"backend": backend} if backend else {})
        self.marker, self.marks = marker, []

    def get_closest_marker(self, name):
        return object() if name == self.marker else None

    def add_marker(self, mark):
        self.marks.append(mark)


def test_the_triton_tests_skip_saying_why_where_triton_cannot_run(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_status", lambda device: (False, "triton 3.1 is older than 3.4"))
    monkeypatch.delenv("FASTGAN_REQUIRE_TRITON", raising=False)
    items = [_Item("test_a", "triton"), _Item("test_b", "cpu"), _Item("test_c_triton"), _Item("test_d", marker="triton"),
             _Item("test_triton_paths")]
    conftest._skip_triton_where_it_cannot_run(items, torch.device("cpu"))
    assert [len(i.marks) for i in items] == [1, 0, 1, 1, 1]
    assert items[0].marks[0].kwargs["reason"] == "fastgan's triton backend cannot run here: triton 3.1 is older than 3.4"
    monkeypatch.setenv("FASTGAN_REQUIRE_TRITON", "1")
    with pytest.raises(pytest.UsageError, match=r"^FASTGAN_REQUIRE_TRITON=1, but fastgan's triton backend cannot run "
                                                r"here: triton 3\.1 is older than 3\.4"):
        conftest._skip_triton_where_it_cannot_run([_Item("test_a", "triton")], torch.device("cpu"))


def test_nothing_skips_where_triton_runs(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_status", lambda device: (True, ""))
    items = [_Item("test_a", "triton"), _Item("test_d", marker="triton")]
    conftest._skip_triton_where_it_cannot_run(items, torch.device("cpu"))
    assert not any(i.marks for i in items)


def test_on_a_gpu_machine_the_triton_tests_of_cpu_tensors_skip_without_the_interpreter(monkeypatch):
    """A GPU visible, no TRITON_INTERPRET: Triton cannot run on CPU tensors, so every Triton test not marked `cuda`
    skips, by parameter, name (either end) or mark; `cuda`-marked ones and the rest run. Before, only the backend
    parameter and the _triton suffix counted: 182 items named test_triton_... or marked `triton` launched Triton
    on CPU tensors (counted under the interpreter), which fails there, in a plain `pytest` (a review)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_dispatch, "triton_interpret", lambda: False)
    monkeypatch.setattr(_dispatch, "triton_status", lambda device: (True, ""))
    items = [_Item("test_a", "triton"), _Item("test_c_triton"), _Item("test_d", marker="triton"),
             _Item("test_triton_paths"), _Item("test_b", "cpu"), _Item("test_e"), _Item("test_f", marker="cuda")]
    gpu = _Item("test_triton_on_the_gpu", marker="cuda")
    conftest.pytest_collection_modifyitems(None, [*items, gpu])
    assert [len(i.marks) for i in items] == [1, 1, 1, 1, 0, 0, 0]
    assert "TRITON_INTERPRET=1" in items[2].marks[0].kwargs["reason"] and not gpu.marks
