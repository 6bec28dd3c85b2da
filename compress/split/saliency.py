"""Class-restricted saliency for ED-ViT sub-models: the existing Hessian saliency, asked about one class subset.

A sub-model only has to keep what its classes need. The restriction lives entirely in the loss the saliency
estimates, so the Gauss-Newton machinery (per-sample structure gates, ``Distiller.sampled``, group scores) is
reused unchanged, not copied:

* images: only calibration images of the subset's classes (``class_batches``);
* outputs: the teacher's and the student's outputs go through the same head (a classifier's own logits, or a
  probe on the pooled [class token, mean patch token] of an encoder) and only the subset's logits are kept;
  the loss is KL(softmax_S(teacher) || softmax_S(student)) over those |S| logits, and ``sampled`` draws
  v = p_S - onehot(c), c ~ p_S, so E[v v^T] = diag(p_S) - p_S p_S^T, that loss's Hessian at the teacher
  (the categorical Fisher). Logits of other classes never enter.

``ClassRestricted`` has the ``loss`` / ``sampled`` interface of ``compress.distill.Distiller``; ``class_saliency``
hands it, with ``class_batches``' images and the teacher's outputs on them, to the Hessian saliency's ``compute``
(``compress.pruning.saliency``, below the passes, where the architecture refactor moves it from
``compress/passes/prune/``; another function with its signature can be passed as ``compute``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..models.pooling import pooled


class ClassRestricted:
    """Distillation loss on the logits of a class subset only (module docstring)."""

    def __init__(self, classes: list[int], head: torch.nn.Module | None = None, num_prefix_tokens: int = 1):
        if not classes:
            raise UserError("a class subset needs at least one class", "give the part's classes")
        self.classes = torch.as_tensor(sorted(int(c) for c in classes), dtype=torch.long)
        self.head, self.num_prefix = head, num_prefix_tokens

    def logits(self, y: torch.Tensor) -> torch.Tensor:
        """Model output -> the subset's logits [B, |S|] (through the head, after pooling tokens)."""
        y = y.float()
        if self.head is not None:
            y = self.head(pooled(y, self.num_prefix) if y.ndim == 3 else y)
        return y.index_select(-1, self.classes)

    def loss(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-sample KL(teacher || student) over the subset's softmax [B]."""
        ly, lt = self.logits(y), self.logits(t).detach()
        return F.kl_div(F.log_softmax(ly, -1), F.log_softmax(lt, -1), log_target=True, reduction="none").sum(-1)

    def sampled(self, y: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """sum_n <z_n, v_n>, z the subset logits, v_n = p - onehot(c), c ~ p (p: the student's subset softmax)."""
        z = self.logits(y)
        p = F.softmax(z, -1).detach()
        c = torch.multinomial(p, 1, generator=gen)
        return (z * (p - F.one_hot(c[:, 0], p.shape[-1]).to(p))).sum()


def class_batches(images: torch.Tensor, labels, classes: list[int], batch_size: int = 16) -> list[torch.Tensor]:
    """The images whose label is in ``classes``, in their order, as batches."""
    keep = np.isin(np.asarray(labels), np.asarray(list(classes)))
    if not keep.any():
        raise UserError(f"no calibration image of classes {sorted(classes)[:8]}",
                        "use more calibration images (every class needs some)")
    x = images[torch.from_numpy(np.flatnonzero(keep))]
    return list(x.split(batch_size))


def class_saliency(model, teacher, classes: list[int], images: torch.Tensor, labels,
                   head: torch.nn.Module | None = None, batch_size: int = 16, embed_output: bool = False,
                   seed: int = 0, compute=None, **kw):
    """Hessian saliency of ``model`` for the class subset. ``compute`` is the saliency function
    (``compute(criterion, model, batches, teacher_out, distiller, embed_output, seed=...)``); by default the
    shared one in ``compress.pruning.saliency`` (below the passes)."""
    if compute is None:
        from ..pruning.saliency import compute
    batches = class_batches(images, labels, classes, batch_size)
    with torch.no_grad():
        t_out = [teacher(x) for x in batches]
    dist = ClassRestricted(classes, head, getattr(getattr(model, "cfg", None), "num_prefix_tokens", 1))
    return compute("hessian", model, batches, t_out, dist, embed_output, seed=seed, **kw)
