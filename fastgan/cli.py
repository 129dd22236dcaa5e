"""Command line: `python -m fastgan info`, `python -m fastgan configs`,
`python -m fastgan train CONFIG [--set key=value ...] [--resume]`, `python -m fastgan crosstest RUN_A RUN_B`,
`python -m fastgan eval RUN`, `python -m fastgan sample RUN --out FILE`, `python -m fastgan compare RUNS...`."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys


def _cmd_info(args) -> int:
    from .info import format_report, info

    report = info()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_configs(args) -> int:
    from . import shipped_configs

    found = shipped_configs.names()
    if not found:
        print("fastgan configs: no shipped configs found (fastgan.configs is not installed, and this is no checkout)",
              file=sys.stderr)
        return 1
    if args.path:
        print("\n".join(str(p) for p in found.values()))
        return 0
    width = max(map(len, found))
    for name, path in found.items():
        print(f"{name:{width}s}  {shipped_configs.summary(path)}")
    print(f"\n{len(found)} configs in {shipped_configs.folder()}; run one with `fastgan train NAME [--set key=value "
          "...]`, see all its fields with `fastgan train NAME --print-config`")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastgan", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="versions, built kernels and usable backends")
    pi.add_argument("--json", action="store_true", help="print the report as JSON")
    pi.set_defaults(func=_cmd_info)
    pc = sub.add_parser("configs", help="list the shipped paper configs, which `fastgan train NAME` runs")
    pc.add_argument("--path", action="store_true", help="print each config's file path instead")
    pc.set_defaults(func=_cmd_configs)
    try:
        from .train_cli import add_cli  # the trainer registers its own sub-command
    except ImportError:
        add_cli = None
    if add_cli is not None:
        add_cli(sub)
        from .compare import add_cli as add_compare
        from .crosstest import add_cli as add_crosstest
        from .evaluate import add_cli as add_eval
        from .sample import add_cli as add_sample

        add_crosstest(sub)
        add_eval(sub)
        add_sample(sub)
        add_compare(sub)
    return p


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C while the sub-commands' modules load (torch's, a second or two), before a command's own handling:
        # one line and the shell's code for SIGINT, not a traceback through the import machinery
        print("fastgan: interrupted", file=sys.stderr)
        return 130


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
        if sys.stdout is not None:  # None: started with descriptor 1 closed (`... >&-`), where print writes nothing
            sys.stdout.flush()  # a closed pipe surfaces here, not in the interpreter's exit
        return rc
    except BrokenPipeError:
        # the reader went away (`fastgan info --json | head -1`): nothing left to say to it, and Python's flush at
        # exit would print another traceback, so point stdout at /dev/null (as Python's signal docs advise)
        _discard_stdout()
        return 1
    except OSError as e:
        # a write to stdout that failed (`> /dev/full`, a full disk, a read-only descriptor) names no file; the
        # commands' own OSErrors are handled there or name their file
        if e.filename is not None or e.errno not in _WRITE_ERRORS or _stdout_writes():
            raise
        print(f"fastgan {args.command}: error: cannot write to standard output: {e.strerror or e}", file=sys.stderr)
        _discard_stdout()  # its buffer would fail again in Python's flush at exit ("Exception ignored", exit 120)
        return 1


_WRITE_ERRORS = {errno.ENOSPC, errno.EIO, errno.EBADF, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EPERM,
                 errno.EACCES}


def _stdout_writes() -> bool:
    """Whether stdout takes what it buffers (an OSError of the same errno from elsewhere is not stdout's)."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
        return True
    except OSError:
        return False


def _discard_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
