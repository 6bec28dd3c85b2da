"""``compress profile``: run an artifact in its runtime, here or on a device over SSH, and report.

Both paths run the same self-contained ``device_runner.py`` in a fresh process (so peak memory is the
artifact's, not this tool's): here with this Python, there after copying the runner and the artifact
(with its sidecar files: an OpenVINO ``.bin``, a TensorRT kit folder) to a temporary folder.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ...errors import UserError
from ..exporters.check import speedup_verdict
from . import device_runner
from .device_runner import (parse_etdump, parse_ort_profile, parse_tegrastats, parse_trtexec_profile,  # noqa: F401
                            parse_trtexec_summary)

RUNNER = Path(device_runner.__file__)
SUFFIXES = (".onnx", ".ort", ".pte", ".xml", ".engine")


def artifact_files(path: Path) -> list[Path]:
    """The files a runtime needs for ``path``."""
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise UserError(f"{path} is a folder but not a TensorRT build kit (no manifest.json)",
                            "pass an artifact file or a *.trt-kit folder")
        return [path]
    if not path.is_file():
        raise UserError(f"artifact {path} does not exist", "check the path (artifacts live in <run>/artifacts/)")
    if path.suffix not in SUFFIXES:
        raise UserError(f"cannot profile {path.name}: unknown artifact type {path.suffix!r}",
                        f"supported: {', '.join(SUFFIXES)} or a TensorRT kit folder")
    if path.suffix == ".xml":
        return [path, path.with_suffix(".bin")]
    return [path]


def runner_args(name: str, batches: list[int], runs: int, warmup: int, threads: int, ops: bool) -> list[str]:
    """The runner's arguments, the artifact last after ``--`` (a name may start with '-')."""
    args = ["--batch", ",".join(map(str, batches)), "--runs", str(runs), "--warmup", str(warmup),
            "--threads", str(threads)]
    return args + (["--ops"] if ops else []) + ["--", name]


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise UserError(f"the profile runner printed no JSON report (last output: {_tail(text)!r})",
                    "run device_runner.py by hand on the device to see its output")


def profile_artifact(artifact: str | Path, host: str | None = None, batches: list[int] = (1,), runs: int = 30,
                     warmup: int = 5, threads: int | None = None, ops: bool = True, target: str | None = None,
                     ssh: dict | None = None) -> dict:
    path = Path(artifact)
    files = artifact_files(path)
    if runs < 1 or warmup < 0:
        raise UserError(f"--runs {runs} / --warmup {warmup}: need runs >= 1 and warmup >= 0", "e.g. --runs 30")
    threads = threads or _target_threads(target)
    if path.suffix == ".engine" or path.is_dir():
        if host is None:
            raise UserError(f"{path.name} is for TensorRT, which runs on the device", "add --host user@device")
    if host is not None:
        from .remote import run_remote

        res = run_remote(host, files, runner_args(path.name, list(batches), runs, warmup, threads, ops), ssh or {})
        res["host"] = host
    else:
        args = runner_args(str(path), list(batches), runs, warmup, threads, ops)
        proc = subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"profiling {path.name} failed: {_tail(proc.stderr)}", "run the artifact with compress eval")
        res = last_json(proc.stdout)
        res["host"] = None
    res["artifact"] = str(path)
    res["target"] = target
    return res


def _target_threads(target: str | None) -> int:
    if not target:
        return 1
    from .. import load_profile

    return int(load_profile(target).get("threads", 1))


def _tail(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:300] if lines else "(no output)"


def speedup_check(res: dict, base: dict, min_speedup: float | None) -> dict:
    """Speed-up of ``res`` over ``base`` (p50, first batch size), and the verdict if ``min_speedup``."""
    s = base["latency"]["p50_ms"] / res["latency"]["p50_ms"]
    if min_speedup is None:
        return {"speedup": s, "passed": True, "message": f"{s:.2f}x the baseline {Path(base['artifact']).name}"}
    return speedup_verdict(s, {"min_speedup": min_speedup}, Path(res["artifact"]).name,
                           Path(base["artifact"]).name, res.get("host") or "this machine")
