"""The oldest torch fastgan runs on, checked at import: its custom ops need torch.library.custom_op and
register_fake (torch 2.4), and an install with --no-deps skips pip's own check of the requirement."""
from __future__ import annotations

import re

MINIMUM = (2, 4)


def check(version: str) -> None:
    """Raise ImportError naming the version when `version` (torch.__version__) is older than MINIMUM. Pre-releases
    and local builds of a supported release ("2.4.0a0+git1234", "2.11.0+cu130") pass; an unparsable string is left
    to fail, if it must, where the missing API is used."""
    m = re.match(r"(\d+)\.(\d+)", str(version))
    if m is not None and (int(m.group(1)), int(m.group(2))) < MINIMUM:
        raise ImportError(f"fastgan needs torch >= {MINIMUM[0]}.{MINIMUM[1]} (torch.library.custom_op), found torch "
                          f"{version}: pip install 'torch>={MINIMUM[0]}.{MINIMUM[1]}'")
