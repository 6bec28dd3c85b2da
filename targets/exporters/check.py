"""``targets_check``: a compressed artifact must beat the fp32 artifact in the same runtime on its target.

    targets_check: {min_speedup: 1.5}                  # recipe level: every target
    targets: [{name: x86-avx512, targets_check: {min_speedup: 2.0, on_fail: warn}}]

For targets of this machine's class (``local: true``) the exporters time each artifact against its
baseline here, runs interleaved so both see the same load; the result goes in the artifact's
``check`` and notes, and a failure stops the run (exit 3) unless ``on_fail: warn``. Other targets
get the ``compress profile --baseline ... --min-speedup ... --host ...`` line that checks it there.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ... import ui
from ...errors import VerificationError
from ...export.artifacts import Artifact


class TargetCheckError(VerificationError):
    """An artifact is slower than its target's ``targets_check`` demands (exit 3)."""


def check_config(req) -> dict | None:
    cfg = req.target.get("targets_check") or req.recipe.targets_check
    if cfg is None:
        return None
    cfg = cfg if isinstance(cfg, dict) else cfg.model_dump()
    return cfg if cfg.get("min_speedup") else None


def paired_latency(base, cand, warmup: int = 3, runs: int = 20) -> dict:
    """p50 wall and CPU ms of two callables timed alternately, and the speed-up of ``cand``."""
    for _ in range(warmup):
        base()
        cand()
    t = {"base": ([], []), "cand": ([], [])}
    for _ in range(runs):
        for key, fn in (("base", base), ("cand", cand)):
            w, c = time.perf_counter(), time.process_time()
            fn()
            t[key][0].append((time.perf_counter() - w) * 1e3)
            t[key][1].append((time.process_time() - c) * 1e3)
    med = {k: (float(np.median(v[0])), float(np.median(v[1]))) for k, v in t.items()}
    return {"baseline_p50_ms": med["base"][0], "p50_ms": med["cand"][0], "baseline_cpu_ms": med["base"][1],
            "cpu_ms": med["cand"][1], "speedup": med["base"][0] / med["cand"][0],
            "cpu_speedup": med["base"][1] / med["cand"][1], "runs": runs}


def speedup_verdict(speedup: float, cfg: dict, name: str, baseline: str, target: str) -> dict:
    need = float(cfg["min_speedup"])
    passed = speedup >= need
    verdict = "passes" if passed else "FAILS"
    msg = (f"{name} is {speedup:.2f}x {baseline} on {target}: {verdict} targets_check min_speedup {need:g}"
           + ("" if passed else (" (slower than its baseline)" if speedup < 1 else "")))
    return {"passed": passed, "min_speedup": need, "speedup": speedup, "message": msg}


def run_check(req, runtime: str, baseline: Path | None, artifacts: list[Artifact]) -> None:
    """Apply the target's speed-up check to the compressed ``artifacts`` (all in ``runtime``) against
    ``baseline``, the unmodified model's artifact in the same runtime."""
    cfg = check_config(req)
    if cfg is None:
        return
    cands = list(artifacts)
    if not cands or not req.state.history:  # nothing compressed: the artifacts are the baseline
        return
    target = req.target["name"]
    if not req.target.get("local"):
        for a in cands:
            a.notes.append(f"targets_check runs on the device: compress profile {a.path} --baseline <fp32 artifact> "
                           f"--min-speedup {cfg['min_speedup']:g} --host user@{target}")
        return
    if baseline is None:
        raise TargetCheckError(f"targets_check on {target}: no {cfg.get('baseline', 'fp32')} {runtime} baseline to "
                               "compare with")
    from ...runtime import RUNNERS

    lat = req.recipe.evaluation.latency
    cfg_vit = req.state.cfg
    x = torch.randn(1, cfg_vit.in_chans, cfg_vit.img_size, cfg_vit.img_size, generator=torch.Generator().manual_seed(0))
    base = RUNNERS[runtime](baseline, lat.threads)
    failures = []
    for a in cands:
        run = RUNNERS[runtime](req.run_dir / a.path, lat.threads)
        m = paired_latency(lambda: base(x), lambda: run(x), lat.warmup, lat.runs)
        a.check = speedup_verdict(m["speedup"], cfg, a.name, f"{runtime} fp32", target) | m
        a.notes.append(a.check["message"])
        ui.info(f"  check: {a.check['message']} (p50 {m['p50_ms']:.1f} vs {m['baseline_p50_ms']:.1f} ms, "
                f"CPU-time speed-up {m['cpu_speedup']:.2f}x)")
        if not a.check["passed"]:
            failures.append(a.check["message"])
    if failures and cfg.get("on_fail", "error") == "error":
        raise TargetCheckError("; ".join(failures) + " — use on_fail: warn to ship it anyway")
