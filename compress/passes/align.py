"""Output alignment: a linear map after the encoder's final norm, fitted in closed form so the compressed
encoder's features match the fp32 teacher's (no labels).

Recovery's short low-learning-rate distillation leaves the pruned encoder's features with a systematic,
largely linear distortion; a probe or head fitted on the original features reads it as noise. The map
``y' = W y + c`` (one D x D linear per token, ~1% of a ViT-S's FLOPs at 257 tokens) is the weighted
least-squares minimiser of the pooled term of the distillation loss recovery uses
(``compress.distill.Distiller``): the [class token, mean patch token] vector a probe or head reads, each
sample weighed by 1 / ||teacher pooled||^2 (both halves are affine in the tokens, so the map commutes
with pooling). ``rows: tokens`` adds the token term (each output token, 1 / ||teacher tokens||^2), for
dense consumers; on the pruned DINOv2 ViT-S it fitted the pooled features worse (docs/pruning.md).
The images are the recipe's data minus those recovery distilled on (on those the pruned model is closer
to its teacher than on unseen images, so a map fitted there under-corrects: measured in docs/pruning.md).
The loss before and after is reported on further images that the fit did not see.
"""
from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field

from .. import ui
from ..errors import UserError
from ..distill import Distiller, Moments, TeacherTargets
from ..models.heads import OutputMap
from ..models.pooling import pooled
from ..models.vit import VisionTransformer
from ..pipeline.base import Pass, PassConfig, register_pass


class AlignConfig(PassConfig):
    images: int = Field(1024, ge=1, le=100_000, description="images the map is fitted on (2 pooled rows each)")
    holdout: int = Field(64, ge=0, le=10_000, description="further images the loss is reported on")
    batch_size: int = Field(16, ge=1, le=1024)
    split: Literal["train", "test"] = "train"
    seed: int = 2  # recovery's images (seed 1) are excluded whatever the seed
    rows: Literal["pooled", "tokens"] = Field(
        "pooled", description="pooled: match the [class, mean patch] vectors a probe or head reads; "
        "tokens: also every output token (for dense consumers), weighed as in the distillation loss")
    damp: float = Field(1e-3, ge=0, le=1, description="ridge towards the identity, x the mean diagonal of E[y y^T]")


def _rows(y: torch.Tensor, t: torch.Tensor, num_prefix: int, tokens: bool):
    """(student rows, teacher rows, weights) of the distillation loss's terms for one batch."""
    n, d = t.shape[0], t.shape[-1]
    w = 1.0 / t.pow(2).flatten(1).sum(1).clamp_min(1e-12)
    if t.ndim == 2:  # pooled encoders: the output vector is all there is
        return [(y, t, w)]
    py, pt = pooled(y, num_prefix).reshape(n, -1, d), pooled(t, num_prefix).reshape(n, -1, d)
    wp = 1.0 / pt.pow(2).flatten(1).sum(1).clamp_min(1e-12)
    out = [(py, pt, wp[:, None].expand(n, py.shape[1]))]
    return out + [(y, t, w[:, None].expand(n, y.shape[1]))] if tokens else out


def align_section(rec: dict, _run_dir) -> str:
    lines = [f"- a {rec['dim']} x {rec['dim']} linear map after the final norm, fitted ({rec['config']['rows']} rows) "
             f"on {rec['images']} {rec['split']} images (teacher: the fp32 model; no labels; "
             f"{rec['excluded_recovery_images']} images recovery distilled on left out)"]
    for what, key in (("pooled features' relative error", "pooled_loss"), ("distillation loss", "loss")):
        b, a = rec.get(f"{key}_before"), rec.get(f"{key}_after")
        if b is not None and a is not None:
            n = rec["holdout_images"]
            lines.append(f"- {what} on {n} images the fit did not see: {b:.4f} -> {a:.4f} ({a / max(b, 1e-12) - 1:+.1%})")
    return "\n".join(lines + [f"- {rec['cpu_seconds'] / 60:.1f} CPU min ({rec['seconds'] / 60:.1f} wall)"])


@register_pass
class AlignPass(Pass):
    name = "align"
    Config = AlignConfig
    summary = "least-squares linear map after the final norm, matching the fp32 teacher's features"
    forbid_after = {"quantize": "align adds a float linear layer"}
    report_section = staticmethod(align_section)

    def run(self, state, ctx):
        c, model, teacher = self.config, state.model, ctx.reference.model.eval()
        t0, c0 = time.time(), time.process_time()
        if not isinstance(model, VisionTransformer) or model.cfg.num_classes:
            raise UserError("the align pass maps an encoder's output features (a ViT without classification head)",
                            "drop passes.align for classifiers: distil their logits in recovery instead")
        if state.record("quantize") is not None:
            raise UserError("the align pass must run before quantize (it adds a float linear layer)",
                            "move passes.align above passes.quantize in the recipe")
        if not isinstance(model.norm, OutputMap):
            model.norm = OutputMap(model.norm, teacher.cfg.embed_dim)
        targets = self._targets(state, ctx, teacher)
        n = min(c.images, len(targets) - c.holdout)
        if n < 1:
            raise UserError(f"the align pass found {len(targets)} {c.split} images that recovery did not use, "
                            f"needs images + holdout ({c.images + c.holdout})",
                            "lower passes.align.images / holdout, or use a larger dataset")
        fit = [list(range(s, min(s + c.batch_size, n))) for s in range(0, n, c.batch_size)]
        held = [list(range(s, min(s + c.batch_size, n + c.holdout))) for s in range(n, n + c.holdout, c.batch_size)]
        distiller, prefix = Distiller(teacher.cfg), teacher.cfg.num_prefix_tokens
        m = Moments(torch.float64)
        with torch.inference_mode():
            before = _losses(model, distiller, targets, held, prefix)
            with _identity(model.norm.map):
                for idx in ui.progress(fit, total=len(fit), desc="align", unit="batch"):
                    x, t = targets.batch(idx)
                    for ys, ts, w in _rows(model(x).double(), t.double(), prefix, c.rows == "tokens"):
                        m.add(ys, ts, True, w)
        d = model.norm.map.in_features
        m.solve(model.norm.map, c.damp, prior=torch.cat([torch.eye(d), torch.zeros(1, d)]))  # ridge towards no change
        with torch.inference_mode():
            after = _losses(model, distiller, targets, held, prefix)
        return {"images": n, "holdout_images": sum(map(len, held)), "split": self.config.split,
                "excluded_recovery_images": self.excluded,
                "loss_before": before[0], "loss_after": after[0], "pooled_loss_before": before[1],
                "pooled_loss_after": after[1], "dim": teacher.cfg.embed_dim,
                "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}

    def _targets(self, state, ctx, teacher) -> TeacherTargets:
        """``images + holdout`` images of the recipe's data that recovery did not distil on: on those the
        pruned model is closer to its teacher than on unseen images, and a map fitted there under-corrects."""
        from ..data import Subset
        from ..utils.fingerprint import model_fingerprint

        c, seen = self.config, set()
        self.excluded, drawn = 0, len(ctx.draws)
        prune = state.record("prune")
        if prune is not None and prune["config"]["recovery"]["split"] == c.split:
            r = prune["config"]["recovery"]
            seen = set(ctx.data(r["split"], r["images"], seed=r["seed"]).indices.tolist())
        want = c.images + c.holdout
        ds = ctx.data(c.split, want + len(seen), seed=c.seed)
        fresh = np.asarray([i for i in ds.indices if i not in seen])
        self.excluded = len(ds.indices) - len(fresh)
        pick = np.sort(np.random.default_rng(c.seed).permutation(fresh)[:want])  # class-balanced as ``ds``
        ds = Subset(ds.source, pick, ds.preprocess)
        ctx.draws[drawn:] = [{"role": "data", "split": c.split, "indices": pick}]  # what it fits on, not the pool
        return TeacherTargets(teacher, ds, model_fingerprint(teacher), ctx.recipe.data.batch_size)

    @classmethod
    def rebuild(cls, model, record: dict) -> None:
        if record.get("dim") and not isinstance(model.norm, OutputMap):
            model.norm = OutputMap(model.norm, record["dim"])


def _losses(model, distiller, targets, batches, prefix) -> tuple[float | None, float | None]:
    """Held-out distillation loss, and its pooled term alone (relative squared error of the pooled vector)."""
    if not batches:
        return None, None
    full, pool = [], []
    for idx in batches:
        x, t = targets.batch(idx)
        y = model(x)
        full.append(distiller.loss(y, t))
        py, pt = (pooled(y, prefix), pooled(t, prefix)) if t.ndim == 3 else (y, t)
        pool.append((py - pt).pow(2).sum(-1) / pt.pow(2).sum(-1).clamp_min(1e-12))
    return float(torch.cat(full).mean()), float(torch.cat(pool).mean())


class _identity:
    """Temporarily make ``layer`` the identity (the map is refitted from the norm's own output)."""

    def __init__(self, layer: nn.Linear):
        self.layer, self.saved = layer, None

    def __enter__(self):
        self.saved = (self.layer.weight.detach().clone(), self.layer.bias.detach().clone())
        with torch.no_grad():
            self.layer.weight.copy_(torch.eye(self.layer.in_features))
            self.layer.bias.zero_()

    def __exit__(self, *exc):
        if exc[0] is not None:
            with torch.no_grad():
                self.layer.weight.copy_(self.saved[0])
                self.layer.bias.copy_(self.saved[1])
