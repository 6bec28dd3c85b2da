"""The export stage, the one path from a model state to verified artifacts: used by the pipeline (``run_recipe``)
and by ``compress export``.

It imports the upper targets layer (``compress.targets.deploy``), which registers the device exporters and runtimes,
then calls ``compress.export.exporters.export_all``: the float graph, each pass descriptor's ``exporter``, then the
exporters of every target the recipe names.
"""
from __future__ import annotations

from .. import ui
from ..evaluation.evaluate import Evaluator
from ..export import exporters
from ..targets import deploy  # noqa: F401  registers the device exporters and runtimes (the upper targets layer)
from ..targets import load_profile
from ..utils.io import sha256_file
from .context import RunContext
from .state import ModelState


def target_profiles(recipe) -> list[dict]:
    """The device profile of each target the recipe names (its recipe options applied)."""
    return [load_profile(t) for t in recipe.targets]


def export_stage(state: ModelState, ctx: RunContext) -> dict:
    """Write and verify every artifact of ``state`` into ``ctx.run_dir/artifacts``; ``{"artifacts": [...]}`` with
    each file's sha256 (the content of export.json)."""
    ui.info("export: writing and verifying artifacts")
    imgs = Evaluator(ctx.reference.model, ctx.recipe.data, ctx.recipe.evaluation).fidelity_images()
    artifacts = exporters.export_all(state, ctx, imgs[: ctx.recipe.export.verify.images])
    for a in artifacts:
        p = ctx.run_dir / a.path
        a.sha256 = sha256_file(p) if p.is_file() else None
    return {"artifacts": [a.to_dict() for a in artifacts]}


__all__ = ["export_stage", "target_profiles"]
