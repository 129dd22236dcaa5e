"""fastgan: GAN training with the stabilizers of Goodfellow 2014, Roth 2017, NTGAN and DFM, on fused
Triton / CUDA C++ kernels. Importing fastgan neither initialises CUDA nor imports triton nor compiles."""
try:
    import torch as _torch
except ModuleNotFoundError as _e:
    if _e.name != "torch":
        raise
    raise ModuleNotFoundError("fastgan needs torch >= 2.4, which is not installed: install torch first (pip install "
                              "torch; see https://pytorch.org for the CUDA or CPU build), then fastgan",
                              name="torch") from None

from . import _torch_version

_torch_version.check(_torch.__version__)

from . import ops  # noqa: E402  (after the version check: ops registers custom ops)
from .info import info
from .train import train  # the function; it shadows the submodule fastgan.train on purpose

from ._version import __version__
__all__ = ["ops", "info", "train", "__version__"]
