"""The gradient-norm penalty: low-level op (GB/s) and js_penalty on a D, fused vs reference, same run.

Run: pytest bench/bench_penalty.py --benchmark-only [--benchmark-json out.json]
CPU A/B of the D updates (interleaved, CPU time of this thread, robust on a shared machine):
    OMP_NUM_THREADS=1 python bench/bench_penalty.py [--reps 40] [--calls 10] [--warm 1]
"""

import pytest
import torch
from torch import nn

import fastgan
from fastgan.ops import penalty as P
from fastgan.reference import penalty as ref

from benchutil import DEVICES, ab, device_label, fused_backends, sync

# (B, sample shape): the mixture, a mid size, DCGAN images (CPU keeps the small ones; and rows of 64 features, which
# the C++ kernel summed in a double chain until 2026-12-08: 1.57x the reference's time)
SIZES = {"cpu": [(512, (3,)), (65536, (3,)), (4096, (64,)), (256, (3, 32, 32))],
         "cuda": [(512, (3,)), (1 << 20, (3,)), (256, (3, 32, 32)), (4096, (3, 32, 32)), (1024, (3, 64, 64))]}


def _cases():
    for dev in DEVICES:
        for B, shape in SIZES[dev]:
            for backend in ["reference"] + fused_backends(dev):
                yield pytest.param(dev, backend, B, shape, id=f"{dev}-{backend}-B{B}-F{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("device,backend,B,shape", list(_cases()))
def test_op_forward_backward(benchmark, device, backend, B, shape):
    torch.manual_seed(0)
    grad = torch.randn(B, *shape, device=device, requires_grad=True)
    logits = torch.randn(B, device=device, requires_grad=True)

    def step():
        if backend == "reference":
            out = ref.grad_norm_penalty(grad, logits, "js_real", "mean")
        else:
            out = P.grad_norm_penalty(grad, logits, "js_real", "mean", backend=backend)
        torch.autograd.grad(out, (grad, logits))
        sync(device)

    benchmark(step)
    # forward reads g and the logits (the mean is one scalar); backward reads g and the logits and writes dgrad and
    # dlogits: three passes over the B*F gradient and three over the B logits (bench_bandwidth.py counts each pass's
    # per-row vectors too: at F = 3 the logits are a quarter of the traffic)
    nbytes = 3 * grad.numel() * grad.element_size() + 3 * logits.numel() * logits.element_size()
    benchmark.extra_info.update(device=device_label(device),
                                bytes_moved=nbytes)
    if benchmark.stats is not None and benchmark.stats.stats.mean > 0:
        benchmark.extra_info["GB_per_s"] = nbytes / benchmark.stats.stats.mean / 1e9


def mlp_d():
    return nn.Sequential(nn.Linear(3, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))


def dcgan32_d(width=64):
    return nn.Sequential(
        nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.BatchNorm2d(4 * width), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(4 * width * 16, 1))


D_CASES = {"cpu": [("mlp", 512), ("dcgan32", 16)], "cuda": [("mlp", 512), ("dcgan32", 64), ("dcgan32", 256)]}


def _d_cases():
    for dev in DEVICES:
        for arch, B in D_CASES[dev]:
            for backend in ["none", "reference"] + fused_backends(dev):
                # [device-impl-case], as bench/goals.py groups benchmarks to compare backends
                yield pytest.param(dev, arch, B, backend, id=f"{dev}-{backend}-{arch}-B{B}")


def d_update_step(device, arch, B, backend):
    """One discriminator update (loss, penalty, backward, Adam) as a callable, with its own D and optimizer.
    backend='none' is the unregularized update, 'reference' fastgan/reference's js_penalty, else the op's."""
    torch.manual_seed(0)
    D = (mlp_d() if arch == "mlp" else dcgan32_d(64 if device == "cuda" else 16)).to(device)
    opt = torch.optim.Adam(D.parameters(), 1e-4, betas=(0.5, 0.999))
    shape = (3,) if arch == "mlp" else (3, 32, 32)
    x_real, x_fake = torch.randn(B, *shape, device=device), torch.randn(B, *shape, device=device)
    sp = nn.functional.softplus

    def step():
        opt.zero_grad(set_to_none=True)
        if backend == "none":
            lr, lf = D(x_real).squeeze(1), D(x_fake).squeeze(1)
            loss = sp(-lr).mean() + sp(lf).mean()
        else:
            if backend == "reference":
                pen, lr, lf = ref.js_penalty(D, x_real, x_fake)
            else:
                pen, lr, lf = fastgan.ops.js_penalty(D, x_real, x_fake, backend=backend)
            loss = sp(-lr).mean() + sp(lf).mean() + 0.05 * pen
        loss.backward()
        opt.step()
        sync(device)
    return step


@pytest.mark.parametrize("device,arch,B,backend", list(_d_cases()))
def test_d_update_with_penalty(benchmark, device, arch, B, backend):
    """One discriminator update (loss, penalty, backward, Adam). backend='none' is the unregularized update."""
    benchmark(d_update_step(device, arch, B, backend))
    benchmark.extra_info.update(device=device_label(device))


def main():
    """The CPU D updates as an interleaved A/B (benchutil.ab: CPU time of this thread, so one torch thread):
    sequential pytest-benchmark runs on a shared 2-core machine moved these ratios by 0.1-0.3 between runs."""
    import argparse

    ap = argparse.ArgumentParser(description="CPU D update with js_penalty: op vs reference, interleaved A/B")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--warm", type=int, default=1, help="untimed updates before each timed block")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, reps {args.reps} x {args.calls} updates, "
          f"warm {args.warm}; us per D update: median (min); ratio = median of paired per-rep ratios to reference")
    for arch, B in D_CASES["cpu"]:
        steps = {b: d_update_step("cpu", arch, B, b) for b in ("reference", "cpu", "none")}
        stats, ratios = ab(steps, args.reps, args.calls, args.warm, base="reference")
        cells = "  ".join(f"{k} {stats[k][0]:8.1f} ({stats[k][1]:7.1f}) x{ratios[k]:.3f}" for k in steps)
        print(f"D update {arch} B={B:<4d} {cells}", flush=True)


if __name__ == "__main__":
    main()
