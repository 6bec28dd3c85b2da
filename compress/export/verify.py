"""Every artifact is loaded back in a runtime and compared numerically to the model it came from: the PyTorch
model, or (for conversions of an already verified graph) that graph in ONNX Runtime. The record says which."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError, VerificationError

FLOOR_FACTOR = 2.0
# absolute limits of any relaxation: the noise floor never lets an artifact below this cosine, nor past this many
# times the recipe's max_abs (a model chaotic enough to need more cannot be told apart from a broken artifact)
FLOOR_MIN_COSINE = 0.95
FLOOR_MAX_ABS_FACTOR = 10.0
# lossy conversions checked against another graph (fp16/bf16 typing, another runtime's INT8 kernels): no element
# may move by more than this share of the reference's largest |output|, and this share of the images must keep
# their argmax prediction (``predictions``)
LOSSY_MAX_REL = {"fp16": 0.05, "bf16": 0.1, "int8": 0.25, "int4": 0.25}
LOSSY_MIN_AGREEMENT = 0.75


@dataclass
class Verification:
    artifact: str
    runtime: str  # where the artifact ran
    images: int
    max_abs: float
    cosine: float
    max_abs_limit: float  # the bounds actually applied (after any relaxation)
    min_cosine: float
    passed: bool
    reference: str = "the PyTorch model"  # what it was compared with
    reference_runtime: str = "pytorch"
    requested_max_abs: float | None = None  # the recipe's / exporter's bounds before any relaxation
    requested_min_cosine: float | None = None
    agreement: float | None = None  # share of images whose argmax prediction matches the reference's
    min_agreement: float | None = None
    # set when the limits were relaxed to the reference's own sensitivity (see ``self_sensitivity``)
    floor_noise: float | None = None
    floor_max_abs: float | None = None
    floor_cosine: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        floor = "" if self.floor_noise is None else (
            f"; the reference itself moves by max|diff| {self.floor_max_abs:.3g}, cosine {self.floor_cosine:.6f} "
            f"under input noise {self.floor_noise:g}: limits relaxed from max|diff| {self.requested_max_abs:g}, "
            f"cosine {self.requested_min_cosine:g} (at most to {FLOOR_MAX_ABS_FACTOR:g}x, cosine {FLOOR_MIN_COSINE:g})")
        agree = "" if self.agreement is None else (
            f", prediction agreement {100 * self.agreement:.0f}%"
            + (f" (min {100 * self.min_agreement:.0f}%)" if self.min_agreement is not None else ""))
        return (f"{Path(self.artifact).name} [{self.runtime}] vs {self.reference}: max|diff| {self.max_abs:.3g} "
                f"(limit {self.max_abs_limit:.3g}), cosine {self.cosine:.6f} (min {self.min_cosine:g}){agree} "
                f"on {self.images} images{floor}: {verdict}")


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, cosine similarity of the flattened outputs)."""
    a, b = a.double().flatten(), b.double().flatten()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return (a - b).abs().max().item(), cos


def predictions(out: torch.Tensor) -> torch.Tensor:
    """Each image's prediction: argmax of the logits, or of the class token's features for an encoder's tokens."""
    return (out[:, 0] if out.dim() == 3 else out.reshape(len(out), -1)).argmax(-1)


def agreement(got: torch.Tensor, want: torch.Tensor) -> float:
    return (predictions(got) == predictions(want)).double().mean().item()


def self_sensitivity(reference: Callable, images: torch.Tensor, noise: float, draws: int = 2,
                     want: torch.Tensor | None = None) -> tuple[float, float]:
    """How far ``reference`` moves from itself when its input moves by ``noise`` (float-rounding size): the worst
    (max abs difference, cosine) over ``draws`` seeded draws. At low precision a one-ulp change flips roundings that
    compound over the blocks, so no other runtime can match the model closer than the model matches itself."""
    with torch.inference_mode():
        want = reference(images) if want is None else want
        diffs = [compare(reference(images + noise * torch.randn(images.shape, generator=torch.Generator().manual_seed(s))),
                         want) for s in range(draws)]
    return max(d[0] for d in diffs), min(d[1] for d in diffs)


def check_onnx(path: str | Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # checker raises ValidationError / InferenceError
        raise VerificationError(f"{path}: onnx.checker failed: {str(e).splitlines()[0][:200]}") from None


def describe(reference: Callable) -> tuple[str, str]:
    """(what, runtime) of a reference runner: the PyTorch model, or an ONNX graph run in ONNX Runtime."""
    kind = getattr(reference, "kind", "pytorch")
    path = getattr(reference, "path", None)
    if kind == "onnxruntime" and path is not None:
        return f"{Path(path).name} in ONNX Runtime", kind
    return ("the PyTorch model", "pytorch") if kind == "pytorch" else (f"a {kind} reference", kind)


def verify(artifact: str | Path, run_artifact: Callable, reference: Callable, images: torch.Tensor,
           max_abs: float, min_cosine: float, runtime: str = "onnxruntime", strict: bool = True,
           floor_noise: float | None = None, max_rel: float | None = None, min_agreement: float | None = None,
           against: str | None = None) -> Verification:
    """Run ``images`` through the artifact and the reference; fail loudly past the limits.

    ``max_rel`` bounds every element's difference by that share of the reference's largest |output| (for
    lossy conversions whose absolute scale the recipe does not know); ``min_agreement`` bounds the share of
    images whose argmax prediction (``predictions``) differs. ``against`` names the reference in the record.
    With ``floor_noise``, an artifact past the limits still passes when it stays within ``FLOOR_FACTOR`` times
    the reference's own sensitivity to input noise of that size (``self_sensitivity``), never past
    ``FLOOR_MIN_COSINE`` / ``FLOOR_MAX_ABS_FACTOR``: a wrong scale or a misplaced node moves the output far
    beyond that, a flipped rounding does not."""
    got = run_artifact(images)
    with torch.inference_mode():
        want = reference(images)
    if got.shape != want.shape:
        raise VerificationError(f"{artifact}: output shape {tuple(got.shape)} != reference {tuple(want.shape)}")
    what, ref_runtime = describe(reference)
    if max_rel is not None:
        max_abs = min(max_abs, max_rel * want.double().abs().max().item())
    if not math.isfinite(max_abs):
        raise UserError(f"verification of {artifact} has no finite element-wise bound (max_abs {max_abs})",
                        "set export.verify.max_abs to a finite number")
    mab, cos = compare(got, want)
    agree = agreement(got, want)
    ok_agree = min_agreement is None or agree >= min_agreement
    v = Verification(str(artifact), runtime, len(images), mab, cos, max_abs, min_cosine,
                     passed=bool(mab <= max_abs and cos >= min_cosine and ok_agree),
                     reference=against or what, reference_runtime=ref_runtime, requested_max_abs=max_abs,
                     requested_min_cosine=min_cosine, agreement=agree, min_agreement=min_agreement)
    if not v.passed and floor_noise:
        f_mab, f_cos = self_sensitivity(reference, images, floor_noise, want=want)
        v.floor_noise, v.floor_max_abs, v.floor_cosine = floor_noise, f_mab, f_cos
        v.max_abs_limit = min(max(max_abs, FLOOR_FACTOR * f_mab), FLOOR_MAX_ABS_FACTOR * max_abs)
        v.min_cosine = min(min_cosine, max(FLOOR_MIN_COSINE, 1 - FLOOR_FACTOR * (1 - f_cos)))
        v.passed = bool(mab <= v.max_abs_limit and cos >= v.min_cosine and ok_agree)
    if strict and not v.passed:
        raise VerificationError(f"verification failed: {v.line()}")
    return v
