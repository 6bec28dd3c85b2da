"""Fold LayerScale into the preceding linear (DINOv2, DeiT-III, CaiT style): exact, one Mul fewer per branch."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..pipeline.base import Pass, PassConfig, register_pass


class FoldConfig(PassConfig):
    layer_scale: bool = True


@register_pass
class FoldPass(Pass):
    name = "fold"
    Config = FoldConfig
    summary = "fold LayerScale gammas into attn.proj / mlp.fc2"

    def run(self, state, ctx):
        model = state.model
        folded = 0
        if self.config.layer_scale and model.cfg.layer_scale:
            with torch.no_grad():
                for blk in model.blocks:
                    for ls, lin in ((blk.ls1, blk.attn.proj), (blk.ls2, blk.mlp.fc2)):
                        lin.weight.mul_(ls.gamma[:, None])
                        if lin.bias is not None:
                            lin.bias.mul_(ls.gamma)
                        folded += 1
                    blk.ls1, blk.ls2 = nn.Identity(), nn.Identity()
            model.cfg.layer_scale = False
        return {"folded_layer_scales": folded}
