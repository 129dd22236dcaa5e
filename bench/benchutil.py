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


def ab(steps, reps, calls, warm=0, base="torch"):
    """Interleaved A/B: each rep times `calls` calls of every impl back to back (order rotated), with
    time.thread_time (CPU time of this thread: other processes on a shared machine do not count).
    `warm` untimed calls precede each timed block: without them a block's first calls pay for the caches the
    previous impl evicted (the reference's 20 calls take ~12 ms), which weighs on an impl by its predecessor.
    Returns {impl: (median us/call, min us/call)} and the median over reps of the paired ratio to `base`."""
    import statistics
    import time

    names = list(steps)
    for fn in steps.values():  # warm-up
        for _ in range(max(3, calls)):
            fn()
    per = {k: [] for k in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for k in order:
            fn = steps[k]
            for _ in range(warm):
                fn()
            t0 = time.thread_time()
            for _ in range(calls):
                fn()
            per[k].append((time.thread_time() - t0) / calls * 1e6)
    stats = {k: (statistics.median(v), min(v)) for k, v in per.items()}
    ratios = {k: statistics.median(a / b for a, b in zip(per[k], per[base])) for k in names}
    return stats, ratios
