"""Heads the passes put on an encoder's output, kept in the model (and rebuilt from a pass's record):
``WidthRestore`` (prune: lifts an embed-pruned stream back to the original width) and ``OutputMap``
(align: a fitted linear map after the final norm)."""
from __future__ import annotations

import torch
import torch.nn as nn


class WidthRestore(nn.Module):
    """Final norm of an encoder whose residual width was pruned: a linear lift of the D' stream back
    to the D output features downstream consumers (probes, heads) were fitted on, then the LayerNorm.
    Created as the identity on the kept channels, so it changes nothing until distillation trains it."""

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-6):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=eps)

    @classmethod
    def around(cls, norm: nn.LayerNorm) -> "WidthRestore":
        d = norm.normalized_shape[0]
        m = cls(d, d, norm.eps)
        with torch.no_grad():
            m.proj.weight.copy_(torch.eye(d))
            m.proj.bias.zero_()
            m.norm.load_state_dict(norm.state_dict())
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class OutputMap(nn.Module):
    """The encoder's final norm followed by the fitted linear map (created as the identity)."""

    def __init__(self, norm: nn.Module, dim: int):
        super().__init__()
        self.norm = norm
        self.map = nn.Linear(dim, dim)
        with torch.no_grad():
            self.map.weight.copy_(torch.eye(dim))
            self.map.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.map(self.norm(x))
