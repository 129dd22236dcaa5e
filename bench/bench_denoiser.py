"""The DFM denoiser: forward + backward of its training loss and of the generator's term, fused
(fastgan.ops.Denoiser) vs the nn.Sequential reference (fastgan/reference/denoiser.py), same run.

Run: pytest bench/bench_denoiser.py --benchmark-only [--benchmark-json out.json]
CPU keeps the small end (n_h = 512, depth 3, B = 64 / 256); the n_h = 2048, depth 6, B = 512 grid runs
only where a GPU is visible.
"""
import copy

import pytest
import torch

from fastgan.ops import Denoiser
from fastgan.ops.denoiser_net import batched_layers, stacks_inputs
from fastgan.reference import denoiser as ref

from benchutil import DEVICES, device_label, fused_backends, sync

# (n_h, depth, B)
# the CPU's n_h 2048 case: where torch's batched weight-gradient GEMM (bmm) had made the cpu backend 1.34x slower
SIZES = {"cpu": [(512, 3, 64), (512, 3, 256), (2048, 3, 64)],
         "cuda": [(n_h, depth, B) for n_h in (512, 2048) for depth in (3, 6) for B in (64, 512)]}


def _cases(sizes=SIZES):
    for dev in DEVICES:
        for n_h, depth, B in sizes[dev]:
            for impl in ["reference"] + fused_backends(dev):
                yield pytest.param(dev, impl, n_h, depth, B, id=f"{dev}-{impl}-nh{n_h}-d{depth}-B{B}")


def _setup(device, impl, n_h, depth, B):
    torch.manual_seed(0)
    den = Denoiser(n_h, depth=depth, backend=None if impl == "reference" else impl).to(device)
    net = copy.deepcopy(den.net)
    h = torch.randn(B, n_h, device=device)
    noise = torch.randn(B, n_h, device=device)
    return den, net, h, noise


def loss_step(impl, den, net, h, noise):
    """One training step's loss forward + backward (no optimizer step), fused or reference."""
    if impl == "reference":
        net.zero_grad(set_to_none=True)
        ref.denoiser_loss(net, h, noise).backward()
    else:
        den.zero_grad(set_to_none=True)
        den.loss(h, noise).backward()


def gemms_step(den, h, backend: str | None = None):
    """A step that runs only the GEMMs of den's fused loss step on h's batch (denoiser_net.py's _loss_forward_impl,
    then _net_backward without the input gradient, as h needs none): same shapes, operand layouts and order, on
    operands made here once. The reference runs these same GEMMs, so reference time / this step's time bounds
    the speed-up any fused step can reach while its GEMMs are torch's. backend: the fused step's, by default the
    device's own (cuda on a GPU; cpu on the CPU, which takes no bmm)."""
    weights = [m.weight.detach() for m in den.net if isinstance(m, torch.nn.Linear)]
    depth = len(weights) - 1
    # their dW: one bmm over stacked inputs and gradients
    batched = batched_layers(weights, 0, depth) if stacks_inputs(backend or ("cpu" if h.is_cpu else "cuda")) else []
    # xs[i]: layer i's input; gs[i]: the gradient at layer i's GEMM output (gs[depth] is the output's dz)
    xs = [torch.randn(h.shape[0], w.shape[1], device=h.device, dtype=h.dtype) for w in weights]
    gs = [torch.randn(h.shape[0], w.shape[0], device=h.device, dtype=h.dtype) for w in weights]
    if batched:
        xs_b, gs_b = torch.stack([xs[i] for i in batched]), torch.stack([gs[i] for i in batched])

    def step():
        for x, w in zip(xs, weights):
            torch.mm(x, w.t())
        for i in reversed(range(depth + 1)):
            if i < depth:
                torch.mm(gs[i + 1], weights[i + 1])
            if i not in batched:
                torch.mm(gs[i].t(), xs[i])
        if batched:
            torch.bmm(gs_b.transpose(1, 2), xs_b)

    return step


def _info(benchmark, device, n_h, depth, B):
    benchmark.extra_info.update(device=device_label(device), n_h=n_h, depth=depth, B=B,
                                torch_threads=torch.get_num_threads())


@pytest.mark.parametrize("device,impl,n_h,depth,B", list(_cases()))
def test_denoiser_loss_forward_backward(benchmark, device, impl, n_h, depth, B):
    """loss(h) = ||h - r(h + sigma eps)||^2 and its backward to every parameter of r (ms per step)."""
    den, net, h, noise = _setup(device, impl, n_h, depth, B)

    def step():
        loss_step(impl, den, net, h, noise)
        sync(device)

    benchmark(step)
    _info(benchmark, device, n_h, depth, B)


GEN_SIZES = {"cpu": [(512, 3, 64)], "cuda": [(512, 3, 512), (2048, 6, 512)]}


@pytest.mark.parametrize("device,impl,n_h,depth,B", list(_cases(GEN_SIZES)))
def test_generator_term_forward_backward(benchmark, device, impl, n_h, depth, B):
    """||h_fake - r(h_fake)||^2 with r(h_fake) constant, and its gradient w.r.t. h_fake."""
    den, net, h, _ = _setup(device, impl, n_h, depth, B)
    h_fake = h.clone().requires_grad_()

    def step():
        h_fake.grad = None
        if impl == "reference":
            ref.generator_loss(net, h_fake).backward()
        else:
            den.generator_loss(h_fake).backward()
        sync(device)

    benchmark(step)
    _info(benchmark, device, n_h, depth, B)


MODULE_SIZES = {"cpu": [(512, 3, 64), (2048, 3, 64)], "cuda": GEN_SIZES["cuda"]}


@pytest.mark.parametrize("device,impl,n_h,depth,B", list(_cases(MODULE_SIZES)))
def test_module_forward_backward(benchmark, device, impl, n_h, depth, B):
    """r(h) called as a module with gradients (the drop-in use in a user's own loop) and a backward into h and
    every parameter: Denoiser(h) vs the nn.Sequential."""
    den, net, h, _ = _setup(device, impl, n_h, depth, B)
    h = h.requires_grad_()
    grad_r = torch.randn_like(h)
    module = net if impl == "reference" else den

    def step():
        h.grad = None
        module.zero_grad(set_to_none=True)
        module(h).backward(grad_r)
        sync(device)

    benchmark(step)
    _info(benchmark, device, n_h, depth, B)
