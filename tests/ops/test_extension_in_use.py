"""Which fastgan._C the op tests run: the installed extension, or, with FASTGAN_TEST_EXTENSION=emulated (the
conftest's switch, which tests/test_cuda_emu_sanitized.py runs the op tests under), the CUDA emulator's module,
sanitized when FASTGAN_CUDA_EMU_SANITIZE=address. The switch once sat where it never ran before a test, and the
sanitized run checked the plain extension."""
import os

from fastgan import _ext


def test_the_extension_the_tests_use():
    C = _ext.C()
    emulated = os.environ.get("FASTGAN_TEST_EXTENSION") == "emulated"
    assert bool(getattr(C, "cuda_emulated", False)) == emulated, C.__file__
    if emulated:
        assert C.emu_sanitizer == (os.environ.get("FASTGAN_CUDA_EMU_SANITIZE") or None)
