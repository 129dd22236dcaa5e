import os
import sys

import pytest
import torch

# `import helpers` from any test directory (importlib mode puts nothing on sys.path).
sys.path.insert(0, os.path.dirname(__file__))

# Triton kernels run on CPU tensors through the interpreter; it must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible to torch on this machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
