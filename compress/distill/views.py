"""Augmented views of the training images, for distillation on cached teacher outputs (TinyCLIP caches the teacher's
embeddings per augmented sample). Sample ``s`` is view ``s % V`` of image ``s // V``: view 0 is the image as
preprocessed, every other a random resized crop (area share in ``scale``, aspect ratio 3/4 to 4/3, bilinear back to
the model's size) with a coin-flip mirror, drawn from (seed, image, view) alone, so the teacher-cache build and
every training rank see the same pixels, and a resumed run the same batches."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewSpec:
    views: int = 1  # per image, the unaugmented one included
    scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    seed: int = 0


def view(x: torch.Tensor, spec: ViewSpec, image: int, v: int) -> torch.Tensor:
    """View ``v`` of preprocessed image ``x`` [C, H, W] (``image``: its index in the subset)."""
    if v == 0:
        return x
    g = torch.Generator().manual_seed((spec.seed * 1_000_003 + image) * 1009 + v)
    u = torch.rand(5, generator=g).tolist()
    _, H, W = x.shape
    area = (spec.scale[0] + (spec.scale[1] - spec.scale[0]) * u[0]) * H * W
    aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
    w = max(1, min(W, round(math.sqrt(area * aspect))))
    h = max(1, min(H, round(math.sqrt(area / aspect))))
    top, left = int(u[2] * (H - h + 1)), int(u[3] * (W - w + 1))
    out = F.interpolate(x[None, :, top:top + h, left:left + w], size=(H, W), mode="bilinear", align_corners=False)[0]
    return out.flip(-1) if spec.flip and u[4] < 0.5 else out


class Views:
    """``len(ds) * views`` samples of a preprocessed subset ``ds`` (items (image tensor, label))."""

    def __init__(self, ds, spec: ViewSpec = ViewSpec()):
        if spec.views < 1:
            raise ValueError("views must be at least 1")
        self.ds, self.spec = ds, spec
        self.labels = [int(y) for y in ds.labels for _ in range(spec.views)]

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, samples) -> torch.Tensor:
        V = self.spec.views
        return torch.stack([view(self.ds[s // V][0], self.spec, s // V, s % V) for s in samples])


__all__ = ["ViewSpec", "Views", "view"]
