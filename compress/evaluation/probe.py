"""Linear probe for encoders without a classification head.

Trained once on the fp32 model's features (multinomial logistic regression, L-BFGS, L2
strength picked on a held-out fifth), then reused unchanged for every compressed variant.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(x.shape[1], classes, generator=g, dtype=torch.float64) * 1e-3).requires_grad_()
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


@dataclass
class LinearProbe:
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float

    @classmethod
    def fit(cls, feats: torch.Tensor, labels: torch.Tensor, classes: int, l2: float | None = None) -> "LinearProbe":
        """``l2``: that strength; None: the best of ``L2_GRID`` on a held-out fifth."""
        feats, labels = feats.double(), labels.long()
        mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
        x = (feats - mean) / std
        n = len(x)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        val, tr = perm[: n // 5], perm[n // 5:]
        best = l2 if l2 is not None else max(
            L2_GRID, key=lambda v: _acc(*_fit(x[tr], labels[tr], classes, v), x[val], labels[val]))
        w, b = _fit(x, labels, classes, best)
        return cls(mean, std, w, b, best)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return ((feats.double() - self.mean) / self.std) @ self.weight + self.bias

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        from ..utils.io import atomic_path

        with atomic_path(path) as tmp:
            save_file({"mean": self.mean, "std": self.std, "weight": self.weight, "bias": self.bias,
                       "l2": torch.tensor([self.l2], dtype=torch.float64)}, str(tmp))

    @classmethod
    def load(cls, path: Path) -> "LinearProbe":
        from ..models.checkpoint import load_state_dict

        t = load_state_dict(path)
        return cls(t["mean"], t["std"], t["weight"], t["bias"], float(t["l2"][0]))


def _acc(w, b, x, y) -> float:
    return ((x @ w + b).argmax(1) == y).double().mean().item()
