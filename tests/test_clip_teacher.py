"""The offline LiT teacher's mechanics at tiny scale, with the real towers (embedded DINOv2 ViT-S/14, pretrained
MiniLM-L6) on 64 real images (Fashion-MNIST): cached image features equal the model's own image path, training
needs no image tower, the contrastive loss falls, zero-shot with held-out templates beats chance, and the built
teacher is cached and reloaded identically."""
from __future__ import annotations

import pytest
import torch

from compress.distill import clip_teacher as ct
from compress.models.clip_prompts import HELD_OUT

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]  # real towers: ~2 CPU min


@pytest.fixture(scope="module")
def tower():
    from compress.models import load_model

    return load_model("dinov2-s14-focus").model


def test_lit_teacher_mechanics(tmp_path, real_images, tower):
    from compress.data import load_subset
    from compress.evaluation import zeroshot

    cfg = ct.TeacherConfig(data=real_images, train_images=64, steps=40, batch_size=32, lr_proj=3e-3, seed=0)
    model, rec = ct.build(cfg, root=tmp_path, image_tower=tower)
    assert not rec["cached"] and rec["images"] == 64 and rec["steps"] == 40
    assert rec["loss_end"] < 0.8 * rec["loss_start"], (rec["loss_start"], rec["loss_end"])

    # the cached features are the tower's: a second extraction reads them without running it
    real_forward = tower.forward
    tower.forward = lambda x: (_ for _ in ()).throw(AssertionError("the image tower ran"))
    try:
        feats, labels, classes = ct.image_features(tower, real_images, "train", 64, 0, tmp_path)
    finally:
        tower.forward = real_forward
    assert feats.shape == (64, 768) and len(classes) == 10
    ds = load_subset(real_images, "train", 64, 0, tower.cfg)
    x = torch.stack([ds[i][0] for i in range(4)])
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_image(x, normalize=False), model.visual_projection(feats[:4]),
                                   atol=1e-4, rtol=1e-4)
        emb = model.visual_projection(feats)
    top1 = zeroshot.evaluate_model(model, None, labels, classes, HELD_OUT, True, image_emb=emb)["top1"]
    assert top1 > 30.0, top1  # chance is 10 %

    again, rec2 = ct.build(cfg, root=tmp_path, image_tower=tower)
    assert rec2["cached"] and rec2["loss_end"] == pytest.approx(rec["loss_end"])
    with torch.inference_mode():
        torch.testing.assert_close(again.encode_text(["a photo of the boot."]), model.encode_text(["a photo of the boot."]))
    # another config is another build
    assert ct.build_key(ct.TeacherConfig(data=real_images, steps=41), "fp") != ct.build_key(
        ct.TeacherConfig(data=real_images, steps=40), "fp")
