"""CLIP losses (compress.distill.affinity): hand-computed small cases, an independent numpy reference, and the
gradient of affinity mimicking against TinyCLIP's formulation (cross-entropy against the teacher's probabilities)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compress.distill.affinity import affinity_loss, contrastive_loss

LN3 = math.log(3.0)


def _hand_case():
    # student: cos(I_i, T_j) = identity; teacher: every image orthogonal to every text (cos = 0)
    img, txt = torch.eye(2), torch.eye(2)
    t_img, t_txt = torch.eye(4)[:2], torch.eye(4)[2:]
    return img, txt, t_img, t_txt


def test_affinity_hand_computed():
    # scale ln 3: the student's rows are softmax([ln3, 0]) = [3/4, 1/4]; the teacher's are uniform [1/2, 1/2].
    # KL(u || p) = 1/2 ln(1/2 / 3/4) + 1/2 ln(1/2 / 1/4) = 1/2 ln(4/3) per row, both directions alike.
    img, txt, t_img, t_txt = _hand_case()
    loss = affinity_loss(img, txt, t_img, t_txt, teacher_scale=LN3)
    assert float(loss) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    i2t, t2i = affinity_loss(img, txt, t_img, t_txt, teacher_scale=LN3, both=True)
    assert float(i2t) == pytest.approx(0.143841, abs=1e-6) and float(t2i) == pytest.approx(0.143841, abs=1e-6)
    # a student with its own scale 1 (logits [1, 0]): KL(u || softmax([1, 0])) = ln(1 + e) - 1/2 - ln 2
    own = affinity_loss(img, txt, t_img, t_txt, teacher_scale=LN3, student_scale=1.0)
    assert float(own) == pytest.approx(math.log(1 + math.e) - 0.5 - math.log(2), abs=1e-6)


def test_contrastive_hand_computed():
    img, txt, _, _ = _hand_case()
    # paired: CE of softmax([ln3, 0]) at the diagonal = ln(4/3), both directions
    assert float(contrastive_loss(img, txt, LN3)) == pytest.approx(math.log(4 / 3), abs=1e-6)
    # one label for all: the target row is uniform, CE = -(1/2 ln 3/4 + 1/2 ln 1/4) = 1/2 ln(16/3)
    same = torch.zeros(2, dtype=torch.long)
    assert float(contrastive_loss(img, txt, LN3, same, same)) == pytest.approx(0.5 * math.log(16 / 3), abs=1e-6)
    # distinct labels equal the paired loss
    lab = torch.arange(2)
    assert float(contrastive_loss(img, txt, LN3, lab, lab)) == pytest.approx(math.log(4 / 3), abs=1e-6)
    with pytest.raises(ValueError):
        contrastive_loss(img, txt[:1], LN3)


def _np_affinity(img, txt, t_img, t_txt, s_t, s_s):
    n = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    sim, tsim = n(img) @ n(txt).T, n(t_img) @ n(t_txt).T
    total = 0.0
    for a, b in ((sim, tsim), (sim.T, tsim.T)):
        lp, lq = log_softmax(s_s * a), log_softmax(s_t * b)
        total += (np.exp(lq) * (lq - lp)).sum(1).mean()
    return total / 2


def test_affinity_matches_numpy_reference_and_vanishes_at_teacher():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    t_img, t_txt = rng.normal(size=(6, 16)), rng.normal(size=(6, 16))
    got = affinity_loss(*(torch.tensor(a, dtype=torch.float32) for a in (img, txt, t_img, t_txt)), 20.0, 12.0)
    assert float(got) == pytest.approx(_np_affinity(img, txt, t_img, t_txt, 20.0, 12.0), rel=1e-5)
    same = affinity_loss(torch.tensor(t_img), torch.tensor(t_txt), torch.tensor(t_img), torch.tensor(t_txt), 20.0)
    assert abs(float(same)) < 1e-6


def test_affinity_gradient_equals_tinyclip_cross_entropy():
    torch.manual_seed(0)
    img, txt = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8)
    t_img, t_txt = torch.randn(5, 8), torch.randn(5, 8)
    affinity_loss(img, txt, t_img, t_txt, 30.0).backward()
    g_kl = img.grad.clone()
    img.grad = None
    nrm = torch.nn.functional.normalize
    li = 30.0 * nrm(img) @ nrm(txt).T
    ti = 30.0 * nrm(t_img) @ nrm(t_txt).T
    ce = lambda lg, t: torch.nn.functional.cross_entropy(lg, torch.softmax(t, -1))
    ((ce(li, ti) + ce(li.T, ti.T)) / 2).backward()
    torch.testing.assert_close(g_kl, img.grad, rtol=1e-5, atol=1e-6)
