"""Collect finished runs of the shipped recipes into one result file (benchmarks/results/recipes.json).

    compress --recipe recipes/prune-int8-vit.yaml --out runs/prune-int8-vit      # under /usr/bin/time -v -o LOG
    python benchmarks/recipes_bench.py runs/prune-int8-vit --time-log LOG --out benchmarks/results/recipes.json

Nothing is re-measured: every figure is read from the run folder (manifest.json, evaluation.json,
report.json, passes/*/config.json), as the run measured it (latency: process CPU time and wall p50 of the
run's own timing, 1 thread, batch 1, beside the fp32 ONNX baseline timed in the same process). A run whose
recipe differs from today's shipped file of the same name, or that was given --model/--set/--data, is
recorded with `as_shipped: false` and the reason. An existing --out keeps the entries of other recipes.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# CLI flags that do not change what a recipe computes
_NEUTRAL = {"--out", "--resume", "--force", "--quiet", "--json", "--threads", "--recipe"}
_TIME_FIELDS = {"User time (seconds)": "user_s", "System time (seconds)": "sys_s",
                "Maximum resident set size (kbytes)": "max_rss_kb", "Exit status": "exit_status",
                "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall_s"}


def fail(msg: str) -> NoReturn:
    """Bad input (a missing or unfinished result): one line on stderr, exit 2."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def parse_time_log(text: str) -> dict:
    """The fields of a GNU `/usr/bin/time -v` log that the table needs (CPU = user + sys)."""
    out = {}
    for line in text.splitlines():
        key, _, val = line.strip().rpartition(": ")
        if key in _TIME_FIELDS:
            name = _TIME_FIELDS[key]
            if name == "wall_s":
                parts = [float(p) for p in val.split(":")]
                out[name] = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
            else:
                out[name] = float(val) if name.endswith("_s") else int(val)
    if {"user_s", "sys_s"} <= out.keys():
        out["cpu_s"] = round(out["user_s"] + out["sys_s"], 2)
    if "max_rss_kb" in out:
        out["peak_rss_mb"] = round(out["max_rss_kb"] / 1024, 1)
    return out


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        fail(f"{path} is missing: is {path.parent} a finished run folder? "
                         "(run the recipe to the end first)")
    except json.JSONDecodeError as e:
        fail(f"{path} is not valid JSON ({e.msg}): rerun the recipe")


def _git(cwd: Path, *args: str) -> str | None:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def shipped_check(manifest: dict) -> tuple[bool, str]:
    """Whether the run is the recipe as shipped today: no option that changes it, and the recipe as run equals
    today's shipped file composed the same way."""
    argv = manifest.get("command") or []
    changed = [a.split("=")[0] for a in argv if a.startswith("--") and a.split("=")[0] not in _NEUTRAL]
    if changed:
        return False, f"run with {', '.join(sorted(set(changed)))}"
    rf = manifest.get("recipe_file")
    if not rf:
        return False, "no recipe file recorded"
    from compress.recipes import read_recipe

    path = Path(rf) if Path(rf).is_absolute() else ROOT / rf
    if not path.is_file():
        return False, f"{rf} is not in this checkout"
    if read_recipe(path).raw != manifest.get("recipe"):
        return False, f"{rf} has changed since the run"
    return True, "recipe as shipped, no overrides"


def _lat(row: dict) -> dict:
    lat = row.get("latency") or {}
    return {"latency_cpu_p50_ms": lat.get("cpu_p50_ms"), "latency_wall_p50_ms": lat.get("p50_ms"),
            "latency_runs": lat.get("runs")}


def artifact_rows(ev: dict) -> list[dict]:
    base = next((r for r in ev["rows"] if r.get("name") == "baseline-fp32" and r.get("latency")), None)
    base_cpu = (base or {}).get("latency", {}).get("cpu_p50_ms")
    rows = []
    for r in ev["rows"]:
        if r.get("top1") is None and not r.get("latency"):
            continue  # listed but neither scored nor timed (e.g. the float graph beside a quantized one)
        sal, od = r.get("saliency") or {}, r.get("off_domain") or {}
        out = {"name": r["name"], "runtime": r.get("runtime"), "precision": r.get("precision"), "path": r.get("path"),
               "top1": r.get("top1"), "delta_top1": r.get("delta_top1"), "agreement": r.get("agreement"),
               "feature_cosine": r.get("feature_cosine"), "own_probe_top1": r.get("top1_refit"),
               "own_probe_delta_top1": r.get("delta_top1_refit"), "size_mb": r.get("size_mb"),
               "params": r.get("params"), "gflops": r.get("gflops"), **_lat(r),
               "saliency_pearson_r": sal.get("pearson_mean"), "saliency_iou_top10": sal.get("iou_top10_mean"),
               "off_domain_top1": od.get("top1"), "off_domain_delta_top1": od.get("delta_top1"),
               "off_domain_agreement": od.get("agreement"), "off_domain_refit_delta_top1": od.get("delta_top1_refit"),
               "verdict": (r.get("verdict") or {}).get("verdict"), "verdict_text": (r.get("verdict") or {}).get("text")}
        cpu = out["latency_cpu_p50_ms"]
        out["cpu_speedup_vs_fp32_onnx"] = base_cpu / cpu if base_cpu and cpu else None
        rows.append(out)
    return rows


def pass_times(run: Path, manifest: dict) -> list[dict]:
    """Each pass's wall seconds (its checkpoint) and process-CPU seconds (where the pass records them)."""
    out = []
    folders = sorted(p for p in (run / "passes").glob("*") if p.is_dir()) if (run / "passes").exists() else []
    for rec, folder in zip(manifest.get("passes") or [], folders):
        meta = _read(folder / "config.json")
        out.append({"name": rec["name"], "type": rec["type"], "wall_s": meta.get("seconds"),
                    "cpu_s": rec.get("cpu_seconds")})
    return out


def collect(run: Path, time_log: Path | None) -> dict:
    manifest, ev, report = (_read(run / f) for f in ("manifest.json", "evaluation.json", "report.json"))
    shipped, why = shipped_check(manifest)
    weights = report.get("weights") or {}
    entry = {
        "recipe": manifest["recipe"].get("name"), "run_dir": str(run), "recipe_file": manifest.get("recipe_file"),
        "recipe_command": shlex.join(manifest.get("command") or []), "as_shipped": shipped, "as_shipped_why": why,
        "model": manifest.get("model"), "random_weights": bool(weights.get("random")),
        "data": (manifest.get("data") or {}).get("dataset"), "test_images": ev.get("test_images"),
        "probe_train_images": ev.get("probe_train_images"), "reference_top1": ev.get("reference_top1"),
        "threads": ev.get("threads"), "batch": ev.get("batch"),
        "artifacts": artifact_rows(ev), "passes": pass_times(run, manifest),
        "timings_s": manifest.get("timings_s"), "versions": manifest.get("versions"),
    }
    if weights.get("random"):
        entry["note"] = "random weights: speed/size only, no accuracy claim"
    if time_log is not None:
        entry["time_log"] = parse_time_log(time_log.read_text())
    return entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders of shipped recipes")
    ap.add_argument("--time-log", nargs="*", type=Path, default=[],
                    help="/usr/bin/time -v logs, one per run folder in the same order (or none)")
    ap.add_argument("--commit", nargs="*", default=[],
                    help="the commit each run was made at, one per run folder (default: the HEAD of the git "
                         "checkout holding the run folder, when it has one, else of this checkout)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/recipes.json")
    a = ap.parse_args(argv)
    for flag, given in (("--time-log", a.time_log), ("--commit", a.commit)):
        if given and len(given) != len(a.runs):
            ap.error(f"{flag}: give one per run folder ({len(a.runs)}), or none")
    old = json.loads(a.out.read_text()) if a.out.is_file() else {}
    recipes = old.get("recipes", {})
    for i, run in enumerate(a.runs):
        entry = collect(run, a.time_log[i] if a.time_log else None)
        if a.commit:
            entry["commit"], entry["commit_source"] = a.commit[i], "--commit"
        else:
            holder = run.resolve() if run.is_dir() else ROOT
            entry["commit"] = _git(holder, "rev-parse", "--short", "HEAD") or _git(ROOT, "rev-parse", "--short", "HEAD")
            entry["commit_source"] = "HEAD of the checkout holding the run folder, when collected"
        entry["bench_command"] = "python benchmarks/recipes_bench.py " + shlex.join(
            [str(run)] + (["--time-log", str(a.time_log[i])] if a.time_log else [])
            + (["--commit", a.commit[i]] if a.commit else []) + ["--out", str(a.out)])
        entry["collected"] = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        recipes[entry["recipe"]] = entry
        print(f"{entry['recipe']}: {len(entry['artifacts'])} rows, as shipped: {entry['as_shipped']} ({entry['as_shipped_why']})",
              file=sys.stderr)
    out = {"command": "python benchmarks/recipes_bench.py RUN... [--time-log LOG...] (per recipe: bench_command)",
           "protocol": "figures as each run measured them: latency = p50 of process CPU time (and wall) over the "
                       "recipe's evaluation.latency.runs, 1 thread, batch 1, in the run's own process",
           "recipes": dict(sorted(recipes.items()))}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
