"""Least-squares fits of a linear layer from accumulated moments (block reconstruction, output alignment)."""
from __future__ import annotations

import torch
import torch.nn as nn


class Moments:
    """E[x x^T] and E[x r^T] of a least-squares fit, accumulated in ``dtype`` (float64: exact refits)."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.H, self.C, self.n, self.dtype = None, None, 0, dtype

    def add(self, x: torch.Tensor, r: torch.Tensor, bias: bool, w: torch.Tensor | None = None) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.dtype)
        if bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=self.dtype)], 1)
        r = r.reshape(-1, r.shape[-1]).to(self.dtype)
        xw = x if w is None else x * w.reshape(-1, 1).to(self.dtype)
        h, c = (xw.T @ x).double(), (xw.T @ r).double()
        self.H = h if self.H is None else self.H + h
        self.C = c if self.C is None else self.C + c
        self.n += len(x)

    def solve(self, layer: nn.Linear, damp: float, prior: torch.Tensor | None = None) -> None:
        """Ridge solve; the ridge shrinks towards ``prior`` ([in (+1), out]; default zero)."""
        H, C = self.H / self.n, self.C / self.n
        lam = damp * H.diagonal().mean()
        H = H + lam * torch.eye(len(H), dtype=H.dtype)
        if prior is not None:
            C = C + lam * prior.to(C.dtype)
        W = torch.linalg.solve(H, C).T.float()  # [out, in (+1)]
        with torch.no_grad():
            if layer.bias is not None:
                layer.weight.copy_(W[:, :-1])
                layer.bias.copy_(W[:, -1])
            else:
                layer.weight.copy_(W)
