"""Roth et al.'s pairwise cross-testing protocol (section 5.5).

Each model's discriminator classifies held-out real samples against its own generator's samples (its confusion
matrix), then the other model's generated samples. The discriminator that calls fewer of the other model's
samples real (lower cross-testing FP, then lower FN) defines the better model: it is not fooled by samples it
was not trained against, which the paper reads as better generalization.

Each rate comes with a binomial standard error (`*_se`), and the difference of the two cross-testing FPs with
sqrt(se1^2 + se2^2) (`cross_fp_difference_se`): the paper reports bare rates, and with a few thousand samples a
difference of a few hundredths can be noise. The error is Agresti and Coull's, sqrt(p~ (1 - p~) / (n + 4)) with
p~ = (k + 2) / (n + 4) for k of n samples: the plain sqrt(p (1 - p) / n) is 0 at a rate of 0 or 1 (Roth et al.'s
own result is FP 0.0 vs 1.0), which would make any difference look certain on a handful of samples; for
thousands of samples the two agree.

"Real" is a logit above the discriminator's threshold: 0 by default, D(x) > 1/2 for the minimax GAN Roth et al.
cross-test; a D trained with another loss has its own (`fastgan crosstest` takes each run's from its config:
fastgan.methods.losses.decision_threshold, 0.5 for least squares, 1 for the KL f-GAN; a WGAN critic has none and
is refused there). Discriminators classify in eval mode (BatchNorm with its running
statistics): a sample's label must not depend on the batch it comes in.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._errors import first_line
from ._args import as_points, check_finite, positive_int, real_number


def _samples(x, name: str) -> torch.Tensor:
    x = as_points(x, name)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty batch of samples (N, ...), got shape {tuple(x.shape)}")
    check_finite(x, name)
    return x


def real_fraction(D: nn.Module, x, batch_size: int = 1024, *, threshold: float = 0.0) -> float:
    """The fraction of samples x that D classifies as real (logit > threshold), in eval mode, without gradients; a
    NaN logit is an error (counted as "fake", a diverged D would look perfect on fake samples)."""
    return _real_fraction(D, _samples(x, "x"), batch_size, "D", _threshold(threshold, "threshold"))


def _threshold(t, name: str) -> float:
    v = real_number(t)  # numpy scalars and 0-d tensors too, as the other metrics' numbers
    if v is None or not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number (the logit above which D calls a sample real), got {t!r}")
    return v


def _real_fraction(D, x: torch.Tensor, batch_size: int, d_name: str, threshold: float) -> float:
    if not callable(D):
        raise TypeError(f"{d_name}: expected a discriminator module, got {type(D).__name__}")
    batch_size = positive_int(batch_size, "batch_size")
    module = D if isinstance(D, nn.Module) else None
    was = module.training if module is not None else None
    p = next(module.parameters(), None) if module is not None else None
    if module is not None:
        module.eval()
    real = 0
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                chunk = x[i:i + batch_size]
                if p is not None:  # samples from anywhere (numpy, the host) meet D where it lives
                    chunk = chunk.to(p.device, p.dtype)
                try:
                    logits = D(chunk)
                except torch.OutOfMemoryError:
                    raise
                except Exception as e:
                    # torch's own message ("mat1 and mat2 shapes cannot be multiplied") names neither D nor the samples
                    msg = first_line(e, default="")
                    raise ValueError(f"{d_name}: failed on samples of shape {tuple(chunk.shape[1:])} (a batch "
                                     f"{tuple(chunk.shape)}, {chunk.dtype}): {type(e).__name__}: {msg}") from e
                if not isinstance(logits, torch.Tensor) or logits.numel() != chunk.shape[0]:
                    raise ValueError(f"{d_name}: expected one logit per sample ({chunk.shape[0]}), got "
                                     f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)}")
                nan = int(torch.isnan(logits).sum())
                if nan:
                    raise ValueError(f"{d_name}: returned {nan} NaN logit(s) for {chunk.shape[0]} samples (eval mode); "
                                     "a diverged discriminator cannot be scored")
                real += int((logits.reshape(-1) > threshold).sum())
    finally:
        if module is not None:
            module.train(was)
    return real / x.shape[0]


def _se(p: float, n: int) -> float:
    q = (p * n + 2.0) / (n + 4.0)
    return math.sqrt(q * (1.0 - q) / (n + 4.0))


def confusion(D: nn.Module, real, fake, batch_size: int = 1024, *, threshold: float = 0.0) -> dict:
    """D's confusion matrix as rates: tp (real called real: logit > threshold), fn, fp (fake called real), tn; and
    the standard errors tp_se (= fn's) and fp_se (= tn's)."""
    real, fake = _samples(real, "real"), _samples(fake, "fake")
    _same_shape(fake, real, "fake")
    return _confusion(D, real, fake, batch_size, "D", _threshold(threshold, "threshold"))


def _same_shape(fake: torch.Tensor, real: torch.Tensor, name: str) -> None:
    # a D that flattens its input would classify (N, 1, 2) fakes against (N, 2) real samples without a word
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(f"{name}: samples of shape {tuple(fake.shape[1:])}, real samples of shape "
                         f"{tuple(real.shape[1:])}")


def _confusion(D, real: torch.Tensor, fake: torch.Tensor, batch_size: int, d_name: str, threshold: float) -> dict:
    tp = _real_fraction(D, real, batch_size, d_name, threshold)
    fp = _real_fraction(D, fake, batch_size, d_name, threshold)
    return {"tp": tp, "fn": 1.0 - tp, "fp": fp, "tn": 1.0 - fp, "tp_se": _se(tp, real.shape[0]),
            "fp_se": _se(fp, fake.shape[0])}


def cross_test(D1: nn.Module, fake1, D2: nn.Module, fake2, real, batch_size: int = 1024, *,
               names: tuple[str, str] = ("D1", "D2"), thresholds: tuple[float, float] = (0.0, 0.0)) -> dict:
    """Cross-test model 1 (D1 and samples fake1 of its G) against model 2 on held-out real samples.

    Returns {"model1": {tp, fn, fp, tn, cross_fp, tp_se, fp_se, cross_fp_se}, "model2": {...}, "better": 1 | 2 |
    None, "cross_fp_difference_se"}, where model i's cross_fp is the fraction of the other model's samples its D
    calls real; "better" is the model with the lower cross_fp, then the lower fn (None on a tie); "warnings" names
    the better model's D where its TP is below DEGENERATE_TP (one calling almost everything fake wins by the rule).
    names: how errors and warnings name the two discriminators (a NaN logit, a logit count that is not one per
    sample); thresholds: the logit above which each D calls a sample real (its loss's indifference point, 0 for a
    minimax GAN).
    """
    real = _samples(real, "real")
    fake1, fake2 = _samples(fake1, "fake1"), _samples(fake2, "fake2")
    if not isinstance(thresholds, (tuple, list)) or len(thresholds) != 2:
        raise ValueError(f"thresholds: expected two numbers (one per discriminator), got {thresholds!r}")
    thresholds = tuple(_threshold(t, f"thresholds[{i}]") for i, t in enumerate(thresholds))
    for name, f in (("fake1", fake1), ("fake2", fake2)):
        _same_shape(f, real, name)
    out = {}
    for i, (D, own, other, name, t) in enumerate(((D1, fake1, fake2, names[0], thresholds[0]),
                                                  (D2, fake2, fake1, names[1], thresholds[1])), 1):
        cross = _real_fraction(D, other, batch_size, name, t)
        out[f"model{i}"] = {**_confusion(D, real, own, batch_size, name, t), "threshold": t, "cross_fp": cross,
                            "cross_fp_se": _se(cross, other.shape[0])}
    key = {i: (out[f"model{i}"]["cross_fp"], out[f"model{i}"]["fn"]) for i in (1, 2)}
    out["better"] = None if key[1] == key[2] else min((1, 2), key=key.get)
    out["cross_fp_difference_se"] = math.hypot(out["model1"]["cross_fp_se"], out["model2"]["cross_fp_se"])
    out["warnings"] = [f"{names[i - 1]} calls {1 - out[f'model{i}']['tp']:.1%} of the real samples fake (TP "
                       f"{_shown_below(out[f'model{i}']['tp'], DEGENERATE_TP)} < {DEGENERATE_TP}): its low "
                       "cross-testing FP says only that it "
                       f"calls almost everything fake, not that model {i} is better"
                       for i in (1, 2) if out["better"] == i and out[f"model{i}"]["tp"] < DEGENERATE_TP]
    return out


# A D that calls nearly every sample fake (a flat D that never learned, e.g. under a large gamma) wins the cross-test
# by the rule while saying nothing about the models: flagged below this true-positive rate.
DEGENERATE_TP = 0.05


def _shown_below(x: float, bound: float) -> str:
    """x to 4 decimals, or to as many significant digits as show it below `bound` (0.04995 read "0.0500 < 0.05")."""
    text = f"{x:.4f}"
    digits = 4
    while float(text) >= bound and digits < 17:
        digits += 1
        text = f"{x:.{digits}g}"
    return text
