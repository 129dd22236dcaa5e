"""A penalty step leaves no cyclic garbage: what it allocates is freed by reference counting as soon as the step's
references go, without the cyclic GC (which runs at unpredictable times and, on a GPU, would hold memory until
then)."""
import gc

import pytest
import torch
from torch import nn

from fastgan import ops
from fastgan.ops import dual_rules


def _cyclic_objects_per_step(step, n=20, windows=3) -> float:
    """The fewest cyclic objects a step of `step` left over `windows` runs of n steps: a step that makes cycles
    makes them in every window, while objects from before (the compiled graphs of torch.compile tests run earlier
    in this process, which Dynamo's caches let go of later) are released, as cycles, in one window at most."""
    for _ in range(3):
        step()
    gc.collect()
    counts = []
    for _ in range(windows):
        gc.disable()
        try:
            for _ in range(n):
                step()
            counts.append(gc.collect() / n)
        finally:
            gc.enable()
    return min(counts)


@pytest.mark.parametrize("mode", ["double_backward", "jvp", "mlp"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_a_create_graph_penalty_step_leaves_no_cyclic_garbage(mode, backend):
    """jvp's create_graph replay runs under DualRules, whose unwrapping of dual tensors under no_grad went through
    torch's tree_map_only: 84 (cpu) / 126 (reference) cyclic objects a step before 2026-12-04."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    x = torch.randn(8, 3)

    def step():
        pen, logits = ops.gradient_penalty(D, x, "js_fake", mode=mode, backend=backend)
        grads = torch.autograd.grad(pen + logits.mean(), list(D.parameters()), create_graph=True)
        sum(g.pow(2).sum() for g in grads).backward()

    assert _cyclic_objects_per_step(step) == 0


def test_dual_rules_unwraps_every_container_torch_passes():
    from torch.autograd import forward_ad as fwAD
    from collections import OrderedDict, defaultdict, deque, namedtuple

    from torch.fx.immutable_collections import immutable_dict

    Pair = namedtuple("Pair", "a b")
    with fwAD.dual_level():
        d = fwAD.make_dual(torch.ones(2), torch.ones(2))
        got = dual_rules._primals(([d, (d, 3)], {"k": d}, Pair(d, "s"), OrderedDict(k=d), defaultdict(int, k=d)))
        lst, dct, pair, od, dd = got
        leaves = [lst[0], lst[1][0], dct["k"], pair.a, od["k"], dd["k"]]
        assert fwAD.unpack_dual(d).tangent is not None
        assert all(fwAD.unpack_dual(t).tangent is None for t in leaves)
        frozen, dq = dual_rules._primals((immutable_dict(k=d), deque([d])))  # torch's own walk for these
        assert fwAD.unpack_dual(frozen["k"]).tangent is None and fwAD.unpack_dual(dq[0]).tangent is None
    size = dual_rules._primals(torch.Size([2, 3]))
    assert type(size) is torch.Size and size == (2, 3)
    assert lst[1][1] == 3 and pair.b == "s" and type(pair) is Pair and type(od) is OrderedDict
    assert type(dd) is defaultdict and dd.default_factory is int
