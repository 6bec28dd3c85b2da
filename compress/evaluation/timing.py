"""Latency after warm-up: wall-clock and process-CPU p50/p90/p99 over timed runs.

On a shared machine wall time includes waiting for the CPU; the process CPU time of a 1-thread run
does not, so both are reported (``cpu_*``): on a quiet machine they agree.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def _percentiles(t: np.ndarray, prefix: str = "") -> dict:
    return {f"{prefix}p50_ms": float(np.percentile(t, 50)), f"{prefix}p90_ms": float(np.percentile(t, 90)),
            f"{prefix}p99_ms": float(np.percentile(t, 99)), f"{prefix}mean_ms": float(t.mean())}


def measure(fn: Callable[[], object], warmup: int = 5, runs: int = 30) -> dict:
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return (_percentiles(np.asarray(wall)) | _percentiles(np.asarray(cpu), "cpu_")
            | {"runs": runs, "warmup": warmup})
