"""The fusion head (ED-ViT's MLP): one prediction over all classes from the K sub-models' outputs.

Input, in the manifest's fusion order: the parts' outputs concatenated (logits over each part's classes, or
features), then a presence mask of K values (1: the part answered, 0: it did not). A part that did not answer
contributes zeros in its slot and 0 in the mask (``assemble``), so the degraded input is defined and the
head can be trained for it (``part_dropout``: each training row drops each part with this probability, never
all of them). Output: logits over all classes.

    head = train_fusion([out_0, out_1], labels, classes=10, seed=0)     # outputs: [N, d_k] arrays
    save_fusion(head, "fusion.safetensors"); export_onnx(head, "fusion.onnx")
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError


class FusionHead(nn.Module):
    """Linear -> GELU -> Linear over [concatenated part outputs, presence mask]."""

    def __init__(self, dims: list[int], classes: int, hidden: int = 256):
        super().__init__()
        self.dims, self.classes, self.hidden = [int(d) for d in dims], int(classes), int(hidden)
        self.fc1 = nn.Linear(sum(self.dims) + len(self.dims), self.hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(self.hidden, self.classes)

    @property
    def in_dim(self) -> int:
        return sum(self.dims) + len(self.dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def config(self) -> dict:
        return {"dims": self.dims, "classes": self.classes, "hidden": self.hidden}


def assemble(outputs: list, dims: list[int], batch: int) -> np.ndarray:
    """The head's input: outputs (None for a part that did not answer) in fusion order -> [N, sum(d)+K] float32."""
    cols, mask = [], []
    for out, d in zip(outputs, dims):
        if out is None:
            cols.append(np.zeros((batch, d), np.float32))
            mask.append(np.zeros((batch, 1), np.float32))
        else:
            cols.append(np.asarray(out, np.float32).reshape(batch, d))
            mask.append(np.ones((batch, 1), np.float32))
    return np.concatenate(cols + mask, axis=1)


def train_fusion(outputs: list, labels, classes: int, hidden: int = 256, epochs: int = 200, lr: float = 1e-2,
                 weight_decay: float = 1e-4, part_dropout: float = 0.0, seed: int = 0) -> FusionHead:
    """Full-batch AdamW on cross-entropy; deterministic for a seed (CPU)."""
    dims = [int(np.asarray(o).shape[1]) for o in outputs]
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n = len(y)
    if any(np.asarray(o).shape[0] != n for o in outputs):
        raise UserError("fusion training: every part's outputs need one row per label", f"{n} labels")
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        head = FusionHead(dims, classes, hidden)
    x = [torch.as_tensor(np.asarray(o, np.float32)) for o in outputs]
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    K = len(dims)
    for _ in range(epochs):
        keep = torch.ones(n, K)
        if part_dropout > 0 and K > 1:
            keep = (torch.rand(n, K, generator=gen) >= part_dropout).float()
            none = keep.sum(1) == 0
            keep[none, torch.randint(0, K, (int(none.sum()),), generator=gen)] = 1.0
        inp = torch.cat([xi * keep[:, k:k + 1] for k, xi in enumerate(x)] + [keep], 1)
        loss = nn.functional.cross_entropy(head(inp), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


def save_fusion(head: FusionHead, path: str | Path) -> None:
    from safetensors.torch import save_file

    from ..utils.io import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp),
                  metadata={"vitforge": "fusion-head", "config": json.dumps(head.config())})


def load_fusion(path: str | Path) -> FusionHead:
    """Read a head saved by ``save_fusion`` (safetensors: data only, no code runs)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            cfg = json.loads(meta.get("config", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        head = FusionHead(cfg["dims"], cfg["classes"], cfg["hidden"])
        head.load_state_dict(tensors, strict=True)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as e:
        raise UserError(f"fusion head {path} is not a vitforge fusion head ({' '.join(str(e).split())[:120]})",
                        "rebuild it with save_fusion") from None
    return head.eval()


def export_onnx(head: FusionHead, path: str | Path, opset: int = 17) -> None:
    """ONNX with a dynamic batch axis: input ``x`` [N, sum(dims)+K], output ``logits`` [N, classes]."""
    import contextlib
    import warnings

    from ..utils.io import atomic_path

    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(head.eval(), (torch.zeros(2, head.in_dim),), buf, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
