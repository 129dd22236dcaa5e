import torch

REDUCTIONS = ("mean", "sum", "none")


def reduce_batch(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-sample values over the batch: "mean", "sum" or "none"."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
