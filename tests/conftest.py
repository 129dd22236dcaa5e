import os
import sys

import pytest
import torch

# `import helpers` from any test directory (importlib mode puts nothing on sys.path).
sys.path.insert(0, os.path.dirname(__file__))

# Triton kernels run on CPU tensors through the interpreter; it must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def auto_jvp_on_cpu(monkeypatch):
    """"auto" as it chooses on CUDA (jvp where the closed form does not run), for tests on CPU tensors."""
    from helpers import auto_as_on_cuda

    auto_as_on_cuda(monkeypatch)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        if os.environ.get("TRITON_INTERPRET") != "1":
            # Triton on CPU tensors needs the interpreter, which this process (GPU visible) does not run;
            # those tests are the CPU run's (CUDA_VISIBLE_DEVICES= pytest, or CI)
            skip = pytest.mark.skip(reason="Triton on CPU tensors runs under TRITON_INTERPRET=1, without a GPU")
            for item in items:
                params = getattr(getattr(item, "callspec", None), "params", {})
                name = getattr(item, "originalname", item.name)
                cpu_triton = params.get("backend") == "triton" or name.endswith("_triton")
                if "cuda" not in item.keywords and cpu_triton:
                    item.add_marker(skip)
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible to torch on this machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
