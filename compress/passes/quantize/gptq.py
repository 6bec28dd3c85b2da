"""Second-order weight rounding (GPTQ / OPTQ, Frantar et al. 2023) with fixed (static) scales.

Columns are quantized one at a time in order of decreasing input energy (act-order); each column's
rounding error is spread over the columns not yet quantized through the inverse Hessian of the layer's
reconstruction loss ||W X - Q(W) X||^2, H = X^T X / n. Scales are chosen beforehand (per channel or per
group), so the result lives exactly on the quantizer's grid and exports as integers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .quantizers import UniformQuantizer


def hessian_update(h: torch.Tensor | None, x: torch.Tensor, parts: int = 4) -> torch.Tensor:
    """``h + X^T X`` (float32 products per chunk, accumulated in float64). X^T X is symmetric: only the
    blocks on and above the diagonal are multiplied (``parts`` column blocks: 10 of 16 for 4), the rest
    mirrored; each entry is the same dot product as in the full product."""
    x = x.detach().reshape(-1, x.shape[-1]).float()
    k = x.shape[1]
    if k < 256:
        xtx = (x.T @ x).double()
    else:
        b = -(-k // parts)
        xtx = torch.empty(k, k, dtype=torch.float64)
        for i in range(0, k, b):
            blk = (x[:, i:i + b].T @ x[:, i:]).double()
            xtx[i:i + b, i:] = blk
            xtx[i + b:, i:i + b] = blk[:, b:].T
    return xtx if h is None else h.add_(xtx)


def output_error(w: torch.Tensor, wq: torch.Tensor, h: torch.Tensor, energy: torch.Tensor | None = None) -> float:
    """Relative output error tr(dW H dW^T) / tr(W H W^T) of replacing ``w`` by ``wq`` on inputs with Gram ``h``
    (``energy``: tr(W H W^T), when already known)."""
    d = (wq - w).double()
    num = ((d @ h) * d).sum()
    return float(num / (output_energy(w, h) if energy is None else energy).clamp_min(1e-30))


def output_energy(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """tr(W H W^T): the output's energy, the denominator of ``output_error``."""
    w = w.double()
    return ((w @ h) * w).sum()


def _expand(t: torch.Tensor, q: UniformQuantizer, c: int, k: int) -> torch.Tensor:
    """A scale / zero-point buffer broadcast to one value per weight [C, K]."""
    if q.group:
        return t.reshape(c, k // q.group, 1).expand(c, k // q.group, q.group).reshape(c, k)
    return t.reshape(-1, 1).expand(c, k) if t.numel() > 1 else t.reshape(1, 1).expand(c, k)


@dataclass
class Factor:
    """What GPTQ needs of a Hessian, computed once and shared by every weight (and width) it rounds."""

    perm: torch.Tensor  # column order (act-order: decreasing input energy)
    hinv: torch.Tensor | None  # upper Cholesky factor of the damped inverse Hessian, permuted; None: indefinite
    dead: torch.Tensor  # columns whose input is always zero


@torch.no_grad()
def factor(h: torch.Tensor, damp: float = 0.01, act_order: bool = True) -> Factor:
    H = h.detach().double().clone()
    k = H.shape[0]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    H = H[perm][:, perm]
    H += torch.eye(k, dtype=H.dtype) * damp * torch.diag(H).mean()
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except RuntimeError:  # numerically indefinite: rounding to nearest instead
        hinv = None
    return Factor(perm, hinv, dead)


@torch.no_grad()
def gptq_many(ws: list[torch.Tensor], f: Factor, qs: list[UniformQuantizer], block: int = 128) -> list[torch.Tensor]:
    """Quantized copies of several [C_i, K] weights sharing one input Hessian (q, k, v; or one weight at
    several widths), rounded together: GPTQ treats every output row on its own, so stacking the rows is
    the same computation with a fraction of the Python-level steps."""
    if f.hinv is None:
        return [q.fake(w.detach()) for w, q in zip(ws, qs)]
    k = ws[0].shape[1]
    perm, Hinv = f.perm, f.hinv
    W = torch.cat([w.detach().double() for w in ws])
    W[:, f.dead] = 0
    S = torch.cat([_expand(q.scale.double(), q, w.shape[0], k) for w, q in zip(ws, qs)])[:, perm]
    Z = torch.cat([_expand(q.zero_point.double(), q, w.shape[0], k) for w, q in zip(ws, qs)])[:, perm]
    W = W[:, perm]
    if len({(q.qmin, q.qmax) for q in qs}) == 1:
        lo, hi = qs[0].qmin, qs[0].qmax
    else:  # one grid per row
        lo = torch.cat([torch.full((w.shape[0],), float(q.qmin), dtype=W.dtype) for w, q in zip(ws, qs)])
        hi = torch.cat([torch.full((w.shape[0],), float(q.qmax), dtype=W.dtype) for w, q in zip(ws, qs)])
    # columns as rows (transposed), so each step reads and updates contiguous memory
    WT, ST, ZT = W.T.contiguous(), S.T.contiguous(), Z.T.contiguous()
    QT = torch.zeros_like(WT)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1, Hinv1 = WT[i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col, s, z = W1[i], ST[i1 + i], ZT[i1 + i]
            qc = (torch.clamp(torch.round(col / s) + z, lo, hi) - z) * s
            QT[i1 + i] = qc
            err = (col - qc) / Hinv1[i, i]
            W1[i:] -= Hinv1[i, i:][:, None] * err[None, :]
            Err1[i] = err
        WT[i2:] -= Hinv[i1:i2, i2:].T @ Err1
    out = torch.empty_like(W)
    out[:, perm] = QT.T
    return [o.to(w.dtype) for o, w in zip(out.split([w.shape[0] for w in ws]), ws)]


def gptq(w: torch.Tensor, h: torch.Tensor, q: UniformQuantizer, damp: float = 0.01, block: int = 128,
         act_order: bool = True) -> torch.Tensor:
    """Quantized copy of the [C, K] weight ``w`` (dequantized values on ``q``'s grid)."""
    return gptq_many([w], factor(h, damp, act_order), [q], block)[0]
