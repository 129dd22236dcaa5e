"""Gaussian Parzen-window log-likelihood (Goodfellow et al. 2014, section 5 and Table 1; Breuleux et al.).

A Gaussian kernel density with bandwidth sigma is fitted to generated samples s_1..s_N and evaluated on
held-out data: log p(x) = logsumexp_i(-||x - s_i||^2 / (2 sigma^2)) - log N - (d/2) log(2 pi sigma^2).
"The sigma parameter of the Gaussians was obtained by cross validation on the validation set": pick the
sigma with the highest mean log-likelihood on validation data, report the mean (and its standard error
across examples) on test data.
"""
from __future__ import annotations

import math

import torch


def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def parzen_log_likelihood(samples: torch.Tensor, x: torch.Tensor, sigma: float, batch_size: int = 256) -> torch.Tensor:
    """Per-point log-likelihood (M,) of x under the Parzen window of `samples` with bandwidth sigma."""
    s, q = _flat(samples, "samples"), _flat(x, "x").to(samples.device)
    if s.shape[1] != q.shape[1]:
        raise ValueError(f"x: has {q.shape[1]} values per point, samples have {s.shape[1]}")
    if not sigma > 0:
        raise ValueError(f"sigma: must be > 0, got {sigma!r}")
    n, d = s.shape
    const = math.log(n) + 0.5 * d * math.log(2 * math.pi * sigma * sigma)
    s_sq = s.pow(2).sum(1)
    out = []
    for i in range(0, q.shape[0], batch_size):
        qb = q[i:i + batch_size]
        d2 = (qb.pow(2).sum(1)[:, None] + s_sq[None, :] - 2 * qb @ s.T).clamp_min(0)
        out.append(torch.logsumexp(-d2 / (2 * sigma * sigma), dim=1) - const)
    return torch.cat(out)


def select_sigma(samples: torch.Tensor, validation: torch.Tensor, sigmas=None) -> tuple[float, dict]:
    """(best sigma, {sigma: mean validation log-likelihood}); default grid: 10 values log-spaced in
    [0.1, 1] (the range of Goodfellow et al.'s evaluation script, data in [0, 1])."""
    grid = [float(v) for v in (sigmas if sigmas is not None else torch.logspace(-1, 0, 10).tolist())]
    if not grid:
        raise ValueError("sigmas: need at least one value")
    scores = {sg: float(parzen_log_likelihood(samples, validation, sg).mean()) for sg in grid}
    best = max(scores, key=scores.get)
    return best, scores


def parzen_score(samples: torch.Tensor, validation: torch.Tensor, test: torch.Tensor, sigmas=None) -> dict:
    """{"sigma", "log_likelihood" (mean over test), "stderr" (std / sqrt(M)), "validation": {sigma: ll}}."""
    sigma, scores = select_sigma(samples, validation, sigmas)
    ll = parzen_log_likelihood(samples, test, sigma)
    se = float(ll.std(unbiased=True) / math.sqrt(ll.numel())) if ll.numel() > 1 else float("nan")
    return {"sigma": sigma, "log_likelihood": float(ll.mean()), "stderr": se, "validation": scores}
