"""Per-stage resource use: process CPU time, wall time and peak resident memory.

Peak RSS is per stage on Linux: writing 5 to /proc/self/clear_refs resets the kernel's high-water mark
(VmHWM), which is read back when the stage ends. Stages nest (a pass, then its phases): a reset inside
folds the mark so far into every enclosing stage first. Where resetting is not possible the process-wide
peak (getrusage) is reported instead, and ``peak_scope`` says so.
"""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _hwm_mb() -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


_open: list[list[float]] = []  # running peaks (MB) of the stages now open, outermost first
_lifetime = [0.0]  # the process's peak so far: a reset also lowers what getrusage reports


def _fold(mark: float | None) -> None:
    _lifetime[0] = max(_lifetime[0], mark or 0.0)
    for running in _open:
        running[0] = max(running[0], mark or 0.0)


def process_peak_mb() -> float:
    """Peak resident memory of the whole process so far (MB), resets by ``measure`` included."""
    return round(max(_lifetime[0], _hwm_mb() or 0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), 1)


@contextmanager
def measure():
    """``with measure() as m: ...`` then ``m`` holds cpu_s, wall_s, peak_rss_mb and peak_scope."""
    m: dict = {}
    _fold(_hwm_mb())
    scoped = _reset_hwm() and _hwm_mb() is not None
    running = [0.0]
    _open.append(running)
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        yield m
    finally:
        _open.remove(running)
        if scoped:
            peak = max(running[0], _hwm_mb() or 0.0)
            _fold(peak)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        m.update(cpu_s=round(time.process_time() - cpu, 3), wall_s=round(time.perf_counter() - wall, 3),
                 peak_rss_mb=round(peak, 1), peak_scope="stage" if scoped else "process")
