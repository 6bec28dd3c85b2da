"""The canonical Vision Transformer every pass works on.

One explicit config describes the whole structure, per block, so a pruned model (heads,
QK and V widths, MLP width and the embedding width all changed per block) is rebuilt from
its config alone. Each op a pass may swap or wrap is a module of its own: the q/k/v/proj
and fc1/fc2 linears, ``softmax``, the two attention matmuls and the MLP activation.

Importers (timm, Hugging Face, open_clip, the embedded DINOv2) map their weights onto it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")


@dataclass
class BlockConfig:
    num_heads: int
    qk_dim: int  # per head
    v_dim: int  # per head
    mlp_dim: int


@dataclass
class ViTConfig:
    embed_dim: int
    blocks: list[BlockConfig]
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    class_token: bool = True
    num_reg_tokens: int = 0
    qkv_bias: bool = True
    proj_bias: bool = True
    layer_scale: bool = False
    norm_pre: bool = False  # CLIP's ln_pre
    norm_eps: float = 1e-6
    act: str = "gelu"
    global_pool: str = "token"  # token | avg | none (tokens out)
    fc_norm: bool = False  # timm's fc_norm: the final norm acts on the pooled vector, not the tokens
    num_classes: int = 0  # 0: no head
    head_bias: bool = True
    # preprocessing the weights were trained with
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    resize: str = "crop"  # crop: shorter side then center crop | pad: longer side then zero-pad
    name: str = "vit"
    extra: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.num_reg_tokens

    @property
    def num_pos_tokens(self) -> int:  # position embedding covers cls + patches
        return self.grid**2 + int(self.class_token)

    @property
    def num_tokens(self) -> int:
        return self.grid**2 + self.num_prefix_tokens

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ViTConfig keys {sorted(unknown)}")
        d = dict(d)
        d["blocks"] = [BlockConfig(**b) for b in d["blocks"]]
        d["mean"], d["std"] = tuple(d.get("mean", cls.mean)), tuple(d.get("std", cls.std))
        return cls(**d)

    @classmethod
    def uniform(cls, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, **kw) -> "ViTConfig":
        hd = embed_dim // num_heads
        blocks = [BlockConfig(num_heads, hd, hd, int(embed_dim * mlp_ratio)) for _ in range(depth)]
        return cls(embed_dim=embed_dim, blocks=blocks, **kw)


class MatMul(nn.Module):
    """``a @ b`` as a module, so quantizers and kernels can attach to it."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


class Softmax(nn.Softmax):
    """Attention softmax over the last axis; a distinct type so passes find it."""

    def __init__(self):
        super().__init__(dim=-1)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_dim: int, v_dim: int, qkv_bias=True, proj_bias=True):
        super().__init__()
        self.num_heads, self.qk_dim, self.v_dim = num_heads, qk_dim, v_dim
        self.scale = qk_dim**-0.5
        self.q = nn.Linear(dim, num_heads * qk_dim, bias=qkv_bias)
        self.k = nn.Linear(dim, num_heads * qk_dim, bias=qkv_bias)
        self.v = nn.Linear(dim, num_heads * v_dim, bias=qkv_bias)
        self.qk_matmul = MatMul()
        self.softmax = Softmax()
        self.av_matmul = MatMul()
        self.proj = nn.Linear(num_heads * v_dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        h = self.num_heads
        q = self.q(x).reshape(B, N, h, self.qk_dim).transpose(1, 2)
        k = self.k(x).reshape(B, N, h, self.qk_dim).transpose(1, 2)
        v = self.v(x).reshape(B, N, h, self.v_dim).transpose(1, 2)
        attn = self.softmax(self.qk_matmul(q * self.scale, k.transpose(-2, -1)))
        x = self.av_matmul(attn, v).transpose(1, 2).reshape(B, N, h * self.v_dim)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, b: BlockConfig, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, b.num_heads, b.qk_dim, b.v_dim, cfg.qkv_bias, cfg.proj_bias)
        self.ls1 = LayerScale(dim) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, b.mlp_dim, cfg.act)
        self.ls2 = LayerScale(dim) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Pre-norm ViT: patch embed, prefix tokens, learned position embedding, blocks, norm, head."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_reg_tokens, D)) if cfg.num_reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_pos_tokens, D))
        self.norm_pre = nn.LayerNorm(D, eps=cfg.norm_eps) if cfg.norm_pre else nn.Identity()
        self.blocks = nn.ModuleList(Block(D, b, cfg) for b in cfg.blocks)
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.head = nn.Linear(D, cfg.num_classes, bias=cfg.head_bias) if cfg.num_classes else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for p in (self.cls_token, self.reg_token):
            if p is not None:
                nn.init.normal_(p, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def embed_dim(self) -> int:
        return self.pos_embed.shape[-1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token,) if t is not None]
        # position embedding covers cls + patches; register tokens (DINOv2-reg) carry none
        x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        if self.reg_token is not None:
            x = torch.cat([x[:, :1], self.reg_token.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        return self.norm_pre(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return x if self.cfg.fc_norm else self.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cfg.global_pool == "avg":
            return tokens[:, self.cfg.num_prefix_tokens :].mean(1)
        return tokens[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_features(x)
        if self.cfg.global_pool == "none":
            return tokens
        pooled = self.pool(tokens)
        return self.head(self.norm(pooled) if self.cfg.fc_norm else pooled)


def resample_pos_embed(grid_embed: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Bicubic resampling of a [1, G*G, D] patch position grid (half-pixel, a=-0.75, as HF/timm)."""
    g = int(math.isqrt(grid_embed.shape[1]))
    if g == new_grid:
        return grid_embed
    x = grid_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1)
