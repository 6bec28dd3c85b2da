"""The ``distill`` pass's typed config (TinyCLIP: affinity mimicking, weight inheritance, progressive compression)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ...pipeline.base import PassConfig
from ...recipes.schema import Strict

Width = Literal["heads", "mlp", "embed"]


class Losses(Strict):
    affinity: float = Field(1.0, ge=0, le=1000, description="affinity mimicking (image->text and text->image KL)")
    feature: float = Field(0.0, ge=0, le=1000, description="squared distance of the normalised image embeddings")
    logit: float = Field(0.0, ge=0, le=1000, description="KL of the zero-shot class distributions")
    contrastive: float = Field(0.0, ge=0, le=1000, description="label-aware contrastive loss on the captions")

    @model_validator(mode="after")
    def _some(self):
        if not any(self.model_dump().values()):
            raise ValueError("at least one loss needs a weight above 0")
        return self


class LayerSpec(Strict):
    keep: int = Field(..., ge=1, le=1000, description="layers kept, the most important (skip-one loss)")


class Inheritance(Strict):
    mode: Literal["manual", "auto"] = "manual"
    # inherit: the student keeps the teacher's weights; random: the same sub-network freshly initialised (the
    # baseline TinyCLIP measures inheritance against)
    init: Literal["inherit", "random"] = "inherit"
    # manual: layers by index ([0, 2, 4]) or by importance ({keep: N}); widths by Hessian saliency
    layers: list[int] | LayerSpec | None = Field(None, description="stage 1's layers (later stages keep theirs)")
    widths: list[Width] = Field(default_factory=lambda: ["heads", "mlp", "embed"], min_length=1)
    saliency_images: int = Field(64, ge=2, le=100_000, description="calibration images of the saliency")
    align: int = Field(8, ge=1, le=256, description="widths stay multiples of this (manual)")
    min_embed: float = Field(0.25, gt=0, le=1, description="smallest embedding width, fraction of the original")
    # auto: hard-concrete masks on the widths, trained with a Lagrangian to the stage's parameter target
    mask_steps: int = Field(100, ge=1, le=1_000_000, description="mask-learning steps per stage (auto)")
    mask_lr: float = Field(0.05, gt=0, le=10, description="AdamW lr of the masks' log-alpha")
    lambda_lr: float = Field(0.1, ge=0, le=100, description="ascent lr of the Lagrange multipliers (0: fixed)")
    penalty: float = Field(100.0, ge=0, le=1e6, description="initial quadratic multiplier l2 of the Lagrangian")
    target_warmup: float = Field(0.5, gt=0, le=1, description="share of the mask steps the target falls over")


class DDP(Strict):
    procs: int = Field(1, ge=1, le=256, description="processes (torchrun); the global batch is split over them")
    backend: Literal["gloo", "nccl"] = "gloo"


class Augment(Strict):
    """Augmented views per training image, each with its own cached teacher outputs (compress.distill.views)."""
    views: int = Field(1, ge=1, le=64, description="views per image, the unaugmented one included (1: none)")
    scale: tuple[float, float] = Field((0.5, 1.0), description="area share of the random resized crop")
    flip: bool = True

    @model_validator(mode="after")
    def _scale(self):
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"augment.scale {list(self.scale)} must satisfy 0 < low <= high <= 1")
        return self


class Stage(Strict):
    params: float = Field(..., gt=0, le=1, description="image tower's parameters, fraction of the original's")
    steps: int | None = Field(None, ge=0, le=10_000_000, description="distillation steps (default: the pass's)")


class DistillConfig(PassConfig):
    VERSION: ClassVar[int] = 1
    teacher: Literal["model", "lit"] = Field("model", description="model: the CLIP model entering the pass; lit: the "
                                             "cached LiT teacher (compress.distill.clip_teacher)")
    stages: list[Stage] = Field(default_factory=lambda: [Stage(params=0.5)], min_length=1, max_length=20)
    losses: Losses = Losses()
    inheritance: Inheritance = Inheritance()
    steps: int = Field(200, ge=0, le=10_000_000, description="distillation steps per stage after inheritance")
    batch_size: int = Field(32, ge=2, le=65_536, description="global batch (affinities are over the batch)")
    lr: float = Field(1e-4, gt=0, le=1)
    weight_decay: float = Field(0.05, ge=0, le=1)
    warmup: float = Field(0.05, ge=0, le=1)
    clip: float = Field(1.0, gt=0)
    images: int = Field(2000, ge=2, le=10_000_000, description="training images from the recipe's data")
    augment: Augment = Augment()
    split: Literal["train", "test"] = "train"
    seed: int = Field(0, ge=0, lt=2**31)
    save_every: int = Field(50, ge=1, le=10_000_000, description="steps between resumable checkpoints")
    ddp: DDP = DDP()

    @model_validator(mode="after")
    def _stages(self):
        prev = 1.0
        for i, s in enumerate(self.stages):
            if s.params > prev or (i and s.params == prev):
                raise ValueError(f"stage {i + 1} keeps {s.params} of the parameters, not less than its parent's {prev}: "
                                 "each stage must be smaller than the one it inherits from")
            prev = s.params
        if self.batch_size % self.ddp.procs:
            raise ValueError(f"batch_size {self.batch_size} must divide over ddp.procs {self.ddp.procs}")
        return self
