"""timm ``VisionTransformer`` family (ViT, DeiT, DeiT-III, DINOv2, CLIP-in-timm) to the canonical ViT;
timm ``SwinTransformer`` and ``Eva`` dispatch to ``swin.from_timm`` / ``eva.from_timm``."""
from __future__ import annotations

import torch
import torch.nn as nn

from .._compat import import_timm
from ..errors import UserError
from .checkpoint import load_state_dict
from .vit import QuickGELU, ViTConfig


def create(arch: str, weights: str | None = None, **kwargs) -> tuple[ViTConfig, dict]:
    """Build timm ``arch`` (never downloading), load local ``weights`` if given, convert."""
    timm = import_timm()
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise UserError(f"timm has no model {arch!r}", f"similar names: {', '.join(close) or 'none'}")
    model = timm.create_model(arch, pretrained=False, **kwargs)
    if weights:
        sd = load_state_dict(weights)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise UserError(f"weights {weights} do not fit timm {arch}: {len(missing)} missing, "
                            f"{len(unexpected)} unexpected keys (e.g. {(missing + unexpected)[0]})",
                            "pass weights saved from this exact architecture")
    return from_module(model.eval(), name=arch, randomly_initialized=not weights)


def from_module(m: nn.Module, name: str = "timm", randomly_initialized: bool = False) -> tuple[ViTConfig, dict]:
    from timm.models.vision_transformer import VisionTransformer

    family = _other_family(m)
    if family is not None:
        return family(m, name, randomly_initialized)
    if type(m) is not VisionTransformer:
        raise UserError(f"timm class {type(m).__name__} ({name}) is not supported",
                        "supported timm classes: VisionTransformer (vit_*, deit_*, deit3_*, *_dinov2, "
                        "vit_*_clip_*), SwinTransformer (swin_*, swin_s3_*), Eva (EVA-01 / EVA-CLIP: "
                        "eva_giant_patch14_*); distilled DeiT, SwinV2 and EVA-02 are not")
    if getattr(m, "attn_pool", None) is not None or m.global_pool not in ("token", "avg", ""):
        raise UserError(f"{name}: pooling {m.global_pool!r} is not supported", "use token or avg pooling")
    blk0 = m.blocks[0]
    if not isinstance(blk0.attn.q_norm, nn.Identity) or not isinstance(blk0.mlp.norm, nn.Identity):
        raise UserError(f"{name}: qk-norm / MLP norm variants are not supported", "use a plain ViT")
    act = blk0.mlp.act
    act_name = ("quick_gelu" if isinstance(act, QuickGELU) or type(act).__name__ == "QuickGELU"
                else "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu")
    D, H = m.embed_dim, blk0.attn.num_heads
    pc = m.pretrained_cfg or {}
    fc_norm = not isinstance(m.fc_norm, nn.Identity)
    num_classes = m.num_classes
    cfg = ViTConfig.uniform(
        D, len(m.blocks), H, blk0.mlp.fc1.out_features / D, img_size=m.patch_embed.img_size[0],
        patch_size=m.patch_embed.patch_size[0], in_chans=m.patch_embed.proj.in_channels,
        class_token=m.cls_token is not None, num_reg_tokens=m.reg_token.shape[1] if m.reg_token is not None else 0,
        qkv_bias=blk0.attn.qkv.bias is not None, layer_scale=not isinstance(blk0.ls1, nn.Identity),
        norm_pre=not isinstance(m.norm_pre, nn.Identity), norm_eps=m.norm.eps if hasattr(m.norm, "eps") else blk0.norm1.eps,
        act=act_name, global_pool=(m.global_pool or "token") if num_classes else "none",
        fc_norm=fc_norm, num_classes=num_classes,
        mean=tuple(pc.get("mean", (0.485, 0.456, 0.406))), std=tuple(pc.get("std", (0.229, 0.224, 0.225))),
        interpolation=pc.get("interpolation", "bicubic"), crop_pct=pc.get("crop_pct", 1.0), name=name,
        extra={"randomly_initialized": randomly_initialized})
    if hasattr(blk0.norm1, "weight") and blk0.norm1.weight is None:
        raise UserError(f"{name}: norms without affine weights are not supported", "use a standard ViT")
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    out = {"patch_embed.proj.weight": sd["patch_embed.proj.weight"]}
    out["patch_embed.proj.bias"] = sd.get("patch_embed.proj.bias", torch.zeros(D))
    pos = sd["pos_embed"]
    n_pre = m.num_prefix_tokens
    R = cfg.num_reg_tokens
    if m.no_embed_class:  # timm adds pos to patches only, then prepends prefix tokens
        cls_pos = torch.zeros(1, int(cfg.class_token), D)
        out["pos_embed"] = torch.cat([cls_pos, pos], dim=1)
        if R:
            out["reg_token"] = sd["reg_token"]
    else:  # pos covers [cls, reg..., patches]; register positions fold into the register tokens
        c = int(cfg.class_token)
        out["pos_embed"] = torch.cat([pos[:, :c], pos[:, n_pre:]], dim=1)
        if R:
            out["reg_token"] = sd["reg_token"] + pos[:, c:c + R]
    if cfg.class_token:
        out["cls_token"] = sd["cls_token"]
    norm_src = "fc_norm" if fc_norm else "norm"
    for p in ("weight", "bias"):
        out[f"norm.{p}"] = sd[f"{norm_src}.{p}"]
        if cfg.norm_pre:
            out[f"norm_pre.{p}"] = sd[f"norm_pre.{p}"]
        if num_classes and f"head.{p}" in sd:
            out[f"head.{p}"] = sd[f"head.{p}"]
    for i in range(cfg.depth):
        s, t = f"blocks.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            if s + f"attn.qkv.{p}" in sd:
                q, k, v = sd[s + f"attn.qkv.{p}"].chunk(3, dim=0)
                out[t + f"attn.q.{p}"], out[t + f"attn.k.{p}"], out[t + f"attn.v.{p}"] = q, k, v
            for a in ("attn.proj", "norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                if s + f"{a}.{p}" in sd:
                    out[t + f"{a}.{p}"] = sd[s + f"{a}.{p}"]
        if cfg.layer_scale:
            out[t + "ls1.gamma"], out[t + "ls2.gamma"] = sd[s + "ls1.gamma"], sd[s + "ls2.gamma"]
    return cfg, out


def _other_family(m: nn.Module):
    """The converter for timm classes other than VisionTransformer (Swin, Eva), or None."""
    from timm.models.eva import Eva
    from timm.models.swin_transformer import SwinTransformer

    from . import eva, swin

    return {SwinTransformer: swin.from_timm, Eva: eva.from_timm}.get(type(m))
