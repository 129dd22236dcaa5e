"""What a config must fit on this machine and its data, checked before the run folder is made: the device asked
for, a backend forced on every op, image shapes the architectures can take, and what a CUDA graph can capture.
Each failure is a ConfigError naming the field."""
from __future__ import annotations

import torch

from .config import ConfigError, TrainConfig
from .models.config import CONV_ARCHS


def _run_backend(cfg: TrainConfig) -> tuple[str | None, str]:
    """(the backend the run's fused ops are forced to, None for each op's best; how it was asked for): run.backend,
    or when it is auto the caller's use_backend block or FASTGAN_BACKEND. An unknown FASTGAN_BACKEND is a
    ConfigError naming it."""
    from .ops import _dispatch

    if cfg.run.backend != "auto":
        return cfg.run.backend, f"run.backend={cfg.run.backend!r}"
    try:
        return _dispatch.requested_backend()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _forced_by(cfg: TrainConfig) -> str:
    forced, named = _run_backend(cfg)
    return "auto" if forced is None else named


def _check_forced_backend(cfg: TrainConfig, device: torch.device) -> None:
    """A backend forced on every op (run.backend, use_backend, FASTGAN_BACKEND) that cannot run on the run's device
    fails here, before the run folder is made, not at the first op of step 1."""
    from .ops import _dispatch

    forced, named = _run_backend(cfg)
    if forced is None:
        return
    ok, why = _dispatch.status(forced, device)
    if not ok:
        raise ConfigError(f"{named}: cannot run on {device} (run.device): {why}")


def _check_resnet_images(cfg: TrainConfig, shape: tuple) -> None:
    """The ResNet's four x2 resamplings need square power-of-two images >= 16: a ConfigError before the run folder
    is made (build_generator's ValueError names data_shape, which a config does not have)."""
    from .models.resnet import check_image_shape

    if cfg.model.arch != "resnet":
        return
    try:
        check_image_shape(shape)
    except ValueError:
        hint = ("set data.image_size to a power of two >= 16 (64: Roth et al.'s runs)"
                if cfg.data.name == "image_folder"
                else "use an image folder with data.image_size, or model.arch=dcgan, which takes sides halving to 8 "
                     "or less")
        raise ConfigError(f"model.arch: 'resnet' needs square images whose side is a power of two >= 16 (four x2 "
                          f"resamplings from side / 16), data.name={cfg.data.name!r} holds images of shape {shape}; "
                          f"{hint}") from None


# DCGAN's G starts where halving stops (an odd side): past this side its FC layer holds most of the network, e.g.
# 160M parameters on raw 218x178 CelebA images (109x89 after one halving), and D has next to no convolutions
DCGAN_LARGEST_START = 8


def _check_dcgan_images(cfg: TrainConfig, shape: tuple) -> None:
    """DCGAN halves the image side while it stays even (down to 4 in G): sides that halve to no more than
    DCGAN_LARGEST_START, or a ConfigError before the run folder is made (a 33x33 image had no upsampling at all)."""
    from .models.dcgan import plan

    if cfg.model.arch != "dcgan":
        return
    p = plan(shape)
    if max(p["g_start"]) <= DCGAN_LARGEST_START:
        return
    hint = ("set data.image_size to a side whose halvings reach 8 or less (32 or 64 as NTGAN's Table 1, 28 as "
            "Fashion-MNIST)" if cfg.data.name == "image_folder" else
            "resize the images to sides whose halvings reach 8 or less (e.g. 32 or 64), or use an image folder with "
            "data.image_size")
    raise ConfigError(f"model.arch: 'dcgan' halves the image side while it is even, and images of shape {shape} "
                      f"(data.name={cfg.data.name!r}) halve {p['n_up']} time(s) to a {p['g_start'][0]}x"
                      f"{p['g_start'][1]} start: G's first layer would be a fully connected map to that size (its "
                      f"parameters growing with the image's area) with {p['n_up']} upsampling(s), not Table 1's "
                      f"network; {hint}")


def _check_g_starts_one_by_one(cfg: TrainConfig, shape: tuple) -> None:
    """DCGAN's G starts at a 1x1 map on 1x1 images (the ResNet's on 16x16 ones), where its training-mode BatchNorm
    sees one value a channel per sample: a call of one row fails at step 1 (config.py lets the convolutional
    architectures take a batch of one for their other shapes)."""
    from .models.dcgan import plan
    from .models.resnet import start_size

    m, o, arch = cfg.method, cfg.optim, cfg.model.arch
    if arch not in CONV_ARCHS or not cfg.model.resolved("g_batchnorm"):
        return
    if (plan(shape)["g_start"] if arch == "dcgan" else (start_size(shape),) * 2) != (1, 1):
        return
    name = {"dcgan": "DCGAN", "resnet": "the ResNet"}[arch]
    if o.batch_size < 2:
        raise ConfigError(f"optim.batch_size: model.arch={arch!r} on {shape[1]}x{shape[2]} images starts G at a 1x1 "
                          f"map, where its training-mode BatchNorm (model.g_batchnorm) needs a batch of at least 2 "
                          f"samples, got {o.batch_size}")
    if "nt" in m.units and m.nt.batch == "half" and m.nt.noise == "generator" and o.batch_size < 3:
        raise ConfigError(f"optim.batch_size: NT's noise generator (method.nt.noise='generator', {name}'s G on "
                          f"{shape[1]}x{shape[2]} images: a 1x1 map under training-mode BatchNorm) draws eps for the "
                          f"m - m // 2 noisy rows of half batches: batch_size >= 3, got {o.batch_size}")


def _check_graph_data(cfg: TrainConfig, dataset) -> None:
    """A captured step cannot copy a batch from host memory (the copy and the index draw would be baked in, or
    the capture fails on them): refused before the run folder is made, not after the warm-up steps."""
    if cfg.run.cuda_graph and not getattr(dataset, "on_device", True):
        why = ("data.keep_on_device=no" if cfg.data.keep_on_device == "no" else
               "data.keep_on_device=auto and it does not fit in half the free GPU memory")
        raise ConfigError(f"run.cuda_graph: the data set stays in host memory ({why}); a captured step cannot copy "
                          "its batches from there: set data.keep_on_device=yes (it must fit) or run.cuda_graph=false")


def _check_graph_noise_backend(cfg: TrainConfig, device: torch.device) -> None:
    """The reference backend of the fused NT noise reads its Philox counter on the host (the oracle's plain
    torch), which a capture fails on: refused before the run folder is made, not at the capture after three
    steps. It runs there when forced (run.backend, use_backend or FASTGAN_BACKEND=reference) or when no fused
    backend can (no CUDA build of fastgan._C, no usable triton)."""
    m = cfg.method
    if not (cfg.run.cuda_graph and device.type == "cuda" and "nt" in m.units and m.nt.fused
            and m.nt.noise in ("fixed", "learned_sigma")):
        return
    from .ops import _dispatch

    forced, named = _run_backend(cfg)
    if forced is not None and forced != "reference":
        return  # _check_forced_backend has checked that it runs here
    if forced is None:
        best, reasons = _dispatch.best_fused(device)
        if best is not None:
            return
        why = "no fused backend runs here (" + "; ".join(reasons) + ")"
    else:
        why = named
    raise ConfigError(f"run.cuda_graph: method.nt.fused would draw its noise on the reference backend ({why}), "
                      "which reads its Philox counter on the host, and a CUDA graph cannot capture that; set "
                      "method.nt.fused=false, run.cuda_graph=false, or make the cuda or triton backend available")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {name!r} requested but torch sees no CUDA device; use run.device=cpu")
    index = int(name.split(":")[1]) if ":" in name else None
    if index is not None and index >= torch.cuda.device_count():
        # torch would fail later with "invalid device ordinal", naming no field; checked on the number as written,
        # before torch.device, which keeps the index in 8 bits: cuda:256 became cuda:0 and cuda:255 plain "cuda"
        # (the current device), silently, and cuda:128 cuda:-128, which passed this check
        raise ConfigError(f"run.device: {name!r} requested but torch sees {torch.cuda.device_count()} CUDA "
                          f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)
