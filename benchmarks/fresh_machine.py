"""What a new user's clone costs: `git clone` into an empty folder (no ../shared beside it), then the README's
two commands under `/usr/bin/time -v`, written to benchmarks/results/fresh_machine.json.

    python benchmarks/fresh_machine.py --out benchmarks/results/fresh_machine.json          # clone, CI, demo
    python benchmarks/fresh_machine.py --ci-log CI.log --demo-log DEMO.log --commit SHA ...  # logs of such runs

Times are the commands' own: wall clock, and user + system CPU of the command and its children.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIME_FIELDS = {"User time (seconds)": "user_s", "System time (seconds)": "sys_s",
               "Maximum resident set size (kbytes)": "max_rss_kb", "Exit status": "exit_status"}


def parse_time(text: str) -> dict:
    """The fields of `/usr/bin/time -v` (or bash `time`) output, wall clock as seconds."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(": ")
        if key in TIME_FIELDS:
            out[TIME_FIELDS[key]] = float(value) if "." in value else int(value)
        elif key.startswith("Elapsed (wall clock) time"):
            parts = [float(p) for p in value.split(":")]
            out["wall_s"] = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
        elif m := re.fullmatch(r"(real|user|sys)\s+(\d+)m([\d.]+)s", line.strip()):  # bash's `time`
            out[{"real": "wall_s", "user": "user_s", "sys": "sys_s"}[m[1]]] = int(m[2]) * 60 + float(m[3])
        elif m := re.fullmatch(r"rc=(\d+)", line.strip()):
            out.setdefault("exit_status", int(m[1]))
    if "user_s" in out:
        out["cpu_min"] = round((out["user_s"] + out["sys_s"]) / 60, 1)
    return out


def parse_pytest(text: str) -> dict:
    """pytest's closing counts (passed, failed, skipped, xfailed, ...) and its own wall time."""
    line = next((ln for ln in reversed(text.splitlines()) if re.search(r"\d+ (passed|failed)", ln)), "")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?)", line)}
    secs = re.search(r" in ([\d.]+)s", line)
    return {"counts": counts, "pytest_wall_s": float(secs.group(1)) if secs else None, "summary": line.strip("= ")}


def parse_data_line(text: str) -> str | None:
    return next((ln for ln in text.splitlines() if ln.startswith("data: ")), None)


def run(cmd: str, cwd: Path, log: Path, env: dict | None = None) -> str:
    with open(log, "w") as f:
        subprocess.run(["/usr/bin/time", "-v", "bash", "-c", cmd], cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                       env=env)
    return log.read_text()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fresh_machine.json")
    ap.add_argument("--ci-log", type=Path, help="a `/usr/bin/time -v` log of `CI=true bash .ci/run` in a clean clone")
    ap.add_argument("--demo-log", type=Path, help="a `/usr/bin/time -v make demo` log in a clean clone")
    ap.add_argument("--commit", help="the commit the logs were made on")
    ap.add_argument("--note", default="", help="what else shared the machine")
    args = ap.parse_args()
    if bool(args.ci_log) != bool(args.demo_log):
        ap.error("give both --ci-log and --demo-log, or neither")
    if args.ci_log:
        ci, demo, commit = args.ci_log.read_text(), args.demo_log.read_text(), args.commit
    else:
        import os

        work = Path(tempfile.mkdtemp(prefix="vitforge-fresh-"))
        clone = work / "vitforge"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
        ci = run("bash .ci/run", clone, work / "ci.log", os.environ | {"CI": "true"})
        demo = run("make demo", clone, work / "demo.log")
    result = {
        "command": " ".join(["python", "benchmarks/fresh_machine.py"] + sys.argv[1:]),
        "commit": commit, "note": args.note,
        "ci": {"command": "CI=true bash .ci/run", **parse_time(ci), **parse_pytest(ci)},
        "demo": {"command": "make demo", **parse_time(demo), "data": parse_data_line(demo)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ci"].get("exit_status") == 0 and result["demo"].get("exit_status") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
