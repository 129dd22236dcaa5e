"""mode="jvp" under float16 autocast and GradScaler-sized upstream gradients: the cotangent entering D's tangent
graph is upstream * max |v|, as the double backward's, not the upstream itself (which overflowed float16 past
65504: NaN weight gradients, GradScaler skipping D's steps)."""
import pytest
import torch
from torch import nn

import fastgan


def _grads(D, mode, upstream, x):
    D.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        pen, _ = fastgan.ops.r1_penalty(D, x, mode=mode)
    (upstream * pen).backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad for p in D.parameters()]


@pytest.mark.parametrize("upstream", [2.0 ** 16, 2.0 ** 20])
def test_jvp_in_float16_takes_the_upstream_gradient_the_double_backward_takes(upstream):
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    x = torch.randn(32, 2)
    want = _grads(D, "double_backward", upstream, x)
    got = _grads(D, "jvp", upstream, x)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        # float16 activations: both are within a few float16 units of each other, relative to the largest entry
        assert (g - w).abs().max() <= 2e-2 * max(w.abs().max(), 1e-3)


def test_bfloat16_and_float32_keep_the_unscaled_direction(monkeypatch):
    """The normalization costs two kernels: only float16 takes it."""
    from fastgan.ops import _dispatch

    seen = []
    real = _dispatch.autocast_float16
    monkeypatch.setattr(_dispatch, "autocast_float16", lambda d: seen.append(real(d)) or seen[-1])
    D = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fastgan.ops.r1_penalty(D, x, mode="jvp")
    fastgan.ops.r1_penalty(D, x, mode="jvp")
    with torch.autocast("cpu", dtype=torch.float16):
        fastgan.ops.r1_penalty(D, x, mode="jvp")
    assert seen == [False, False, True]
