"""Zero-shot evaluation (compress.evaluation.zeroshot) on constructed embeddings whose answers are known."""
from __future__ import annotations

import pytest
import torch

from compress.evaluation import zeroshot
from compress.models.clip_prompts import (
    CIFAR10_CLASSES,
    CIFAR10_TEMPLATES,
    HELD_OUT,
    SYNONYMS,
    TRAIN_TEMPLATES,
)


def test_prompts_are_templates_times_names():
    ps = zeroshot.class_prompts(["cat", "dog"], HELD_OUT)
    assert len(ps[0]) == len(HELD_OUT) * (1 + len(SYNONYMS["cat"]))
    assert "a photo of the kitten." in ps[0] and "a photo of the cat." in ps[0]
    assert zeroshot.class_prompts(["cat"], HELD_OUT, synonyms=False) == [[t.format("cat") for t in HELD_OUT]]
    assert zeroshot.class_prompts(["my_cls"], ("{}",), {"my_cls": ("alias",)}) == [["my cls", "alias"]]
    assert not set(HELD_OUT) & set(TRAIN_TEMPLATES) and len(HELD_OUT) + len(TRAIN_TEMPLATES) == len(CIFAR10_TEMPLATES)


def _fake_text_encoder(classes):
    """Text embedding: the class direction (found from any of its names in the prompt) plus a per-template offset."""
    dims = len(classes) + len(CIFAR10_TEMPLATES)
    lookup = {n: c for c, cls in enumerate(classes) for n in (cls, *SYNONYMS.get(cls, ()))}

    def enc(prompts):
        out = torch.zeros(len(prompts), dims)
        for i, p in enumerate(prompts):
            t = next(j for j, tpl in enumerate(CIFAR10_TEMPLATES) if p in {tpl.format(n) for n in lookup})
            name = next(n for n in sorted(lookup, key=len, reverse=True) if CIFAR10_TEMPLATES[t].format(n) == p)
            out[i, lookup[name]] = 1.0
            out[i, len(classes) + t] = 0.5  # template-specific: averages out across templates
        return out

    return enc, dims


def test_zero_shot_top1_known_answer():
    classes = list(CIFAR10_CLASSES)
    enc, dims = _fake_text_encoder(classes)
    emb = zeroshot.class_embeddings(enc, classes, CIFAR10_TEMPLATES)
    assert emb.shape == (10, dims)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(10))
    labels = torch.arange(40) % 10
    images = torch.zeros(40, dims)
    images[torch.arange(40), labels] = 1.0
    images += 0.05 * torch.randn(40, dims, generator=torch.Generator().manual_seed(0))
    wrong = torch.tensor([3, 17, 22])  # these images point at the next class
    images[wrong] = 0
    images[wrong, (labels[wrong] + 1) % 10] = 1.0
    assert zeroshot.zero_shot_top1(images, labels, emb) == pytest.approx(100 * 37 / 40)
    pred = zeroshot.zero_shot_predict(images, emb)
    assert pred[3] == 4 and pred[0] == 0


def test_retrieval_recall_known_ranks():
    img = torch.eye(4)
    # text j belongs to image j; text 2 sits nearer image 3 than image 2 (rank 2 for t->i); texts 4, 5 are extra
    # captions of images 0 and 1
    txt = torch.stack([torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0]), torch.tensor([0, 0, 0.3, 0.9]),
                       torch.tensor([0, 0, 0, 1.0]), torch.tensor([0.9, 0.1, 0, 0]), torch.tensor([0, 0.8, 0, 0.2])])
    owner = torch.tensor([0, 1, 2, 3, 0, 1])
    r = zeroshot.retrieval_recall(img, txt, owner, ks=(1, 2, 5))
    # t->i: texts 0,1,3,4,5 rank their image first; text 2 ranks image 2 second
    assert r["t2i_r@1"] == pytest.approx(100 * 5 / 6) and r["t2i_r@2"] == 100.0
    # i->t: image 2's only caption (cos 0.316) ranks first among its sims (others are 0): all hits at 1
    assert r["i2t_r@1"] == 100.0
    # captions 2 and 3 swapped in ownership: image 2's caption (text 3, cos 0) ranks below text 2, image 3's
    # (text 2, cos 0.949) below text 3 (i->t: 2 of 4 hits); text 3 ranks image 3 above its own image 2 (5 of 6)
    r2 = zeroshot.retrieval_recall(img, txt, torch.tensor([0, 1, 3, 2, 0, 1]), ks=(1, 5))
    assert r2["i2t_r@1"] == pytest.approx(50.0) and r2["t2i_r@1"] == pytest.approx(100 * 5 / 6)
    with pytest.raises(ValueError):
        zeroshot.retrieval_recall(img, txt, torch.tensor([0, 1, 2, 9, 0, 1]))


def test_retrieval_recall_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    r = zeroshot.retrieval_recall(img, txt, ks=(1, 5, 10))
    sim = torch.nn.functional.normalize(img, dim=1) @ torch.nn.functional.normalize(txt, dim=1).T
    for k in (1, 5, 10):
        i2t = sum(i in sim[i].topk(k).indices.tolist() for i in range(12)) / 12 * 100
        t2i = sum(j in sim[:, j].topk(k).indices.tolist() for j in range(12)) / 12 * 100
        assert r[f"i2t_r@{k}"] == pytest.approx(i2t) and r[f"t2i_r@{k}"] == pytest.approx(t2i)
