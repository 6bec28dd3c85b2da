"""The CLIP teacher's outputs cached on disk in advance, so a student trains without the teacher in memory (as
TinyCLIP's offline teacher features): per training sample its image embedding and the text embedding of its caption
(a prompt of its class, drawn once from CLIP's templates x class names and synonyms), the class embeddings (CLIP's
prompt ensemble) for the logit term, and the teacher's logit scale. One safetensors file, written atomically; loading
it reads tensors only (no code)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .. import ui
from ..models.clip_prompts import TRAIN_TEMPLATES, prompts

KEYS = ("image", "text", "labels", "class_text", "scale")


def sample_captions(labels: list[int], classes: list[str], seed: int, synonyms: bool = True) -> list[str]:
    """One caption per sample: a seeded draw from its class's training prompts."""
    gen = torch.Generator().manual_seed(seed)
    bank = [prompts(c, TRAIN_TEMPLATES, synonyms) for c in classes]
    return [bank[y][int(torch.randint(len(bank[y]), (1,), generator=gen))] for y in labels]


def _encode_texts(teacher, texts: list[str], batch_size: int) -> torch.Tensor:
    uniq = sorted(set(texts))
    with torch.inference_mode():
        emb = torch.cat([teacher.encode_text(uniq[i:i + batch_size], normalize=False).float()
                         for i in range(0, len(uniq), batch_size)])
    pos = {t: i for i, t in enumerate(uniq)}
    return emb[torch.tensor([pos[t] for t in texts])]


def class_embeddings(teacher, classes: list[str], synonyms: bool = True) -> torch.Tensor:
    """CLIP's prompt ensemble per class: the normalised mean of the normalised prompt embeddings [C, E]."""
    out = []
    with torch.inference_mode():
        for c in classes:
            e = F.normalize(teacher.encode_text(prompts(c, TRAIN_TEMPLATES, synonyms)).float(), dim=-1)
            out.append(F.normalize(e.mean(0), dim=-1))
    return torch.stack(out)


def build(teacher, images_fn, labels: list[int], classes: list[str], dest: Path, seed: int = 0,
          batch_size: int = 32, synonyms: bool = True) -> dict:
    """Compute and save the teacher's outputs on every sample (``images_fn(indices)`` gives the images)."""
    from safetensors.torch import save_file

    from ..utils.io import atomic_path

    n = len(labels)
    teacher = teacher.eval()
    imgs = []
    bar = ui.bar(total=n, desc=f"teacher outputs ({n} samples)", unit="img")
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            idx = list(range(s, min(n, s + batch_size)))
            imgs.append(teacher.encode_image(images_fn(idx), normalize=False).float())
            bar.update(len(idx))
    bar.close()
    caps = sample_captions(list(labels), classes, seed, synonyms)
    out = {"image": torch.cat(imgs), "text": _encode_texts(teacher, caps, batch_size),
           "labels": torch.as_tensor(list(labels), dtype=torch.int64), "class_text": class_embeddings(teacher, classes, synonyms),
           "scale": teacher.logit_scale.detach().exp().float().reshape(())}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        save_file({k: v.contiguous() for k, v in out.items()}, str(tmp))
    return out


def load(path: Path) -> dict:
    from ..models.checkpoint import load_state_dict

    out = load_state_dict(path)
    missing = [k for k in KEYS if k not in out]
    if missing:
        from ..errors import UserError

        raise UserError(f"teacher cache {path} lacks {missing}", f"delete {path}: it is rebuilt")
    return out


__all__ = ["KEYS", "build", "class_embeddings", "load", "sample_captions"]
