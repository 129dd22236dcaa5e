"""Triton kernels, installed as ``fastgan.kernels``. Importing a kernel module imports triton, so fastgan
imports these lazily, on the first call that uses the triton backend."""
