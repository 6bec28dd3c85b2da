"""open_clip visual towers (``open_clip.transformer.VisionTransformer``) to the canonical ViT."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from .vit import ViTConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def create(arch: str, weights: str | None = None) -> tuple[ViTConfig, dict]:
    """Build open_clip ``arch`` without downloading; ``weights`` is a local CLIP checkpoint."""
    from .clip import open_clip_module  # open_clip configs and the TinyCLIP ViT configs

    model = open_clip_module(arch, weights)
    return from_module(model.visual.eval(), name=f"open_clip:{arch}", randomly_initialized=not weights)


def from_module(v: nn.Module, name: str = "open_clip", randomly_initialized: bool = False) -> tuple[ViTConfig, dict]:
    from open_clip.transformer import VisionTransformer

    if not isinstance(v, VisionTransformer):
        raise UserError(f"open_clip visual tower {type(v).__name__} is not supported",
                        "supported: ViT towers (open_clip.transformer.VisionTransformer)")
    if v.attn_pool is not None or v.pool_type != "tok" or v.final_ln_after_pool:
        raise UserError(f"{name}: attentional/avg pooling towers are not supported", "use a ViT-*/ tower with token pooling")
    blocks = v.transformer.resblocks
    b0 = blocks[0]
    if not isinstance(b0.attn, nn.MultiheadAttention):
        raise UserError(f"{name}: custom attention blocks are not supported", "use a standard open_clip ViT")
    D, H = v.conv1.out_channels, b0.attn.num_heads
    act = "quick_gelu" if type(b0.mlp.gelu).__name__ == "QuickGELU" else "gelu"
    proj = v.proj
    cfg = ViTConfig.uniform(
        D, len(blocks), H, b0.mlp.c_fc.out_features / D, img_size=v.image_size[0], patch_size=v.patch_size[0],
        norm_pre=not isinstance(v.ln_pre, nn.Identity), norm_eps=v.ln_post.eps, act=act,
        layer_scale=not isinstance(b0.ls_1, nn.Identity), global_pool="token",
        num_classes=proj.shape[1] if proj is not None else 0, head_bias=False,
        mean=OPENAI_MEAN, std=OPENAI_STD, name=name, extra={"randomly_initialized": randomly_initialized})
    sd = {k: t.detach().clone() for k, t in v.state_dict().items()}
    out = {"patch_embed.proj.weight": sd["conv1.weight"], "patch_embed.proj.bias": torch.zeros(D),
           "cls_token": sd["class_embedding"].reshape(1, 1, D), "pos_embed": sd["positional_embedding"].unsqueeze(0),
           "norm.weight": sd["ln_post.weight"], "norm.bias": sd["ln_post.bias"]}
    if cfg.norm_pre:
        out["norm_pre.weight"], out["norm_pre.bias"] = sd["ln_pre.weight"], sd["ln_pre.bias"]
    if proj is not None:
        out["head.weight"] = sd["proj"].T.contiguous()
    for i in range(cfg.depth):
        s, t = f"transformer.resblocks.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            q, k, vv = sd[s + f"attn.in_proj_{p}"].chunk(3, dim=0)
            out[t + f"attn.q.{p}"], out[t + f"attn.k.{p}"], out[t + f"attn.v.{p}"] = q, k, vv
            for a, b in (("attn.out_proj", "attn.proj"), ("ln_1", "norm1"), ("ln_2", "norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[t + f"{b}.{p}"] = sd[s + f"{a}.{p}"]
        if cfg.layer_scale:
            out[t + "ls1.gamma"], out[t + "ls2.gamma"] = sd[s + "ls_1.gamma"], sd[s + "ls_2.gamma"]
    return cfg, out
