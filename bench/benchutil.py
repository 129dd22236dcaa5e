"""Helpers shared by the benchmark files (bench/ is put on sys.path by bench/conftest.py)."""
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def fused_backends(device: str):
    return ["cpu"] if device == "cpu" else ["cuda", "triton"]


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def device_label(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def triton_gemm_mode(monkeypatch, mode: str) -> list:
    """Sets FASTGAN_DENOISER_TRITON_GEMM=mode for the test and returns the list that each run of the Triton
    denoiser's fused-GEMM loss (kernels/denoiser_gemm.loss_forward) appends its tl.dot precision to (None: the
    kernels' own rule, IEEE or TF32 as allow_tf32 says): both Triton paths count as ("denoiser_loss", "triton"), so
    this is what says the fused GEMMs, with that precision, are the ones timed."""
    from fastgan.kernels import denoiser_gemm

    monkeypatch.setenv("FASTGAN_DENOISER_TRITON_GEMM", mode)
    calls: list = []
    real = denoiser_gemm.loss_forward
    monkeypatch.setattr(denoiser_gemm, "loss_forward",
                        lambda *a, **k: calls.append(k.get("precision")) or real(*a, **k))
    return calls
