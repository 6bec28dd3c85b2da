"""Zero-shot evaluation of CLIP models (Radford et al., 2021, sec. 3.1.4).

Classification: every class is prompted with templates x class names (synonyms included when given); each
prompt's text embedding is L2-normalised, the class's prompts are averaged and normalised again (CLIP's prompt
ensemble); an image is assigned the class whose embedding has the highest cosine with its own; top-1 in %.
Retrieval, for paired data: image->text recall@k (an image is a hit when any of its captions ranks in the top
k) and text->image recall@k (a caption is a hit when its image does), in %.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..models.clip_prompts import CIFAR10_TEMPLATES, SYNONYMS, names


def class_prompts(classes: Sequence[str], templates: Sequence[str] = CIFAR10_TEMPLATES,
                  synonyms: dict[str, Sequence[str]] | bool = True) -> list[list[str]]:
    """Per class, its prompts: every template with every name of the class (name, then synonyms).
    ``synonyms``: True for the built-in synonyms, False for class names only, or a mapping class -> synonyms."""
    out = []
    for c in classes:
        if isinstance(synonyms, dict):
            ns = (c.replace("_", " "), *synonyms.get(c, ()))
        else:
            ns = names(c, bool(synonyms))
        out.append([t.format(n) for n in ns for t in templates])
    return out


def class_embeddings(encode_text: Callable[[list[str]], torch.Tensor], classes: Sequence[str],
                     templates: Sequence[str] = CIFAR10_TEMPLATES, synonyms: dict | bool = True,
                     batch_size: int = 256) -> torch.Tensor:
    """[C, E] normalised mean of each class's normalised prompt embeddings."""
    rows = []
    with torch.inference_mode():
        for ps in class_prompts(classes, templates, synonyms):
            z = torch.cat([F.normalize(encode_text(ps[s:s + batch_size]).float(), dim=-1)
                           for s in range(0, len(ps), batch_size)])
            rows.append(F.normalize(z.mean(0), dim=-1))
    return torch.stack(rows)


def zero_shot_predict(image_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    return (F.normalize(image_emb.float(), dim=-1) @ F.normalize(class_emb.float(), dim=-1).T).argmax(1)


def zero_shot_top1(image_emb: torch.Tensor, labels: torch.Tensor, class_emb: torch.Tensor) -> float:
    """Top-1 (%) of nearest-class-embedding predictions."""
    return float((zero_shot_predict(image_emb, class_emb) == torch.as_tensor(labels)).double().mean() * 100)


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, text_image: torch.Tensor | None = None,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k (%) both ways for paired data; ``text_image[j]`` is the image caption j belongs to (default: j)."""
    sim = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T  # [N_img, N_txt]
    n_img, n_txt = sim.shape
    owner = torch.arange(n_txt) if text_image is None else torch.as_tensor(text_image, dtype=torch.long)
    if len(owner) != n_txt or (owner < 0).any() or (owner >= n_img).any():
        raise ValueError("text_image must name an image (0..N_img-1) for every text")
    out = {}
    # image -> text: rank of the best-ranked own caption
    order = sim.argsort(1, descending=True)  # [N_img, N_txt] text ids by rank
    own = owner[order] == torch.arange(n_img).reshape(-1, 1)
    first = torch.where(own.any(1), own.float().argmax(1), torch.full((n_img,), n_txt))
    # text -> image: rank of its image
    rank_t = (sim.T > sim.T.gather(1, owner.reshape(-1, 1))).sum(1)
    for k in ks:
        out[f"i2t_r@{k}"] = float((first < k).double().mean() * 100)
        out[f"t2i_r@{k}"] = float((rank_t < k).double().mean() * 100)
    return out


def evaluate_model(model, images: torch.Tensor | None, labels: torch.Tensor, classes: Sequence[str],
                   templates: Sequence[str] = CIFAR10_TEMPLATES, synonyms: dict | bool = True,
                   image_emb: torch.Tensor | None = None, batch_size: int = 32) -> dict:
    """Zero-shot top-1 of a CLIP model (``compress.models.clip.CLIPModel``) on labelled images, or on their
    precomputed image embeddings (``image_emb``); also with class names only when synonyms are used."""
    if image_emb is None:
        with torch.inference_mode():
            image_emb = torch.cat([model.encode_image(images[s:s + batch_size])
                                   for s in range(0, len(images), batch_size)])
    enc = lambda ps: model.encode_text(list(ps))
    out = {"top1": zero_shot_top1(image_emb, labels, class_embeddings(enc, classes, templates, synonyms)),
           "images": len(image_emb), "templates": list(templates), "synonyms": bool(synonyms)}
    if synonyms:
        out["top1_names_only"] = zero_shot_top1(image_emb, labels, class_embeddings(enc, classes, templates, False))
    return out


__all__ = ["SYNONYMS", "class_embeddings", "class_prompts", "evaluate_model", "retrieval_recall",
           "zero_shot_predict", "zero_shot_top1"]
