"""Fréchet distance between Gaussians fitted to two sets of features (Heusel et al. 2017's FID formula) and the
classifier score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016's Inception score formula), for any feature
extractor and classifier; `fmnist_scores` applies both with fastgan's shipped Fashion-MNIST classifier.

FD = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)). The trace of the matrix square root is
computed from symmetric eigendecompositions in float64: with A = S_a^(1/2), A S_b A is symmetric positive
semi-definite and similar to S_a S_b, so tr((S_a S_b)^(1/2)) is the sum of the square roots of its eigenvalues.
That needs no scipy and has no complex round-off part to discard (scipy.linalg.sqrtm of the non-symmetric product,
as the usual FID code does, does).
"""
from __future__ import annotations

import math

import torch

from ._args import as_points, check_finite, positive_int


def _features(x, name: str) -> torch.Tensor:
    x = as_points(x, name)
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected features (N, D) with N >= 2 and D >= 1, got shape {tuple(x.shape)}")
    check_finite(x, name)
    return x.to(torch.float64)


def gaussian_stats(features, name: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and covariance (D, D) of features (N, D), N >= 2, in float64 (covariance with N - 1, as
    numpy.cov)."""
    x = _features(features, name)
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / (x.shape[0] - 1)
    # finite features can still overflow: squares of values beyond ~1e154 are inf in float64, and an inf
    # covariance reached eigh as a bare LinAlgError
    for what, t in (("mean", mu), ("covariance", cov)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: its {what} overflows float64 (features up to {float(x.abs().max()):.3g} in "
                             f"magnitude): features too large for float64; divide them and the features they are "
                             f"compared with by a common factor (the distance scales with its square)")
    return mu, cov


def _stats(v, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name}: expected features (N, D) or a (mean, covariance) pair, got {len(v)} items")
        mu, cov = (as_points(t, name).to(torch.float64) for t in v)
        if mu.dim() != 1 or mu.shape[0] == 0 or cov.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{name}: expected mean (D,) and covariance (D, D) with D >= 1, got {tuple(mu.shape)} "
                             f"and {tuple(cov.shape)}")
        check_finite(mu, name)
        check_finite(cov, name)
        cov = cov.to(mu.device)
        # a covariance is symmetric positive semi-definite; anything else has no Gaussian to compare
        scale = float(cov.abs().max())
        tol = 1e-6 * max(scale, 1e-300)
        if float((cov - cov.T).abs().max()) > tol or float(torch.linalg.eigvalsh(cov).min()) < -tol * cov.shape[0]:
            raise ValueError(f"{name}: the covariance is not symmetric positive semi-definite")
        return mu, cov
    return gaussian_stats(v, name)


def _distance(a, b, name_a: str, name_b: str) -> float:
    mu_a, s_a = _stats(a, name_a)
    mu_b, s_b = _stats(b, name_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"{name_b}: has {mu_b.shape[0]} features, {name_a} has {mu_a.shape[0]}")
    mu_b, s_b = mu_b.to(mu_a.device), s_b.to(mu_a.device)
    # FD(c x, c y) = c^2 FD(x, y): covariances whose entries reach past 2^200 (features near 1e30 and up) are
    # scaled down by a power of 2 (exact) so that the product in S_a^(1/2) S_b S_a^(1/2) cannot overflow, those all
    # below 2^-200 (features near 1e-30 and below: at 1e-90 the product underflowed and the distance read 15x its
    # value) scaled up, and their part of the distance scaled back. The means' part is apart: a scale chosen from
    # them too (means 1e100, covariances ~1) underflowed the product, the distance missing its cross term.
    half = _half_exponent(s_a, s_b)
    if half:
        f = 2.0 ** -half
        s_a, s_b = s_a * f * f, s_b * f * f
    root_a = _sqrt_psd(s_a)
    m = root_a @ s_b @ root_a
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + (s_a.trace() + s_b.trace() - 2 * tr_sqrt) * 2.0 ** half * 2.0 ** half
    if not math.isfinite(float(fd)):
        raise ValueError(f"{name_a}, {name_b}: their distance overflows float64: features too large for float64; "
                         f"divide both by a common factor (the distance scales with its square)")
    # equal inputs can land a rounding error below zero
    return max(float(fd), 0.0)


def _half_exponent(s_a, s_b) -> int:
    """Half the binary exponent of the largest nonzero covariance entry where it lies beyond 2^+-200, else 0
    (clamped to +-1000: 2^+-1000 and its square's halves stay normal floats)."""
    tops = (float(t.abs().max()) for t in (s_a, s_b))
    e = max((math.frexp(v)[1] for v in tops if v > 0), default=0)
    return max(-1000, min(1000, e // 2)) if abs(e) > 200 else 0


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussians fitted to a and b: each features (N, D) (tensor or numpy array, N >= 2)
    or a (mean, covariance) pair from `gaussian_stats` (e.g. real statistics computed once)."""
    return _distance(a, b, "a", "b")


def classifier_score(logits, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) of a classifier's logits (N, K) (the Inception score's formula), as mean and
    standard deviation over `splits` parts of the N samples (Salimans et al.: 10 parts; N >= 2 * splits), part i
    the samples i N // splits to (i + 1) N // splits - 1 as in their code: every sample in a part, the parts'
    sizes differing by at most one where splits does not divide N."""
    x = as_points(logits, "logits")
    if x.dim() != 2 or x.shape[1] < 2:
        raise ValueError(f"logits: expected (N, K) with K >= 2 classes, got shape {tuple(x.shape)}")
    splits = positive_int(splits, "splits")
    if x.shape[0] < 2 * splits:
        # a part of one sample is its own marginal: its score is 1 whatever the classifier says
        raise ValueError(f"logits: {x.shape[0]} samples cannot make splits={splits} parts of at least 2")
    check_finite(x, "logits")
    logp = torch.log_softmax(x.to(torch.float64), dim=1)
    n = x.shape[0]
    scores = []
    for i in range(splits):
        part = logp[i * n // splits:(i + 1) * n // splits]
        log_marginal = torch.logsumexp(part, 0) - math.log(part.shape[0])
        # p log(p / marginal) is 0 where p is: logits ~1e308 apart make log p -inf there, and 0 * -inf NaN
        kl = torch.where(part == -math.inf, 0.0, part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(math.exp(float(kl)))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if splits > 1 else 0.0
