"""Physical removal: weights really go, module attributes and ``model.cfg`` follow.

Torch-Pruning's dependency graph (DG) handles the MLP hidden units (fc1 rows <-> fc2 columns) and
the embedding width shared through the residual stream (patch embedding, cls/register tokens,
position embedding, every LayerNorm, q/k/v and fc1 columns, proj and fc2 rows, LayerScale gammas,
the head). It does not model attention correctly for our separate q/k/v linears: it treats the two
attention matmuls as channel-wise, so it couples q, k *and* v rows with the same indices (wrong when
QK and V widths are pruned separately, and out of range once they differ). Attention is therefore
removed here with Torch-Pruning's per-layer pruning functions: QK dims prune q and k rows together,
V dims prune v rows and proj columns, a head prunes both; the softmax scale is folded into q so the
rebuilt ``Attention`` (scale = qk_dim**-0.5) computes exactly what the pruned weights did.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from ..models.heads import WidthRestore

from ..models.vit import BlockConfig, LayerScale
from . import compensate


@dataclass
class Plan:
    """What one pruning step removes, in the current model's indices."""

    heads: dict[int, list[int]] = field(default_factory=dict)  # block -> heads
    qk: dict[int, dict[int, list[int]]] = field(default_factory=dict)  # block -> head -> dims (same count per head)
    v: dict[int, dict[int, list[int]]] = field(default_factory=dict)
    mlp: dict[int, list[int]] = field(default_factory=dict)  # block -> hidden units
    embed: list[int] = field(default_factory=list)  # residual-stream channels

    def counts(self) -> dict:
        per_head = lambda d: sum(len(v) for v in d.values())  # noqa: E731
        return {"heads": sum(len(v) for v in self.heads.values()),
                "qk": sum(per_head(d) for d in self.qk.values()), "v": sum(per_head(d) for d in self.v.values()),
                "mlp": sum(len(v) for v in self.mlp.values()), "embed": len(self.embed)}

    def empty(self) -> bool:
        return not any(self.counts().values())


def output_width(model) -> int | None:
    """The restored output width of an embed-pruned encoder, or None."""
    return model.norm.proj.out_features if isinstance(model.norm, WidthRestore) else None


def needs_restore(model, keep_output_width: bool | None) -> bool:
    """Encoders (no head) keep their output width: their features feed probes fitted on the original."""
    return (model.cfg.num_classes == 0) if keep_output_width is None else keep_output_width


def consumers(model, plan: Plan) -> dict[str, nn.Linear]:
    """The linears that lose inputs under ``plan`` (least-squares compensation targets)."""
    out = {f"blocks.{b}.mlp.fc2": model.blocks[b].mlp.fc2 for b in plan.mlp}
    out |= {f"blocks.{b}.attn.proj": model.blocks[b].attn.proj for b in set(plan.heads) | set(plan.v)}
    return out


def apply_plan(model, plan: Plan, keep_output_width: bool = True, moments: dict | None = None) -> None:
    """Remove ``plan``'s structures from ``model`` in place and update ``model.cfg``; with the input
    ``moments`` of ``consumers`` (``compensate.collect``), refit those linears by least squares."""
    moments = moments or {}
    for b, blk in enumerate(model.blocks):
        if b in plan.heads or b in plan.qk or b in plan.v:
            _prune_attention(blk.attn, plan.heads.get(b, []), plan.qk.get(b, {}), plan.v.get(b, {}),
                             moments.get(f"blocks.{b}.attn.proj"))
    if not plan.mlp and not plan.embed:
        _sync_cfg(model)
        return
    if plan.embed and keep_output_width and not isinstance(model.norm, WidthRestore):
        model.norm = WidthRestore.around(model.norm)
    dg = dependency_graph(model)
    groups, refits = [], []
    for b, idxs in sorted(plan.mlp.items()):
        mlp = model.blocks[b].mlp
        g = dg.get_pruning_group(mlp.fc1, tp.prune_linear_out_channels, idxs=sorted(idxs))
        _expect_only(g, {mlp.fc1, mlp.fc2}, f"blocks.{b}.mlp")
        groups.append(g)
        H = moments.get(f"blocks.{b}.mlp.fc2")
        if H is not None:
            keep = sorted(set(range(mlp.fc2.in_features)) - set(idxs))
            refits.append((mlp.fc2, compensate.refit(mlp.fc2, H, keep)))
    embed = dg.get_pruning_group(model.patch_embed.proj, tp.prune_conv_out_channels, idxs=sorted(plan.embed)) \
        if plan.embed else None
    for g in groups:
        g.prune()
    for layer, new in refits:  # before the embedding removal slices their output rows
        compensate.assign(layer, new)
    if embed is not None:
        embed.prune()
    _sync_cfg(model)
    check_widths(model)


def dependency_graph(model) -> tp.DependencyGraph:
    cfg = model.cfg
    unwrapped = [(p, 2) for p in (model.cls_token, model.reg_token, model.pos_embed) if p is not None]
    unwrapped += [(m.gamma, 0) for m in model.modules() if isinstance(m, LayerScale)]
    x = torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size)
    with torch.enable_grad():  # the graph is traced through autograd
        return tp.DependencyGraph().build_dependency(model, example_inputs=x, unwrapped_parameters=unwrapped)


def _expect_only(group, modules: set, what: str) -> None:
    touched = {dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Module)
               and any(True for _ in dep.target.module.parameters(recurse=False))}
    if not touched <= modules:
        raise RuntimeError(f"dependency graph couples {what} with unexpected layers: {touched - modules}")


def _prune_attention(attn, heads: list[int], qk: dict[int, list[int]], v: dict[int, list[int]], H=None) -> None:
    h, dqk, dv = attn.num_heads, attn.qk_dim, attn.v_dim
    keep = [i for i in range(h) if i not in set(heads)]
    if not keep:
        raise ValueError("a pruning plan removed every head of a block")
    keep_qk = {i: [d for d in range(dqk) if d not in set(qk.get(i, []))] for i in keep}
    keep_v = {i: [d for d in range(dv) if d not in set(v.get(i, []))] for i in keep}
    nqk, nv = {len(x) for x in keep_qk.values()}, {len(x) for x in keep_v.values()}
    if len(nqk) != 1 or len(nv) != 1 or min(nqk) == 0 or min(nv) == 0:
        raise ValueError(f"heads of one block must keep equal, non-zero QK and V widths (got {nqk}, {nv})")
    new_qk, new_v = nqk.pop(), nv.pop()
    drop_qk = sorted(set(range(h * dqk)) - {i * dqk + d for i in keep for d in keep_qk[i]})
    drop_v = sorted(set(range(h * dv)) - {i * dv + d for i in keep for d in keep_v[i]})
    if drop_qk:
        tp.prune_linear_out_channels(attn.q, drop_qk)
        tp.prune_linear_out_channels(attn.k, drop_qk)
    if drop_v:
        new_proj = compensate.refit(attn.proj, H, sorted(set(range(h * dv)) - set(drop_v))) if H is not None else None
        tp.prune_linear_out_channels(attn.v, drop_v)
        tp.prune_linear_in_channels(attn.proj, drop_v)
        if new_proj is not None:
            compensate.assign(attn.proj, new_proj)
    new_scale = new_qk**-0.5
    with torch.no_grad():  # (q * s_new) . k == (q_old * s_old) . k
        f = attn.scale / new_scale
        attn.q.weight.mul_(f)
        if attn.q.bias is not None:
            attn.q.bias.mul_(f)
    attn.num_heads, attn.qk_dim, attn.v_dim, attn.scale = len(keep), new_qk, new_v, new_scale


def _sync_cfg(model) -> None:
    cfg = model.cfg
    cfg.embed_dim = model.pos_embed.shape[-1]
    cfg.blocks = [BlockConfig(b.attn.num_heads, b.attn.qk_dim, b.attn.v_dim, b.mlp.fc1.out_features)
                  for b in model.blocks]


def check_widths(model) -> None:
    """Every module agrees with ``model.cfg`` (an internal error if the dependency graph missed one)."""
    cfg, D = model.cfg, model.cfg.embed_dim
    found = {"patch_embed": model.patch_embed.proj.out_channels, "pos_embed": model.pos_embed.shape[-1]}
    if model.cls_token is not None:
        found["cls_token"] = model.cls_token.shape[-1]
    norm = model.norm.proj if isinstance(model.norm, WidthRestore) else model.norm
    found["norm"] = norm.in_features if isinstance(norm, nn.Linear) else norm.normalized_shape[0]
    if isinstance(model.head, nn.Linear):
        found["head"] = model.head.in_features
    for i, (blk, bc) in enumerate(zip(model.blocks, cfg.blocks)):
        a = blk.attn
        found |= {f"blocks.{i}.norm1": blk.norm1.normalized_shape[0], f"blocks.{i}.q.in": a.q.in_features,
                  f"blocks.{i}.proj.out": a.proj.out_features, f"blocks.{i}.fc1.in": blk.mlp.fc1.in_features,
                  f"blocks.{i}.fc2.out": blk.mlp.fc2.out_features, f"blocks.{i}.norm2": blk.norm2.normalized_shape[0]}
        for name in ("ls1", "ls2"):
            ls = getattr(blk, name)
            if isinstance(ls, LayerScale):
                found[f"blocks.{i}.{name}"] = ls.gamma.shape[0]
        want = {"q": bc.num_heads * bc.qk_dim, "k": bc.num_heads * bc.qk_dim, "v": bc.num_heads * bc.v_dim}
        for name, w in want.items():
            if getattr(a, name).out_features != w:
                raise RuntimeError(f"blocks.{i}.attn.{name} has {getattr(a, name).out_features} outputs, config {w}")
        if a.proj.in_features != want["v"] or blk.mlp.fc2.in_features != bc.mlp_dim:
            raise RuntimeError(f"blocks.{i}: proj/fc2 inputs disagree with the config")
    bad = {k: v for k, v in found.items() if v != D}
    if bad:
        raise RuntimeError(f"embedding width {D} not applied to {bad}")


def rebuild(model, record: dict) -> None:
    """Recreate the output lift of an embed-pruned encoder before its weights load."""
    width = record.get("output_width")
    if width and not isinstance(model.norm, WidthRestore):
        model.norm = WidthRestore(model.cfg.embed_dim, width, model.cfg.norm_eps)
