"""NTGAN ops: noisy_clean_batch and nt_losses, forward + backward, fused vs plain PyTorch, same run (GB/s).

"torch" is what a user writes without fastgan (torch.randn_like, torch.cat, F.logsigmoid); "reference" is
fastgan/reference (the same Philox stream in torch integer ops: the oracle, slow by design).
Run: pytest bench/bench_noise.py --benchmark-only [--benchmark-json out.json]
CPU A/B (interleaved, CPU time of this thread, robust on a shared machine):
    OMP_NUM_THREADS=1 python bench/bench_noise.py [--reps 40] [--calls 20] [--warm 0] [--impls torch,reference,cpu]
        [-k LABEL_SUBSTRING]
"""
import pytest
import torch
import torch.nn.functional as F

from fastgan.ops import NoiseState, noisy_clean_batch, nt_losses
from fastgan.reference import noise as ref_noise
from fastgan.reference import nt_losses as ref_nt

from benchutil import DEVICES, ab, device_label, fused_backends, sync

# (m, sample shape): the 2-d mixture and DCGAN-sized images
NOISE_SIZES = {"cpu": [(512, (2,)), (64, (3, 32, 32))],
               "cuda": [(512, (2,)), (256, (3, 32, 32)), (4096, (3, 32, 32)), (1024, (3, 64, 64))]}
LOSS_SIZES = {"cpu": [512, 8192], "cuda": [512, 8192, 65536]}


def _cases(sizes, baselines):
    for dev in DEVICES:
        for size in sizes[dev]:
            for impl in baselines + fused_backends(dev):
                label = f"m{size[0]}-F{'x'.join(map(str, size[1]))}" if isinstance(size, tuple) else f"N{size}"
                yield pytest.param(dev, impl, size, id=f"{dev}-{impl}-{label}")


def _torch_noisy(xr, xf, sigma, mode):
    """The straightforward PyTorch version (its own RNG stream)."""
    m = xr.shape[0]
    h = 0 if mode == "double" else m // 2
    eps = sigma * torch.randn_like(xr[h:])
    if mode == "double":
        return torch.cat([xr, xr + eps]), torch.cat([xf, xf + eps])
    return torch.cat([xr[:h], xr[h:] + eps]), torch.cat([xf[:h], xf[h:] + eps])


def _report(benchmark, device, nbytes):
    benchmark.extra_info.update(device=device_label(device), bytes_moved=nbytes)
    if benchmark.stats is not None and benchmark.stats.stats.mean > 0:
        benchmark.extra_info["GB_per_s"] = nbytes / benchmark.stats.stats.mean / 1e9


@pytest.mark.parametrize("mode", ["double", "half"])
@pytest.mark.parametrize("device,impl,size", list(_cases(NOISE_SIZES, ["torch", "reference"])))
def test_noisy_clean_batch_forward_backward(benchmark, device, impl, size, mode):
    m, shape = size
    torch.manual_seed(0)
    xr = torch.randn(m, *shape, device=device, requires_grad=True)
    xf = torch.randn(m, *shape, device=device, requires_grad=True)
    sigma = torch.tensor(0.5, device=device, requires_grad=True)
    state = NoiseState(0, device)

    def step():
        if impl == "torch":
            r, f = _torch_noisy(xr, xf, sigma, mode)
        elif impl == "reference":
            r, f = ref_noise.noisy_clean_batch(xr, xf, sigma, mode, state.tensor)
        else:
            r, f = noisy_clean_batch(xr, xf, sigma, mode, state=state, backend=impl)
        torch.autograd.grad((r.sum(), f.sum()), (xr, xf, sigma))
        sync(device)

    benchmark(step)
    rows = 2 * m if mode == "double" else m
    F_ = xr[0].numel()
    # the minimum traffic: read x (2 m F), write both batches (2 rows F); backward reads the two upstream
    # gradients (2 rows F) and writes dx (2 m F)
    _report(benchmark, device, (4 * m * F_ + 4 * rows * F_) * xr.element_size())


@pytest.mark.parametrize("device,impl,size", list(_cases(LOSS_SIZES, ["torch"])))
def test_nt_losses_forward_backward(benchmark, device, impl, size):
    n = size
    torch.manual_seed(0)
    lr = torch.randn(n, device=device, requires_grad=True)
    lf = torch.randn(n, device=device, requires_grad=True)
    mu = torch.rand((), device=device)

    def step():
        if impl == "torch":
            h = n // 2
            loss = (mu * (-F.logsigmoid(lr[:h])).mean() + (1 - mu) * (-F.logsigmoid(lr[h:])).mean()
                    + mu * (-F.logsigmoid(-lf[:h])).mean() + (1 - mu) * (-F.logsigmoid(-lf[h:])).mean())
            w_r, w_f = ref_nt.js_weights(lr, lf)
        else:
            loss, w_r, w_f = nt_losses(lr, lf, mu, js_weights=True, backend=impl)
        torch.autograd.grad((loss, w_r.sum(), w_f.sum()), (lr, lf))
        sync(device)

    benchmark(step)
    # forward reads 2n logits, writes 2n weights; backward reads 2n logits + 2n weight grads, writes 2n
    _report(benchmark, device, 10 * n * lr.element_size())


# ---------------------------------------------------------------- interleaved A/B on CPU (python bench/bench_noise.py)

def _noise_step(impl, m, shape, mode, noise_kind):
    torch.manual_seed(0)
    xr = torch.randn(m, *shape, requires_grad=True)
    xf = torch.randn(m, *shape, requires_grad=True)
    h = 0 if mode == "double" else m // 2
    if noise_kind == "float":  # a fixed sigma
        noise = 0.5
    elif noise_kind == "sigma":  # a learned one
        noise = torch.tensor(0.5, requires_grad=True)
    else:  # the noise generator's output eps
        noise = torch.randn(m - h, *shape, requires_grad=True)
    state = NoiseState(0)
    wrt = (xr, xf, noise) if noise_kind != "float" else (xr, xf)

    def step():
        if impl == "torch":
            eps = noise * torch.randn_like(xr[h:]) if noise_kind != "eps" else noise
            if mode == "double":
                r, f = torch.cat([xr, xr + eps]), torch.cat([xf, xf + eps])
            else:
                r, f = torch.cat([xr[:h], xr[h:] + eps]), torch.cat([xf[:h], xf[h:] + eps])
        elif impl == "reference":
            r, f = ref_noise.noisy_clean_batch(xr, xf, noise, mode, state.tensor)
        else:
            r, f = noisy_clean_batch(xr, xf, noise, mode, state=state, backend=impl)
        torch.autograd.grad((r.sum(), f.sum()), wrt)

    return step


def _loss_step(impl, n, js):
    torch.manual_seed(0)
    lr = torch.randn(n, requires_grad=True)
    lf = torch.randn(n, requires_grad=True)
    mu = torch.rand(())
    h = n // 2

    def step():
        w_r = w_f = None
        if impl == "torch":
            loss = (mu * (-F.logsigmoid(lr[:h])).mean() + (1 - mu) * (-F.logsigmoid(lr[h:])).mean()
                    + mu * (-F.logsigmoid(-lf[:h])).mean() + (1 - mu) * (-F.logsigmoid(-lf[h:])).mean())
            if js:
                w_r, w_f = (1 - torch.sigmoid(lr)) ** 2, torch.sigmoid(lf) ** 2
        elif impl == "reference":
            out = ref_nt.nt_losses(lr, lf, mu, js=js)
            loss, w_r, w_f = out if js else (out, None, None)
        else:
            out = nt_losses(lr, lf, mu, js_weights=js, backend=impl)
            loss, w_r, w_f = out if js else (out, None, None)
        outs = (loss,) if not js else (loss, w_r.sum(), w_f.sum())
        torch.autograd.grad(outs, (lr, lf))

    return step


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--warm", type=int, default=0, help="untimed calls before each timed block (see ab)")
    ap.add_argument("--impls", default="torch,reference,cpu", help="comma-separated, from torch,reference,cpu")
    ap.add_argument("-k", "--filter", default="", help="run only the cases whose label contains this substring")
    args = ap.parse_args()
    torch.set_num_threads(1)
    impls = args.impls.split(",")
    if "torch" not in impls:
        ap.error("--impls must include torch (the ratios are to it)")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, reps {args.reps} x {args.calls} calls, "
          f"warm {args.warm}; us per forward+backward call: median (min); ratio = median of paired per-rep ratios "
          "to torch")
    cases = []
    for (m, shape) in NOISE_SIZES["cpu"]:
        for mode in ("double", "half"):
            for kind in ("float", "sigma", "eps"):
                label = f"noisy_clean_batch m={m} S={shape} {mode} {kind}"
                cases.append((label, {impl: _noise_step(impl, m, shape, mode, kind) for impl in impls}))
    for n in (1024, 8192):
        for js in (False, True):
            cases.append((f"nt_losses N={n} js={js}", {impl: _loss_step(impl, n, js) for impl in impls}))
    for label, steps in cases:
        if args.filter not in label:
            continue
        stats, ratios = ab(steps, args.reps, args.calls, args.warm)
        cells = "  ".join(f"{k} {stats[k][0]:8.1f} ({stats[k][1]:7.1f}) x{ratios[k]:.2f}" for k in steps)
        print(f"{label:55s} {cells}", flush=True)


if __name__ == "__main__":
    main()
