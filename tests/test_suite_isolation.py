"""No test replaces one of torch's C functions (torch.mm, torch._foreach_add_, ...) on the torch module: Dynamo keeps
torch's functions by identity, listed once per process, and a list made while one was replaced leaves the real one
out, so every later compile in that process that calls it fails ("Attempted to call function marked as skipped").
Two tests did until 2026-12-05, and test_torch_compile_fullgraph and test_penalty_compile failed after them in one
process (CI's workers had not met that order). Count such calls at fastgan's own seams or with torch.profiler."""
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PATCH = re.compile(r"setattr\(\s*torch\s*,\s*[\"'](\w+)[\"']")


def _patched_torch_names() -> dict[str, list[str]]:
    """torch attribute -> the files (relative) that setattr it on the torch module."""
    found: dict[str, list[str]] = {}
    for path in sorted([*ROOT.joinpath("tests").rglob("*.py"), *ROOT.joinpath("bench").rglob("*.py")]):
        if path == Path(__file__).resolve():
            continue
        for name in PATCH.findall(path.read_text()):
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_no_test_replaces_a_c_function_of_torch():
    patched = _patched_torch_names()
    assert patched, "the scan finds the Python functions tests do replace (torch.load, torch.save): a broken pattern"
    builtins = {name: files for name, files in patched.items()
                if type(getattr(torch, name, None)).__name__ == "builtin_function_or_method"}
    assert not builtins, f"tests replace torch's C functions (Dynamo then skips the real ones): {builtins}"
