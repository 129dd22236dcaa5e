"""Exceptions and helpers for messages that wrap them (no imports: every package of fastgan may use it)."""


class ConfigError(ValueError):
    """A configuration value, key or file is invalid; the message names the field (fastgan.config.ConfigError:
    defined here so that the sections' own dataclasses, fastgan.models and fastgan.data, raise it too)."""


class ClassifierWeightsError(RuntimeError):
    """The Fashion-MNIST classifier's weights file is damaged (its SHA-256) or not a FashionMNISTNet state dict:
    `fastgan train` (run.fd) reports it in one line, as `fastgan eval` does, not as an unexpected error's traceback."""


def first_line(e: BaseException, default: str | None = None) -> str:
    """The first line of str(e), stripped; `default` (None: the exception's type name) when it has none."""
    lines = str(e).strip().splitlines()
    if lines:
        return lines[0]
    return type(e).__name__ if default is None else default


def oserror(e: OSError, msg: str) -> OSError:
    """An OSError saying msg with e's errno (callers check ENOSPC and the like); OSError(None, msg) would read as
    '[Errno None] msg'."""
    return OSError(e.errno, msg) if e.errno is not None else OSError(msg)
