"""The model state passes transform: the module plus metadata later passes and exporters read.

Loading a saved state (which replays the passes' ``rebuild``) is :mod:`compress.pipeline.checkpoint`."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from ..models import VisionTransformer
from ..models.checkpoint import save_model_dir
from ..models.vit import ViTConfig

STATE_FILE = "config.json"  # {"vit": config, "source", "history"} beside model.safetensors


@dataclass
class ModelState:
    model: VisionTransformer
    source: str
    history: list[dict] = field(default_factory=list)  # one record per finished pass

    @property
    def cfg(self) -> ViTConfig:
        return self.model.cfg

    def record(self, pass_type: str) -> dict | None:
        """The latest record of a pass type (e.g. the quantization spec), or None."""
        return next((r for r in reversed(self.history) if r["type"] == pass_type), None)

    def clone(self) -> "ModelState":
        return ModelState(copy.deepcopy(self.model), self.source, copy.deepcopy(self.history))

    def save(self, dest: Path, extra: dict | None = None) -> None:
        meta = {"vit": self.cfg.to_dict(), "source": self.source, "history": self.history} | (extra or {})
        save_model_dir(dest, self.model.state_dict(), meta)


__all__ = ["ModelState", "STATE_FILE"]
