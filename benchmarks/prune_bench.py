"""Pruning benchmark: DINOv2 ViT-S/14 (``dinov2-s14-focus``), CIFAR-10 linear probe (trained once on fp32
features, 2,000 train / 2,000 test images), ONNX Runtime at 1 thread, batch 1.

    OMP_NUM_THREADS=1 python benchmarks/prune_bench.py --out runs/bench-prune \
        [--only hessian@0.7,hessian@0.5,magnitude@0.5,taylor@0.5] [--set passes.prune.recovery.steps=400]

Each variant ``<criterion>@<target>`` runs ``recipes/nvit-prune.yaml`` through the pipeline twice: one-shot
(one pruning step, no recovery: the drop the saliency alone leaves) and iterative with distillation
recovery. ``+int8`` variants run ``recipes/prune-int8-vit.yaml``. Runs resume where they stopped. At the
end every exported model is timed again against the fp32 baseline under ``/tmp/vitforge-bench.lock``
(interleaved; least process CPU time of the runs, the statistic of the target's latency table, and
wall-clock p50). Writes ``<out>/results.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = "hessian@0.7,hessian@0.5,magnitude@0.5,taylor@0.5,magnitude@0.7,taylor@0.7"
LOCK = "/tmp/vitforge-bench.lock"


def run_variant(name: str, out: Path, extra: list[str]) -> dict:
    from compress.pipeline.run import RunOptions, run_recipe
    from compress.pipeline.plan import load_recipe

    base, _, quant = name.partition("+")
    crit, _, target = base.removesuffix("-oneshot").partition("@")
    recipe = REPO / "recipes" / ("prune-int8-vit.yaml" if quant else "nvit-prune.yaml")
    sets = [f"passes.prune.criterion={crit}", f"passes.prune.latency_target={target}",
            "evaluation.latency.pytorch=false"] + extra
    if base.endswith("-oneshot"):
        sets += ["passes.prune.iterations=1", "passes.prune.recovery.steps=0"]
    lr = load_recipe(recipe, sets)
    if base.endswith("-oneshot"):  # the drop before any recovery: no distillation, no output alignment
        lr.passes = [(n, p) for n, p in lr.passes if p.name != "align"]
        lr.raw["passes"] = {k: v for k, v in lr.raw["passes"].items() if k != "align"}
    src, dest = out / base, out / name
    if quant and (src / "passes" / "01-prune" / "config.json").is_file() and not dest.exists():
        # the same prune pass (same config, so the same chain hash): reuse its checkpoint, quantize it
        shutil.copytree(src / "passes" / "01-prune", dest / "passes" / "01-prune")
        shutil.copy(src / "run.json", dest / "run.json")
    t0 = time.time()
    summary = run_recipe(lr, RunOptions(out=out / name, argv=sys.argv))
    rec = next(r for r in summary["passes"] if r["type"] == "prune")
    align = next((r for r in summary["passes"] if r["type"] == "align"), {})
    rows = summary["evaluation"]["rows"]
    model = [r for r in rows if r.get("top1") is not None and r["runtime"] == "onnxruntime"
             and r["name"] != "baseline-fp32"]
    base_row = next(r for r in rows if r["name"] == "baseline-fp32")
    return {"variant": name, "criterion": crit, "target": float(target), "run_dir": str(out / name),
            "reference_top1": summary["evaluation"]["reference_top1"],
            "artifacts": [{k: r.get(k) for k in ("name", "path", "precision", "top1", "delta_top1", "agreement",
                                                  "top1_refit", "delta_top1_refit", "params", "gflops", "size_mb")}
                          | {"p50_ms": r["latency"]["p50_ms"]}
                          for r in model],
            "baseline_p50_ms": base_row["latency"]["p50_ms"], "baseline_params": base_row.get("params"),
            "baseline_gflops": base_row.get("gflops"), "prune": {k: rec.get(k) for k in (
                "measured_ratio", "predicted_ratio", "prediction_error", "target_met", "seconds", "cpu_seconds",
                "latency_source", "original", "pruned", "output_width")},
            "align": {k: align.get(k) for k in ("images", "loss_before", "loss_after", "seconds", "cpu_seconds")}
            if align else None,
            "recovery": rec.get("recovery"), "steps": [{k: s.get(k) for k in ("budget_ms", "predicted_ms", "removed",
                                                                               "loss_before", "loss_after")}
                                                       for s in rec["steps"]],
            "wall_seconds": time.time() - t0}


def time_artifacts(results: dict, runs: int = 20, rounds: int = 4) -> None:
    """Re-time every variant's artifacts against its fp32 baseline, interleaved, under the benchmark lock."""
    import numpy as np
    import torch

    from compress.runtime import ort_session
    from compress.targets.lut import best_ms

    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for res in results.values():
            paths = [Path(res["run_dir"]) / "artifacts" / "baseline-fp32.onnx"] + \
                    [Path(res["run_dir"]) / a["path"] for a in res["artifacts"]]
            sessions = [ort_session(p, 1) for p in paths]
            x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).numpy()
            fns = [lambda s=s: s.run(None, {s.get_inputs()[0].name: x}) for s in sessions]
            cpu, wall = [float("inf")] * len(fns), [[] for _ in fns]
            for r in range(rounds):
                for i, fn in enumerate(fns):
                    cpu[i] = min(cpu[i], best_ms(fn, warmup=2 if r == 0 else 1, runs=runs // rounds))
                    for _ in range(runs // rounds):
                        t0 = time.perf_counter()
                        fn()
                        wall[i].append((time.perf_counter() - t0) * 1e3)
            res["timing"] = {"baseline_cpu_ms": cpu[0], "baseline_wall_p50_ms": float(np.median(wall[0])),
                             "load_avg": os.getloadavg()[0], "artifacts": [
                                 {"name": a["name"], "cpu_ms": c, "wall_p50_ms": float(np.median(w)),
                                  "speedup_cpu": cpu[0] / c, "ratio_cpu": c / cpu[0]}
                                 for a, c, w in zip(res["artifacts"], cpu[1:], wall[1:])]}


def add_refit(results: dict) -> None:
    """Own-probe top-1 (``evaluation.probe_refit``) for artifacts scored without it: a probe fitted on the
    artifact's own features of the same train images, as the fp32 probe was on the fp32 model's."""
    from compress.evaluation.evaluate import Evaluator
    from compress.pipeline.checkpoint import load_any
    from compress.pipeline.plan import load_recipe
    from compress.runtime import OrtRunner

    for res in results.values():
        todo = [a for a in res["artifacts"] if a.get("top1_refit") is None]
        if not todo:
            continue
        run = Path(res["run_dir"])
        lr = load_recipe(run / "recipe.yaml", ["evaluation.probe_refit=true"])
        ev = Evaluator(load_any(lr.recipe.model, lr.recipe.weights).model, lr.recipe.data, lr.recipe.evaluation, run)
        for a in todo:
            s = ev.score(OrtRunner(run / a["path"], 1), f"{res['variant']} {a['name']}")
            a |= {k: s[k] for k in ("top1_refit", "delta_top1_refit", "probe_refit_l2")}


def add_full_test(results: dict, count: int) -> None:
    """Fixed-probe scores of every artifact on ``count`` test images (the run's probe, fp32 reference
    features of the same images): a tighter estimate than the runs' own 2,000."""
    from compress.evaluation.evaluate import Evaluator
    from compress.pipeline.checkpoint import load_any
    from compress.pipeline.plan import load_recipe
    from compress.runtime import OrtRunner

    for res in results.values():
        run = Path(res["run_dir"])
        lr = load_recipe(run / "recipe.yaml", [f"evaluation.test={count}", "evaluation.probe_refit=false"])
        ev = Evaluator(load_any(lr.recipe.model, lr.recipe.weights).model, lr.recipe.data, lr.recipe.evaluation, run)
        for a in res["artifacts"]:
            if (a.get("full_test") or {}).get("images") == count:
                continue
            s = ev.score(OrtRunner(run / a["path"], 1), f"{res['variant']} {a['name']} ({count} test images)")
            a["full_test"] = {k: s[k] for k in ("images", "top1", "delta_top1", "agreement")} | {
                "reference_top1": ev.reference_top1}


def _f(v, fmt: str) -> str:
    return "–" if v is None else fmt.format(v)


def table(results: dict) -> str:
    head = ("| variant | latency vs fp32 (CPU best-of) | speed-up | CPU ms | p50 ms (wall) | top-1 % | Δ top-1 | "
            "Δ top-1 (all test images) | own-probe Δ top-1 | one-shot Δ top-1 | agreement % | LUT predicted ms | "
            "measured ms | prediction error | "
            "params M | GFLOPs | pass CPU min (prune + align) | pass wall min |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        if name.endswith("-oneshot"):
            continue
        one = results.get(name.split("+")[0] + "-oneshot")
        one_d = one["artifacts"][0]["delta_top1"] if one else None
        for a, t in zip(r["artifacts"], (r.get("timing") or {}).get("artifacts", [{}] * len(r["artifacts"]))):
            p, al = r["prune"], r.get("align") or {}
            lines.append("| " + " | ".join([
                f"{name} [{a['precision']}]", _f(t.get("ratio_cpu"), "{:.3f}"),
                _f(t.get("speedup_cpu"), "{:.2f}x"), _f(t.get("cpu_ms"), "{:.1f}"),
                _f(t.get("wall_p50_ms", a["p50_ms"]), "{:.1f}"), f"{a['top1']:.2f}",
                f"{a['delta_top1']:+.2f}", _f((a.get("full_test") or {}).get("delta_top1"), "{:+.2f}"),
                _f(a.get("delta_top1_refit"), "{:+.2f}"),
                "–" if one_d is None else f"{one_d:+.2f}", f"{a['agreement']:.1f}",
                f"{p['pruned']['predicted_ms']:.1f}", f"{p['pruned'].get('measured_ms', float('nan')):.1f}",
                f"{p['prediction_error']:+.1%}" if p.get("prediction_error") is not None else "–",
                f"{(a.get('params') or 0) / 1e6:.2f}", f"{a.get('gflops') or 0:.2f}",
                f"{(p['cpu_seconds'] + al.get('cpu_seconds', 0)) / 60:.1f}",
                f"{(p['seconds'] + al.get('seconds', 0)) / 60:.1f}"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-prune")
    ap.add_argument("--only", default=DEFAULT, help="comma-separated variants, e.g. hessian@0.7,hessian@0.6+int8")
    ap.add_argument("--no-oneshot", action="store_true", help="skip the one-shot (before recovery) runs")
    ap.add_argument("--oneshot-only", action="store_true", help="only the one-shot (before recovery) runs")
    ap.add_argument("--set", action="append", default=[], help="recipe override for every run")
    ap.add_argument("--no-retime", action="store_true")
    ap.add_argument("--refit", action="store_true",
                    help="also score every artifact with a probe fitted on its own features (own-probe top-1)")
    ap.add_argument("--full-test", type=int, default=0,
                    help="also score every artifact on this many test images (10000: all of CIFAR-10's)")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "prune.json",
                    help="where the summary (command, results, table) is written")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    variants = []
    for v in args.only.split(","):
        if not args.no_oneshot and "+" not in v:
            variants.append(v + "-oneshot")
        if not args.oneshot_only:
            variants.append(v)
    for v in variants:
        if v in results:
            continue
        print(f"== {v}", flush=True)
        results[v] = run_variant(v, args.out, args.set)
        path.write_text(json.dumps(results, indent=1))
    if args.refit:
        add_refit({v: results[v] for v in variants})
        path.write_text(json.dumps(results, indent=1))
    if args.full_test:
        add_full_test({v: results[v] for v in variants}, args.full_test)
        path.write_text(json.dumps(results, indent=1))
    if not args.no_retime:
        time_artifacts(results)
        path.write_text(json.dumps(results, indent=1))
    ref = next(iter(results.values()))["reference_top1"] if results else float("nan")
    print(f"\nfp32 reference top-1 {ref:.2f} % (PyTorch, probe on fp32 features)\n")
    print(table(results))
    from compress.utils.io import write_json

    write_json(args.results,
               {"command": "OMP_NUM_THREADS=1 python benchmarks/prune_bench.py "
                + " ".join(sys.argv[1:] if argv is None else argv),
                "reference_top1": ref, "results": results, "table": table(results)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
