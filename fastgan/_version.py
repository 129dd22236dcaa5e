# One place for the version (pyproject.toml's must match: tests/test_packaging.py), read by the package, run_info.json
# and checkpoints without importing fastgan's __init__.
__version__ = "0.1.0"
