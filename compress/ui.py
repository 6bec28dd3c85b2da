"""Console output: progress bars and messages on stderr, silenced by --quiet/--json.

On a terminal, tqdm bars; in logs (stderr not a TTY), one plain line every 30 s.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

_QUIET = False
LOG_EVERY_S = 30.0


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


def _log_progress(iterable, total, desc, unit):
    total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    start = last = time.time()
    for i, item in enumerate(iterable):
        yield item
        now = time.time()
        if now - last >= LOG_EVERY_S:
            last = now
            rate = (i + 1) / (now - start)
            left = f", ~{(total - i - 1) / rate:.0f}s left" if total else ""
            print(f"{desc}: {i + 1}/{total or '?'} {unit}{left}", file=sys.stderr, flush=True)


def progress(iterable=None, total=None, desc: str = "", unit: str = "it"):
    if _QUIET:
        return iterable
    if not sys.stderr.isatty():
        return _log_progress(iterable, total, desc, unit)
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5, leave=False,
                dynamic_ncols=True)


def bar(total: int | None = None, initial: int = 0, desc: str = "", unit: str = "it"):
    """A manual progress bar on stderr (``.update(n)``, ``.close()``); silent under --quiet."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr,
                disable=_QUIET, mininterval=0.5 if sys.stderr.isatty() else LOG_EVERY_S, leave=False)
