"""A snapshot of a NoiseState taken between two draws inside a torch.compile'd function (docs/ops/ntgan.md).

torch's inductor (2.13 at least) returns a wrong snapshot for `state.tensor.clone()` (or `torch.clone`) taken between
two draws and returned: its joint-graph pass `remove_noop_ops` drops the clone as a no-op of the functional graph,
and its reinplacing pass then writes the first draw into the input buffer, which the graph's epilogue overwrites with
the final state, so the "snapshot" is the state after the second draw. Plain torch does the same (an in-place
`t[1:2].add_(3)` on a graph input, cloned, then again): torch's bug, not the op's declaration. What fastgan documents:
the eager path, aot_eager, and `NoiseState.clone()` / `get_state()` (a graph break: they take the CPU lock) give the
snapshot between the draws under inductor too."""
import pytest
import torch

from fastgan.ops import NoiseState, noisy_clean_batch

SEED = 7
# (4, 3) batches, mode "double": 12 normals a draw, 3 Philox counters
AFTER_ONE, AFTER_TWO = [SEED, 3, 0], [SEED, 6, 0]


def _inductor_unavailable():
    """Why inductor cannot compile CPU code here (None: it can)."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python/platform"
    try:
        from torch._inductor import cpp_builder
        cpp_builder.get_cpp_compiler()
    except (ImportError, AttributeError, RuntimeError) as e:  # no C++ compiler (InvalidCxxCompiler), an older torch
        return f"inductor's CPU backend needs a C++ compiler: {type(e).__name__}: {e}"
    return None


_NO_INDUCTOR = _inductor_unavailable()


def _snapshot(how, st):
    if how == "NoiseState.clone":
        return st.clone().tensor
    if how == "get_state":
        return st.get_state()
    if how == "tensor.clone":
        return st.tensor.clone()
    raise AssertionError(how)


def _step(how):
    def f(x, st):
        a, _ = noisy_clean_batch(x, None, 1.0, state=st, backend="cpu")
        snap = _snapshot(how, st)
        b, _ = noisy_clean_batch(x, None, 1.0, state=st, backend="cpu")
        return a, b, snap
    return f


def _run(how, backend):
    torch._dynamo.reset()
    x = torch.zeros(4, 3)
    st = NoiseState(SEED)
    f = _step(how)
    a, b, snap = (f if backend is None else torch.compile(f, backend=backend))(x, st)
    torch._dynamo.reset()
    return a, b, snap.tolist(), st.tensor.tolist()


@pytest.mark.parametrize("how", ["tensor.clone", "NoiseState.clone", "get_state"])
def test_snapshot_between_draws_eager(how):
    a, b, snap, final = _run(how, None)
    assert snap == AFTER_ONE and final == AFTER_TWO
    assert not torch.equal(a, b)


@pytest.mark.parametrize("how", ["tensor.clone", "NoiseState.clone", "get_state"])
def test_snapshot_between_draws_aot_eager(how):
    want = _run(how, None)
    a, b, snap, final = _run(how, "aot_eager")
    assert snap == AFTER_ONE and final == AFTER_TWO
    torch.testing.assert_close((a, b), want[:2], rtol=0, atol=0)


@pytest.mark.skipif(_NO_INDUCTOR is not None, reason=f"inductor unavailable: {_NO_INDUCTOR}")
@pytest.mark.parametrize("how", ["NoiseState.clone", "get_state"])
def test_noise_state_snapshot_between_draws_inductor(how):
    """The documented way to snapshot inside a compiled step: right under inductor (a graph break; fullgraph=True
    refuses it, Dynamo cannot enter the draws' lock)."""
    want = _run(how, None)
    a, b, snap, final = _run(how, "inductor")
    assert snap == AFTER_ONE and final == AFTER_TWO
    torch.testing.assert_close((a, b), want[:2], rtol=0, atol=0)

