"""The student's image side (the tower being compressed, with the CLIP pool and projection) and its files.

A token-pool CLIP tower is handled in its ``image_tower()`` form (the visual projection is its head, trained with
it); a ``cls_mean`` tower (the LiT teacher's DINOv2) keeps the teacher's projection, frozen, and an embed-pruned one
gets the ``WidthRestore`` lift back to the projection's input width. The text side is the teacher's.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ...models.checkpoint import load_state_dict, save_model_dir
from ...models.heads import WidthRestore
from ...models.pooling import pooled
from ...models.vit import VisionTransformer, ViTConfig
from ...pruning import inherit
from ...pruning import masks as M
from ...pruning.remove import output_width


class ImageStudent(nn.Module):
    """forward(images, step) -> (image embeddings, expected parameter ratio under the masks or None)."""

    def __init__(self, tower: VisionTransformer, proj: torch.Tensor | None, pool: str, params0: int,
                 masks: M.HardConcreteMasks | None = None, seed: int = 0):
        super().__init__()
        self.tower, self.pool, self.params0, self.seed = tower, pool, params0, seed
        self.masks = masks
        self.proj = None
        if proj is not None:
            self.proj = nn.Linear(proj.shape[1], proj.shape[0], bias=False)
            with torch.no_grad():
                self.proj.weight.copy_(proj)
            self.proj.weight.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tower(x)
        if self.proj is None:
            return y
        return self.proj(pooled(y, self.tower.cfg.num_prefix_tokens) if self.pool == "cls_mean" else y[:, 0])

    def forward(self, x: torch.Tensor, step: int = 0):
        if self.masks is None:
            return self.embed(x), None
        z = self.masks.sample(torch.Generator().manual_seed(self.seed * 1_000_003 + step)) if self.training else {}
        with M.attached(self.tower, z):
            emb = self.embed(x)
        return emb, inherit.expected_params(self.tower, self.masks.keep_prob()) / self.params0


def save_tower(dest: Path, tower: VisionTransformer, **meta) -> None:
    save_model_dir(dest, tower.state_dict(), {"vit": tower.cfg.to_dict(), "output_width": output_width(tower)} | meta)


def load_tower(path: Path) -> tuple[VisionTransformer, dict]:
    meta = json.loads((Path(path) / "config.json").read_text())
    tower = VisionTransformer(ViTConfig.from_dict(meta["vit"]))
    if meta.get("output_width"):
        tower.norm = WidthRestore(tower.cfg.embed_dim, meta["output_width"], tower.cfg.norm_eps)
    tower.load_state_dict(load_state_dict(Path(path) / "model.safetensors"))
    return tower.eval(), meta
