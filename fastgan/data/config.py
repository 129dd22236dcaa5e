"""DataConfig: which data set to train on and how to hold it. Nested as `data:` in the training config."""

import numbers
from dataclasses import dataclass, field
from typing import Optional

from .._errors import ConfigError
from .._limits import NONNEG_F32

DATASETS = ("roth3d", "ring8", "grid25", "mnist", "fashion_mnist", "cifar10", "image_folder", "npz")
FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "image_folder", "npz")
MIXTURE_DATASETS = tuple(n for n in DATASETS if n not in FILE_DATASETS)  # fastgan.data.mixtures.MIXTURES
# the stored sets that ship a separate test split (their own files beside the training files)
TEST_SPLIT_DATASETS = ("mnist", "fashion_mnist", "cifar10")
# fields only some data sets read (image folders and npz files have no splits: a split=test would train on the
# one set there is)
ONLY_FOR = {"path": FILE_DATASETS, "split": TEST_SPLIT_DATASETS,
            "max_samples": FILE_DATASETS, "nominal_size": MIXTURE_DATASETS, "mixture_std": MIXTURE_DATASETS,
            "image_size": ("image_folder",), "channels": ("image_folder",), "npz_key": ("npz",),
            "value_range": ("npz",)}


def unread_fields(name) -> dict:
    """{field: why} for the fields data set `name` does not read: set away from their defaults they are refused,
    and a stored config's are dropped (config.from_stored), as the run used their defaults."""
    out = {}
    for key, names in ONLY_FOR.items():
        if name not in names:
            hint = (" (set data.name to the file's format: mnist, fashion_mnist, cifar10, image_folder, npz)"
                    if key == "path" else "")
            out[key] = f"not used by data.name={name!r}, only by {', '.join(names)}{hint}"
    return out


@dataclass(frozen=True)
class DataConfig:
    # roth3d / ring8 / grid25 are drawn fresh from the distribution; the rest are read from files.
    name: str = field(default="roth3d", metadata={"choices": DATASETS})
    # File or folder to read; fashion_mnist defaults to /usr/share/datasets/fashion-mnist/.
    path: Optional[str] = None
    # IDX and CIFAR-10 only: which part of the data set.
    split: str = field(default="train", metadata={"choices": ("train", "test", "all")})
    # Keep only the first N stored samples (smoke runs, quick checks).
    max_samples: Optional[int] = field(default=None, metadata={"min": 1})
    # Keep the last N of those samples out of training: a validation set, on which run.parzen cross-validates
    # sigma (Goodfellow et al. trained on 50000 of MNIST's 60000 and validated on the rest).
    holdout: int = field(default=0, metadata={"min": 0})
    # len() of a built-in mixture (it has no stored samples; epochs are counted in these).
    nominal_size: int = field(default=100_000, metadata={"min": 1})
    # Override the mixture's literature std (roth3d 0.01, ring8 0.02, grid25 0.05).
    mixture_std: Optional[float] = field(default=None, metadata=NONNEG_F32)
    # image_folder: resize the short side to this and centre-crop; without it all images must share a size.
    image_size: Optional[int] = field(default=None, metadata={"min": 1})
    # image_folder: 1 (grayscale), 3 (RGB) or 0 (decided by the first image).
    channels: int = field(default=0, metadata={"choices": (0, 1, 3)})
    # npz: name of the array to use (default: the only one, else x / images / data / arr_0).
    npz_key: Optional[str] = None
    # npz images: the range (lo, hi) the stored values span, mapped to [-1, 1]. Default: (0, 255) for
    # integers; for floats (0, 1) when no value is negative, else (-1, 1).
    value_range: Optional[tuple[float, float]] = None
    # Hold the whole data set in the training device's memory: "auto" when it takes at most half of the
    # free memory, "yes" (error if it cannot), "no" (host memory, batches copied per step).
    keep_on_device: str = field(default="auto", metadata={"choices": ("auto", "yes", "no")})

    def __post_init__(self):
        if isinstance(self.value_range, list):
            object.__setattr__(self, "value_range", tuple(self.value_range))
        if self.holdout and self.name not in FILE_DATASETS:
            raise ConfigError(f"data.holdout: the built-in mixture {self.name!r} draws fresh samples every batch and "
                             f"has none to hold out; leave data.holdout at 0")
        # a field this data set does not read would be recorded in config.yaml and silently ignored: a
        # data.path given without data.name=npz trained on the default mixture
        for key, why in unread_fields(self.name).items():
            if getattr(self, key) != type(self).__dataclass_fields__[key].default:
                raise ConfigError(f"data.{key}: {why}; got {getattr(self, key)!r}")
        if isinstance(self.path, str) and not self.path.strip():
            # "--set data.path=$DIR" with DIR unset: Fashion-MNIST read as no path, the system's copy, silently
            unset = ", or leave it unset (null) for the system's copy" if self.name == "fashion_mnist" else ""
            raise ConfigError(f"data.path: an empty path {self.path!r}; name the data set's file or folder{unset}")
        if self.name in FILE_DATASETS and self.name not in ("fashion_mnist",) and not self.path:
            raise ConfigError(f"data.path: required for data.name={self.name!r}")
        vr = self.value_range
        if vr is not None:
            pair = hasattr(vr, "__len__") and len(vr) == 2
            if pair and not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in vr):
                pass  # validate() (build_dataset's check_section) names the entry: float('a') raised, naming no field
            elif not pair or not float(vr[0]) < float(vr[1]):
                raise ConfigError(f"data.value_range: must be (lo, hi) with lo < hi, got {vr!r}")
