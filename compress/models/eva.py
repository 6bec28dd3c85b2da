"""timm ``Eva`` (EVA-01 / EVA-CLIP style) to the canonical ViT.

EVA-01 is a plain pre-norm ViT whose attention has q and v biases but no k bias (a zero k bias
is exact) and optional LayerScale. EVA-02 adds rotary position embeddings, SwiGLU MLPs and
sub-LayerNorms inside attention and MLP: none maps onto the canonical ViT, so it is refused
with the list of what is supported.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from .vit import ViTConfig

SUPPORTED_EVA = ("supported timm Eva variants: EVA-01 / EVA-CLIP style (eva_giant_patch14_224/336/560, "
                 "eva_giant_patch14_clip_224): learned absolute positions, q/v bias, optional LayerScale, GELU MLP, "
                 "token or avg pooling; EVA-02 (eva02_*: RoPE, SwiGLU, sub-LN) and RoPE ViTs are not")


def unsupported(m: nn.Module) -> list[str]:
    """What in this Eva does not map onto the canonical ViT (empty: it maps exactly)."""
    from timm.layers import Mlp
    from timm.models.eva import EvaAttention, EvaBlock

    why = []
    if m.rope is not None:
        why.append("rotary position embedding (RoPE)")
    if any(type(b) is not EvaBlock for b in m.blocks):
        why.append("post-norm blocks")
    b0 = m.blocks[0]
    a = b0.attn
    if type(a) is not EvaAttention:
        why.append(f"{type(a).__name__} attention")
    else:
        if not isinstance(a.q_norm, nn.Identity):
            why.append("qk-norm")
        if not isinstance(a.norm, nn.Identity):
            why.append("sub-LN in attention (scale_attn_inner)")
        if a.gate is not None:
            why.append("gated attention")
    if type(b0.mlp) is not Mlp:
        why.append(f"{type(b0.mlp).__name__} MLP (SwiGLU)")
    elif not isinstance(b0.mlp.norm, nn.Identity):
        why.append("sub-LN in the MLP (scale_mlp)")
    elif type(b0.mlp.act) is not nn.GELU:
        why.append(f"{type(b0.mlp.act).__name__} activation")
    if not isinstance(m.patch_embed.norm, nn.Identity):
        why.append("a patch-embedding norm")
    if not isinstance(b0.norm1, nn.LayerNorm):
        why.append(f"{type(b0.norm1).__name__} norms")
    if m.attn_pool is not None or m.global_pool not in ("avg", "token", ""):
        why.append(f"{m.global_pool!r} pooling")
    if isinstance(m.norm, nn.Identity) == isinstance(m.fc_norm, nn.Identity):
        why.append("both or neither of the final norm and fc_norm")
    return why


def from_timm(m: nn.Module, name: str = "eva", randomly_initialized: bool = False) -> tuple[ViTConfig, dict]:
    why = unsupported(m)
    if why:
        raise UserError(f"{name}: this EVA variant does not map onto the canonical ViT ({', '.join(why)})",
                        SUPPORTED_EVA)
    b0, pe = m.blocks[0], m.patch_embed
    a = b0.attn
    D, H = m.embed_dim, a.num_heads
    fused = a.qkv is not None
    qkv_bias = (a.q_bias if fused else a.q_proj.bias) is not None
    layer_scale = b0.gamma_1 is not None
    fc_norm = not isinstance(m.fc_norm, nn.Identity)
    num_classes = m.num_classes
    pc = getattr(m, "pretrained_cfg", None) or {}
    cfg = ViTConfig.uniform(
        D, len(m.blocks), H, img_size=pe.img_size[0], patch_size=pe.patch_size[0], in_chans=pe.proj.in_channels,
        class_token=m.cls_token is not None, num_reg_tokens=m.reg_token.shape[1] if m.reg_token is not None else 0,
        qkv_bias=qkv_bias, layer_scale=layer_scale, norm_pre=not isinstance(m.norm_pre, nn.Identity),
        norm_eps=b0.norm1.eps, act="gelu_tanh" if b0.mlp.act.approximate == "tanh" else "gelu",
        global_pool=(m.global_pool or "token") if num_classes else "none", fc_norm=fc_norm, num_classes=num_classes,
        mean=tuple(pc.get("mean", ViTConfig.mean)), std=tuple(pc.get("std", ViTConfig.std)),
        interpolation=pc.get("interpolation", "bicubic"), crop_pct=pc.get("crop_pct", 1.0), name=name,
        extra={"randomly_initialized": randomly_initialized})
    for blk in cfg.blocks:
        blk.qk_dim = blk.v_dim = a.head_dim
        blk.mlp_dim = b0.mlp.fc1.out_features
    if pe.img_size[0] != pe.img_size[1] or pe.patch_size[0] != pe.patch_size[1]:
        raise UserError(f"{name}: only square images and patches are supported", "use a square img_size")
    return cfg, _state(m, cfg, fused)


def _state(m: nn.Module, cfg: ViTConfig, fused: bool) -> dict:
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    D, c, R = cfg.embed_dim, int(cfg.class_token), cfg.num_reg_tokens
    out = {"patch_embed.proj.weight": sd["patch_embed.proj.weight"],
           "patch_embed.proj.bias": sd.get("patch_embed.proj.bias", torch.zeros(D))}
    grid = sd.get("pos_embed", torch.zeros(1, cfg.grid**2, D))[:, -cfg.grid**2:]
    pos_prefix = sd["pos_embed"][:, :c + R] if "pos_embed" in sd and not m.no_embed_class else torch.zeros(1, c + R, D)
    out["pos_embed"] = torch.cat([pos_prefix[:, :c], grid], dim=1)  # canonical: covers cls + patches
    if c:
        out["cls_token"] = sd["cls_token"]
    if R:  # register positions fold into the register tokens
        out["reg_token"] = sd["reg_token"] + pos_prefix[:, c:]
    for p in ("weight", "bias"):
        out[f"norm.{p}"] = sd[f"{'fc_norm' if cfg.fc_norm else 'norm'}.{p}"]
        if cfg.norm_pre:
            out[f"norm_pre.{p}"] = sd[f"norm_pre.{p}"]
        if cfg.num_classes:
            out[f"head.{p}"] = sd[f"head.{p}"]
    for i in range(len(m.blocks)):
        s = t = f"blocks.{i}."
        if fused:
            out[t + "attn.q.weight"], out[t + "attn.k.weight"], out[t + "attn.v.weight"] = \
                sd[s + "attn.qkv.weight"].chunk(3, dim=0)
            if cfg.qkv_bias:
                out[t + "attn.q.bias"], out[t + "attn.v.bias"] = sd[s + "attn.q_bias"], sd[s + "attn.v_bias"]
        else:
            for x in "qkv":
                out[t + f"attn.{x}.weight"] = sd[s + f"attn.{x}_proj.weight"]
            if cfg.qkv_bias:
                out[t + "attn.q.bias"], out[t + "attn.v.bias"] = sd[s + "attn.q_proj.bias"], sd[s + "attn.v_proj.bias"]
        if cfg.qkv_bias:  # EVA has no k bias: zero is exact
            out[t + "attn.k.bias"] = torch.zeros_like(out[t + "attn.q.bias"])
        for p in ("weight", "bias"):
            for n in ("attn.proj", "norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[t + f"{n}.{p}"] = sd[s + f"{n}.{p}"]
        if cfg.layer_scale:  # attention-only LayerScale: the MLP branch's gamma is one
            out[t + "ls1.gamma"] = sd[s + "gamma_1"]
            out[t + "ls2.gamma"] = sd.get(s + "gamma_2", torch.ones(D))
    return out
