"""Loading a saved pipeline state: the model built from its config, each pass's ``rebuild`` replayed from its
record (the pass registry is consulted here, not by :class:`ModelState`), then the weights loaded strictly."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import UserError
from ..models import build, config_from_dict
from ..models.checkpoint import load_state_dict, tensor_shapes
from .base import available_passes
from .state import STATE_FILE, ModelState


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a folder a pipeline saved (its config.json names a model config)."""
    try:
        return "vit" in json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False


def load_checkpoint(path: Path) -> tuple[ModelState, dict]:
    """The state saved in ``path`` (the model rebuilt from its config and passes' records) and its config.json."""
    try:
        meta = json.loads((path / STATE_FILE).read_text())
        cfg = config_from_dict(meta["vit"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"checkpoint {path} has a corrupt {STATE_FILE} ({e})", "rerun the pass") from None
    history = meta.get("history", [])
    if not isinstance(history, list) or not all(isinstance(r, dict) and isinstance(r.get("type"), str)
                                                for r in history):
        raise UserError(f"checkpoint {path} has a corrupt {STATE_FILE}: every history entry needs a 'type'",
                        "rerun the pass")
    weights = path / "model.safetensors"
    # the config's size is checked against the weights' header on the meta device before anything is
    # allocated (a corrupt config can ask for any size); the exact shapes are checked when the weights load
    with torch.device("meta"):
        wanted = sum(t.numel() for t in _build(cfg, path).state_dict().values())
    header = tensor_shapes(weights)
    have = sum(math.prod(s) for s in header.values()) if header is not None else None
    if have is not None and wanted > 2 * have + (1 << 20):
        raise UserError(f"checkpoint {path} does not match its own config (the config needs {wanted:,} weights, "
                        f"the file holds {have:,})", "the files were mixed up or truncated; rerun the pass")
    model = _load_weights(_rebuild(cfg, history, path), load_state_dict(weights), path)
    return ModelState(model.eval(), meta.get("source", str(path)), history), meta


def _rebuild(cfg, history: list[dict], path: Path) -> torch.nn.Module:
    """The model the config and the passes' records describe, before its weights load."""
    passes = available_passes()
    model = _build(cfg, path)
    for i, rec in enumerate(history):
        if rec["type"] not in passes:
            raise UserError(f"checkpoint {path} was made by unknown pass {rec['type']!r}",
                            "use the vitforge version that wrote it")
        version, want = rec.get("config_version", 1), passes[rec["type"]].Config.VERSION
        if version != want:
            raise UserError(f"checkpoint {path}: history entry {i} ({rec['type']}) has config version {version!r}, "
                            f"this vitforge reads version {want}",
                            "use the vitforge version that wrote it, or rerun the pass")
        try:
            passes[rec["type"]].rebuild(model, rec)
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError, RuntimeError) as e:
            raise UserError(f"checkpoint {path}: history entry {i} ({rec['type']}) is incomplete or corrupt "
                            f"({type(e).__name__}: {_short(e)})", "rerun the pass") from None
    return model


def _build(cfg, path: Path) -> torch.nn.Module:
    try:
        return build(cfg)  # the class of the family the config names
    except (ArithmeticError, ValueError, TypeError, RuntimeError) as e:  # e.g. patch size 0, negative sizes
        raise UserError(f"checkpoint {path} has an impossible model config ({_short(e)})", "rerun the pass") from None


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__


def _load_weights(model: torch.nn.Module, state: dict, path: Path):
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not match its own config ({str(e).splitlines()[1].strip()[:120]})",
                        "the files were mixed up or truncated; rerun the pass") from None
    return model


def load_any(ref: str | None, weights: str | None = None) -> ModelState:
    """A model reference (see compress.models) or a pipeline checkpoint folder."""
    if ref and is_checkpoint(Path(ref)):
        return load_checkpoint(Path(ref))[0]
    from ..models import load_model

    lm = load_model(ref, weights)
    return ModelState(lm.model, lm.source)


__all__ = ["is_checkpoint", "load_any", "load_checkpoint"]
