"""One line of an exception for messages that wrap it (no imports: every package of fastgan may use it)."""


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
