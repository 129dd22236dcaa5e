"""Training data: built-in Gaussian mixtures and image files (IDX, CIFAR-10 pickles, image folders, npz).

``build_dataset(cfg, device)`` returns an object with ``.shape``, ``.kind`` ("points" | "images"),
``.device``, ``len()``, ``.sample(batch_size, generator=None)`` and ``.feature_mean()``; images are scaled to
[-1, 1]. With ``cfg.holdout = n`` the last n stored samples are not in the returned set but in its ``.held_out``
(a TensorDataset; None otherwise).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from . import mixtures
from .config import DATASETS, TEST_SPLIT_DATASETS, DataConfig
from .dataset import MixtureDataset, TensorDataset

__all__ = ["DataConfig", "DATASETS", "TEST_SPLIT_DATASETS", "build_dataset", "has_test_split", "load_arrays",
           "load_test_split", "mixtures", "MixtureDataset", "TensorDataset"]



def _value_map(a: np.ndarray, cfg: DataConfig, source: str, integer: bool) -> tuple[float, float]:
    """(scale, offset) mapping the stored values to [-1, 1]; integer: the values were stored as integers."""
    if cfg.value_range is not None:
        lo, hi = map(float, cfg.value_range)
    elif integer:
        lo, hi = 0.0, 255.0
    else:
        lo, hi = (0.0, 1.0) if float(a.min()) >= 0.0 else (-1.0, 1.0)
    amin, amax = float(a.min()), float(a.max())
    if amin < lo or amax > hi:
        raise ValueError(f"{source}: values span [{amin:g}, {amax:g}], outside the range ({lo:g}, {hi:g}) "
                         f"mapped to [-1, 1]; set data.value_range")
    scale = 2.0 / (hi - lo)
    if not np.finfo(np.float32).tiny <= scale <= np.finfo(np.float32).max:
        # the images are scaled in float32: every pixel would become -1 (or inf)
        raise ValueError(f"data.value_range: ({lo:g}, {hi:g}) maps to [-1, 1] with a scale of {scale:g}, which float32 "
                         "cannot hold")
    return scale, -1.0 - 2.0 * lo / (hi - lo)


def load_arrays(cfg: DataConfig) -> tuple[np.ndarray, str, str]:
    """(array in (N, C, H, W) or (N, D) layout, kind, source path) for a file-backed data set."""
    from . import cifar, folder, idx, npz

    name = cfg.name  # (a split of image folders and npz files is refused by DataConfig: they have none)
    if name in ("mnist", "fashion_mnist"):
        path = cfg.path or idx.FASHION_MNIST_DIR
        return idx.load_idx_images(path, cfg.split, fashion=name == "fashion_mnist"), "images", path
    if name == "cifar10":
        return cifar.load_cifar10(cfg.path, cfg.split), "images", cfg.path
    if name == "image_folder":
        return folder.load_image_folder(cfg.path, cfg.image_size, cfg.channels, cfg.max_samples), "images", cfg.path
    if name == "npz":
        a, kind = npz.to_layout(npz.load_array(cfg.path, cfg.npz_key), cfg.path)
        return a, kind, cfg.path
    raise ValueError(f"data.name: {name!r} is not a file-backed data set")


def build_dataset(cfg: DataConfig, device: torch.device | str = "cpu"):
    if not isinstance(cfg, DataConfig):
        raise TypeError(f"cfg: expected a DataConfig, got {type(cfg).__name__}")
    from ..config import check_section

    check_section(cfg, "data")  # a DataConfig made in Python skips fastgan.config's validation (max_samples=-100)
    device = torch.device(device)
    if cfg.name in mixtures.MIXTURES:
        return MixtureDataset(cfg.name, device, std=cfg.mixture_std, nominal_size=cfg.nominal_size)
    a, kind, source = load_arrays(cfg)
    if cfg.max_samples is not None and cfg.max_samples < a.shape[0]:
        # a copy, not a view: a view kept the whole file's array in memory for the run (CPU runs train on it)
        a = a[:cfg.max_samples].copy()
    if a.shape[0] == 0:
        raise ValueError(f"{source}: holds no samples")
    if 0 in a.shape[1:]:
        raise ValueError(f"{source}: empty samples: array shape {a.shape} has a zero-size sample dimension")
    if np.iscomplexobj(a):  # a float cast would silently drop the imaginary part
        raise ValueError(f"{source}: complex values ({a.dtype}) are not supported; store real {kind}")
    if a.dtype.kind in "mM" or not (np.issubdtype(a.dtype, np.number) or (kind == "images" and a.dtype == bool)):
        # strings, dates, durations (timedelta64 counts as a number to numpy)
        raise ValueError(f"{source}: {kind} must be numeric, got {a.dtype}")
    if kind == "points" and cfg.value_range is not None:
        from ..config import ConfigError  # a config that does not fit the loaded data (the CLI's exit 2)

        raise ConfigError(f"data.value_range: maps image values to [-1, 1]; {source} holds points (N, D), which are "
                          "used as stored: leave it unset")
    if kind == "images":
        integer = np.issubdtype(a.dtype, np.integer)
        if a.dtype != np.uint8:
            with np.errstate(over="ignore"):
                # the finite check below sees what float32 made of float64 values; float32 is not copied again
                a = a.astype(np.float32, copy=False)
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            # checked before the range: NaN compares false, so _value_map would pass an all-NaN set
            raise ValueError(f"{source}: images contain NaN or infinite values (in float32, which the stored "
                             "values are converted to)")
        scale, offset = _value_map(a, cfg, source, integer)
    else:
        with np.errstate(over="ignore"):  # as for images: the message says what float32 made of them
            a, scale, offset = a.astype(np.float32, copy=False), 1.0, 0.0
        if not np.isfinite(a).all():
            raise ValueError(f"{source}: points contain NaN or infinite values (in float32, which the stored values "
                             "are converted to)")
    data = torch.from_numpy(np.ascontiguousarray(a))
    ds = TensorDataset(data, kind, device, scale=scale, offset=offset, keep_on_device=cfg.keep_on_device,
                       source=source)
    if cfg.holdout:
        ds, ds.held_out = ds.hold_out(cfg.holdout)
    return ds


def has_test_split(cfg: DataConfig) -> bool:
    """Whether cfg's data set has a test split to read: a set that ships one, from a folder (a single file is
    read only as the training split)."""
    return cfg.name in TEST_SPLIT_DATASETS and (cfg.path is None or Path(cfg.path).is_dir())


def load_test_split(cfg: DataConfig, device, n: int | None = None) -> torch.Tensor:
    """The first n (default: all) samples of cfg's test split, as one tensor."""
    ds = build_dataset(dataclasses.replace(cfg, split="test", max_samples=n, holdout=0), device)
    return torch.cat(list(ds.batches(4096)))
