"""ms per discriminator update with Roth et al.'s JS penalty, per gradient mode, against the unregularized update.

    pytest bench/bench_penalty_modes.py --benchmark-only      # measure (CPU, and CUDA when present)
    pytest bench/bench_penalty_modes.py --benchmark-disable   # smoke run, each case once

One D update: zero_grad, logits (and the penalty) on a real and a fake batch, loss_D + gamma/2 * Omega, backward,
Adam step. Cases: Roth's MLP D (3-d data, B=512: Linear 128 tanh Linear 128 tanh Linear 1, and the same with
LeakyReLU) and a DCGAN32-like D with BatchNorm (NTGAN Table 1 layout, B=64 and 256; width 64 on CUDA, 8 on CPU so the
CPU run stays short) and without it ("dcgan32_nobn"); mode "mlp" is the closed form, for the convnets too.
Beside them, not a case of the issue's goals: "resnet32", Roth et al.'s ResNet D (model.arch=resnet, Gulrajani's
pre-activation residual blocks with BatchNorm) at 32x32, B=64, resnet_width 64 on CUDA (Gulrajani's dim, the
architecture Roth et al. trained and model.resnet_width's default) and 8 on CPU (the DCGAN32 case's reduction); its
residual shortcuts keep the closed form out (mode "mlp" refuses D), so its modes are double_backward, jvp and "auto"
(the mode "auto" picks for it, recorded in extra_info's auto_mode: the double backward on CPU).
extra_info holds ms (min, median) and the ratios to the unregularized update and to the double backward of the
same case, from min and from median times (filled when those ran earlier in the same session with timing on).
Each case asserts that the requested mode is the one that ran ("auto": the mode it picked).
test_d_update_f_gan: the same DCGAN updates with the f-GAN D loss and Roth et al.'s Omega_f (f = "gan"), whose
batch-coupled D needs the input gradient of g_f(psi) (double backward or jvp), with extra_info's f set.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.methods.fdiv import activation, conjugate_of_activation
from fastgan.methods.roth import regularizer
from fastgan.models import ModelConfig, build_discriminator
from fastgan.ops import _dispatch, js_penalty
from fastgan.ops.penalty_jvp import auto_mode

from benchutil import DEVICES, device_label, sync

GAMMA = 2.0
_means: dict = {}


def mlp_d(act: str) -> nn.Module:
    a = nn.Tanh if act == "tanh" else (lambda: nn.LeakyReLU(0.2))
    return nn.Sequential(nn.Linear(3, 128), a(), nn.Linear(128, 128), a(), nn.Linear(128, 1))


class DCGAN32D(nn.Module):
    """conv3 s1 lReLU w -> [conv4 s2 BN lReLU] w, 2w, 4w, 8w (32 -> 2) -> FC 1 (without BN: the "_nobn" cases)."""

    def __init__(self, width: int, batchnorm: bool = True):
        super().__init__()
        layers, ch = [nn.Conv2d(3, width, 3, 1, 1), nn.LeakyReLU(0.2)], width
        for i in range(4):
            out = width * 2 ** i
            layers += [nn.Conv2d(ch, out, 4, 2, 1)] + ([nn.BatchNorm2d(out)] if batchnorm else []) + [nn.LeakyReLU(0.2)]
            ch = out
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(ch * 2 * 2, 1)

    def forward(self, x):
        return self.fc(self.net(x).flatten(1))

    def as_sequential(self):  # opts into mode="mlp", the closed form
        return nn.Sequential(*self.net, nn.Flatten(), self.fc)


def _case(model: str, device: str, width: int | None = None, batch: int | None = None):
    """(D, x_real, x_fake); width (DCGAN and ResNet) and batch default to the benchmark's for the device."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if model.startswith("mlp"):
        D, B, shape = mlp_d(model.split("_")[1]), batch or 512, (3,)
    elif model == "resnet32":  # Roth et al.'s ResNet D as model.arch=resnet builds it, at 32x32 (ends at 2x2)
        B, width, shape = batch or 64, width or (64 if device == "cuda" else 8), (3, 32, 32)
        D = build_discriminator(ModelConfig(arch="resnet", resnet_width=width), shape)
    else:  # "dcgan32" (B=64) or "dcgan32_b256": the two DCGAN batch sizes; "_nobn": no BatchNorm
        B = batch or (256 if "_b256" in model else 64)
        width = width or (64 if device == "cuda" else 8)
        D, shape = DCGAN32D(width, batchnorm="_nobn" not in model), (3, 32, 32)
    x_real = torch.randn(B, *shape, generator=g).to(device)
    x_fake = torch.randn(B, *shape, generator=g).to(device)
    return D.to(device), x_real, x_fake


def d_update_fn(D, opt, x_real, x_fake, mode, backend=None, gamma=GAMMA, f=None):
    """One D update: zero_grad, logits (and the JS penalty unless unregularized), backward, optimizer step.
    f (an f-divergence of fastgan.methods.fdiv): the f-GAN D loss and Roth et al.'s Omega_f (eq. 19,
    method.roth.penalty=f) instead, as the trainer computes them; `backend` is the JS penalty's only."""
    def update():
        opt.zero_grad(set_to_none=True)
        if mode == "unregularized":
            lr, lf = D(x_real).reshape(-1), D(x_fake).reshape(-1)
            pen = 0.0
        elif f is not None:
            pen, lr, lf = regularizer(D, "f", x_real, x_fake, f=f, mode=mode)
        else:
            pen, lr, lf = js_penalty(D, x_real, x_fake, mode=mode, backend=backend)
        if f is not None:
            loss = conjugate_of_activation(f, lf).mean() - activation(f, lr).mean() + gamma / 2 * pen
        else:
            loss = F.softplus(-lr).mean() + F.softplus(lf).mean() + gamma / 2 * pen
        loss.backward()
        opt.step()
    return update


CASES = [(m, mode) for m in ("mlp_tanh", "mlp_leaky") for mode in ("unregularized", "double_backward", "jvp", "mlp")]
CASES += [(m, mode) for m in ("dcgan32", "dcgan32_b256", "dcgan32_nobn")
          for mode in ("unregularized", "double_backward", "jvp", "mlp")]
# not a goal case (information): no "mlp", the closed form cannot run a D with residual shortcuts (mode="mlp" raises)
CASES += [("resnet32", mode) for mode in ("unregularized", "double_backward", "jvp", "auto")]
PENALTY_MODES = ("double_backward", "jvp", "mlp")  # what _dispatch counts: "auto" is counted as the mode it ran


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model,mode", CASES, ids=[f"{m}-{mode}" for m, mode in CASES])
def test_d_update(benchmark, model, mode, device):
    _d_update(benchmark, model, mode, device)


# Roth et al.'s f-GAN regularizer (method.roth.penalty=f) on the BatchNorm DCGAN D: where D couples its samples and
# g_f is not the identity, Omega_f needs the input gradient of g_f(psi) summed over the batch, which the double
# backward and jvp form (penalty_statistic.py; the closed form refuses it). Information beside the JS cases, with
# their own unregularized f-GAN update for the ratios.
F_CASES = [(m, f, mode) for m in ("dcgan32", "dcgan32_b256") for f in ("gan",)
           for mode in ("unregularized", "double_backward", "jvp")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model,f,mode", F_CASES, ids=[f"{m}-f_{f}-{mode}" for m, f, mode in F_CASES])
def test_d_update_f_gan(benchmark, model, f, mode, device):
    _d_update(benchmark, model, mode, device, f=f)


def _d_update(benchmark, model, mode, device, f=None):
    D, x_real, x_fake = _case(model, device)
    opt = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.5, 0.999))
    update = d_update_fn(D, opt, x_real, x_fake, mode, f=f)

    def step():
        update()
        sync(device)

    before = {m: _dispatch.counts[("gradient_penalty", m)] for m in PENALTY_MODES}
    benchmark.extra_info.update(model=model, mode=mode, device=device_label(device), batch=x_real.shape[0],
                                torch=torch.__version__, threads=torch.get_num_threads())
    if f is not None:
        benchmark.extra_info["f"] = f
    benchmark(step)
    ran = mode
    if mode == "auto":  # its choice for the timed calls (a jvp check, where auto makes one, ran in the warm-up)
        ran = benchmark.extra_info["auto_mode"] = auto_mode(D, x_real, "mean")
    if mode != "unregularized":
        assert _dispatch.counts[("gradient_penalty", ran)] > before.get(ran, 0), f"mode {mode} ({ran}) did not run"
    stats = getattr(benchmark, "stats", None)
    if stats is None or getattr(stats, "stats", None) is None:
        return  # --benchmark-disable: nothing was timed
    st = stats.stats
    _means[(model, device, mode, f)] = (st.min, st.median)
    benchmark.extra_info.update(ms_min=st.min * 1e3, ms_median=st.median * 1e3)
    for base in ("unregularized", "double_backward"):
        ref = _means.get((model, device, base, f))
        if ref and base != mode:
            # min is the steadiest statistic on a shared machine; the median is kept beside it
            benchmark.extra_info[f"ratio_vs_{base}_min"] = st.min / ref[0]
            benchmark.extra_info[f"ratio_vs_{base}_median"] = st.median / ref[1]


LAZY = [(model, mode, every) for model in ("mlp_leaky", "dcgan32") for mode in ("double_backward", "jvp")
        for every in (4, 16)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model,mode,every", LAZY, ids=[f"{m}-{mode}-every{k}" for m, mode, k in LAZY])
def test_d_update_lazy(benchmark, model, mode, every, device):
    """Lazy regularization (method.roth.every=k): one regularized update (gamma * k) and k - 1 plain ones per
    call; extra_info's ms and ratio_vs_unregularized are per update, i.e. the amortized cost."""
    D, x_real, x_fake = _case(model, device)
    opt = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.5, 0.999))
    regularized = d_update_fn(D, opt, x_real, x_fake, mode, gamma=GAMMA * every)
    plain = d_update_fn(D, opt, x_real, x_fake, "unregularized")

    def cycle():
        regularized()
        for _ in range(every - 1):
            plain()
        sync(device)

    before = _dispatch.counts[("gradient_penalty", mode)]
    benchmark.extra_info.update(model=model, mode=mode, every=every, device=device_label(device),
                                batch=x_real.shape[0], torch=torch.__version__, threads=torch.get_num_threads())
    benchmark(cycle)
    assert _dispatch.counts[("gradient_penalty", mode)] > before, f"mode {mode} did not run"
    stats = getattr(benchmark, "stats", None)
    if stats is None or getattr(stats, "stats", None) is None:
        return
    st = stats.stats
    benchmark.extra_info.update(ms_min=st.min / every * 1e3, ms_median=st.median / every * 1e3)
    ref = _means.get((model, device, "unregularized", None))
    if ref:
        benchmark.extra_info["ratio_vs_unregularized_min"] = st.min / every / ref[0]
        benchmark.extra_info["ratio_vs_unregularized_median"] = st.median / every / ref[1]
