"""Second-order weight rounding (GPTQ / OPTQ, Frantar et al. 2023) with fixed (static) scales.

Columns are quantized one at a time in order of decreasing input energy (act-order); each column's
rounding error is spread over the columns not yet quantized through the inverse Hessian of the layer's
reconstruction loss ||W X - Q(W) X||^2, H = X^T X / n. Scales are chosen beforehand (per channel or per
group), so the result lives exactly on the quantizer's grid and exports as integers.
"""
from __future__ import annotations

import torch

from .quantizers import UniformQuantizer


def hessian_update(h: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().reshape(-1, x.shape[-1]).float()
    xtx = (x.T @ x).double()  # float32 products per chunk, accumulated in float64
    return xtx if h is None else h + xtx


def output_error(w: torch.Tensor, wq: torch.Tensor, h: torch.Tensor) -> float:
    """Relative output error tr(dW H dW^T) / tr(W H W^T) of replacing ``w`` by ``wq`` on inputs with Gram ``h``."""
    w, d = w.double(), (wq - w).double()
    num = ((d @ h) * d).sum()
    return float(num / ((w @ h) * w).sum().clamp_min(1e-30))


def _expand(t: torch.Tensor, q: UniformQuantizer, c: int, k: int) -> torch.Tensor:
    """A scale / zero-point buffer broadcast to one value per weight [C, K]."""
    if q.group:
        return t.reshape(c, k // q.group, 1).expand(c, k // q.group, q.group).reshape(c, k)
    return t.reshape(-1, 1).expand(c, k) if t.numel() > 1 else t.reshape(1, 1).expand(c, k)


@torch.no_grad()
def gptq(w: torch.Tensor, h: torch.Tensor, q: UniformQuantizer, damp: float = 0.01, block: int = 128,
         act_order: bool = True) -> torch.Tensor:
    """Quantized copy of the [C, K] weight ``w`` (dequantized values on ``q``'s grid)."""
    c, k = w.shape
    W = w.detach().double().clone()
    H = h.detach().double().clone()
    S, Z = _expand(q.scale.double(), q, c, k), _expand(q.zero_point.double(), q, c, k)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    W, H, S, Z = W[:, perm], H[perm][:, perm], S[:, perm], Z[:, perm]
    H += torch.eye(k, dtype=H.dtype) * damp * torch.diag(H).mean()
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except RuntimeError:  # numerically indefinite: fall back to rounding to nearest
        return q.fake(w.detach())
    Q = torch.zeros_like(W)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col, s, z = W1[:, i], S[:, i1 + i], Z[:, i1 + i]
            qc = (torch.clamp(torch.round(col / s) + z, q.qmin, q.qmax) - z) * s
            Q[:, i1 + i] = qc
            err = (col - qc) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    out = torch.empty_like(Q)
    out[:, perm] = Q
    return out.to(w.dtype)
