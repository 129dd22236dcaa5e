"""Gaussian Parzen-window log-likelihood (Goodfellow et al. 2014, section 5 and Table 1; Breuleux et al.).

A Gaussian kernel density with bandwidth sigma is fitted to generated samples s_1..s_N and evaluated on
held-out data: log p(x) = logsumexp_i(-||x - s_i||^2 / (2 sigma^2)) - log N - (d/2) log(2 pi sigma^2).
"The sigma parameter of the Gaussians was obtained by cross validation on the validation set": pick the
sigma with the highest mean log-likelihood on validation data, report the mean (and its standard error
across examples) on test data.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ._args import as_points, bandwidth, check_finite, positive_int


def _flat(x, name: str) -> torch.Tensor:
    x = as_points(x, name)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    check_finite(x, name)
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _pair(samples, x, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    s = _flat(samples, "samples")
    q = _flat(x, name).to(s.device)
    if s.shape[1] != q.shape[1]:
        raise ValueError(f"{name}: has {q.shape[1]} values per point, samples have {s.shape[1]}")
    return s, q


def _log_likelihoods(s: torch.Tensor, q: torch.Tensor, sigmas: list[float], batch_size: int) -> torch.Tensor:
    """Per-point log-likelihoods (len(sigmas), M) of q, one row per sigma."""
    n, d = s.shape
    consts = [math.log(n) + 0.5 * d * math.log(2 * math.pi * sg * sg) for sg in sigmas]
    # distances are translation invariant: centering keeps ||x||^2 + ||s||^2 - 2 x.s from cancelling
    # catastrophically for data far from the origin relative to sigma
    center = s.mean(0)
    s, q = s - center, q - center
    s_sq = s.pow(2).sum(1)
    out = []
    for i in range(0, q.shape[0], batch_size):
        qb = q[i:i + batch_size]
        # the squared distances do not depend on sigma: one (B, N) block serves every sigma of the grid (the matmul,
        # O(B N d), was repeated per sigma); only this block and one sigma's temporary of its size live at a time,
        # so memory stays bounded by batch_size, and each sigma's row is computed exactly as on its own
        q_sq = qb.pow(2).sum(1)
        d2 = (q_sq[:, None] + s_sq[None, :] - 2 * qb @ s.T).clamp_min(0)
        _refine_near(d2, qb, q_sq, s, s_sq)
        out.append(torch.stack([torch.logsumexp(-d2 / (2 * sg * sg), dim=1) - c for sg, c in zip(sigmas, consts)]))
    return torch.cat(out, dim=1)


# a row's entries whose expansion error could move its log-likelihood, at any sigma, by more than ~1e-3 nats are
# those within ~50 / 1e-3 error bounds of its smallest (farther ones weigh below e^-50 wherever their error counts)
REFINE_WINDOW = 1e5
_EPS = torch.finfo(torch.float64).eps


def _refine_near(d2: torch.Tensor, qb: torch.Tensor, q_sq: torch.Tensor, s: torch.Tensor, s_sq: torch.Tensor) -> None:
    """d2's entries near each row's smallest recomputed as sums of squared differences, in place. The expansion
    ||q||^2 + ||s||^2 - 2 q.s carries an absolute error up to ~(d + 4) eps (||q||^2 + ||s||^2), which at a small
    sigma (the mixtures' grid reaches 1e-7) is a large fraction of d2 / (2 sigma^2) for the samples that dominate
    the sum: the nearest one and every near-duplicate of it (a collapsed generator's: with only the 4 nearest
    exact, 20 copies of a point 100 from the samples' mean read 0.2-0.5 nats off). Usually a few entries a row."""
    err = (s.shape[1] + 4) * _EPS * (q_sq[:, None] + s_sq[None, :])
    at_min = d2.argmin(1, keepdim=True)
    near = d2 <= d2.gather(1, at_min) + REFINE_WINDOW * (err + err.gather(1, at_min))
    rows, cols = near.nonzero(as_tuple=True)
    step = max(1, 2 ** 22 // s.shape[1])  # bounds the (pairs, d) differences where every sample is a duplicate
    for i in range(0, rows.numel(), step):
        r, c = rows[i:i + step], cols[i:i + step]
        d2[r, c] = (qb[r] - s[c]).pow(2).sum(-1)


def _log_likelihood(s: torch.Tensor, q: torch.Tensor, sigma: float, batch_size: int) -> torch.Tensor:
    return _log_likelihoods(s, q, [sigma], batch_size)[0]


def parzen_log_likelihood(samples, x, sigma: float, batch_size: int = 256) -> torch.Tensor:
    """Per-point log-likelihood (M,) of x under the Parzen window of `samples` with bandwidth sigma.
    samples, x: tensors or numpy arrays (N, ...) and (M, ...) of finite values."""
    s, q = _pair(samples, x, "x")
    return _log_likelihood(s, q, bandwidth(sigma, "sigma"), positive_int(batch_size, "batch_size"))


# the default grid: Goodfellow et al.'s range for pixels in [0, 1], 10 values log-spaced in [0.1, 1], extended a
# decade at a time (10^-7 .. 10^3) while the best sigma is at its end: the mixtures' optimum is near their std
# (0.01-0.05) or below, where [0.1, 1] would report its edge, 0.1, and a log-likelihood lower by nats
DEFAULT_DECADES = (-1, 0)
EXTEND_TO = (-7, 3)


def _decade(lo: int) -> list[float]:
    # 10^(lo + i/9) in float64 (torch.logspace's default float32 made 0.1 0.10000000149011612); a decade's last value
    # is exactly the next one's first, so an extended grid holds no near-duplicate sigmas
    return [10.0 ** (lo + i / 9) for i in range(10)]


def _grid(sigmas) -> list[float]:
    if sigmas is None:
        return _decade(DEFAULT_DECADES[0])
    if isinstance(sigmas, np.ndarray) and sigmas.ndim == 0:
        sigmas = sigmas.item()
    if isinstance(sigmas, numbers.Real) or (isinstance(sigmas, torch.Tensor) and sigmas.dim() == 0):
        return [bandwidth(sigmas, "sigmas")]
    if isinstance(sigmas, (str, bytes)):
        raise TypeError(f"sigmas: expected a number or an iterable of numbers, got {type(sigmas).__name__}")
    try:
        values = list(sigmas)
    except TypeError:
        raise TypeError(f"sigmas: expected a number or an iterable of numbers, got {type(sigmas).__name__}") from None
    if not values:
        raise ValueError("sigmas: need at least one value")
    return [bandwidth(v, f"sigmas[{i}]") for i, v in enumerate(values)]


def _select(s: torch.Tensor, v: torch.Tensor, grid: list[float], extend: bool = False) -> tuple[float, dict]:
    scores = {}
    lo, hi = DEFAULT_DECADES
    while True:
        new = list(dict.fromkeys(sg for sg in grid if sg not in scores))
        if new:
            scores.update(zip(new, _log_likelihoods(s, v, new, 256).mean(1).tolist()))
        best = max(scores, key=scores.get)
        if extend and best == min(scores) and lo > EXTEND_TO[0]:
            lo -= 1
            grid = _decade(lo)
        elif extend and best == max(scores) and hi < EXTEND_TO[1]:
            grid = _decade(hi)
            hi += 1
        else:
            return best, dict(sorted(scores.items()))


def select_sigma(samples, validation, sigmas=None) -> tuple[float, dict]:
    """(best sigma, {sigma: mean validation log-likelihood}); default grid: 10 values log-spaced in
    [0.1, 1] (the range of Goodfellow et al.'s evaluation script, data in [0, 1]), extended by a decade of 10
    more while the best is at its end (down to 1e-7, up to 1e3); a single number is a one-value grid. Every value
    must be finite and > 0 with a normal square; samples and validation must be finite."""
    s, v = _pair(samples, validation, "validation")
    return _select(s, v, _grid(sigmas), extend=sigmas is None)


def parzen_score(samples, validation, test, sigmas=None) -> dict:
    """{"sigma", "log_likelihood" (mean over test), "stderr" (std / sqrt(M)), "validation": {sigma: ll},
    "sigma_at_grid_edge": whether sigma is the grid's smallest or largest value (the optimum may lie beyond: pass
    a wider grid)}; sigmas as select_sigma's."""
    # everything checked before the grid search, so a bad test set does not cost the whole search first
    s, v = _pair(samples, validation, "validation")
    _, t = _pair(samples, test, "test")
    sigma, scores = _select(s, v, _grid(sigmas), extend=sigmas is None)
    ll = _log_likelihood(s, t, sigma, 256)
    se = float(ll.std(unbiased=True) / math.sqrt(ll.numel())) if ll.numel() > 1 else float("nan")
    return {"sigma": sigma, "log_likelihood": float(ll.mean()), "stderr": se, "validation": scores,
            "sigma_at_grid_edge": len(scores) > 1 and sigma in (min(scores), max(scores))}
