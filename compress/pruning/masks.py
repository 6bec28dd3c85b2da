"""Structure masks on a canonical ViT: the teacher's *masked computation* that weight inheritance cuts out, and
TinyCLIP's automatic inheritance (learnable hard-concrete L0 masks, Louizos et al. 2018, as CoFi / TinyCLIP).

Mask sites (``attached``), with every mask 1 exactly the unmasked model:
- layer l: the block's output becomes x + z_l (block(x) - x) (z_l = 0: the block is skipped);
- head h of block l: the attention output ``av_matmul`` [B, H, N, dv] of that head;
- MLP unit j of block l: the activation output ``mlp.act``;
- embedding channel c: the residual stream. Every write to it (the embedded tokens after ``norm_pre``, both branch
  outputs) is multiplied by z_c, and every LayerNorm that reads it computes its statistics over the kept channels
  only (z-weighted), so with binary masks the masked model equals the physically narrower one exactly.

Hard-concrete gates: z = clamp(sigmoid((log u - log(1-u) + log_alpha) / beta) (zeta - gamma) + gamma, 0, 1),
P(z > 0) = sigmoid(log_alpha - beta log(-gamma / zeta)). The expected parameter count follows from these
probabilities (``inherit.tower_params``), so a Lagrangian term drives it to the stage's target (CoFi eq. 6).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .remove import needs_restore

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
KINDS = ("heads", "mlp", "embed")


def masked_layer_norm(norm: nn.LayerNorm, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels z weights (binary z: the kept ones), output zero on the masked channels."""
    n = z.sum().clamp_min(1e-6)
    mu = (x * z).sum(-1, keepdim=True) / n
    var = ((x - mu).pow(2) * z).sum(-1, keepdim=True) / n
    y = (x - mu) / torch.sqrt(var + norm.eps)
    if norm.weight is not None:
        y = y * norm.weight + norm.bias
    return y * z


@contextlib.contextmanager
def attached(model, z: dict):
    """Run ``model`` (a canonical ViT) under masks ``z``: any of ``layers`` [L], ``heads`` [[H_l]], ``mlp`` [[M_l]],
    ``embed`` [D] (missing: unmasked)."""
    hs = []
    ze = z.get("embed")

    def mul(g, shape):
        return lambda _m, _a, out: out * g.view(*shape)

    def ln(g):
        return lambda m, args, _out: masked_layer_norm(m, args[0], g)

    try:
        for i, blk in enumerate(model.blocks):
            if z.get("layers") is not None:
                zl = z["layers"][i]
                hs.append(blk.register_forward_hook(lambda _m, args, out, zl=zl: args[0] + zl * (out - args[0])))
            if z.get("heads") is not None:
                hs.append(blk.attn.av_matmul.register_forward_hook(mul(z["heads"][i], (1, -1, 1, 1))))
            if z.get("mlp") is not None:
                hs.append(blk.mlp.act.register_forward_hook(mul(z["mlp"][i], (-1,))))
            if ze is not None:
                hs += [blk.ls1.register_forward_hook(mul(ze, (-1,))), blk.ls2.register_forward_hook(mul(ze, (-1,))),
                       blk.norm1.register_forward_hook(ln(ze)), blk.norm2.register_forward_hook(ln(ze))]
        if ze is not None:
            pre = model.norm_pre
            hs.append(pre.register_forward_hook(ln(ze) if isinstance(pre, nn.LayerNorm) else mul(ze, (-1,))))
            # the final norm: over the kept channels, unless the output width is restored (the inherited tower then
            # gets ``WidthRestore``: an identity lift back to D channels, the zeros included, then the same norm)
            if isinstance(model.norm, nn.LayerNorm) and not needs_restore(model, None):
                hs.append(model.norm.register_forward_hook(ln(ze)))
        yield model
    finally:
        for h in hs:
            h.remove()


class HardConcreteMasks(nn.Module):
    """Learnable L0 masks on every head, MLP unit and embedding channel of ``cfg`` (a ViTConfig)."""

    def __init__(self, cfg, kinds=KINDS, init_keep: float = 0.95):
        super().__init__()
        self.kinds = tuple(kinds)
        a0 = math.log(init_keep / (1 - init_keep)) + BETA * math.log(-GAMMA / ZETA)
        full = lambda n: nn.Parameter(torch.full((n,), a0))  # noqa: E731
        self.heads = nn.ParameterList(full(b.num_heads) for b in cfg.blocks) if "heads" in kinds else None
        self.mlp = nn.ParameterList(full(b.mlp_dim) for b in cfg.blocks) if "mlp" in kinds else None
        self.embed = full(cfg.embed_dim) if "embed" in kinds else None

    def groups(self) -> dict:
        out = {}
        if self.heads is not None:
            out["heads"] = list(self.heads)
        if self.mlp is not None:
            out["mlp"] = list(self.mlp)
        if self.embed is not None:
            out["embed"] = self.embed
        return out

    @staticmethod
    def _sample(log_alpha: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(log_alpha.shape, generator=gen).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def sample(self, gen: torch.Generator) -> dict:
        """One draw of every mask (training)."""
        return _map(self.groups(), lambda a: self._sample(a, gen))

    def keep_prob(self) -> dict:
        """P(z > 0) of every unit: the expected L0 norm's terms."""
        shift = BETA * math.log(-GAMMA / ZETA)
        return _map(self.groups(), lambda a: torch.sigmoid(a - shift))

    def scores(self) -> dict:
        return _map(self.groups(), lambda a: a.detach().clone())


def _map(groups: dict, fn) -> dict:
    return {k: [fn(a) for a in v] if isinstance(v, list) else fn(v) for k, v in groups.items()}


def binary(model, keep: dict) -> dict:
    """Binary masks of ``model`` from kept indices: ``layers`` / ``embed`` lists, ``heads`` / ``mlp`` per block."""
    cfg, z = model.cfg, {}
    if "layers" in keep:
        z["layers"] = torch.zeros(cfg.depth)
        z["layers"][list(keep["layers"])] = 1
    for kind, width in (("heads", lambda b: b.num_heads), ("mlp", lambda b: b.mlp_dim)):
        if kind in keep:
            z[kind] = []
            for i, b in enumerate(cfg.blocks):
                m = torch.zeros(width(b))
                m[list(keep[kind][i])] = 1
                z[kind].append(m)
    if "embed" in keep:
        z["embed"] = torch.zeros(cfg.embed_dim)
        z["embed"][list(keep["embed"])] = 1
    return z


__all__ = ["HardConcreteMasks", "attached", "binary", "masked_layer_norm"]
