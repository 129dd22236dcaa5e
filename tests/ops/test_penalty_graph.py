"""The graph the penalty op leaves for the D update's backward: in the default mode (the double backward) a D whose
logits are already (B,) on inputs already (B, F) gets no view node from the op's path (each such node is run by
the update's backward and again by the double backward's: 3790a21 and _logits_of). Mutation checks: `_logits_of`
reshaping every logits, or `_penalty_of` every grad, leaves ViewBackward0 nodes (fails both tests)."""
import pytest
import torch

from fastgan.ops import gradient_penalty, js_penalty
from fastgan.ops.penalty_create_graph import graph_nodes


def _nodes(t: torch.Tensor) -> list[str]:
    return [type(node).__name__ for node in graph_nodes(t)]


def _views(t: torch.Tensor) -> list[str]:
    return [n for n in _nodes(t) if "View" in n or "Reshape" in n or "Alias" in n]


class _FlatD(torch.nn.Module):
    """Logits of shape (B,) made without a view (mv, not a Linear to (B, 1) and a reshape)."""

    def __init__(self, f: int):
        super().__init__()
        self.hidden = torch.nn.Linear(f, 8)
        self.out = torch.nn.Parameter(torch.randn(8))

    def forward(self, x):
        return torch.mv(torch.relu(self.hidden(x)), self.out)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradient_penalty_adds_no_view_nodes(backend):
    torch.manual_seed(0)
    D = _FlatD(3)
    pen, logits = gradient_penalty(D, torch.randn(16, 3), "js_real", backend=backend)
    assert _views(pen) == [], _nodes(pen)
    assert logits.grad_fn is not None and "View" not in type(logits.grad_fn).__name__
    pen.backward()
    assert all(p.grad is not None for p in D.parameters())


def test_js_penalty_adds_no_view_nodes():
    torch.manual_seed(1)
    D = _FlatD(5)
    omega, lr, lf = js_penalty(D, torch.randn(12, 5), torch.randn(12, 5))
    assert _views(omega) == [], _nodes(omega)
    assert lr.shape == lf.shape == (12,)


def test_column_logits_still_reshaped():
    """A D returning (B, 1) still yields (B,) logits: the reshape is kept where the shape needs it."""
    torch.manual_seed(2)
    D = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    pen, logits = gradient_penalty(D, torch.randn(16, 3), "js_real")
    assert logits.shape == (16,)
    assert "ViewBackward0" in _views(pen)
