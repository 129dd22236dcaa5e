"""Fréchet distance and classifier score written the way the usual FID / Inception-score code does it: numpy-style
covariance, the square root of the non-symmetric product S_a S_b through its (complex) eigenvalues, the
marginal as the mean of the probabilities."""
from __future__ import annotations

import numpy as np
import torch


def frechet_distance(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # tr(sqrtm(M)) is the sum of the principal square roots of M's eigenvalues
    tr_sqrt = np.sqrt(np.linalg.eigvals(s_a @ s_b).astype(np.complex128)).real.sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)


def classifier_score(logits, splits: int = 10) -> tuple[float, float]:
    p = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy()
    n = p.shape[0]
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]  # improved-gan's inception_score.py: every sample in a part
        py = part.mean(0, keepdims=True)
        kl = part * (np.log(part) - np.log(py))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
