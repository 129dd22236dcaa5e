"""fastgan: GAN training with the stabilizers of Goodfellow 2014, Roth 2017, NTGAN and DFM, on fused
Triton / CUDA C++ kernels. Importing fastgan neither initialises CUDA nor imports triton nor compiles."""
from . import ops
from .info import info
from .train import train  # the function; it shadows the submodule fastgan.train on purpose

from ._version import __version__
__all__ = ["ops", "info", "train", "__version__"]
