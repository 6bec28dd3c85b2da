"""Model references -> the canonical ViT.

A reference is one of:
  ``dinov2-s14-focus`` (alias ``default``)   the embedded pretrained DINOv2 ViT-S/14
  ``timm:<arch>[@weights]``                   a timm VisionTransformer, Swin or EVA-01, local weights or random init
  ``open_clip:<arch>[@weights]``              an open_clip ViT visual tower
  ``<dir>``                                   a Hugging Face ViT/DINOv2/CLIP folder, a vitforge model folder, or a
                                              vitforge CLIP folder (its image tower; compress.models.clip)
Weights are read from local files only, safely (safetensors or weights-only torch.load).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .swin import SwinConfig, SwinTransformer
from .vit import BlockConfig, ViTConfig, VisionTransformer

DEFAULT_MODEL = "dinov2-s14-focus"
SUPPORTED = (
    "dinov2-s14-focus (embedded), timm:<arch> (VisionTransformer family: ViT, DeiT, DINOv2, CLIP; "
    "SwinTransformer: swin_*; Eva: EVA-01 / EVA-CLIP), "
    "open_clip:<arch> (ViT towers), a Hugging Face folder (vit, dinov2, clip, clip_vision_model), "
    "a vitforge checkpoint folder (config.json + model.safetensors), a vitforge CLIP folder (its image tower)"
)


@dataclass
class LoadedModel:
    model: VisionTransformer
    cfg: ViTConfig
    source: str


# model family -> (config class, model class); a saved config names its family in a "family" key,
# a config without one is a ViT (every checkpoint written before families existed)
FAMILIES: dict[str, tuple[type, type]] = {"vit": (ViTConfig, VisionTransformer), "swin": (SwinConfig, SwinTransformer)}


def config_from_dict(d: dict):
    if not isinstance(d, dict):
        raise TypeError(f"a model config is a mapping, not {type(d).__name__}")
    family = d.get("family", "vit")
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r} in a saved config",
                        f"known families: {', '.join(FAMILIES)}; use the vitforge version that wrote it")
    return FAMILIES[family][0].from_dict({k: v for k, v in d.items() if k != "family"})


def build(cfg: ViTConfig | SwinConfig, state: dict | None = None) -> VisionTransformer | SwinTransformer:
    model = next(m for c, m in FAMILIES.values() if type(cfg) is c)(cfg)
    if state is not None:
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise UserError(f"weights do not fit {cfg.name}: {str(e).splitlines()[-1].strip()[:160]}",
                            "the checkpoint belongs to another architecture") from None
        if missing or unexpected:
            raise UserError(f"weights do not fit {cfg.name}: missing {missing[:3]}, unexpected {unexpected[:3]}",
                            "the checkpoint belongs to another architecture")
    return model.eval()


def weights_note(cfg) -> dict:
    """What the weights are, for a run's report: random initialisation gets a flag and no accuracy verdict."""
    if cfg.extra.get("randomly_initialized"):
        return {"random": True, "accuracy_verdict": None,
                "note": "randomly initialised weights (no weights were given): top-1 and agreement describe a "
                        "probe on random features, not the model's accuracy; no accuracy verdict is given"}
    return {"random": False}


def load_model(ref: str | None = None, weights: str | None = None) -> LoadedModel:
    ref = ref or DEFAULT_MODEL
    cfg, state = _resolve(ref, weights)
    return LoadedModel(build(cfg, state), cfg, ref)


def _split(ref: str, weights: str | None) -> tuple[str, str | None]:
    if "@" in ref:
        ref, w = ref.split("@", 1)
        return ref, weights or w
    return ref, weights


def _resolve(ref: str, weights: str | None) -> tuple[ViTConfig, dict]:
    if ref in (DEFAULT_MODEL, "default"):
        from . import dinov2_focus

        return dinov2_focus.load()
    if ref.startswith("timm:"):
        from . import timm_vit

        arch, w = _split(ref[5:], weights)
        return timm_vit.create(arch, w)
    if ref.startswith("open_clip:"):
        from . import open_clip_vit

        arch, w = _split(ref[10:], weights)
        return open_clip_vit.create(arch, w)
    path = Path(ref)
    if path.is_dir() and (path / "config.json").is_file():
        from . import hf

        try:
            meta = json.loads((path / "config.json").read_text())
        except ValueError as e:
            raise UserError(f"{path}/config.json is not valid JSON ({e})", "restore the file") from None

        if "model_type" in meta:
            return hf.load_hf_dir(path)
        if isinstance(meta, dict) and "clip" in meta:  # a vitforge CLIP folder: its image tower
            from .clip import load_image_tower

            return load_image_tower(path)
    if path.exists():
        raise UserError(f"cannot tell what model {ref} is",
                        f"pass a folder with config.json, or one of: {SUPPORTED}")
    raise UserError(f"unknown model {ref!r}", f"supported: {SUPPORTED}")


__all__ = ["BlockConfig", "ViTConfig", "VisionTransformer", "SwinConfig", "SwinTransformer", "FAMILIES",
           "config_from_dict", "LoadedModel", "load_model", "build", "weights_note", "DEFAULT_MODEL", "SUPPORTED"]
