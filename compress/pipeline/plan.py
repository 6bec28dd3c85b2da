"""Binding a recipe's passes to Pass objects: the plan the pipeline runs.

``compress.recipes`` validates the recipe as data; here each ``passes:`` entry is looked up in the pass
registry and its config validated by the pass's typed ``Config``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from ..errors import UserError
from ..recipes import Recipe, check_targets, format_error, read_recipe, where
from .base import Pass, available_passes


@dataclass
class LoadedRecipe:
    recipe: Recipe
    passes: list[tuple[str, Pass]]  # (name, Pass instance) in order
    raw: dict  # the merged recipe, as run
    origins: dict = field(default_factory=dict)
    path: Path | None = None


def bind_passes(recipe: Recipe, origins: dict) -> list[tuple[str, Pass]]:
    """(name, Pass) for each entry of ``recipe.passes``, in order; unknown passes and bad configs are UserErrors."""
    registry = available_passes()
    passes = []
    for name, cfg in recipe.passes.items():
        cfg = dict(cfg or {})
        ptype = cfg.pop("type", name)
        if not isinstance(ptype, str):
            raise UserError(f"{where(origins, ('passes', name, 'type'))}: passes.{name}.type must be one pass name, "
                            f"not a {type(ptype).__name__}", f"available passes: {', '.join(sorted(registry))}")
        if ptype not in registry:
            close = difflib.get_close_matches(str(ptype), list(registry), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"available passes: {', '.join(sorted(registry))}"
            raise UserError(f"{where(origins, ('passes', name))}: unknown pass {ptype!r} at passes.{name}", hint)
        cls = registry[ptype]
        try:
            config = cls.Config.model_validate(cfg)
        except ValidationError as e:
            raise format_error(e, cls.Config, origins, ("passes", name)) from None
        passes.append((name, cls(config)))
    check_order(passes, origins)
    return passes


def check_order(passes: list[tuple[str, Pass]], origins: dict) -> None:
    """Each pass's ``must_follow`` / ``forbid_after`` rules against the passes before it (before any runs)."""
    seen: dict[str, str] = {}  # pass type -> the first recipe entry of that type
    for (name, p), (later, _) in zip(passes, passes[1:]):
        if p.last:
            raise UserError(f"{where(origins, ('passes', later))}: passes.{later} cannot run after "
                            f"passes.{name} ({p.name}): {p.last}", f"move passes.{name} to the end of the recipe")
    for name, p in passes:
        for t, why in p.forbid_after.items():
            if t in seen:
                raise UserError(f"{where(origins, ('passes', name))}: passes.{name} ({p.name}) cannot run after "
                                f"passes.{seen[t]} ({t}): {why}",
                                f"move passes.{name} above passes.{seen[t]}" if t != p.name
                                else f"keep one {t} pass per recipe")
        missing = [t for t in p.must_follow if t not in seen]
        if missing:
            raise UserError(f"{where(origins, ('passes', name))}: passes.{name} ({p.name}) needs "
                            f"{', '.join(missing)} to run before it", f"add passes.{missing[0]} above passes.{name}")
        seen.setdefault(p.name, name)


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, model: str | None = None,
                data: str | None = None, weights: str | None = None) -> LoadedRecipe:
    """Read and validate a recipe (``compress.recipes.read_recipe``), then bind its passes."""
    d = read_recipe(path, overrides, model, data, weights)
    passes = bind_passes(d.recipe, d.origins)
    check_targets(d.recipe, d.origins)
    return LoadedRecipe(d.recipe, passes, d.raw, d.origins, d.path)


__all__ = ["LoadedRecipe", "bind_passes", "check_order", "load_recipe"]
