"""Augmented views for distillation on cached teacher outputs (compress.distill.views): deterministic per (seed,
image, view), view 0 the image itself, and the pass caches the teacher's outputs per view, on exactly the pixels the
student then trains on. Tiny random CLIP models: mechanics only, no accuracy claim."""
from __future__ import annotations

import json

import pytest
import torch

from compress.distill import clip_cache
from compress.distill.views import Views, ViewSpec, view
from compress.models import clip

from test_distill_pass import _run, _tiny_cls_mean_clip

pytestmark = pytest.mark.timeout(600)


def test_views_are_seeded_crops_and_mirrors_and_view_0_is_the_image():
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(3, 32, 32)
    spec = ViewSpec(views=4, scale=(0.3, 0.6), flip=True, seed=7)
    assert torch.equal(view(x, spec, 5, 0), x)
    a, b = view(x, spec, 5, 1), view(x, spec, 5, 1)
    assert torch.equal(a, b) and a.shape == x.shape  # a function of (seed, image, view) alone
    others = [view(x, spec, 5, v) for v in (2, 3)] + [view(x, spec, 6, 1), view(x, ViewSpec(4, (0.3, 0.6), True, 8), 5, 1)]
    assert all(not torch.equal(a, o) for o in others)
    # a crop of at most 60 % of the area spans a smaller value range than the whole image
    assert all(float(o.max() - o.min()) < float(x.max() - x.min()) for o in [a] + others)
    flat = torch.ones(3, 32, 32)
    assert torch.allclose(view(flat, spec, 0, 1), flat)  # bilinear resampling of a constant stays constant


def test_views_index_samples_as_image_times_views():
    ds = type("DS", (), {"labels": [3, 1], "__getitem__": lambda self, i: (torch.full((3, 8, 8), float(i)), 0)})()
    v = Views(ds, ViewSpec(views=3, scale=(1.0, 1.0), flip=False))
    assert len(v) == 6 and v.labels == [3, 3, 3, 1, 1, 1]
    imgs = v.images([0, 4])
    assert torch.equal(imgs[0], torch.zeros(3, 8, 8)) and torch.allclose(imgs[1], torch.ones(3, 8, 8))


def test_pass_caches_the_teacher_per_view_on_the_pixels_the_student_sees(tmp_path, image_folder):
    from compress.data import load_subset
    from compress.passes.distill.worker import images_of

    clip.save_dir(_tiny_cls_mean_clip(), tmp_path / "lit")
    assert _run(tmp_path, image_folder, "{mode: manual, saliency_images: 8, widths: [mlp]}",
                "passes.distill.stages=[{params: 0.8}]", "passes.distill.steps=2",
                "passes.distill.augment={views: 3, scale: [0.4, 0.9]}", model=tmp_path / "lit") == 0
    run = tmp_path / "run"
    rec = json.loads((run / "passes/01-distill/config.json").read_text())["history"][-1]
    work = run / rec["work"]
    cache = clip_cache.load(next((work / "teacher").glob("*.safetensors")))
    assert len(cache["labels"]) == 3 * 16 and torch.equal(cache["labels"][:3], cache["labels"][0].repeat(3))
    job = json.loads((work / "stage-01" / "train.job.json").read_text())
    teacher = _tiny_cls_mean_clip()
    samples = [0, 1, 2, 40]
    imgs = images_of(job)(samples)  # what the student's loop is fed
    with torch.no_grad():
        want = teacher.encode_image(imgs, normalize=False)
    assert torch.allclose(cache["image"][samples], want, atol=1e-5)
    assert not torch.allclose(imgs[0], imgs[1])  # views differ
    ds = load_subset(str(image_folder), "train", 16, 0, teacher.visual.cfg)
    assert torch.equal(imgs[0], ds[0][0])  # view 0 is the image as preprocessed
