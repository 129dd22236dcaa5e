"""The cpu backend's squared row norms of float32 rows take 16 float lanes over every whole group of 16 elements,
flushed into a double sum every 256: rows of 16-255 elements (and a row's last F % 256) were summed one element at
a time in double until 2026-12-08, a dependent chain that made the op 1.2-2.3x torch's time at B = 4096. The lanes
are seen by what a float lane loses (a square below half an ulp of the lane's sum), and their error is held to
the rule every op meets: at most 2x torch's own float32 error against float64."""
import pytest
import torch

from fastgan.ops import grad_norm_penalty


def _rows(F: int, n_ones: int = 16) -> torch.Tensor:
    """One row: ones in the first n_ones elements (each lane's sum starts at 1), then squares of 5e-8, each
    below half an ulp of 1 in float32 (5.96e-8): a float lane holding 1 loses every one of them."""
    g = torch.full((1, F), 5e-8 ** 0.5)
    g[0, :n_ones] = 1.0
    return g


def _norm(g: torch.Tensor, backend: str) -> float:
    return grad_norm_penalty(g, torch.zeros(g.shape[0]), "one", "sum", backend=backend).item()


@pytest.mark.parametrize("F", [48, 100, 240, 255])
def test_short_rows_take_the_float_lanes(F):
    g = _rows(F)
    assert _norm(g, "cpu") == 16.0  # every small square lost in its lane
    # the double sum keeps them, visible in the float32 result from 32 of them (F = 48)
    assert torch.tensor((g.double() ** 2).sum().item(), dtype=torch.float32).item() > 16.0


@pytest.mark.parametrize("F", [3, 15])
def test_rows_under_a_group_of_16_are_summed_in_double(F):
    g = torch.full((1, F), 5e-8 ** 0.5)
    g[0, 0] = 1e-3  # a small lead: the double sum is exact to float32's last bit
    want = torch.tensor((g.double() ** 2).sum().item(), dtype=torch.float32).item()
    assert _norm(g, "cpu") == want


@pytest.mark.parametrize("F", [16, 17, 31, 64, 100, 255, 256, 300, 529, 767])
@pytest.mark.parametrize("seed", range(3))
def test_lanes_error_within_twice_torchs(F, seed):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(64, F, generator=gen) * torch.rand(64, 1, generator=gen).pow(4) * 10
    exact = g.double().pow(2).sum(1)
    torch_err = (g.pow(2).sum(1).double() - exact).abs()
    got = torch.stack([torch.tensor(_norm(g[i:i + 1], "cpu"), dtype=torch.float64) for i in range(g.shape[0])])
    ulp = torch.finfo(torch.float32).eps * exact  # the output's own rounding to float32
    assert ((got - exact).abs() <= 2 * torch_err + ulp).all()
