"""A small Fashion-MNIST classifier shipped with fastgan, whose features and class probabilities stand in for the
Inception network of FID and the Inception score (NTGAN and DFM report those; no Inception weights can be fetched
here, and an ImageNet network is a poor judge of 28x28 grey clothes anyway). Scores computed with it are comparable
between fastgan runs, not with published Inception-based numbers.

The weights (`fmnist_classifier.pt`, made by `tools/train_fmnist_classifier.py` from the Fashion-MNIST training
split) are checked against their SHA-256 at load, so a damaged file is an error, not silently different scores.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from .._errors import ClassifierWeightsError, first_line

WEIGHTS = Path(__file__).with_name("fmnist_classifier.pt")
WEIGHTS_SHA256 = "0d415d5c462f359dd2cffe83e12235cd91507b2b658c46bef7c247e3e171a123"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
INPUT_SHAPE = (1, 28, 28)
FEATURE_DIM = 128


class FashionMNISTNet(nn.Module):
    """Convnet on (B, 1, 28, 28) images in [-1, 1] (fastgan's image range). `features(x)`: (B, 128), the global
    average of the last convolution's ReLU maps (the Fréchet distance's features); `forward(x)`: (B, 10) logits."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(*block(1, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
                                  *block(64, FEATURE_DIM), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(FEATURE_DIM, len(CLASSES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_weights_problem() -> str | None:
    """"missing" or "damaged" (SHA-256 differs) for the shipped weights file, None when it is intact."""
    if not WEIGHTS.is_file():
        return "missing"
    return "damaged" if _sha256(WEIGHTS) != WEIGHTS_SHA256 else None


def labelled_fashion_mnist(split: str, n: int | None = None, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n (default: all) images (N, 1, 28, 28) in [-1, 1] and labels (N,) of the Fashion-MNIST split
    "train" or "test" from the IDX files in `root` (default: Debian's dataset-fashion-mnist folder)."""
    from ..data.idx import FASHION_MNIST_DIR, read_idx

    root = Path(root or FASHION_MNIST_DIR)
    prefix = {"train": "train", "test": "t10k"}[split]
    x = torch.from_numpy(read_idx(root / f"{prefix}-images-idx3-ubyte.gz")[:n].copy()).float() / 127.5 - 1
    y = torch.from_numpy(read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")[:n].copy()).long()
    return x.unsqueeze(1), y


def load_fmnist_classifier(device="cpu", path=None) -> FashionMNISTNet:
    """The shipped classifier (or the weights at `path`, e.g. one retrained with the tool), in eval mode, with
    gradients off, on `device`. A missing file raises FileNotFoundError naming it, a damaged or unreadable one
    ClassifierWeightsError (a RuntimeError)."""
    p = WEIGHTS if path is None else Path(path)
    problem = shipped_weights_problem() if path is None else (None if p.is_file() else "missing")
    if problem == "missing":
        raise FileNotFoundError(f"classifier weights {p} not found" + (
            " (the package was installed without its data files; reinstall fastgan)" if path is None else ""))
    if problem == "damaged":
        raise ClassifierWeightsError(f"classifier weights {p} are damaged (SHA-256 differs from the shipped "
                                     "file's); reinstall fastgan")
    # torch's default init draws from the global generator, which the weights loaded next overwrite anyway: a
    # trainer building this (run.fd) after seeding would otherwise shift its own draws (D's dropout masks) and
    # its checkpointed generator state, so that run.fd changed the trained weights and broke resume equivalence
    with torch.random.fork_rng(devices=[]):
        net = FashionMNISTNet()
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - any unreadable or mismatched file gets the same one-line error
        raise ClassifierWeightsError(f"classifier weights {p}: not a FashionMNISTNet state dict "
                                     f"({first_line(e)})") from None
    net.eval().requires_grad_(False)
    return net.to(device)
