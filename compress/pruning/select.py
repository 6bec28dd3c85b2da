"""Latency-aware global selection: which groups to remove to reach a latency budget at least loss.

Candidates are, per block, each live head, the next chunk of ``align`` QK dims (the least salient
``align`` dims of every head, so heads keep equal widths), the next chunk of V dims and the next chunk
of MLP units, plus the next chunk of embedding channels shared by all blocks. Each has a saliency
dL (``saliency.py``) and a latency saving dT from the target's latency model at the current widths.
The greedy picks the candidate with the least dL / dT ("loss per millisecond saved"), applies it to
the virtual widths, re-costs the touched block(s) and repeats until the predicted latency meets the
budget. This is the greedy solution of the Lagrangian relaxation of  min dL  s.t.  T <= budget,
NViT's latency-aware objective dL - eta * dT with eta found by the budget instead of hand-tuned.
Widths stay multiples of ``align`` (a first chunk of ``width % align`` units restores alignment).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .budget import Predictor
from .remove import Plan
from .saliency import Saliency

STRUCTURES = ("heads", "qk", "v", "mlp", "embed")


@dataclass
class Limits:
    align: int = 8
    min_heads: int = 1
    min_head_dim: int = 8
    min_mlp: int = 8
    min_embed: int = 64


@dataclass
class _Block:
    heads: list[int]  # live heads (current indices)
    qk_order: torch.Tensor  # [H, dqk] dims of each head, least salient first
    v_order: torch.Tensor
    mlp_order: torch.Tensor
    qk_cut: int = 0  # dims removed per head
    v_cut: int = 0
    mlp_cut: int = 0
    dqk: int = 0
    dv: int = 0
    mlp: int = 0

    def widths(self) -> tuple[int, int, int, int]:
        return len(self.heads), self.dqk - self.qk_cut, self.dv - self.v_cut, self.mlp - self.mlp_cut


def _chunk(width: int, align: int) -> int:
    return width % align or align


class Selector:
    def __init__(self, cfg, sal: Saliency, pred: Predictor, limits: Limits, structures=STRUCTURES):
        self.sal, self.pred, self.lim, self.structures = sal, pred, limits, set(structures)
        self.D0 = self.D = cfg.embed_dim
        self.embed_order = torch.argsort(sal.unit("embed", -1))
        self.embed_cut = 0
        self.blocks = []
        for b, bc in enumerate(cfg.blocks):
            self.blocks.append(_Block(list(range(bc.num_heads)), torch.argsort(sal.unit("qk", b), dim=1),
                                      torch.argsort(sal.unit("v", b), dim=1), torch.argsort(sal.unit("mlp", b)),
                                      dqk=bc.qk_dim, dv=bc.v_dim, mlp=bc.mlp_dim))

    # -- latency -------------------------------------------------------------------------
    def _ms(self, D: int, widths) -> float:
        return self.pred.block(D, *widths)

    def predicted(self) -> float:
        return self.pred.total(self.D, [b.widths() for b in self.blocks])

    # -- candidates ------------------------------------------------------------------------
    def _head_dims(self, blk: _Block, order: torch.Tensor, cut: int, k: int, kind: str, b: int) -> torch.Tensor:
        """Mask [H, d] of the next ``k`` dims of every live head after ``cut``."""
        mask = torch.zeros(self.sal.shape(kind, b), dtype=torch.bool)
        for h in blk.heads:
            mask[h, order[h, cut:cut + k]] = True
        return mask

    def _alive(self, order: torch.Tensor, h: int, cut: int, n: int) -> torch.Tensor:
        m = torch.zeros(n, dtype=torch.bool)
        m[order[h, cut:]] = True
        return m

    def _block_candidates(self, b: int) -> list[tuple[float, float, tuple]]:
        blk, lim, D = self.blocks[b], self.lim, self.D
        h, qk, v, m = blk.widths()
        base = self._ms(D, (h, qk, v, m))
        out = []
        if "mlp" in self.structures and m - _chunk(m, lim.align) >= lim.min_mlp:
            k = _chunk(m, lim.align)
            mask = torch.zeros(blk.mlp, dtype=torch.bool)
            mask[blk.mlp_order[blk.mlp_cut:blk.mlp_cut + k]] = True
            out.append((self.sal.group("mlp", b, mask), base - self._ms(D, (h, qk, v, m - k)), ("mlp", b, k)))
        for kind, w, order, cut in (("qk", qk, blk.qk_order, blk.qk_cut), ("v", v, blk.v_order, blk.v_cut)):
            k = _chunk(w, lim.align)
            if kind in self.structures and w - k >= max(lim.min_head_dim, 1):
                new = (h, qk - k, v, m) if kind == "qk" else (h, qk, v - k, m)
                out.append((self.sal.group(kind, b, self._head_dims(blk, order, cut, k, kind, b)),
                            base - self._ms(D, new), (kind, b, k)))
        if "heads" in self.structures and h - 1 >= lim.min_heads:
            dt = base - self._ms(D, (h - 1, qk, v, m))
            for hd in blk.heads:
                s = self.sal.head(b, hd, self._alive(blk.qk_order, hd, blk.qk_cut, blk.dqk),
                                  self._alive(blk.v_order, hd, blk.v_cut, blk.dv))
                out.append((s, dt, ("heads", b, hd)))
        return out

    def _embed_candidate(self) -> list[tuple[float, float, tuple]]:
        k = _chunk(self.D, self.lim.align)
        if "embed" not in self.structures or self.D - k < self.lim.min_embed:
            return []
        mask = torch.zeros(self.D0, dtype=torch.bool)
        mask[self.embed_order[self.embed_cut:self.embed_cut + k]] = True
        widths = [b.widths() for b in self.blocks]
        dt = self.pred.total(self.D, widths) - self.pred.total(self.D - k, widths)
        return [(self.sal.group("embed", -1, mask), dt, ("embed", -1, k))]

    def _apply(self, action: tuple) -> None:
        kind, b, k = action
        if kind == "embed":
            self.D -= k
            self.embed_cut += k
            return
        blk = self.blocks[b]
        if kind == "heads":
            blk.heads.remove(k)
        else:
            setattr(blk, f"{kind}_cut", getattr(blk, f"{kind}_cut") + k)

    # -- the greedy --------------------------------------------------------------------------
    def run(self, budget_ms: float, max_steps: int = 100_000) -> tuple[Plan, dict]:
        cands = {b: self._block_candidates(b) for b in range(len(self.blocks))}
        emb = self._embed_candidate()
        steps, picked = 0, {s: 0 for s in STRUCTURES}
        dl_total = 0.0
        while self.predicted() > budget_ms and steps < max_steps:
            pool = [c for cs in cands.values() for c in cs] + emb
            pool = [c for c in pool if c[1] > 1e-9]
            if not pool:
                break
            s, dt, action = min(pool, key=lambda c: c[0] / c[1])
            self._apply(action)
            dl_total += s
            picked[action[0]] += 1
            steps += 1
            if action[0] == "embed":
                cands = {b: self._block_candidates(b) for b in range(len(self.blocks))}
            else:
                cands[action[1]] = self._block_candidates(action[1])
            emb = self._embed_candidate()
        stats = {"picks": picked, "predicted_ms": self.predicted(), "budget_ms": budget_ms,
                 "met": self.predicted() <= budget_ms, "saliency_sum": dl_total}
        return self.plan(), stats

    def plan(self) -> Plan:
        p = Plan(embed=sorted(self.embed_order[:self.embed_cut].tolist()))
        for b, blk in enumerate(self.blocks):
            gone = sorted(set(range(len(blk.qk_order))) - set(blk.heads))
            if gone:
                p.heads[b] = gone
            if blk.qk_cut:
                p.qk[b] = {h: sorted(blk.qk_order[h, :blk.qk_cut].tolist()) for h in blk.heads}
            if blk.v_cut:
                p.v[b] = {h: sorted(blk.v_order[h, :blk.v_cut].tolist()) for h in blk.heads}
            if blk.mlp_cut:
                p.mlp[b] = sorted(blk.mlp_order[:blk.mlp_cut].tolist())
        return p
