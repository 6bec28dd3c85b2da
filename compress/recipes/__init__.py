"""Recipes are data: YAML, composed with ``extends:``, overridden with ``--set``, validated before anything runs.

Every error names the key path and the file line, exits with code 2, and suggests the
closest valid key for a typo.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import UserError
from .schema import Recipe
from .shipped import resolve_recipe
from .yaml_lines import Origin, load_yaml_with_lines

MAX_EXTENDS = 8


@dataclass
class RecipeData:
    """A recipe read, composed and validated as data; its passes are bound to Pass objects by the pipeline
    (``compress.pipeline.plan``)."""
    recipe: Recipe
    raw: dict  # the merged recipe, as run
    origins: dict = field(default_factory=dict)
    path: Path | None = None


def _merge(base: dict, over: dict, bl: dict, ol: dict, path=()) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, bl, ol, path + (k,))
        else:
            out[k] = v
            for p in [p for p in bl if p[: len(path) + 1] == path + (k,)]:
                del bl[p]
        bl.update({p: o for p, o in ol.items() if p[: len(path) + 1] == path + (k,)})
    return out


def _read(path: Path, chain: tuple = ()) -> tuple[dict, dict]:
    chain = chain + (path.resolve(),)
    data, lines = load_yaml_with_lines(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data, lines
    where = lines[("extends",)]
    if not isinstance(parent, str) or not parent.strip():
        raise UserError(f"{where}: 'extends' must name one recipe file", "write extends: base.yaml")
    ppath = (path.parent / parent).resolve()
    if ppath in chain:
        cycle = " -> ".join(p.name for p in chain[chain.index(ppath):] + (ppath,))
        raise UserError(f"{where}: extends cycle: {cycle}", "a recipe cannot extend itself, directly or not")
    if len(chain) > MAX_EXTENDS:
        raise UserError(f"{where}: extends chain deeper than {MAX_EXTENDS} recipes", "extend fewer levels")
    if ppath.is_dir():
        raise UserError(f"{where}: extends {parent!r} is a directory ({ppath}), not a recipe file",
                        "name the .yaml file to extend")
    if not ppath.exists():
        raise UserError(f"{where}: extends {parent!r} not found (looked for {ppath})",
                        "paths are relative to the recipe that extends them")
    base, blines = _read(ppath, chain)
    return _merge(base, data, blines, {p: o for p, o in lines.items() if p != ("extends",)}), blines


def _set(data: dict, origins: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r} is not key=value", "write e.g. --set evaluation.test=500")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"--set {assignment!r}: empty key segment", "write dotted keys like data.batch_size")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    node, at = data, ()
    for p in parts[:-1]:
        p = _index(node, p, key)
        nxt = node[p] if isinstance(node, list) else node.get(p)
        if nxt is None:
            nxt = node[p] = {}
            origins[at + (p,)] = Origin(f"--set {key}", None)
        if not isinstance(nxt, (dict, list)):
            raise UserError(f"--set {key}: {'.'.join(map(str, at + (p,)))} is a {type(nxt).__name__}, "
                            "not a mapping or list", "check the key path")
        node, at = nxt, at + (p,)
    last = _index(node, parts[-1], key, append=True)
    if isinstance(node, list) and last == len(node):
        node.append(parsed)
    else:
        node[last] = parsed
    for p in [p for p in origins if p[: len(at) + 1] == at + (last,)]:
        del origins[p]  # the old value's lines no longer apply
    origins[at + (last,)] = Origin(f"--set {key}", None)


def _index(node, part: str, key: str, append: bool = False):
    """``part`` as a key of ``node``: a list index (0-based; the list's length appends) for a list."""
    if not isinstance(node, list):
        return part
    n = len(node) + (1 if append else 0)
    if not part.isdigit() or int(part) >= n:
        raise UserError(f"--set {key}: {part!r} is not an index of a list of {len(node)}",
                        f"use 0..{n - 1}" if n else "the list is empty: set the whole list, e.g. key=[a]")
    return int(part)


def _where(origins: dict, loc: tuple) -> str:
    for n in range(len(loc), -1, -1):
        o = origins.get(tuple(loc[:n]))
        if o is not None:
            return str(o)
    return "recipe"


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    cls = model_cls
    for part in loc:
        f = cls.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(f, "annotation", None)
        if ann is None or not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cls = ann
    return list(cls.model_fields)


def _format(err: ValidationError, model_cls: type[BaseModel], origins: dict, prefix: tuple = ()) -> UserError:
    e = err.errors()[0]
    loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    full = prefix + loc
    key = ".".join(map(str, full))
    where = _where(origins, full)
    if e["type"] == "extra_forbidden":
        valid = _fields_at(model_cls, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"did you mean {'.'.join(map(str, full[:-1] + (close[0],)))}?" if close else \
            f"valid keys here: {', '.join(valid)}"
        return UserError(f"{where}: unknown key {key}", hint)
    if e["type"] == "missing":
        return UserError(f"{where}: missing required key {key}", "add it to the recipe")
    got = e.get("input")
    got_s = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    return UserError(f"{where}: {key}: {e['msg'].lower()} (got {got_s})", "fix the value")


def read_recipe(path: str | Path | None, overrides: list[str] | None = None, model: str | None = None,
                data: str | None = None, weights: str | None = None) -> RecipeData:
    """Read, compose, override (``--set``, then ``--model``, ``--weights``, ``--data``) and validate a recipe as data
    (no pass is imported or instantiated)."""
    if path is not None:
        path = resolve_recipe(path)
        raw, origins = _read(path)
    else:
        raw, origins = {}, {}
    raw = copy.deepcopy(raw)
    for a in overrides or []:
        _set(raw, origins, a)
    if model:
        raw["model"] = model
        origins[("model",)] = Origin("--model", None)
    if weights:
        raw["weights"] = weights
        origins[("weights",)] = Origin("--weights", None)
    if data:
        raw.setdefault("data", {})
        if not isinstance(raw["data"], dict):
            raise UserError(f"{_where(origins, ('data',))}: data must be a mapping", "write data: {path: ...}")
        raw["data"]["path"] = data
        origins[("data", "path")] = Origin("--data", None)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise _format(e, Recipe, origins) from None
    return RecipeData(recipe, raw, origins, path)


def check_targets(recipe: Recipe, origins: dict) -> None:
    """Every target a recipe names is a known device profile and its exporters are known: the built-in names the
    lower targets layer declares, and any registered since (no exporter is imported here)."""
    if not recipe.targets:
        return
    from ..registry import TARGET_EXPORTERS
    from ..targets import BUILTIN_EXPORTERS, list_profiles

    known = list_profiles()
    exporters = sorted(set(BUILTIN_EXPORTERS) | set(TARGET_EXPORTERS))
    for i, t in enumerate(recipe.targets):
        for j, e in enumerate([] if isinstance(t, str) else t.exporters or []):
            if e not in exporters:
                close = difflib.get_close_matches(e, exporters, n=1)
                raise UserError(f"{_where(origins, ('targets', i, 'exporters', j))}: unknown exporter {e!r} at "
                                f"targets.{i}.exporters.{j}",
                                f"did you mean {close[0]!r}?" if close else f"known exporters: {', '.join(exporters)}")
        t = t if isinstance(t, str) else t.name  # a TargetSpec
        if t not in known:
            close = difflib.get_close_matches(t, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known targets: {', '.join(known)}"
            raise UserError(f"{_where(origins, ('targets', i))}: unknown target {t!r} at targets.{i}", hint)


__all__ = ["RecipeData", "Recipe", "check_targets", "read_recipe", "where", "format_error"]

where, format_error = _where, _format
