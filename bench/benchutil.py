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
