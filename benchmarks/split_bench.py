"""ED-ViT splitting, measured (issue 21): fused top-1, part sizes and latencies, end to end over the RPC runtime,
and the uniformly pruned comparison, on the embedded DINOv2 ViT-S/14 with the CIFAR-10 probe protocol::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/split_bench.py --out runs/split-bench        # hours on 1 core
    OMP_NUM_THREADS=1 python benchmarks/split_bench.py --out /tmp/split-smoke --smoke           # minutes; no claims

Each variant is a run of ``recipes/split-vit.yaml`` with ``--set`` overrides, in its own folder under ``--out``
(a finished run is reused, an interrupted one resumed by the CLI):

- ``k2`` / ``k4``: 2 / 4 parts, similarity partition (``k4`` is the recipe as shipped);
- ``k4-random``: 4 parts, random partition (the partition rule's comparison);
- ``uniform-k2`` / ``uniform-k4``: ``parts: 1`` with ``budget.params`` 1.3 / K: one all-class model pruned to a
  K-way part's size and recovered the same way (K copies of it, fused, predict what one copy fused does: the
  baseline a user would try).

Scored as served (``compress eval split.json``: K part processes on loopback, scatter / gather / fuse in the
client) on the same ``--test`` CIFAR-10 test images; the unsplit model is the run's verified
``artifacts/baseline-fp32.onnx`` with a linear probe fitted the same way (``fit_probe``, pooled features of
``--probe-train`` training images) and scored on those images. Part sizes, the budget check and the parts' ONNX
Runtime latency against the unsplit model (process CPU time, 1 thread, interleaved) come from the pass's record;
end-to-end and empty-model RPC latency (wall clock: the parts run in other processes) from the served evaluation.
Writes ``<out>/split.json`` and (not with ``--smoke``) ``--publish`` after every variant.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "split-vit.yaml"
VARIANTS = {"k2": {"passes.split.parts": 2}, "k4": {},
            "k4-random": {"passes.split.partition": "random"},
            "uniform-k2": {"passes.split.parts": 1, "passes.split.budget.params": 0.65},
            "uniform-k4": {"passes.split.parts": 1, "passes.split.budget.params": 0.325}}
COMPARE = {"k2": "uniform-k2", "k4": "uniform-k4", "k4-random": "uniform-k4"}
SMOKE = {"data.calibration.count": 20, "passes.split.saliency.images": 20, "passes.split.budget.iterations": 1,
         "passes.split.budget.extra_rounds": 2, "passes.split.recovery.steps": 2, "passes.split.recovery.images": 16,
         "passes.split.recovery.batch_size": 4, "passes.split.probe.images": 40, "passes.split.probe.epochs": 30,
         "passes.split.fusion.images": 20, "passes.split.fusion.epochs": 20, "passes.split.deploy.measure_runs": 2,
         "passes.split.deploy.deadline_ms": 120000, "evaluation.enabled": False, "export.verify.images": 2}
TARGETS = {"fused_top1_within_pt": 1.5, "params_x_per_part": 1.3, "largest_latency_ratio": {2: 0.6, 4: 0.35}}


def run_variant(name: str, sets: dict, out: Path, smoke: bool) -> Path:
    """The recipe run for one variant (reused when finished); returns its folder."""
    folder = out / name
    if (folder / "artifacts" / "split" / "split.json").is_file() and (folder / "manifest.json").is_file():
        print(f"{name}: reusing {folder}", file=sys.stderr, flush=True)
        return folder
    cmd = [str(Path(sys.executable).parent / "compress"), "--recipe", str(RECIPE), "--out", str(folder)]
    for k, v in (sets | (SMOKE if smoke else {})).items():
        cmd += ["--set", f"{k}={json.dumps(v) if isinstance(v, bool) else v}"]
    if folder.exists():
        cmd.append("--resume")
    time_log = out / f"{name}.time"
    print(f"{name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    r = subprocess.run(["/usr/bin/time", "-v", "-o", str(time_log), *cmd], cwd=REPO, check=False)
    if r.returncode != 0:
        print(f"error: {name}: the recipe run failed (exit {r.returncode}); see {folder}", file=sys.stderr)
        raise SystemExit(r.returncode)
    return folder


def unsplit_top1(folder: Path, x_test: np.ndarray, y_test: np.ndarray, probe_train: int, seed: int) -> dict:
    """The unsplit model (the run's fp32 ONNX) with a linear probe fitted as the parts' are, on the same test
    images the deployment is scored on."""
    from compress.data import Preprocess, balanced_indices
    from compress.data.sources import open_source
    from compress.models.pooling import pooled
    from compress.pipeline.checkpoint import load_any
    from compress.runtime import OrtRunner
    from compress.split import manifest as mf
    from compress.split.submodel import fit_probe

    m, _ = mf.load(folder / "artifacts" / "split" / "split.json")
    p = m.parts[0].preprocess
    prep = Preprocess(p.size, tuple(p.mean), tuple(p.std), p.interpolation, p.crop_pct, p.resize)
    src = open_source("cifar10", "train")
    idx = balanced_indices(src.labels, probe_train, seed + 101)
    runner = OrtRunner(folder / "artifacts" / "baseline-fp32.onnx", 1)

    prefix = load_any(json.loads((folder / "manifest.json").read_text())["recipe"]["model"]).cfg.num_prefix_tokens

    def feats(x: np.ndarray) -> torch.Tensor:
        out = [runner(torch.from_numpy(x[i:i + 16])) for i in range(0, len(x), 16)]
        return pooled(torch.cat(out).float(), prefix)

    x_tr = np.stack([prep(src.image(int(j))).numpy() for j in idx]).astype(np.float32)
    probe = fit_probe(feats(x_tr), src.labels[idx], m.num_classes, 300, 1e-2, seed=seed)
    with torch.inference_mode():
        pred = probe(feats(x_test)).argmax(1).numpy()
    return {"top1": round(100 * float((pred == y_test).mean()), 2), "probe_train_images": len(idx),
            "artifact": "artifacts/baseline-fp32.onnx (ONNX Runtime)"}


def collect(name: str, folder: Path, args) -> dict:
    from compress.split.evaluate import _images, evaluate_served
    from compress.split import manifest as mf

    rec = json.loads(next((folder / "passes").glob("*-split")).joinpath("config.json").read_text())["history"][-1]
    man = folder / "artifacts" / "split" / "split.json"
    served = evaluate_served(man, "cifar10", "test", args.test, seed=0, runs=args.latency_runs,
                             reference=folder / "artifacts" / "baseline-fp32.onnx")
    m, _ = mf.load(man)
    x, y = _images(m, "cifar10", "test", args.test, 0)  # the same images evaluate_served scored
    ref = unsplit_top1(folder, x, y, args.probe_train, 0)
    K = len(rec["parts"])
    orig = rec["original"]["params"]
    parts = [{"classes": p["classes"], "params": p["params"], "params_vs_original": p["params"] / orig,
              "params_ok": p["params_ok"]} for p in rec["parts"]]
    meas = rec.get("measured") or {}
    return {"variant": name, "overrides": VARIANTS[name], "run": str(folder), "parts": K,
            "partition_rule": rec["partition_rule"], "partition": rec["partition"],
            "budget_params_vs_original": rec["part_budget_params"] / orig, "part_sizes": parts,
            "largest_part_params_vs_original": max(p["params_vs_original"] for p in parts),
            "parts_latency_cpu_ms": meas.get("parts_ms"), "unsplit_latency_cpu_ms": meas.get("unsplit_ms"),
            "largest_part_latency_ratio": meas.get("largest_ratio"), "latency_clock": meas.get("clock"),
            "fused_top1": served["top1"], "unsplit_top1": ref["top1"], "delta_top1": served["top1"] - ref["top1"],
            "unsplit": ref, "served": served, "pass_cpu_seconds": rec.get("cpu_seconds"),
            "pass_seconds": rec.get("seconds")}


def verdicts(rows: dict) -> dict:
    out = {}
    for name, r in rows.items():
        if name.startswith("uniform"):
            continue
        K = r["parts"]
        v = {"fused_top1_within_1.5": abs(r["delta_top1"]) <= TARGETS["fused_top1_within_pt"],
             "parts_within_1.3_over_K": all(p["params_ok"] for p in r["part_sizes"])}
        lim = TARGETS["largest_latency_ratio"].get(K)
        if lim is not None and r["largest_part_latency_ratio"] is not None:
            v[f"largest_latency_le_{lim}"] = r["largest_part_latency_ratio"] <= lim
        base = rows.get(COMPARE.get(name, ""))
        if base is not None:
            v["beats_uniform_top1"] = r["fused_top1"] > base["fused_top1"]
            v["uniform"] = {"variant": base["variant"], "fused_top1": base["fused_top1"],
                            "largest_part_latency_ratio": base["largest_part_latency_ratio"]}
        out[name] = v
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "split-bench")
    ap.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--probe-train", type=int, default=2000)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="tiny settings (k2 and uniform-k2 unless --only): mechanics")
    ap.add_argument("--publish", type=Path, default=REPO / "benchmarks" / "results" / "split.json")
    args = ap.parse_args(argv)
    names = args.only.split(",")
    if args.smoke:
        args.test, args.probe_train, args.latency_runs = 20, 40, 2
        names = names if args.only != ",".join(VARIANTS) else ["k2", "uniform-k2"]
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        ap.error(f"unknown variant {bad[0]!r}; choose from {', '.join(VARIANTS)}")  # one line, exit 2
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    res_path = args.out / "split.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else {}
    res.update(command=" ".join(["OMP_NUM_THREADS=1", "python"] + sys.argv), smoke=args.smoke, test_images=args.test,
               model="dinov2-s14-focus (embedded, pretrained)", data="cifar10", targets=TARGETS)
    rows = res.setdefault("variants", {})
    t0 = time.time()
    from compress.utils.io import write_json

    for name in names:
        rows[name] = collect(name, run_variant(name, VARIANTS[name], args.out, args.smoke), args)
        res["verdicts"], res["seconds"] = verdicts(rows), time.time() - t0
        write_json(res_path, res)
        if not args.smoke:
            write_json(args.publish, res)
    print("| variant | parts | fused top-1 | unsplit top-1 | largest part params | largest part latency (CPU) | "
          "end to end ms (wall) | RPC ms (wall) |\n|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        L = r["served"]["latency"]
        print(f"| {r['variant']} | {r['parts']} | {r['fused_top1']:.2f} | {r['unsplit_top1']:.2f} | "
              f"{r['largest_part_params_vs_original']:.3f}x | {r['largest_part_latency_ratio'] or float('nan'):.3f}x | "
              f"{L['end_to_end_ms_p50']} | {L['empty_model_rpc_ms_p50']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
