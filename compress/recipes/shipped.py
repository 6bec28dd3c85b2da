"""The recipes that ship with vitforge, found by name from any directory.

``--recipe int4-vit`` or ``--recipe int4-vit.yaml``: a path that exists wins; otherwise the name is looked up
in the shipped recipes: ``recipes/`` of a source checkout (an editable install), or the package data a wheel
installs (``compress/recipes/shipped/``, copied from ``recipes/`` by setup.py).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError

HERE = Path(__file__).resolve().parent
PLACES = (HERE / "shipped", HERE.parents[1] / "recipes")  # wheel, then checkout


def shipped_dir() -> Path | None:
    return next((d for d in PLACES if d.is_dir() and any(d.glob("*.yaml"))), None)


def shipped_recipes() -> dict[str, Path]:
    """name (without .yaml) -> file, for every shipped recipe."""
    d = shipped_dir()
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d else {}


def resolve_recipe(spec: str | Path) -> Path:
    """A recipe path: ``spec`` itself when it exists (or looks like a path), else the shipped recipe it names."""
    p = Path(spec).expanduser()
    if p.exists() or p.is_symlink():
        return p
    name = p.name[:-5] if p.name.endswith(".yaml") else p.name[:-4] if p.name.endswith(".yml") else p.name
    known = shipped_recipes()
    if p.parent == Path(".") and name in known:
        return known[name]
    raise UserError(f"recipe {spec} does not exist", "pass a recipe file, or the name of a shipped recipe: "
                    + (", ".join(known) or "none found (reinstall vitforge)"))


__all__ = ["resolve_recipe", "shipped_dir", "shipped_recipes"]
