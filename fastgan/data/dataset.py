"""Dataset objects the trainer samples batches from.

Both kinds draw batches with torch.randint/randn on a device and an optional torch.Generator, so sampling
needs no host round trip (and can sit inside a captured CUDA graph when the data is on the device).
"""
from __future__ import annotations

import copy

import torch

from . import mixtures


def _check_batch(batch_size) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")
    return batch_size


def _randint(high: int, n: int, generator, device) -> torch.Tensor:
    # A generator lives on one device; draw there and move, rather than fail, when it differs.
    gdev = generator.device if generator is not None else device
    idx = torch.randint(high, (n,), generator=generator, device=gdev)
    return idx if idx.device == device else idx.to(device)


class TensorDataset:
    """Stored samples, kept as uint8 pixels (images) or float32 (points), returned as float32.

    Images come back scaled to [-1, 1] (``x * scale + offset`` on the stored values).
    """

    held_out = None  # the validation samples build_dataset kept out of this set (data.holdout), if any

    def __init__(self, data: torch.Tensor, kind: str, device, *, scale: float = 1.0, offset: float = 0.0,
                 keep_on_device: str = "auto", source: str = ""):
        if kind not in ("points", "images"):
            raise ValueError(f"kind: must be 'points' or 'images', got {kind!r}")
        if data.dim() < 2 or data.shape[0] == 0:
            raise ValueError(f"{source or 'data'}: expected a non-empty batch of samples, "
                             f"got shape {tuple(data.shape)}")
        self.device = torch.device(device)
        self.kind, self.source = kind, source
        self.shape = tuple(data.shape[1:])
        if data.dtype == torch.float32 and (scale != 1.0 or offset != 0.0):
            data = data.mul(scale).add_(offset)  # the same float32 rounding as data * scale + offset, one copy
        elif data.dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"{source or 'data'}: stored samples must be uint8 or float32, got {data.dtype}")
        self.scale, self.offset = float(scale), float(offset)
        self.on_device = self.device.type == "cpu" or _fits(data, self.device, keep_on_device, source)
        if self.on_device:
            data = data.to(self.device)
        elif self.device.type == "cuda":
            data = data.pin_memory()
        self._data = data.contiguous()

    @property
    def storage_device(self) -> torch.device:
        return self._data.device

    def __len__(self) -> int:
        return self._data.shape[0]

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.float32:  # stored ready to use (TensorDataset scales only integer pixels)
            return x
        x = x.to(torch.float32)  # a new tensor: safe to scale in place
        return x.mul_(self.scale).add_(self.offset)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A batch of stored samples drawn uniformly with replacement, (B, *shape) float32 on self.device."""
        idx = _randint(len(self), _check_batch(batch_size), generator, self._data.device)
        return self._convert(self._data.index_select(0, idx))

    def hold_out(self, n: int) -> tuple["TensorDataset", "TensorDataset"]:
        """(the first len - n samples, the last n): two views of the same storage, so that a validation set
        costs no memory and the training view can never draw from it."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < len(self):
            from ..config import ConfigError  # a config that does not fit the loaded data (the CLI's exit 2)

            raise ConfigError(f"data.holdout: must be an int in [0, {len(self) - 1}] for "
                             f"{self.source or 'this data set'} ({len(self)} samples, at least one left to train "
                             f"on), got {n!r}")
        head, tail = copy.copy(self), copy.copy(self)
        head._data, tail._data = self._data[:len(self) - n], self._data[len(self) - n:]  # [:-0] would be empty
        return head, tail

    def batches(self, batch_size: int):
        """All stored samples in order, in batches (for metrics over the whole set)."""
        _check_batch(batch_size)
        for i in range(0, len(self), batch_size):
            yield self._convert(self._data[i:i + batch_size])

    def feature_mean(self) -> torch.Tensor:
        """The mean of every feature (pixel) over the stored samples as returned: float64, of shape self.shape."""
        total = torch.zeros(self.shape, dtype=torch.float64, device=self._data.device)
        for i in range(0, len(self), 4096):  # float64 sums a chunk at a time: no float64 copy of the whole set
            total += self._data[i:i + 4096].to(torch.float64).sum(0)
        mean = total / len(self)
        if self._data.dtype != torch.float32:  # stored integer pixels: scaled as _convert scales them
            mean = mean * self.scale + self.offset
        return mean


def _fits(data: torch.Tensor, device: torch.device, mode: str, source: str) -> bool:
    if mode == "no":
        return False
    nbytes = data.numel() * data.element_size()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        fits = nbytes <= free // 2
    else:
        fits = True
    if mode == "yes" and not fits:
        raise ValueError(f"data.keep_on_device='yes' but {source or 'the data set'} ({nbytes / 2**20:.0f} MiB) "
                         f"does not fit in half of the free memory on {device}")
    return fits


class MixtureDataset:
    """A built-in Gaussian mixture: every batch is a fresh draw from the distribution."""

    kind = "points"
    on_device = True
    held_out = None

    def __init__(self, name: str, device, std: float | None = None, nominal_size: int = 100_000):
        self.name = name
        self.device = torch.device(device)
        self._sampler = mixtures.Sampler(name, self.device, std)
        self.std = self._sampler.std
        self.shape = (mixtures.dim(name),)
        self.means = mixtures.means(name, device=self.device)
        self._nominal = int(nominal_size)
        self.source = f"mixture {name}"

    @property
    def storage_device(self) -> torch.device:
        return self.device

    def __len__(self) -> int:
        return self._nominal

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._sampler(_check_batch(batch_size), generator)

    def feature_mean(self) -> torch.Tensor:
        """The distribution's mean, float64: its components are drawn with equal probability."""
        return mixtures.means(self.name, device=self.device, dtype=torch.float64).mean(0)
