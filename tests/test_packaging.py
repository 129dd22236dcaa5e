"""The sdist carries what building _C and the README's commands need: every tracked file (bar .gitignore), so that
a wheel built from it (`python -m build`'s default, a published sdist) finds CMakeLists.txt and csrc/."""
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout: the sdist is compared with the files git tracks")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def test_the_sdist_holds_every_tracked_file(tmp_path):
    files = _tracked()
    src = tmp_path / "src"
    for f in files:  # a copy: sdist writes fastgan.egg-info beside setup.py
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sdist,) = (tmp_path / "dist").glob("fastgan-*.tar.gz")
    with tarfile.open(sdist) as tar:
        packed = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = sorted(set(files) - packed - {".gitignore"})
    assert not missing, f"tracked files the sdist lacks: {missing[:20]}"
    assert {"CMakeLists.txt", "csrc/module.cpp", "kernels/penalty.py", "MANIFEST.in"} <= packed


def test_the_package_version_is_the_distributions():
    """fastgan.__version__ (recorded in run_info.json and checkpoints) and pyproject.toml's are one."""
    import re

    import fastgan

    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"$', text, flags=re.M).group(1) == fastgan.__version__
