"""Benchmarks: `pytest bench/ --benchmark-only` measures; `pytest bench/ --benchmark-disable` runs each once
as a smoke test (what CI does). On CPU only the reference and C++ backends are measured: the Triton
interpreter is a correctness tool, not a speed one."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
