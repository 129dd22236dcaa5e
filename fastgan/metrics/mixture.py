"""Mode coverage and sample quality on Gaussian mixtures (the measures of the unrolled-GAN line of work,
Metz et al. 2017 / Srivastava et al. 2017, applied to Roth et al.'s mixture): a sample is "high quality"
when it lies within `threshold` standard deviations of its nearest mode; a mode is covered when at least
`min_count` high-quality samples fall to it."""
from __future__ import annotations

import math

import torch


def mode_metrics(samples: torch.Tensor, means: torch.Tensor, std: float, threshold: float = 3.0,
                 min_count: int = 1) -> dict:
    """{"modes": covered modes, "num_modes", "high_quality": fraction of high-quality samples,
    "kl_modes": KL(histogram of high-quality samples over modes || uniform), log K when all fall to one
    mode, nan without high-quality samples,
    "counts": per-mode high-quality counts}."""
    if samples.dim() != 2 or means.dim() != 2 or samples.shape[1] != means.shape[1]:
        raise ValueError(f"samples: expected (N, {means.shape[-1]}) points, got {tuple(samples.shape)}")
    if not std > 0:
        raise ValueError(f"std: must be > 0, got {std!r}")
    x = samples.detach().to(torch.float64)
    mu = means.detach().to(device=x.device, dtype=torch.float64)
    finite = torch.isfinite(x).all(1)
    d = torch.cdist(torch.where(finite[:, None], x, torch.zeros_like(x)), mu)
    dist, idx = d.min(1)
    good = finite & (dist <= threshold * std)
    k = mu.shape[0]
    counts = torch.bincount(idx[good], minlength=k)
    total = int(counts.sum())
    if total:
        p = counts.to(torch.float64) / total
        nz = p > 0
        kl = float((p[nz] * (p[nz] * k).log()).sum())
    else:
        kl = math.nan
    return {"modes": int((counts >= min_count).sum()), "num_modes": k,
            "high_quality": float(good.to(torch.float64).mean()) if x.shape[0] else 0.0,
            "kl_modes": kl, "counts": counts.tolist()}
