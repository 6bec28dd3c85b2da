"""The ``split`` pass's typed config (ED-ViT: class-wise sub-models, fused by an MLP)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ...pipeline.base import PassConfig
from ...recipes.schema import Strict

Structure = Literal["heads", "qk", "v", "mlp", "embed"]


class BudgetConfig(Strict):
    params: float = Field(1.3, gt=0, le=10, description="each part's parameters <= this x (original's / parts)")
    latency: float | None = Field(None, gt=0, le=1, description="each part's predicted latency <= this fraction "
                                  "of the original's (default: only the parameter budget)")
    iterations: int = Field(2, ge=1, le=50, description="saliency -> removal -> recovery rounds per part")
    extra_rounds: int = Field(4, ge=0, le=50, description="further removal rounds while a part is over budget")


class SaliencyConfig(Strict):
    images: int = Field(64, ge=2, le=100_000, description="calibration images (all classes) for the partition "
                        "and the class-restricted saliency")
    batch_size: int = Field(8, ge=1, le=1024)


class RecoveryConfig(Strict):
    steps: int = Field(200, ge=0, le=1_000_000, description="distillation steps per part (spread over iterations)")
    images: int = Field(1024, ge=1, le=1_000_000, description="training images drawn (the part keeps its classes')")
    batch_size: int = Field(16, ge=1, le=1024)
    lr: float = Field(1e-5, gt=0, le=1)
    warmup: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0, le=1)
    clip: float = Field(1.0, gt=0)
    bf16: bool = True
    cache_teacher: bool = True


class ProbeConfig(Strict):
    """Headless encoders: a linear probe on the pooled [class token, mean patch token]."""
    images: int = Field(1024, ge=2, le=1_000_000, description="training images the probes are fitted on")
    epochs: int = Field(300, ge=1, le=100_000)
    lr: float = Field(1e-2, gt=0, le=10)
    refit: bool = True  # refit each part's probe on its own features (else the teacher probe's rows)


class FusionConfig(Strict):
    images: int = Field(512, ge=2, le=1_000_000, description="held-out training images (disjoint from recovery "
                        "and probe images) the fusion head is trained on")
    hidden: int = Field(256, ge=1, le=65_536)
    epochs: int = Field(200, ge=1, le=100_000)
    lr: float = Field(1e-2, gt=0, le=10)
    part_dropout: float = Field(0.1, ge=0, lt=1, description="train on rows with parts dropped (degraded mode)")


class DeployConfig(Strict):
    deadline_ms: int = Field(2000, ge=10, le=600_000)
    retries: int = Field(1, ge=0, le=10)
    max_batch: int = Field(64, ge=1, le=4096)
    degraded: Literal["fuse_available", "fail"] = "fuse_available"
    min_parts: int = Field(1, ge=1, le=64)
    assign: Literal["auto", "exact", "greedy"] = "auto"
    verify_max_abs: float = Field(1e-3, gt=0, description="ONNX Runtime vs PyTorch, per part output element")
    verify_images: int = Field(4, ge=1, le=1024)
    measure_runs: int = Field(12, ge=0, le=10_000, description="ONNX Runtime timing runs of each part against the "
                              "unsplit model (batch 1, 1 thread, process CPU time, interleaved; 0: skip)")


class SplitConfig(PassConfig):
    VERSION: ClassVar[int] = 1
    parts: int = Field(4, ge=1, le=64, description="sub-models (K); at most the number of classes. 1 with "
                       "budget.params = 1.3 / K: one all-class model pruned to a K-way part's size, the comparison "
                       "(K copies of it, fused, predict what one copy fused does)")
    partition: Literal["similarity", "random"] = "similarity"
    structures: list[Structure] = Field(default_factory=lambda: ["heads", "qk", "v", "mlp", "embed"], min_length=1)
    target: str | None = Field(None, description="latency model's target (default: the recipe's first, else local)")
    roofline: bool = False
    align: int | None = Field(None, ge=1, le=256)
    min_heads: int = Field(1, ge=1, le=64)
    min_embed: float = Field(0.25, gt=0, le=1, description="smallest embedding width, fraction of the original")
    compensate: bool = True
    seed: int = 1
    budget: BudgetConfig = BudgetConfig()
    saliency: SaliencyConfig = SaliencyConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    probe: ProbeConfig = ProbeConfig()
    fusion: FusionConfig = FusionConfig()
    deploy: DeployConfig = DeployConfig()
