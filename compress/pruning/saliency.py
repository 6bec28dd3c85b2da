"""Saliency of every prunable structure: one number per candidate group, comparable across kinds and blocks.

``hessian`` (NViT's Hessian-aware saliency, Yang et al. 2023): the second-order estimate of the
distillation loss change when a whole group S is removed (its gates m_S go from 1 to 0)::

    dL(S) ~= -sum_{s in S} gbar_s + 1/2 * E_n[(sum_{s in S} g_ns)^2]

g_ns is the per-sample gradient of gate s (``gates.py``) in a backward pass of ``Distiller.sampled``,
so E_n[g g^T] is a Monte-Carlo estimate of the Gauss-Newton matrix (the true Fisher) of the
distillation loss; gbar is the mean gradient of the distillation loss itself (zero for the unpruned
model, non-zero after a pruning step). Cross terms inside a group are kept (a head, a chunk of
``align`` units); between groups the matrix is taken as block-diagonal. Units are in loss (relative
squared error of the features), hence comparable across heads, QK/V dims, MLP units and embedding
channels.

``magnitude`` / ``taylor``: Torch-Pruning's GroupMagnitudeImportance (L2) and GroupTaylorImportance
(|w * dL/dw|) on the same groups, each normalised by its group mean as Torch-Pruning's global pruning
does. Taylor uses the weight gradients of the same loss (the sampled direction plus, after a pruning
step, the distillation loss: the plain distillation gradient is zero for the unpruned model).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch_pruning.dependency import Dependency, Group

from ..distill import Distiller
from .gates import Gates
from .remove import dependency_graph

CRITERIA = ("hessian", "magnitude", "taylor")


@dataclass
class Saliency:
    criterion: str
    # hessian: per-sample gate gradients [N, *unit_shape]; magnitude/taylor: unit scores [*unit_shape]
    samples: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    first: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # mean loss gradient (hessian)
    units: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    loss: float | None = None  # distillation loss on the saliency images

    def unit(self, kind: str, b: int) -> torch.Tensor:
        """Per-unit scores ([M], [D] or [H, d]), the order units are pruned in."""
        if self.criterion != "hessian":
            return self.units[(kind, b)]
        g = self.samples[(kind, b)]
        return 0.5 * g.pow(2).mean(0) - self.first.get((kind, b), torch.zeros(g.shape[1:]))

    def group(self, kind: str, b: int, mask: torch.Tensor) -> float:
        """Loss change when the units under the boolean ``mask`` are removed together."""
        if self.criterion != "hessian":
            return float(self.units[(kind, b)][mask].sum())
        g = self.samples[(kind, b)]
        s = (g * mask).flatten(1).sum(1)
        first = self.first.get((kind, b))
        return float(0.5 * s.pow(2).mean() - (first[mask].sum() if first is not None else 0.0))

    def head(self, b: int, h: int, qk_alive: torch.Tensor, v_alive: torch.Tensor) -> float:
        """A whole head: its output (all live V dims) is zeroed; magnitude/taylor add its QK units."""
        vmask = torch.zeros(self.shape("v", b), dtype=torch.bool)
        vmask[h] = v_alive
        if self.criterion == "hessian":
            return self.group("v", b, vmask)
        qmask = torch.zeros(self.shape("qk", b), dtype=torch.bool)
        qmask[h] = qk_alive
        return self.group("v", b, vmask) + self.group("qk", b, qmask)

    def shape(self, kind: str, b: int) -> tuple:
        t = self.units.get((kind, b)) if self.criterion != "hessian" else self.samples[(kind, b)][0]
        return tuple(t.shape)


def compute(criterion: str, model, batches: list[torch.Tensor], teacher_out: list[torch.Tensor],
            distiller: Distiller, embed_output: bool, first_order: bool = True, seed: int = 0) -> Saliency:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
    gen = torch.Generator().manual_seed(seed)
    if criterion == "hessian":
        return _hessian(model, batches, teacher_out, distiller, embed_output, first_order, gen)
    return _torch_pruning(criterion, model, batches, teacher_out, distiller, first_order, gen)


def _hessian(model, batches, teacher_out, distiller, embed_output, first_order, gen) -> Saliency:
    per: dict[str, list] = {"mlp": [], "v": [], "qk": [], "embed": []}
    first: dict[str, list] | None = None
    losses, n = [], 0
    model.eval()
    for x, t in zip(batches, teacher_out):
        gates = Gates(model, len(x), embed_output)
        with gates.attached():
            y = model(x)
        kd = distiller.loss(y, t)
        losses.append(kd.detach())
        use_first = first_order and float(kd.detach().max()) > 0
        gs = torch.autograd.grad(distiller.sampled(y, t, gen), gates.tensors(), retain_graph=use_first)
        for k, v in gates.split(list(gs)).items():
            per[k].append(v)
        if use_first:
            g1 = gates.split([g.sum(0) for g in torch.autograd.grad(kd.sum(), gates.tensors())])
            first = g1 if first is None else {k: _add(first[k], v) for k, v in g1.items()}
        n += len(x)
    sal = Saliency("hessian", loss=float(torch.cat(losses).mean()))
    for kind in ("mlp", "v", "qk"):
        for b in range(len(model.blocks)):
            sal.samples[(kind, b)] = torch.cat([g[b] for g in per[kind]]).detach()
            if first is not None:
                sal.first[(kind, b)] = first[kind][b].detach() / n
    sal.samples[("embed", -1)] = torch.cat(per["embed"]).detach()
    if first is not None:
        sal.first[("embed", -1)] = first["embed"].detach() / n
    return sal


def _add(a, b):
    return [x + y for x, y in zip(a, b)] if isinstance(a, list) else a + b


def _torch_pruning(criterion, model, batches, teacher_out, distiller, first_order, gen) -> Saliency:
    sal = Saliency(criterion)
    if criterion == "taylor":
        model.zero_grad(set_to_none=True)
        losses = []
        for x, t in zip(batches, teacher_out):
            y = model(x)
            kd = distiller.loss(y, t)
            losses.append(kd.detach())
            obj = distiller.sampled(y, t, gen) + (kd.sum() if first_order else 0.0)
            obj.backward()
        sal.loss = float(torch.cat(losses).mean())
        imp = tp.importance.GroupTaylorImportance()
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    dg = dependency_graph(model)
    full = lambda m: list(range(m.out_features))  # noqa: E731
    with torch.no_grad():
        for b, blk in enumerate(model.blocks):
            a = blk.attn
            fc1 = blk.mlp.fc1
            sal.units[("mlp", b)] = imp(dg.get_pruning_group(fc1, tp.prune_linear_out_channels, full(fc1)))
            qk = _layer_group(dg, [(a.q, tp.prune_linear_out_channels), (a.k, tp.prune_linear_out_channels)],
                              a.q.out_features)
            v = _layer_group(dg, [(a.v, tp.prune_linear_out_channels), (a.proj, tp.prune_linear_in_channels)],
                             a.v.out_features)
            sal.units[("qk", b)] = imp(qk).view(a.num_heads, a.qk_dim)
            sal.units[("v", b)] = imp(v).view(a.num_heads, a.v_dim)
        pe = model.patch_embed.proj
        sal.units[("embed", -1)] = imp(dg.get_pruning_group(pe, tp.prune_conv_out_channels, list(range(pe.out_channels))))
    model.zero_grad(set_to_none=True)
    return sal


def _layer_group(dg, items, n: int) -> Group:
    """A Torch-Pruning group over exactly ``items`` (the DG over-couples attention; see remove.py)."""
    g = Group()
    g._DG = dg
    for module, fn in items:
        node = dg.module2node[module]
        g.add_dep(Dependency(fn, fn, node, node), list(range(n)))
        g[len(g) - 1].root_idxs = list(range(n))
    return g
