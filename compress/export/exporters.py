"""Which artifacts a run ships: the fp32 baseline, the model itself, and what passes and targets add.

A pass adds artifacts through its descriptor's ``exporter`` (``compress.registry.PASSES``); a target through the
exporters its profile lists, registered in ``TARGET_EXPORTERS`` by the upper targets layer
(``compress.targets.deploy``, imported by the pipeline's export stage, ``compress.pipeline.export_stage``).
"""
from __future__ import annotations

import torch

from .. import ui
from ..errors import UserError, VerificationError
from ..models.float_view import float_view
from ..registry import PASSES, TARGET_EXPORTERS
from .artifacts import Artifact, ExportRequest, clean_stale, export_float_onnx, withdraw


def export_all(state, ctx, images) -> list[Artifact]:
    clean_stale(ctx.run_dir / "artifacts")  # temporaries a killed export left behind
    req = ExportRequest(state, ctx.run_dir, ctx.recipe, model_images(images, state.cfg), ctx.targets,
                        reference=ctx.reference)
    artifacts = []
    changed = bool(state.history)
    if changed:  # the fp32 model, exported the same way, for side-by-side latency
        base = ExportRequest(ctx.reference, ctx.run_dir, ctx.recipe, model_images(images, ctx.reference.cfg),
                             ctx.targets)
        a = export_float_onnx(base, "baseline-fp32.onnx", evaluate=False)
        a.name, a.notes = "baseline-fp32", ["the unmodified fp32 model, scored in ONNX Runtime like the others"]
        artifacts.append(a)
    passes = PASSES.loaded()
    graph_exporters = [t for t in dict.fromkeys(r["type"] for r in state.history)
                       if getattr(passes.get(t), "exporter", None) is not None]
    replaced = any(passes[t].replaces_float_graph for t in graph_exporters)
    a = export_float_onnx(req, evaluate=not replaced)
    if replaced:
        a.name, a.notes = "float-graph", ["float graph the quantized artifacts are built from"]
    req.float_onnx = ctx.run_dir / a.path
    artifacts.append(a)
    for t in graph_exporters:
        ui.info(f"export: {t} artifacts")
        artifacts += passes[t].exporter(req)
    specs = list(getattr(ctx.recipe, "targets", None) or [])
    for i, target in enumerate(ctx.targets):
        spec = specs[i] if len(specs) == len(ctx.targets) else None
        target["optional"] = bool(target.get("optional") or getattr(spec, "optional", False))
        for name in target.get("exporters") or [target.get("exporter", target["name"])]:
            fn = TARGET_EXPORTERS.get(name)
            if fn is None:  # recipes are checked against the known names: the upper layer was not imported
                raise RuntimeError(f"target exporter {name!r} is not registered: import compress.targets.deploy "
                                   "(compress.pipeline.export_stage does) before exporting to targets")
            ui.info(f"export: target {target['name']} ({name})")
            req.artifacts, req.target = list(artifacts), target
            try:
                artifacts += fn(req)
            except (UserError, VerificationError) as e:
                withdraw(ctx.run_dir, req.artifacts_dir / target["name"])  # nothing of a failed target is left
                if not target["optional"]:
                    raise
                artifacts = [x for x in artifacts if x.target != target["name"]]
                ui.info(f"  note: optional target {target['name']} ({name}) skipped, nothing of it shipped: {e}")
    return artifacts


def model_images(images: torch.Tensor, cfg) -> torch.Tensor:
    """The verification images at ``cfg``'s input size (they may come from a reference of another size)."""
    if images.shape[1] != cfg.in_chans:
        raise UserError(f"the verification images have {images.shape[1]} channels, {cfg.name} takes {cfg.in_chans}",
                        "export a model with the reference's input channels, or pass --reference for it")
    if images.shape[-2:] != (cfg.img_size, cfg.img_size):
        images = torch.nn.functional.interpolate(images, size=(cfg.img_size, cfg.img_size), mode="bilinear",
                                                 align_corners=False, antialias=True)
    return images


__all__ = ["export_all", "float_view", "model_images"]
