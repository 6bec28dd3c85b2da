"""Which artifacts a run ships: the fp32 baseline, the model itself, and what passes and targets add."""
from __future__ import annotations

from .. import ui
from ..pipeline.float_view import float_view
from .artifacts import EXPORTERS, Artifact, ExportRequest, export_float_onnx


def export_all(state, ctx, images) -> list[Artifact]:
    req = ExportRequest(state, ctx.run_dir, ctx.recipe, images, ctx.targets, reference=ctx.reference)
    artifacts = []
    changed = bool(state.history)
    if changed:  # the fp32 model, exported the same way, for side-by-side latency
        base = ExportRequest(ctx.reference, ctx.run_dir, ctx.recipe, images, ctx.targets)
        a = export_float_onnx(base, "baseline-fp32.onnx", evaluate=False)
        a.name, a.notes = "baseline-fp32", ["the unmodified fp32 model; accuracy = PyTorch reference"]
        artifacts.append(a)
    graph_exporters = [t for t in dict.fromkeys(r["type"] for r in state.history) if t in EXPORTERS]
    a = export_float_onnx(req, evaluate=not graph_exporters)
    if graph_exporters:
        a.name, a.notes = "float-graph", ["float graph the quantized artifacts are built from"]
    req.float_onnx = ctx.run_dir / a.path
    artifacts.append(a)
    for t in graph_exporters:
        ui.info(f"export: {t} artifacts")
        artifacts += EXPORTERS[t](req)
    from .. import targets as _  # noqa: F401  registers the target exporters

    for target in ctx.targets:
        for name in target.get("exporters") or [target.get("exporter", target["name"])]:
            fn = EXPORTERS.get(f"target:{name}")
            if fn is None:
                ui.info(f"export: target {target['name']} uses the ONNX Runtime artifacts above")
                continue
            ui.info(f"export: target {target['name']} ({name})")
            req.artifacts, req.target = list(artifacts), target
            artifacts += fn(req)
    return artifacts


__all__ = ["export_all", "float_view"]
