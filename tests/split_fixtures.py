"""A tiny split deployment for the split tests: K randomly initialised conv sub-models (random weights: shapes and
the runtime only, no accuracy claim) over a 7-class problem, and a fusion head fitted to random labels."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.split.assign import assign
from compress.split.bundle import write_bundle
from compress.split.fusion import train_fusion

SIZE = 16
PRE = {"size": SIZE, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}
CLASSES = 7


class TinyPart(nn.Module):
    def __init__(self, out: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.fc = nn.Linear(8, out)

    def forward(self, x):
        return self.fc(nn.functional.gelu(self.conv(x)).mean((2, 3)))


def build(out_dir, parts: int = 3, build_id: str = "build-a", seed: int = 0, degraded=None, runtime=None,
          order=None):
    """(manifest path, torch sub-models, fusion head, per-part classes)."""
    torch.manual_seed(seed)
    classes = [list(range(CLASSES))[k::parts] for k in range(parts)]
    models = [TinyPart(len(c)).eval() for c in classes]
    x = torch.randn(64, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        outs = [m(x).numpy() for m in models]
    order = order or list(range(parts))
    labels = np.random.default_rng(seed).integers(0, CLASSES, 64)
    head = train_fusion([outs[i] for i in order], labels, CLASSES, hidden=32, epochs=30, part_dropout=0.3, seed=seed)
    # placement on two made-up devices (latency ms, memory bytes per part): the plan travels in the manifest
    lat = [[10.0 + k, 20.0 + k] for k in range(parts)]
    plan = assign(lat, [[1.0, 1.0]] * parts, [2.0, 2.0], devices=["dev-fast", "dev-slow"])
    path = write_bundle(out_dir, list(zip(models, classes)), head, PRE, build_id, "tiny-random", order=order,
                        degraded=degraded, runtime=runtime, class_names=[f"c{i}" for i in range(CLASSES)], plan=plan)
    return path, models, head, classes


def ensemble(models, head, order, x: np.ndarray, missing=()) -> np.ndarray:
    """The in-memory reference: PyTorch sub-models and head, missing parts as zeros with mask 0."""
    with torch.no_grad():
        t = torch.from_numpy(x)
        cols, mask = [], []
        for i in order:
            y = models[i](t)
            cols.append(torch.zeros_like(y) if i in missing else y)
            mask.append(torch.full((len(x), 1), 0.0 if i in missing else 1.0))
        return head(torch.cat(cols + mask, 1)).numpy()
