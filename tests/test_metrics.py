"""Parzen-window log-likelihood (Goodfellow et al. Table 1) and mixture mode metrics, on hand-checkable data."""
import math

import pytest
import torch

from fastgan.data import mixtures
from fastgan.metrics import mode_metrics, parzen_log_likelihood, parzen_score, select_sigma


def test_parzen_single_kernel_is_a_gaussian_density():
    s = torch.tensor([[0.0, 0.0]])
    x = torch.tensor([[1.0, 2.0]])
    sigma = 0.5
    # log N(x; s, sigma^2 I) = -||x - s||^2 / (2 sigma^2) - log(2 pi sigma^2) in 2-D
    want = -5.0 / (2 * 0.25) - math.log(2 * math.pi * 0.25)
    assert parzen_log_likelihood(s, x, sigma).item() == pytest.approx(want, rel=1e-12)


def test_parzen_mixture_of_two_kernels():
    s = torch.tensor([[0.0], [2.0]])
    x = torch.tensor([[1.0], [0.0]])
    sg = 1.0
    dens = lambda v: sum(math.exp(-(v - m) ** 2 / 2) / math.sqrt(2 * math.pi) for m in (0.0, 2.0)) / 2  # noqa: E731
    got = parzen_log_likelihood(s, x, sg, batch_size=1)
    assert got.tolist() == pytest.approx([math.log(dens(1.0)), math.log(dens(0.0))], rel=1e-12)


def test_sigma_cross_validation_finds_the_data_scale():
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(2000, 2, generator=g) * 0.3
    val = torch.randn(500, 2, generator=g) * 0.3
    test = torch.randn(500, 2, generator=g) * 0.3
    best, scores = select_sigma(samples, val, [0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    assert best in (0.03, 0.1)  # KDE bandwidth below the data std, far from both ends of the grid
    assert scores[best] == max(scores.values()) and scores[0.01] < scores[best] > scores[3.0]
    res = parzen_score(samples, val, test, [0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    ll = parzen_log_likelihood(samples, test, res["sigma"])
    assert res["log_likelihood"] == pytest.approx(float(ll.mean()))
    assert res["stderr"] == pytest.approx(float(ll.std() / math.sqrt(500)))


def test_parzen_argument_errors():
    with pytest.raises(ValueError, match="sigma"):
        parzen_log_likelihood(torch.zeros(2, 3), torch.zeros(1, 3), 0.0)
    with pytest.raises(ValueError, match="x: has 2 values per point"):
        parzen_log_likelihood(torch.zeros(2, 3), torch.zeros(1, 2), 1.0)


def test_mode_metrics_on_the_true_mixture():
    g = torch.Generator().manual_seed(0)
    x = mixtures.sample("roth3d", 7000, g)
    m = mode_metrics(x, mixtures.means("roth3d"), 0.01)
    assert m["modes"] == 7 and m["num_modes"] == 7
    # a 2-D Gaussian puts 1 - exp(-9/2) = 98.9% of its mass within 3 std
    assert m["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    assert 0 <= m["kl_modes"] < 0.01


def test_mode_metrics_on_a_collapsed_and_a_broken_generator():
    means = mixtures.means("ring8")
    x = means[3].repeat(100, 1) + 0.001
    m = mode_metrics(x, means, 0.02)
    assert m["modes"] == 1 and m["high_quality"] == 1.0 and m["kl_modes"] == pytest.approx(math.log(8))
    far = torch.full((50, 2), 100.0)
    far[0] = float("nan")
    m = mode_metrics(far, means, 0.02)
    assert m["modes"] == 0 and m["high_quality"] == 0.0 and math.isnan(m["kl_modes"])


@pytest.mark.parametrize("name", mixtures.MIXTURES)
def test_default_sigma_grid_reaches_the_mixtures_optimum(name):
    """Goodfellow's [0.1, 1] grid is for pixels in [0, 1]; the mixtures' std is 0.01-0.05, so the best sigma of
    that grid was its edge, 0.1, with a log-likelihood lower by up to 8 nats (roth3d). The default grid extends
    a decade at a time while the best is at its end: the chosen sigma is then inside the grid, below 0.1, and
    no value of a wide explicit grid scores the validation set better by more than a grid step's worth."""
    g = torch.Generator().manual_seed(0)
    samples, val, test = (mixtures.sample(name, n, generator=g) for n in (3000, 500, 500))
    res = parzen_score(samples, val, test)
    assert res["sigma"] < 0.1 and not res["sigma_at_grid_edge"]
    assert min(res["validation"]) < res["sigma"] < max(res["validation"])
    wide = select_sigma(samples, val, torch.logspace(-4, 0, 41).double())
    assert max(res["validation"].values()) >= wide[1][wide[0]] - 0.05
    narrow = parzen_score(samples, val, test, torch.logspace(-1, 0, 10))
    assert narrow["sigma_at_grid_edge"] and res["log_likelihood"] > narrow["log_likelihood"] + 0.5


def test_a_mode_with_exactly_min_count_samples_is_covered():
    # "a mode is covered when at least min_count high-quality samples fall to it": counts (1, 2)
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert mode_metrics(x, means, 0.1)["counts"] == [1, 2]
    assert mode_metrics(x, means, 0.1, min_count=1)["modes"] == 2
    assert mode_metrics(x, means, 0.1, min_count=2)["modes"] == 1
    assert mode_metrics(x, means, 0.1, min_count=3)["modes"] == 0


def test_mode_metrics_keep_full_precision_far_from_the_origin():
    """cdist's matrix-product form (taken past 25 rows) loses ~1e-16 of ||x||^2: 2000 points within 2.9 std of
    modes at 1000, std 1e-5, read 92% high quality."""
    g = torch.Generator().manual_seed(5)
    means = torch.tensor([[1000.0, 1000.0], [1000.0, 1001.0]], dtype=torch.float64)
    direction = torch.nn.functional.normalize(torch.randn(2000, 2, dtype=torch.float64, generator=g), dim=1)
    radius = 2.9e-5 * torch.rand(2000, 1, dtype=torch.float64, generator=g)
    x = means[torch.arange(2000) % 2] + radius * direction
    res = mode_metrics(x, means, 1e-5)
    assert res["high_quality"] == 1.0 and res["counts"] == [1000, 1000]
    assert mode_metrics(x + torch.tensor([6e-5, 0.0], dtype=torch.float64), means, 1e-5)["high_quality"] == 0.0


def test_default_sigma_grid_holds_ten_values_in_0_1_to_1():
    # the documented default grid (metrics/parzen.py): 10 values log-spaced in [0.1, 1], 10^(-1 + i/9), first;
    # it may extend by further decades (the paper says only that sigma was cross-validated)
    g = torch.Generator().manual_seed(0)
    samples, val = torch.randn(500, 2, generator=g), torch.randn(200, 2, generator=g)
    _, scores = select_sigma(samples, val)
    for i in range(10):
        want = 10 ** (-1 + i / 9)
        assert any(s == pytest.approx(want, rel=1e-6) for s in scores), want


def test_high_quality_fraction_counts_non_finite_samples_in_the_denominator():
    # non-finite samples are low quality: 3 samples on a mode and 1 NaN give a high-quality fraction of 3 / 4
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [float("nan"), 0.0]])
    m = mode_metrics(x, means, 0.1)
    assert m["high_quality"] == pytest.approx(0.75) and m["counts"] == [1, 2]


def test_default_sigma_grid_is_float64_and_decades_share_their_ends():
    # torch.logspace's float32 made 0.1 0.10000000149011612; an extension's decade ends on the next one's first value
    g = torch.Generator().manual_seed(0)
    samples, val = (mixtures.sample("ring8", n, generator=g) for n in (1000, 300))
    _, scores = select_sigma(samples, val)
    keys = sorted(scores)
    assert 0.1 in scores and 1.0 in scores and keys[0] < 0.01  # extended below the first decade
    assert all(b / a > 1.29 for a, b in zip(keys, keys[1:])), keys  # no near-duplicate sigmas
    for k in keys:
        assert k == pytest.approx(10 ** (round(9 * math.log10(k)) / 9), rel=1e-14)


def test_sigma_selection_computes_the_distances_once_per_chunk_for_the_whole_grid():
    from torch.overrides import TorchFunctionMode

    from fastgan.metrics import parzen

    class CountMatmuls(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.n += getattr(func, "__name__", "") in ("__matmul__", "matmul", "mm")
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(1)
    s, v = torch.randn(300, 5, generator=g), torch.randn(600, 5, generator=g) * 1.3
    grid = [0.05 * 1.5 ** i for i in range(12)]
    with CountMatmuls() as count:
        _, scores = select_sigma(s, v, grid)
    assert count.n == 3  # 600 validation points in chunks of 256, not once per sigma as well
    # every sigma scores as it does on its own, whatever the chunks
    alone = torch.stack([parzen_log_likelihood(s, v, sg) for sg in grid])
    assert list(scores.values()) == pytest.approx(alone.mean(1).tolist(), rel=1e-12)
    s64, v64 = s.double(), v.double()
    for bs in (1, 7, 256, 600, 10 ** 6):
        torch.testing.assert_close(parzen._log_likelihoods(s64, v64, grid, bs), alone, rtol=1e-12, atol=0)


def _exact_parzen(s, q, sigma):
    import math

    d2 = (q[:, None, :] - s[None]).pow(2).sum(-1)
    return torch.logsumexp(-d2 / (2 * sigma ** 2), 1) - math.log(len(s)) - 0.5 * s.shape[1] * math.log(
        2 * math.pi * sigma ** 2)


@pytest.mark.parametrize("refine", [False, True])
def test_a_small_sigma_takes_the_nearest_samples_exact_distances(monkeypatch, refine):
    """||q||^2 + ||s||^2 - 2 q.s loses ~1e-16 of ||q||^2, which at sigma 1e-7 on unit-scale data moved a point's
    log-likelihood by ~1e-2 nats: the nearest samples' distances are summed exactly (refine=False: without, the
    premise)."""
    from fastgan.metrics import parzen as P

    if not refine:
        monkeypatch.setattr(P, "_refine_near", lambda *a: None)
    g = torch.Generator().manual_seed(0)
    s = torch.rand(500, 3, dtype=torch.float64, generator=g)
    q = s[:50] + 1e-7 * torch.randn(50, 3, dtype=torch.float64, generator=g)
    err = (P.parzen_log_likelihood(s, q, 1e-7) - _exact_parzen(s, q, 1e-7)).abs().max().item()
    assert (err < 1e-8) if refine else (err > 1e-4)


@pytest.mark.parametrize("scale,copies,sigma", [(100.0, 20, 1e-7), (1e3, 50, 1e-5), (1.0, 300, 1e-7)])
def test_near_duplicate_samples_are_all_summed_exactly(scale, copies, sigma):
    """A collapsed generator's many near-copies of one point far from the samples' mean: with only each point's
    4 nearest samples exact, the 5th and later copies kept the expansion's error (0.2-0.5 nats off at 100, 20)."""
    from fastgan.metrics import parzen as P

    g = torch.Generator().manual_seed(2)
    far = scale * torch.randn(100, 3, dtype=torch.float64, generator=g)
    s = torch.cat([far, far[:1] + 1e-9 * torch.randn(copies, 3, dtype=torch.float64, generator=g)])
    q = far[:1] + 1e-9 * torch.randn(3, 3, dtype=torch.float64, generator=g)
    for bs in (1, 256):
        torch.testing.assert_close(P.parzen_log_likelihood(s, q, sigma, batch_size=bs), _exact_parzen(s, q, sigma),
                                   rtol=0, atol=1e-6)
