"""One Adam step per torch.optim implementation (run.optim_impl: for_loop, foreach, fused) on the parameters of
fastgan's models, same run: why run.optim_impl=auto takes fused on the CPU, where torch's default is the for-loop.

Run: pytest bench/bench_optim.py --benchmark-only [--benchmark-json out.json]
Ids are impl-model-device (not bench/goals.py's device-impl-case: these are torch's optimizers, not fastgan's ops).
"""
import pytest
import torch

from fastgan.config import ModelConfig
from fastgan.models import build_denoiser, build_discriminator, build_generator

from benchutil import DEVICES, device_label, sync

IMPLS = {"for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _models(name):
    """The modules one run steps: the default job's MLPs (3-D mixture), DCGAN's G and D on 28x28 images, and a
    DFM denoiser of 2048 units (bench_denoiser.py's largest) on a 2048-feature D."""
    if name == "mixture_mlp":
        cfg = ModelConfig()
        return [build_generator(cfg, (3,)), build_discriminator(cfg, (3,))]
    if name == "dcgan28":
        cfg = ModelConfig(arch="dcgan")
        return [build_generator(cfg, (1, 28, 28)), build_discriminator(cfg, (1, 28, 28))]
    return [build_denoiser(2048, 2048, 3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", ["mixture_mlp", "dcgan28", "denoiser2048"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_adam_step(benchmark, impl, model, device):
    torch.manual_seed(0)
    params = [p for m in _models(model) for p in m.to(device).parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.999), **IMPLS[impl])
    opt.step()  # the moments allocated outside the timing

    def step():
        opt.step()
        sync(device)

    benchmark(step)
    benchmark.extra_info.update(device=device_label(device), impl=impl,
                                parameters=sum(p.numel() for p in params))
