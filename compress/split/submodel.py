"""A part's deployable module and the linear probe of headless encoders.

A part answers logits over its own classes only: a classifier's logits restricted to them, or, for a headless
encoder (the probe protocol), a linear probe on the pooled [class token, mean patch token] whose rows are the
part's classes. ``fit_probe`` fits such a probe over all classes (full-batch AdamW on cross-entropy, features
centred and scaled then folded into the weights, seeded); a part keeps its classes' rows, so its logits are also
trained to stay low on other classes' images, which is what the fusion head reads.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models.pooling import pooled


class PartModel(nn.Module):
    """Sub-model + its output restriction: images [N, 3, S, S] -> logits over ``classes`` [N, |classes|]."""

    def __init__(self, encoder: nn.Module, classes: list[int], head: nn.Linear | None = None, num_prefix: int = 1):
        super().__init__()
        self.encoder, self.head, self.num_prefix = encoder, head, int(num_prefix)
        self.register_buffer("classes", torch.as_tensor(sorted(int(c) for c in classes), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.encoder(x)
        if self.head is not None:  # the probe's rows are already the part's classes
            return self.head(pooled(y, self.num_prefix) if y.ndim == 3 else y)
        return y.index_select(-1, self.classes)


def rows(probe: nn.Linear, classes: list[int]) -> nn.Linear:
    """The probe restricted to ``classes`` (a new Linear)."""
    idx = torch.as_tensor(sorted(int(c) for c in classes), dtype=torch.long)
    out = nn.Linear(probe.in_features, len(idx))
    with torch.no_grad():
        out.weight.copy_(probe.weight[idx])
        out.bias.copy_(probe.bias[idx])
    return out


def fit_probe(features: torch.Tensor, labels, classes: int, epochs: int = 300, lr: float = 1e-2,
              weight_decay: float = 1e-4, seed: int = 0) -> nn.Linear:
    """Linear probe [N, F] -> [N, classes] by full-batch AdamW on cross-entropy (deterministic for a seed)."""
    x = features.detach().float()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    mu, sd = x.mean(0), x.std().clamp_min(1e-6)  # one scale: no huge weights on flat features
    z = (x - mu) / sd
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        lin = nn.Linear(x.shape[1], int(classes))
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            loss = nn.functional.cross_entropy(lin(z), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = nn.Linear(x.shape[1], int(classes))
    with torch.no_grad():  # fold the standardisation: W (x - mu) / sd + b
        out.weight.copy_(lin.weight / sd)
        out.bias.copy_(lin.bias - (lin.weight / sd) @ mu)
    return out.eval()


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
