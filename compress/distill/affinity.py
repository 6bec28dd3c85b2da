"""CLIP losses over a batch of image and text embeddings: the contrastive loss (CLIP) and TinyCLIP's
affinity mimicking (Wu et al., ICCV 2023, eq. 1-3).

Affinities: A_I2T[i, j] = softmax_j(s * cos(I_i, T_j)) and A_T2I[j, i] = softmax_i(s * cos(T_j, I_i)), ``s`` the
logit scale (1 / temperature). Affinity mimicking makes the student's A_I2T and A_T2I match the teacher's:
KL(A_teacher || A_student) per row, averaged over rows, mean of the two directions. Its gradient equals that
of TinyCLIP's code (cross-entropy against the teacher's probabilities); KL only drops the teacher's entropy,
so a student identical to its teacher has loss 0. The teacher's affinities use the teacher's logit scale; the
student's use the teacher's too unless ``student_scale`` is given (TinyCLIP trains its own).

Embeddings given here are normalised inside (cosine similarities); scales are the exp of a logit scale,
i.e. the multiplier itself (CLIP: 100 at the clamp).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def similarities(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """Cosine similarities [B_img, B_txt]."""
    return F.normalize(img.float(), dim=-1) @ F.normalize(txt.float(), dim=-1).T


def _kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    t = F.log_softmax(teacher_logits, -1)
    return F.kl_div(F.log_softmax(student_logits, -1), t, log_target=True, reduction="none").sum(-1).mean()


def affinity_loss(img: torch.Tensor, txt: torch.Tensor, t_img: torch.Tensor, t_txt: torch.Tensor,
                  teacher_scale: float | torch.Tensor, student_scale: float | torch.Tensor | None = None,
                  both: bool = False):
    """Affinity mimicking: (KL_I2T + KL_T2I) / 2 between teacher and student affinities over the batch
    (``both``: the pair (I2T, T2I) instead of their mean)."""
    s_t = torch.as_tensor(teacher_scale, dtype=torch.float32)
    s_s = s_t if student_scale is None else torch.as_tensor(student_scale, dtype=torch.float32)
    sim, t_sim = similarities(img, txt), similarities(t_img, t_txt).detach()
    i2t = _kl_rows(s_s * sim, s_t.detach() * t_sim)
    t2i = _kl_rows(s_s * sim.T, s_t.detach() * t_sim.T)
    return (i2t, t2i) if both else (i2t + t2i) / 2


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: float | torch.Tensor,
                     img_labels: torch.Tensor | None = None, txt_labels: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: (CE_I2T + CE_T2I) / 2 with image i paired to text i. With labels (a captioned
    class dataset, where several images in a batch share a class), every image-text pair of the same label is a
    positive: the target row is uniform over them (UniCL-style); then the text batch may differ in size."""
    logits = torch.as_tensor(scale, dtype=torch.float32) * similarities(img, txt)
    if img_labels is None:
        if logits.shape[0] != logits.shape[1]:
            raise ValueError(f"paired contrastive loss needs as many texts as images, got {tuple(logits.shape)}")
        target = torch.arange(len(logits))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    pos = (img_labels.reshape(-1, 1) == txt_labels.reshape(1, -1)).float()
    if (pos.sum(1) == 0).any() or (pos.sum(0) == 0).any():
        raise ValueError("every image and every text needs at least one positive of its label in the batch")
    i2t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    t2i = -(pos.T / pos.sum(0).reshape(-1, 1) * F.log_softmax(logits.T, 1)).sum(1).mean()
    return (i2t + t2i) / 2


__all__ = ["affinity_loss", "contrastive_loss", "similarities"]
