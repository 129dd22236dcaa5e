"""Fréchet distance and classifier score against the usual FID / Inception-score computation (fastgan.reference
.metrics), closed forms, invariances and argument errors."""
import math

import numpy as np
import pytest
import torch

from fastgan.metrics import classifier_score, frechet_distance, gaussian_stats
from fastgan.reference import metrics as ref


def _correlated(n, d, seed, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) * scale
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + shift


@pytest.mark.parametrize("n,d", [(400, 1), (400, 8), (2000, 32), (50, 64)], ids=["d1", "d8", "d32", "rank-deficient"])
def test_matches_the_reference(n, d):
    a, b = _correlated(n, d, 0), _correlated(n, d, 1, shift=0.3, scale=0.7)
    want = ref.frechet_distance(a.numpy(), b.numpy())
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-7, abs=1e-9 * d)
    # numpy arrays and float32 inputs are taken as they are
    assert frechet_distance(a.numpy(), b.float()) == pytest.approx(want, rel=1e-5)


def test_closed_form_for_diagonal_gaussians():
    mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([0.5, 1.0, 0.0])
    va, vb = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    want = float((mu_a - mu_b).pow(2).sum() + (va.sqrt() - vb.sqrt()).pow(2).sum())
    assert frechet_distance((mu_a, torch.diag(va)), (mu_b, torch.diag(vb))) == pytest.approx(want, rel=1e-12)


def test_the_reference_closed_form_for_features_with_diagonal_covariances():
    # features whose sample means and covariances (N - 1) are exact: a's 0 and diag(2/3, 8/3), b's (1, -1) and
    # diag(6, 2/3); FD = ||mu_a - mu_b||^2 + sum (sqrt(va) - sqrt(vb))^2, for the oracle as for frechet_distance
    a = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    b = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) + np.array([1.0, -1.0])
    va, vb = np.array([2 / 3, 8 / 3]), np.array([6.0, 2 / 3])
    want = 2.0 + float(((np.sqrt(va) - np.sqrt(vb)) ** 2).sum())
    assert ref.frechet_distance(a, b) == pytest.approx(want, rel=1e-12)
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-12)


def test_non_commuting_covariances_against_an_explicit_square_root():
    """tr((S_a S_b)^(1/2)) for 2x2 covariances with different eigenvectors, by the 2x2 formula
    tr(sqrt(M)) = sqrt(tr M + 2 sqrt(det M))."""
    s_a = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    s_b = torch.tensor([[0.5, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    m = s_a @ s_b
    tr_sqrt = math.sqrt(float(m.trace()) + 2 * math.sqrt(float(torch.linalg.det(m))))
    want = float(s_a.trace() + s_b.trace()) - 2 * tr_sqrt
    zero = torch.zeros(2, dtype=torch.float64)
    assert frechet_distance((zero, s_a), (zero, s_b)) == pytest.approx(want, rel=1e-12)


def test_invariances():
    a, b = _correlated(300, 5, 2), _correlated(300, 5, 3, shift=1.0)
    fd = frechet_distance(a, b)
    assert fd > 1
    assert frechet_distance(b, a) == pytest.approx(fd, rel=1e-9)
    assert frechet_distance(a + 100.0, b + 100.0) == pytest.approx(fd, rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    assert frechet_distance(a @ q, b @ q) == pytest.approx(fd, rel=1e-9)   # rotations keep distances
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, a) >= 0.0


@pytest.mark.parametrize("offset,spread", [(1e100, 1.0), (1.0, 1e-170), (1e150, 1e-10)])
def test_means_far_above_the_spread(offset, spread):
    """(mean, covariance) pairs whose squared means dwarf the covariances: the exact rescaling was chosen from both,
    so the covariances' product underflowed and the distance lost its cross term (12 for 0.686 at means 1e100;
    an audit of the metrics, 2026-12-07). A shared offset changes nothing: 4 (3 - 2 sqrt 2) times the spread."""
    eye = torch.eye(4, dtype=torch.float64)
    mu = torch.full((4,), offset, dtype=torch.float64)
    want = 4 * (3 - 2 * math.sqrt(2)) * spread
    assert frechet_distance((mu, spread * eye), (mu, 2 * spread * eye)) == pytest.approx(want, rel=1e-9, abs=0)


def test_statistics_pair_equals_features():
    a, b = _correlated(300, 6, 5), _correlated(500, 6, 6, scale=2.0)
    mu, cov = gaussian_stats(b)
    np.testing.assert_allclose(cov.numpy(), np.cov(b.numpy(), rowvar=False), rtol=1e-12)
    assert frechet_distance(a, (mu, cov)) == pytest.approx(frechet_distance(a, b), rel=1e-12)


@pytest.mark.parametrize("a,b,exc,match", [
    (torch.zeros(10), torch.zeros(10, 2), ValueError, r"^a: expected features \(N, D\)"),
    (torch.zeros(1, 3), torch.zeros(10, 3), ValueError, r"^a: .*N >= 2"),
    (torch.zeros(10, 3), torch.zeros(10, 4), ValueError, r"^b: has 4 features, a has 3"),
    (torch.zeros(10, 3), torch.full((10, 3), float("nan")), ValueError, r"^b: contains 30 non-finite"),
    ([[0.0, 1.0]], torch.zeros(10, 2), ValueError, r"^a: expected features \(N, D\) or a \(mean, covariance\)"),
    ((torch.zeros(3), torch.zeros(2, 2)), torch.zeros(10, 3), ValueError, r"^a: expected mean \(D,\) and covariance"),
    ((torch.zeros(2), -torch.eye(2)), torch.zeros(10, 2), ValueError, r"^a: the covariance is not symmetric positive"),
    ((torch.zeros(0), torch.zeros(0, 0)), (torch.zeros(0), torch.zeros(0, 0)), ValueError, r"^a: .* with D >= 1"),
    (torch.zeros(10, 2), (torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]])), ValueError,
     r"^b: the covariance is not symmetric positive"),
    ("x", torch.zeros(10, 3), TypeError, r"^a: expected a tensor or numpy array"),
])
def test_bad_arguments(a, b, exc, match):
    with pytest.raises(exc, match=match):
        frechet_distance(a, b)


def test_classifier_score_matches_the_reference():
    logits = torch.randn(1000, 10, generator=torch.Generator().manual_seed(0)) * 3
    got, want = classifier_score(logits), ref.classifier_score(logits)
    assert got == pytest.approx(want, rel=1e-9)
    assert classifier_score(logits, splits=1) == pytest.approx(ref.classifier_score(logits, 1), rel=1e-9)


@pytest.mark.parametrize("n", [100, 105, 109])
def test_classifier_score_splits_as_salimans_code(n):
    """improved-gan's inception_score.py takes part i as preds[i * N // splits:(i + 1) * N // splits]: every sample
    counts, where equal parts would leave N mod splits out (105 samples: 3.2552 against 3.4413 with these)."""
    logits = torch.randn(n, 10, generator=torch.Generator().manual_seed(1)) * 3
    p = torch.softmax(logits.double(), 1).numpy()
    scores = []
    for i in range(10):
        part = p[(i * n // 10):((i + 1) * n // 10), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    assert classifier_score(logits) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-9)
    assert ref.classifier_score(logits) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-9)


def test_classifier_score_extremes():
    assert classifier_score(torch.zeros(100, 10))[0] == pytest.approx(1.0)   # no confident prediction
    one_hot = torch.full((100, 4), -50.0)
    one_hot[torch.arange(100), torch.arange(100) % 4] = 50.0           # confident and evenly spread
    mean, std = classifier_score(one_hot, splits=5)
    assert mean == pytest.approx(4.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.full((100, 4), -50.0)
    collapsed[:, 2] = 50.0                                              # confident, one class: mode collapse
    assert classifier_score(collapsed)[0] == pytest.approx(1.0, rel=1e-6)
    # finite float64 logits ~2e308 apart: log p is -inf where p is 0, and p log p was 0 * -inf = NaN (an audit)
    far = np.tile([[1e308, -1e308]], (10, 1))
    far[::2] = far[::2, ::-1]
    assert classifier_score(far, 1) == pytest.approx((2.0, 0.0))


@pytest.mark.parametrize("logits,splits,exc,match", [
    (torch.zeros(10), 1, ValueError, r"^logits: expected \(N, K\)"),
    (torch.zeros(10, 1), 1, ValueError, r"^logits: expected \(N, K\) with K >= 2"),
    (torch.zeros(5, 3), 10, ValueError, r"^logits: 5 samples cannot make splits=10"),
    (torch.eye(10) * 50, 10, ValueError, r"^logits: 10 samples cannot make splits=10 parts of at least 2"),
    (torch.zeros(10, 3), 0, ValueError, r"^splits: must be >= 1"),
    (torch.zeros(10, 3), 2.0, TypeError, r"^splits: expected an int"),
    (torch.full((10, 3), float("inf")), 1, ValueError, r"^logits: contains 30 non-finite"),
])
def test_classifier_score_bad_arguments(logits, splits, exc, match):
    with pytest.raises(exc, match=match):
        classifier_score(logits, splits)


@pytest.mark.parametrize("scale", [1e160, 1e200])
def test_features_whose_covariance_overflows_are_named(scale):
    # finite features with an inf covariance reached eigh: a bare torch._C._LinAlgError
    a = _correlated(30, 4, 7)
    with pytest.raises(ValueError, match=r"^a: its covariance overflows float64 .*features too large for float64"):
        frechet_distance(a * scale, a)
    with pytest.raises(ValueError, match=r"^b: its covariance overflows float64"):
        frechet_distance(a, a * scale)
    with pytest.raises(ValueError, match=r"^a, b: their distance overflows float64"):
        frechet_distance(a + 1e200, a)  # finite statistics, a distance beyond float64


@pytest.mark.parametrize("scale", [1e40, 1e100, 1e150, 1e-40, 1e-90, 1e-150])
def test_large_finite_covariances_scale_with_the_square(scale):
    # S_a^(1/2) S_b S_a^(1/2) overflowed (eigh failed) from features near 1e77 on, and underflowed from ~1e-80
    # (15x the distance at 1e-90); FD(c x, c y) = c^2 FD(x, y)
    a, b = _correlated(40, 5, 8), _correlated(50, 5, 9, shift=0.5, scale=1.5)
    assert frechet_distance(a * scale, b * scale) == pytest.approx(frechet_distance(a, b) * scale ** 2, rel=1e-9, abs=0)
