"""Hugging Face ViT, DINOv2 and CLIP vision towers, read from local files (no transformers needed)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from .checkpoint import load_state_dict
from .vit import ViTConfig, resample_pos_embed

SUPPORTED = ("vit", "dinov2", "clip_vision_model", "clip")


REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size")


def _read_config(path: Path) -> dict:
    try:
        hf = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}/config.json cannot be read ({e})", "re-download the model folder") from None
    if not isinstance(hf, dict):
        raise UserError(f"{path}/config.json is not a JSON object", "re-download the model folder")
    return hf


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and "model_type" in _read_config(path)


def _check_config(hf: dict, path: Path, clip: bool) -> None:
    need = REQUIRED + (("intermediate_size",) if clip else ())
    missing = [k for k in need if k not in hf]
    if missing:
        raise UserError(f"{path}/config.json lacks {', '.join(missing)}", "re-download the model folder")
    bad = [k for k in need if not isinstance(hf[k], int) or isinstance(hf[k], bool) or hf[k] <= 0]
    if bad:
        raise UserError(f"{path}/config.json: {', '.join(f'{k}={hf[k]!r}' for k in bad)} must be positive integers",
                        "re-download the model folder")


def load_hf_dir(path: Path) -> tuple[ViTConfig, dict]:
    hf = _read_config(path)
    mtype = hf.get("model_type")
    if mtype not in SUPPORTED:
        raise UserError(f"Hugging Face model_type {mtype!r} in {path} is not supported",
                        f"supported model types: {', '.join(SUPPORTED)}")
    files = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
    if not files:
        raise UserError(f"{path} has config.json but no model.safetensors or pytorch_model.bin",
                        "save the model with save_pretrained()")
    clip = mtype in ("clip", "clip_vision_model")
    vision = hf.get("vision_config", hf) if clip else hf
    if not isinstance(vision, dict):
        raise UserError(f"{path}/config.json: vision_config is not an object", "re-download the model folder")
    _check_config(vision, path, clip)
    sd = load_state_dict(files[0])
    try:
        if clip:
            return clip_to_canonical(vision, sd, hf.get("projection_dim"))
        return vit_to_canonical(hf, sd, dinov2=mtype == "dinov2")
    except KeyError as e:  # a tensor the config implies is not in the weights
        raise UserError(f"{files[0]} lacks tensor {e.args[0]!r} that {path}/config.json implies",
                        "the weights and config.json belong to different models; re-download the folder") from None


def _strip(sd: dict, prefixes: tuple[str, ...]) -> dict:
    for p in prefixes:
        if any(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return sd


def _act(name: str) -> str:
    return {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
            "quick_gelu": "quick_gelu"}.get(name) or _bad_act(name)


def _bad_act(name):
    raise UserError(f"activation {name!r} is not supported", "supported: gelu, gelu_new, quick_gelu")


def vit_to_canonical(hf: dict, sd: dict, dinov2: bool, img_size: int | None = None) -> tuple[ViTConfig, dict]:
    """HF ``ViTModel``/``ViTForImageClassification``/``Dinov2Model`` weights to the canonical ViT."""
    sd = _strip(sd, ("vit.", "dinov2.", "backbone."))
    D, depth, heads = hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"]
    patch = hf["patch_size"]
    img_size = img_size or (224 if dinov2 else hf.get("image_size", 224))
    mlp = hf.get("intermediate_size") or int(D * hf.get("mlp_ratio", 4))
    labels = len(hf.get("id2label", {})) if "classifier.weight" in sd else 0
    cfg = ViTConfig.uniform(
        D, depth, heads, mlp / D, img_size=img_size, patch_size=patch, in_chans=hf.get("num_channels", 3),
        qkv_bias=hf.get("qkv_bias", True), layer_scale=dinov2, norm_eps=hf.get("layer_norm_eps", 1e-12),
        act=_act(hf.get("hidden_act", "gelu")), num_reg_tokens=hf.get("num_register_tokens", 0) if dinov2 else 0,
        global_pool="token" if labels else "none", num_classes=labels,
        name=hf.get("_name_or_path") or ("dinov2" if dinov2 else "vit"))
    if dinov2 and hf.get("use_swiglu_ffn"):
        raise UserError("DINOv2 with SwiGLU FFN (ViT-g) is not supported", "use ViT-S/B/L DINOv2 models")
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"],
    }
    pos = sd["embeddings.position_embeddings"]
    out["pos_embed"] = torch.cat([pos[:, :1], resample_pos_embed(pos[:, 1:], cfg.grid)], dim=1)
    if cfg.num_reg_tokens:
        out["reg_token"] = sd["embeddings.register_tokens"]
    for i in range(depth):
        s, t = f"encoder.layer.{i}.", f"blocks.{i}."
        names = {"attention.attention.query": "attn.q", "attention.attention.key": "attn.k",
                 "attention.attention.value": "attn.v", "attention.output.dense": "attn.proj"}
        if dinov2:
            names |= {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
            out[t + "ls1.gamma"] = sd[s + "layer_scale1.lambda1"]
            out[t + "ls2.gamma"] = sd[s + "layer_scale2.lambda1"]
        else:
            names |= {"layernorm_before": "norm1", "layernorm_after": "norm2",
                      "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
        for a, b in names.items():
            for p in ("weight", "bias"):
                if s + f"{a}.{p}" in sd:
                    out[t + f"{b}.{p}"] = sd[s + f"{a}.{p}"]
    if labels:
        out["head.weight"], out["head.bias"] = sd["classifier.weight"], sd["classifier.bias"]
    return cfg, out


def clip_to_canonical(hf: dict, sd: dict, projection_dim: int | None) -> tuple[ViTConfig, dict]:
    """HF ``CLIPVisionModel(WithProjection)`` / ``CLIPModel`` vision tower to the canonical ViT."""
    proj = sd.get("visual_projection.weight")
    sd = _strip(sd, ("vision_model.",))
    D, depth, heads = hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"]
    cfg = ViTConfig.uniform(
        D, depth, heads, hf["intermediate_size"] / D, img_size=hf.get("image_size", 224),
        patch_size=hf["patch_size"], norm_pre=True, norm_eps=hf.get("layer_norm_eps", 1e-5),
        act=_act(hf.get("hidden_act", "quick_gelu")), global_pool="token",
        num_classes=proj.shape[0] if proj is not None else 0, head_bias=False,
        mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
        name=hf.get("_name_or_path") or "clip-vision")
    w = sd["embeddings.patch_embedding.weight"]
    out = {
        "cls_token": sd["embeddings.class_embedding"].reshape(1, 1, D),
        "pos_embed": sd["embeddings.position_embedding.weight"].unsqueeze(0),
        "patch_embed.proj.weight": w, "patch_embed.proj.bias": torch.zeros(D, dtype=w.dtype),
        "norm_pre.weight": sd["pre_layrnorm.weight"], "norm_pre.bias": sd["pre_layrnorm.bias"],
        "norm.weight": sd["post_layernorm.weight"], "norm.bias": sd["post_layernorm.bias"],
    }
    for i in range(depth):
        s, t = f"encoder.layers.{i}.", f"blocks.{i}."
        names = {"self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
                 "self_attn.out_proj": "attn.proj", "layer_norm1": "norm1", "layer_norm2": "norm2",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        for a, b in names.items():
            for p in ("weight", "bias"):
                out[t + f"{b}.{p}"] = sd[s + f"{a}.{p}"]
    if proj is not None:
        out["head.weight"] = proj
    return cfg, out
