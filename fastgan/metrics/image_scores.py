"""Fréchet distance and classifier score of generated Fashion-MNIST images in the features and probabilities of
fastgan's shipped classifier (FID's and the Inception score's formulas; NTGAN's protocol: 10K generated and 10K
real samples). The numbers rank fastgan runs against each other; they are not Inception-based FID / IS values."""
from __future__ import annotations

import warnings

import torch

from ._args import as_points, check_finite, positive_int
from .classifier import INPUT_SHAPE, FashionMNISTNet, load_fmnist_classifier
from .frechet import _distance, classifier_score, gaussian_stats

# generated images are tanh outputs; this slack only forgives rounding, not another value range
_RANGE_SLACK = 1e-3


def _images(x, name: str) -> torch.Tensor:
    x = as_points(x, name)
    if tuple(x.shape[1:]) != INPUT_SHAPE or x.shape[0] < 2:
        raise ValueError(f"{name}: expected Fashion-MNIST images (N, 1, 28, 28) with N >= 2, got shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected floating-point images in [-1, 1], got dtype {x.dtype}")
    check_finite(x, name)
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise ValueError(f"{name}: values span [{lo:.4g}, {hi:.4g}]; the classifier takes images in [-1, 1] "
                         f"(fastgan's range: map [0, 1] images with 2x - 1)")
    if lo >= 0:
        # [0, 1] images lie inside [-1, 1] and score like noise; a G could in principle draw only light images,
        # so this warns rather than refuses
        warnings.warn(f"{name}: every value is >= 0 (span [{lo:.4g}, {hi:.4g}]): images in [0, 1]? The classifier "
                      f"takes [-1, 1], where Fashion-MNIST's background is -1 (map with 2x - 1)", UserWarning,
                      stacklevel=3)
    return x


@torch.no_grad()
def classify(images, classifier: FashionMNISTNet | None = None, batch_size: int = 1000,
             name: str = "images") -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 128), logits (N, 10)) of images (N, 1, 28, 28) in [-1, 1], in float32 on the classifier's
    device (default: the shipped classifier on the images' device)."""
    x = _images(images, name)
    batch_size = positive_int(batch_size, "batch_size")
    net = classifier if classifier is not None else load_fmnist_classifier(x.device)
    if not isinstance(net, FashionMNISTNet):
        raise TypeError(f"classifier: expected a FashionMNISTNet, got {type(net).__name__}")
    was = net.training
    net.eval()  # batch statistics would make a sample's features depend on its batch
    cudnn = torch.backends.cudnn
    # cuDNN's convolutions default to TF32 on Ampere and newer GPUs: FDs and scores would differ by GPU generation
    # (and from the CPU's) by more than the small FDs they compare
    fp32_convolutions = cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                                    deterministic=cudnn.deterministic, allow_tf32=False)
    try:
        dev = next(net.parameters()).device
        feats, logits = [], []
        with fp32_convolutions:
            for i in range(0, x.shape[0], batch_size):
                f = net.features(x[i:i + batch_size].to(dev, torch.float32))
                feats.append(f)
                logits.append(net.head(f))
        return torch.cat(feats), torch.cat(logits)
    finally:
        net.train(was)


def fmnist_scores(samples, real=None, *, classifier: FashionMNISTNet | None = None, batch_size: int = 1000,
                  splits: int = 10) -> dict:
    """Scores of generated images `samples` (N, 1, 28, 28) in [-1, 1], N >= 2 * splits:
    `fd` (Fréchet distance to `real`: images of the same form, or a (mean, covariance) pair from
    `real_stats`; None without real), `score` and `score_std` (classifier score over `splits` parts).
    Values outside [-1, 1] are refused; all values >= 0 (images in [0, 1]?) warn."""
    splits = positive_int(splits, "splits")
    net = classifier if classifier is not None else load_fmnist_classifier(as_points(samples, "samples").device)
    feats, logits = classify(samples, net, batch_size, "samples")
    if feats.shape[0] < 2 * splits:  # classifier_score's own error would name its "logits"
        raise ValueError(f"samples: {feats.shape[0]} images cannot make splits={splits} parts of at least 2 "
                         f"(give at least {2 * splits} or fewer splits)")
    mean, std = classifier_score(logits, splits)
    out = {"fd": None, "score": mean, "score_std": std, "samples": int(feats.shape[0])}
    if real is not None:
        stats = real if isinstance(real, (tuple, list)) else real_stats(real, net, batch_size)
        out["fd"] = _distance(gaussian_stats(feats, "samples"), stats, "samples", "real")
    return out


def real_stats(images, classifier: FashionMNISTNet | None = None, batch_size: int = 1000):
    """(mean, covariance) of the classifier's features of real images, to pass as `real` to several
    `fmnist_scores` calls."""
    feats, _ = classify(images, classifier, batch_size, "real")
    return gaussian_stats(feats, "real")
