"""Evaluate a finished run: the fp32 reference, every artifact in its runtime, and fidelity."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import ui
from ..models.float_view import float_view
from ..runtime import RUNNERS, TorchRunner
from ..models.pooling import token_cosine
from .evaluate import Evaluator, block_sqnr
from ..utils.graph_stats import graph_stats
from .latency import measure


def latency_of(runner, cfg, lat) -> dict:
    x = torch.randn(lat.batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    return measure(lambda: runner(x), lat.warmup, lat.runs)


def evaluate_run(reference, state, ctx, artifacts: list[dict]) -> dict:
    ecfg = ctx.recipe.evaluation
    torch.set_num_threads(ecfg.latency.threads)
    ev = Evaluator(reference.model, ctx.recipe.data, ecfg, ctx.run_dir)
    ev.prepare()
    ref_top1 = ev.reference_top1
    ref_scores = {"top1": ref_top1, "delta_top1": 0.0, "agreement": 100.0, "feature_cosine": 1.0} | (
        {"top1_refit": ref_top1, "delta_top1_refit": 0.0} if ev.refits else {})  # its own probe is the fp32 probe
    rows = [{"name": "fp32 (PyTorch reference)", "runtime": "pytorch", "precision": "fp32", "method": ev.method,
             "params": sum(p.numel() for p in reference.model.parameters())} | ref_scores]
    if ecfg.latency.enabled and ecfg.latency.pytorch:
        rows[0]["latency"] = latency_of(TorchRunner(reference.model), reference.cfg, ecfg.latency)
    for a in artifacts:
        path = ctx.run_dir / a["path"]
        row = {"name": a["name"], "runtime": a["runtime"], "precision": a["precision"], "path": a["path"],
               "target": a.get("target")}
        if a["format"] == "onnx" and path.is_file():
            row |= graph_stats(path)
        elif path.exists():
            row["size_mb"] = size_mb(path)
        factory = RUNNERS.get(a["runtime"])
        baseline = a["name"] == "baseline-fp32"  # the fp32 model's own graph: scored in its runtime too
        if factory is None or not (a.get("evaluate", True) or baseline):
            rows.append(row)
            continue
        runner = factory(path, ecfg.latency.threads)
        row |= ev.score(runner, a["name"])
        if ecfg.latency.enabled:
            row["latency"] = latency_of(runner, reference.cfg if baseline else state.cfg, ecfg.latency)
        own = (f", own-probe top-1 {row['top1_refit']:.2f} ({row['delta_top1_refit']:+.2f})"
               if "top1_refit" in row else "")
        ui.info(f"  {a['name']}: top-1 {row['top1']:.2f} ({row['delta_top1']:+.2f}), agreement {row['agreement']:.1f}%"
                + own
                + (f", p50 {row['latency']['p50_ms']:.1f} ms" if "latency" in row else ""))
        rows.append(row)
    fidelity = {}
    if state.history:
        imgs = ev.fidelity_images()
        with torch.inference_mode():
            ref_out = reference.model(imgs)
            new_out = state.model(imgs)
        fidelity = {"images": len(imgs), "token_cosine": token_cosine(ref_out, new_out),
                    "block_sqnr_db": block_sqnr(reference.model, state.model, imgs)}
        if ecfg.latency.enabled and ecfg.latency.pytorch and not _has_quantizers(state.model):
            with float_view(state.model) as m:
                rows.append({"name": "compressed (PyTorch)", "runtime": "pytorch", "precision": "fp32",
                             "params": sum(p.numel() for p in m.parameters()),
                             "latency": latency_of(TorchRunner(m), state.cfg, ecfg.latency)})
    return {"method": ev.method, "reference_top1": ref_top1, "test_images": ecfg.test,
            "probe_train_images": ecfg.probe_train if ev.method == "probe" else 0,
            "probe_l2": ev.probe.l2 if ev.probe else None, "probe_refit": ev.refits, "rows": rows, "fidelity": fidelity,
            "threads": ecfg.latency.threads, "batch": ecfg.latency.batch}


def _has_quantizers(model) -> bool:
    return any(hasattr(m, "quant_enabled") for m in model.modules())


def size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None  # OpenVINO IR: .xml + .bin
    return (path.stat().st_size + (weights.stat().st_size if weights and weights.is_file() else 0)) / 2**20
