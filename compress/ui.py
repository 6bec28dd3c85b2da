"""Console output: progress bars and messages on stderr, silenced by --quiet/--json."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    return _QUIET


def info(msg: str) -> None:
    if not _QUIET:
        print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def progress(iterable=None, total=None, desc: str = "", unit: str = "it"):
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True if _QUIET else None, file=sys.stderr,
                mininterval=1.0, leave=False, dynamic_ncols=True)
