"""Penalty modes on Ds whose modules are reached twice or change after a first call, and on inputs made under
inference_mode, in float64 against the double backward of fastgan.reference.penalty:
- jvp's dual forward ran through torch.func.functional_call, which does not put the buffers back in a module D
  reaches under two names: D kept jvp's clones, its BatchNorm running statistics frozen;
- "auto" keyed its one-time jvp verdict on the batch and training flags only: a layer swapped in later (one the
  check would have refused) ran jvp unchecked;
- "double_backward" and "jvp" refused an inference tensor that "mlp" took."""
import copy
import warnings

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

from fastgan.ops import _dispatch, gradient_penalty, js_penalty
from fastgan.reference import penalty as ref

from helpers import auto_as_on_cuda  # tests/ on sys.path

MODES = ["double_backward", "jvp", "mlp", "auto"]


class _Aliased(nn.Module):
    """A BatchNorm reached as net[1] and as the attribute bn (one module, two names)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
        self.bn = self.net[1]

    def forward(self, x):
        return self.net(x)


def _used_twice():
    block = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Tanh())
    return nn.Sequential(block, block, nn.Linear(4, 1))


@pytest.mark.parametrize("make", [_Aliased, _used_twice], ids=["attribute_alias", "module_used_twice"])
@pytest.mark.parametrize("create_graph", [False, True])
def test_jvp_keeps_running_statistics_of_a_module_reached_twice(make, create_graph):
    torch.manual_seed(0)
    D = make().double()
    D_ref = copy.deepcopy(D)
    bns = [m for m in D.modules() if isinstance(m, nn.BatchNorm1d)]
    held = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in bns]
    for step in range(3):
        xr, xf = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
        pen, _, _ = js_penalty(D, xr, xf, mode="jvp")
        want, _, _ = ref.js_penalty(D_ref, xr, xf)
        params, params_ref = list(D.parameters()), list(D_ref.parameters())
        got = torch.autograd.grad(pen, params, create_graph=create_graph, allow_unused=True)
        exp = torch.autograd.grad(want, params_ref, create_graph=create_graph, allow_unused=True)
        torch.testing.assert_close(pen, want)
        for a, b in zip(got, exp):
            if b is not None:
                torch.testing.assert_close(a, b)
        if create_graph:  # the replay of the double backward (a second derivative) also ran with clones
            sum(g.sum() for g in got if g is not None).backward()
    for m, m_ref, (mean, var, count) in zip(bns, [m for m in D_ref.modules() if isinstance(m, nn.BatchNorm1d)], held):
        assert m.running_mean is mean and m.running_var is var and m.num_batches_tracked is count
        torch.testing.assert_close(m.running_mean, m_ref.running_mean)
        torch.testing.assert_close(m.running_var, m_ref.running_var)
        assert int(m.num_batches_tracked) == int(m_ref.num_batches_tracked) > 0


class _OwnGeneratorDropout(nn.Module):
    """Draws from its own torch.Generator, which jvp's replay cannot rewind: the double backward runs such a D."""

    def __init__(self):
        super().__init__()
        self.g = torch.Generator().manual_seed(123)

    def forward(self, x):
        return x * (torch.rand(x.shape, generator=self.g, dtype=x.dtype) > 0.5) * 2


def test_auto_checks_jvp_again_after_a_layer_is_swapped_in(monkeypatch):
    auto_as_on_cuda(monkeypatch)
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 16), nn.GELU(), nn.Identity(), nn.Linear(16, 1)).double()
    xr, xf = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    jvp_before = _dispatch.counts[("gradient_penalty", "jvp")]
    js_penalty(D, xr, xf, mode="auto")
    assert _dispatch.counts[("gradient_penalty", "jvp")] > jvp_before  # jvp checked and taken
    D[2] = _OwnGeneratorDropout()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        js_penalty(D, xr, xf, mode="auto")  # checked again: jvp cannot replay the layer's draws
    assert any(issubclass(w.category, _dispatch.FallbackWarning) for w in caught)
    D_ref = copy.deepcopy(D)  # the same generator state
    before = _dispatch.counts[("gradient_penalty", "double_backward")]
    pen, _, _ = js_penalty(D, xr, xf, mode="auto")
    assert _dispatch.counts[("gradient_penalty", "double_backward")] == before + 2
    want, _, _ = ref.js_penalty(D_ref, xr, xf)
    torch.testing.assert_close(pen, want)
    for a, b in zip(torch.autograd.grad(pen, list(D.parameters())[:-1]),
                    torch.autograd.grad(want, list(D_ref.parameters())[:-1])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_inputs_made_under_inference_mode_run_in_every_mode(mode):
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)).double()
    with torch.inference_mode():
        xr, xf = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    pen, lr, lf = js_penalty(D, xr, xf, mode=mode)
    want, _, _ = ref.js_penalty(D, xr.clone(), xf.clone())
    torch.testing.assert_close(pen, want)
    loss = pen + F.softplus(-lr).mean() + F.softplus(lf).mean()
    loss.backward()
    assert all(p.grad is not None for p in D.parameters())
    pen1, _ = gradient_penalty(D, xr, mode=mode)
    assert torch.isfinite(pen1)


@pytest.mark.parametrize("call", ["gradient_penalty", "js_penalty", "r1_penalty", "compiled"])
def test_the_fallback_warning_names_the_callers_line(monkeypatch, call):
    """It pointed into fastgan's penalty.py for js_penalty/r1_penalty (a fixed stacklevel, set for gradient_penalty)."""
    from fastgan.ops import r1_penalty

    auto_as_on_cuda(monkeypatch)
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 16), nn.GELU(), _OwnGeneratorDropout(), nn.Linear(16, 1)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if call == "gradient_penalty":
            gradient_penalty(D, x, mode="auto")
        elif call == "js_penalty":
            js_penalty(D, x, x, mode="auto")
        elif call == "compiled":  # torch.compiler.disable's frame between fastgan's
            torch._dynamo.reset()
            torch.compile(lambda a: gradient_penalty(D, a, mode="auto")[0], backend="eager")(x)
        else:
            r1_penalty(D, x, mode="auto")
    fallbacks = [w for w in caught if issubclass(w.category, _dispatch.FallbackWarning)]
    assert fallbacks and all(w.filename == __file__ for w in fallbacks), [(w.filename, w.lineno) for w in fallbacks]
