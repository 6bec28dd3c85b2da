"""Swin Transformer (Liu et al. 2021) in the canonical module vocabulary.

Hierarchical: four stages of window-attention blocks, each stage after the first opened by a
patch merging (2x2 neighbours concatenated, LayerNorm, linear) that halves the grid and widens
the tokens. Every block attends inside non-overlapping windows; odd blocks of a stage shift the
windows by half a window (cyclic roll) and mask the pairs the roll made neighbours. A learned
relative position bias is added to the attention logits before the softmax.

Blocks expose the canonical names (``norm1``, ``attn.{q,k,v,proj,qk_matmul,softmax,av_matmul}``,
``ls1``, ``norm2``, ``mlp.{fc1,act,fc2}``, ``ls2``) and take and return tokens [B, L, C], so passes
that walk ``model.blocks`` work unchanged. ``model.blocks`` is flat (all stages); the merges live in
``model.merges`` and run before the first block of stages 1..S-1. The config is explicit per block
(``blocks``) and per stage (depths, widths, windows), so a changed model is rebuilt from it alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from . import vit
from .vit import Attention, BlockConfig, ViTConfig

FAMILY = "swin"
MASK_VALUE = -100.0  # what the reference implementation adds to logits across shifted-window seams


@dataclass
class SwinConfig:
    embed_dim: int  # stage-0 width (the patch embedding's)
    blocks: list[BlockConfig]  # every block, stages in order
    stage_depths: list[int]
    stage_dims: list[int]  # token width per stage
    window_sizes: list[int]  # per stage (square); clamped to the stage grid as in the reference
    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    patch_norm: bool = True
    qkv_bias: bool = True
    proj_bias: bool = True
    layer_scale: bool = False
    norm_eps: float = 1e-5
    act: str = "gelu"
    global_pool: str = "avg"  # avg | none (final-norm tokens of the last stage out)
    num_classes: int = 0
    head_bias: bool = True
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.9
    resize: str = "crop"
    name: str = "swin"
    extra: dict = field(default_factory=dict)

    family = FAMILY  # not a field: written by to_dict, read by compress.models.config_from_dict
    # ViT notions with a fixed value here, for code that reads them off any config
    class_token = False
    num_reg_tokens = 0
    num_prefix_tokens = 0
    fc_norm = False
    norm_pre = False

    depth = ViTConfig.depth
    grid = ViTConfig.grid  # the patch grid of stage 0

    @property
    def stage_grids(self) -> list[int]:
        g = [self.grid]
        for _ in self.stage_depths[1:]:
            g.append((g[-1] + 1) // 2)
        return g

    @property
    def block_stages(self) -> list[int]:
        return [s for s, d in enumerate(self.stage_depths) for _ in range(d)]

    @property
    def num_features(self) -> int:
        return self.stage_dims[-1]

    @property
    def num_tokens(self) -> int:  # tokens out of forward_features (last stage)
        return self.stage_grids[-1] ** 2

    def block_window(self, i: int) -> tuple[int, int]:
        """(window, shift) of block ``i``: a window no larger than the grid, shifted on odd blocks of a stage."""
        s = self.block_stages[i]
        g, w = self.stage_grids[s], self.window_sizes[s]
        if g <= w:
            return g, 0
        return w, (w // 2 if (i - sum(self.stage_depths[:s])) % 2 else 0)

    def to_dict(self) -> dict:
        return {"family": FAMILY} | ViTConfig.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SwinConfig":
        return ViTConfig.from_dict.__func__(cls, {k: v for k, v in d.items() if k != "family"})

    @classmethod
    def uniform(cls, embed_dim: int, depths, num_heads, window_size: int = 7, mlp_ratio: float = 4.0,
                **kw) -> "SwinConfig":
        """Widths doubling per stage, head dim = width / heads, as in the paper."""
        dims = [embed_dim * 2**s for s in range(len(depths))]
        blocks = [BlockConfig(h, dims[s] // h, dims[s] // h, int(dims[s] * mlp_ratio))
                  for s, (d, h) in enumerate(zip(depths, num_heads)) for _ in range(d)]
        return cls(embed_dim=embed_dim, blocks=blocks, stage_depths=list(depths), stage_dims=dims,
                   window_sizes=[window_size] * len(depths), **kw)


def relative_position_index(w: int) -> torch.Tensor:
    """[w*w, w*w] index into the (2w-1)^2 bias table for every query/key pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * windows, w*w, C]."""
    _, H, W, C = x.shape
    x = x.reshape(-1, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, C)


def window_reverse(x: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    """[B * windows, w*w, C] -> [B, H, W, C]."""
    C = x.shape[-1]
    x = x.reshape(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def shift_mask(grid: int, w: int, shift: int) -> torch.Tensor:
    """[windows, w*w, w*w]: 0 where two tokens were neighbours before the roll, MASK_VALUE elsewhere."""
    g = -(-grid // w) * w  # padded grid
    region = torch.zeros(1, g, g, 1)
    spans = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
    for n, (a, b) in enumerate((a, b) for a in spans for b in spans):
        region[:, a, b] = n
    r = window_partition(region, w).squeeze(-1)
    return (r[:, None, :] != r[:, :, None]).float() * MASK_VALUE


class WindowAttention(Attention):
    """Canonical attention inside (shifted) windows: tokens [B, L, C] in and out, like ``Attention``.

    The tokens are rolled by ``shift``, padded to whole windows and split into windows; each window
    attends with the relative position bias (and, when shifted, the seam mask) added before the softmax.
    """

    def __init__(self, dim: int, b: BlockConfig, grid: int, window: int, shift: int, qkv_bias=True, proj_bias=True):
        super().__init__(dim, b.num_heads, b.qk_dim, b.v_dim, qkv_bias, proj_bias)
        self.grid, self.window, self.shift = grid, window, shift
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, b.num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.register_buffer("attn_mask", shift_mask(grid, window, shift) if shift else None, persistent=False)

    def position_bias(self) -> torch.Tensor:  # [heads, N, N]
        N = self.window**2
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(N, N, -1).permute(2, 0, 1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:  # windows [B * windows, N, C]
        B, N, _ = x.shape
        h = self.num_heads
        q = self.q(x).reshape(B, N, h, self.qk_dim).transpose(1, 2)
        k = self.k(x).reshape(B, N, h, self.qk_dim).transpose(1, 2)
        v = self.v(x).reshape(B, N, h, self.v_dim).transpose(1, 2)
        logits = self.qk_matmul(q * self.scale, k.transpose(-2, -1)) + self.position_bias()
        if self.attn_mask is not None:
            nw = self.attn_mask.shape[0]
            logits = (logits.reshape(-1, nw, h, N, N) + self.attn_mask[:, None]).reshape(-1, h, N, N)
        x = self.av_matmul(self.softmax(logits), v).transpose(1, 2).reshape(B, N, h * self.v_dim)
        return self.proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, w, s = self.grid, self.window, self.shift
        x = x.reshape(-1, g, g, x.shape[-1])  # -1, not B: fewer shape ops in the exported graph
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        pad = (w - g % w) % w
        if pad:
            x = F.pad(x, (0, 0, 0, pad, 0, pad))
        x = window_reverse(self.attend(window_partition(x, w)), w, g + pad, g + pad)[:, :g, :g]
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        return x.reshape(-1, g * g, x.shape[-1])


class SwinBlock(vit.Block):
    """The canonical pre-norm block (norm1, attn, ls1, norm2, mlp, ls2) with window attention."""

    def __init__(self, dim: int, b: BlockConfig, cfg: SwinConfig, grid: int, window: int, shift: int):
        super().__init__(dim, b, cfg)
        self.attn = WindowAttention(dim, b, grid, window, shift, cfg.qkv_bias, cfg.proj_bias)

    @property
    def shift(self) -> int:
        return self.attn.shift


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated, LayerNorm, linear: grid halves, width changes."""

    def __init__(self, dim: int, out_dim: int, grid: int, eps: float):
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C, g = x.shape[-1], self.grid
        x = x.reshape(-1, g, g, C)
        if g % 2:
            x = F.pad(x, (0, 0, 0, 1, 0, 1))
        h = (g + 1) // 2
        x = x.reshape(-1, h, 2, h, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(-1, h * h, 4 * C)
        return self.reduction(self.norm(x))


class PatchEmbed(vit.PatchEmbed):
    def __init__(self, patch_size: int, in_chans: int, dim: int, norm: bool, eps: float):
        super().__init__(patch_size, in_chans, dim)
        self.norm = nn.LayerNorm(dim, eps=eps) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class SwinTransformer(nn.Module):
    def __init__(self, cfg: SwinConfig):
        super().__init__()
        if sum(cfg.stage_depths) != cfg.depth or len(cfg.stage_dims) != len(cfg.stage_depths):
            raise ValueError(f"{cfg.name}: stage_depths {cfg.stage_depths} / stage_dims {cfg.stage_dims} "
                             f"do not fit {cfg.depth} blocks")
        self.cfg = cfg
        dims, grids = cfg.stage_dims, cfg.stage_grids
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim, cfg.patch_norm, cfg.norm_eps)
        self.blocks = nn.ModuleList()
        for i, (b, s) in enumerate(zip(cfg.blocks, cfg.block_stages)):
            self.blocks.append(SwinBlock(dims[s], b, cfg, grids[s], *cfg.block_window(i)))
        self.merges = nn.ModuleList(PatchMerging(dims[s - 1], dims[s], grids[s - 1], cfg.norm_eps)
                                    for s in range(1, len(dims)))
        starts = [sum(cfg.stage_depths[:s]) for s in range(1, len(dims))]
        self.merge_before = dict(zip(starts, range(len(starts))))  # block index -> merge index
        self.norm = nn.LayerNorm(dims[-1], eps=cfg.norm_eps)
        self.head = nn.Linear(dims[-1], cfg.num_classes, bias=cfg.head_bias) if cfg.num_classes else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for i, blk in enumerate(self.blocks):
            if i in self.merge_before:
                x = self.merges[self.merge_before[i]](x)
            x = blk(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_features(x)
        return tokens if self.cfg.global_pool == "none" else self.head(tokens.mean(1))


# -- timm -----------------------------------------------------------------------------------------------

def from_timm(m: nn.Module, name: str = "swin", randomly_initialized: bool = False) -> tuple[SwinConfig, dict]:
    """timm ``SwinTransformer`` (swin_*, swin_s3_*) -> (SwinConfig, state dict); qkv split into q, k, v."""
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    if type(m) is not TimmSwin:
        raise UserError(f"{name}: {type(m).__name__} is not timm's SwinTransformer",
                        "supported: swin_* and swin_s3_* (Swin-V1); SwinV2 is not")
    pe = m.patch_embed
    ks, img = tuple(pe.patch_size), tuple(pe.img_size)
    if ks[0] != ks[1] or img[0] != img[1] or m.dynamic_img_size:
        raise UserError(f"{name}: only square images and patches at a fixed size are supported",
                        "create the model with a square img_size and strict_img_size=True")
    if m.global_pool not in ("avg", ""):
        raise UserError(f"{name}: pooling {m.global_pool!r} is not supported", "use avg pooling")
    blocks = [b for stage in m.layers for b in stage.blocks]
    b0 = blocks[0]
    act = type(b0.mlp.act).__name__, getattr(b0.mlp.act, "approximate", "none")
    if act[0] != "GELU" or not isinstance(b0.mlp.norm, nn.Identity) or not isinstance(b0.norm1, nn.LayerNorm):
        raise UserError(f"{name}: only LayerNorm blocks with a GELU MLP are supported", "use a standard Swin")
    pc = getattr(m, "pretrained_cfg", None) or {}
    num_classes = m.num_classes
    bcfgs = []
    for b in blocks:
        a = b.attn
        hd = a.qkv.out_features // 3 // a.num_heads
        bcfgs.append(BlockConfig(a.num_heads, hd, hd, b.mlp.fc1.out_features))
    cfg = SwinConfig(
        embed_dim=pe.proj.out_channels, blocks=bcfgs, stage_depths=[len(s.blocks) for s in m.layers],
        stage_dims=[s.blocks[0].norm1.normalized_shape[0] for s in m.layers],
        window_sizes=[_square(w, name) for w in m._ref_window_sizes], img_size=img[0], patch_size=ks[0],
        in_chans=pe.proj.in_channels, patch_norm=not isinstance(pe.norm, nn.Identity),
        qkv_bias=b0.attn.qkv.bias is not None, norm_eps=m.norm.eps, act="gelu_tanh" if act[1] == "tanh" else "gelu",
        global_pool="avg" if num_classes else "none", num_classes=num_classes,
        mean=tuple(pc.get("mean", SwinConfig.mean)), std=tuple(pc.get("std", SwinConfig.std)),
        interpolation=pc.get("interpolation", "bicubic"), crop_pct=pc.get("crop_pct", 0.9), name=name,
        extra={"randomly_initialized": randomly_initialized})
    for i, b in enumerate(blocks):
        want = cfg.block_window(i)
        if tuple(b.window_size) != (want[0],) * 2 or tuple(b.shift_size) != (want[1],) * 2:
            raise UserError(f"{name}: block {i} has window {b.window_size} shift {b.shift_size}, expected {want}",
                            "always_partition and non-square windows are not supported")
    return cfg, _timm_state(m, cfg)


def _square(w, name: str) -> int:
    w = tuple(w) if isinstance(w, (tuple, list)) else (w, w)
    if w[0] != w[1]:
        raise UserError(f"{name}: window {w} is not square", "use square windows")
    return int(w[0])


def _timm_state(m: nn.Module, cfg: SwinConfig) -> dict:
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    out = {k: sd[k] for k in sd if k.startswith("patch_embed.") or k.startswith("norm.")}
    if cfg.num_classes:
        out |= {f"head.{p}": sd[f"head.fc.{p}"] for p in ("weight", "bias") if f"head.fc.{p}" in sd}
    i = 0
    for s, stage in enumerate(m.layers):
        if s:
            for p in ("norm.weight", "norm.bias", "reduction.weight"):
                out[f"merges.{s - 1}.{p}"] = sd[f"layers.{s}.downsample.{p}"]
        for j in range(len(stage.blocks)):
            src, dst = f"layers.{s}.blocks.{j}.", f"blocks.{i}."
            for k, v in sd.items():
                if not k.startswith(src):
                    continue
                rest = k[len(src):]
                if rest.startswith("attn.qkv."):
                    p = rest.rsplit(".", 1)[1]
                    out[dst + f"attn.q.{p}"], out[dst + f"attn.k.{p}"], out[dst + f"attn.v.{p}"] = v.chunk(3, dim=0)
                elif rest != "attn_mask":  # non-persistent in timm, rebuilt here from the config
                    out[dst + rest] = v
            i += 1
    return out
