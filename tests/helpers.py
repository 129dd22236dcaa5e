"""Shared test helpers (imported as `helpers`; tests/ is on sys.path via conftest)."""
from __future__ import annotations

import torch


def assert_close_to_oracle(impl: torch.Tensor, ref_low: torch.Tensor, ref64: torch.Tensor, *, factor: float = 2.0,
                           floor: float | None = None, name: str = "") -> None:
    """|impl - ref64| <= factor * |ref_low - ref64| + floor, the acceptance rule for every fused op:
    an implementation may be at most `factor` times as far from the float64 truth as PyTorch's own
    reference computed in the same low precision. `floor` (default: a few ulps of the output dtype times
    the magnitude) covers elements where the reference happens to be exact."""
    impl, ref_low, ref64 = (t.detach().to(torch.float64) for t in (impl, ref_low, ref64))
    assert impl.shape == ref64.shape, f"{name}: shape {tuple(impl.shape)} != {tuple(ref64.shape)}"
    err = (impl - ref64).abs().max().item() if impl.numel() else 0.0
    ref_err = (ref_low - ref64).abs().max().item() if impl.numel() else 0.0
    if floor is None:
        floor = 4 * torch.finfo(torch.float32).eps * (ref64.abs().max().item() if impl.numel() else 0.0)
    bound = factor * ref_err + floor
    assert err <= bound, f"{name}: max error {err:.3e} exceeds {factor} x reference error {ref_err:.3e} + {floor:.1e}"


def backend_calls(op: str, backend: str) -> int:
    from fastgan.ops import _dispatch

    return _dispatch.counts[(op, backend)]


def auto_as_on_cuda(monkeypatch) -> None:
    """"auto" choosing as on CUDA, for CPU tensors: jvp (after its check) for the Ds the closed form leaves to it,
    BatchNorm with batch statistics included, where on CPU it runs the closed form or the double backward."""
    from fastgan.ops import penalty_jvp

    monkeypatch.setattr(penalty_jvp, "AUTO_JVP_DEVICES", penalty_jvp.AUTO_JVP_DEVICES | {"cpu"})
    monkeypatch.setattr(penalty_jvp, "AUTO_CLOSED_FORM_BATCH_STATS_DEVICES",
                        penalty_jvp.AUTO_CLOSED_FORM_BATCH_STATS_DEVICES - {"cpu"})
