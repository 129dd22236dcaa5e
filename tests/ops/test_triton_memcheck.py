"""The interpreter's memory check (tests/triton_memcheck.py), which tests/conftest.py turns on for every test that
runs a fused op's Triton backend on CPU tensors: it must pass in-bounds and masked accesses and stop loads, stores
and atomics outside the launch's tensors, naming the kernel."""
from __future__ import annotations

import pytest
import torch

from fastgan.ops._dispatch import triton_interpret

triton = pytest.importorskip("triton")
if not triton_interpret():
    pytest.skip("checks the Triton interpreter (CPU runs)", allow_module_level=True)

import triton.language as tl  # noqa: E402

import triton_memcheck  # noqa: E402

pytestmark = pytest.mark.triton  # it hooks the interpreter of the tritons fastgan runs on (>= 3.4)


@triton.jit
def _copy(src, dst, n, EXTRA: tl.constexpr, MASKED: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    if MASKED:
        x = tl.load(src + offs, mask=offs < n + EXTRA)
        tl.store(dst + offs, x, mask=offs < n)
    else:
        x = tl.load(src + offs)
        tl.store(dst + offs, x)


@triton.jit
def _store_past(dst, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.zeros([BLOCK], dtype=tl.float32), mask=offs <= n)


@triton.jit
def _atomic_past(dst, n):
    tl.atomic_add(dst + n, 1.0)


def test_in_bounds_and_masked_accesses_pass():
    src, dst = torch.arange(16.0), torch.zeros(16)
    with triton_memcheck.active():
        _copy[(1,)](src, dst, 16, 0, False, 16)  # exactly the tensors
        _copy[(1,)](src[:10], dst[:10], 10, 0, True, 16)  # a block wider than the tensors, masked
    assert torch.equal(dst, torch.arange(16.0))


def test_load_past_a_views_end_is_stopped():
    buf = torch.arange(32.0)
    with triton_memcheck.active(), pytest.raises(Exception, match=r"Triton kernel _copy: load of 1 element"):
        _copy[(1,)](buf[:10], torch.zeros(10), 10, 1, True, 16)  # one past the view: still inside buf
    with triton_memcheck.active(), pytest.raises(Exception, match=r"Triton kernel _copy: load of 6 element"):
        _copy[(1,)](torch.arange(10.0), torch.zeros(16), 16, 0, False, 16)


def test_store_and_atomic_past_the_end_are_stopped():
    dst = torch.zeros(8)
    with triton_memcheck.active(), pytest.raises(Exception, match=r"_store_past: store of 1 element.*0 bytes past"):
        _store_past[(1,)](dst, 8, 16)
    with triton_memcheck.active(), pytest.raises(Exception, match=r"_atomic_past: atomic of 1 element"):
        _atomic_past[(1,)](dst, 8)


def test_nested_activation_restores_the_check():
    with triton_memcheck.active():
        pass
    with triton_memcheck.active(), pytest.raises(Exception, match="_store_past: store"):
        _store_past[(1,)](torch.zeros(8), 8, 16)
