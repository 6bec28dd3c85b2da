"""Every artifact is loaded back in its runtime and compared numerically to its PyTorch model."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import VerificationError


@dataclass
class Verification:
    artifact: str
    runtime: str
    images: int
    max_abs: float
    cosine: float
    max_abs_limit: float
    min_cosine: float
    passed: bool
    # set when the limits were relaxed to the reference's own sensitivity (see ``self_sensitivity``)
    floor_noise: float | None = None
    floor_max_abs: float | None = None
    floor_cosine: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        floor = "" if self.floor_noise is None else (
            f"; the PyTorch model itself moves by max|diff| {self.floor_max_abs:.3g}, cosine {self.floor_cosine:.6f} "
            f"under input noise {self.floor_noise:g}, limits {FLOOR_FACTOR:g}x that")
        return (f"{Path(self.artifact).name} [{self.runtime}]: max|diff| {self.max_abs:.3g} (limit {self.max_abs_limit:g}), "
                f"cosine {self.cosine:.6f} (min {self.min_cosine:g}) on {self.images} images{floor}: {verdict}")


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, cosine similarity of the flattened outputs)."""
    a, b = a.double().flatten(), b.double().flatten()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return (a - b).abs().max().item(), cos


FLOOR_FACTOR = 2.0


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


def verify(artifact: str | Path, run_artifact: Callable, reference: Callable, images: torch.Tensor,
           max_abs: float, min_cosine: float, runtime: str = "onnxruntime", strict: bool = True,
           floor_noise: float | None = None) -> Verification:
    """Run ``images`` through the artifact and the PyTorch reference; fail loudly past the limits.

    With ``floor_noise``, an artifact past the limits still passes when it stays within ``FLOOR_FACTOR`` times
    the reference's own sensitivity to input noise of that size (``self_sensitivity``): a wrong scale or a
    misplaced node moves the output far beyond that, a flipped rounding does not."""
    got = run_artifact(images)
    with torch.inference_mode():
        want = reference(images)
    if got.shape != want.shape:
        raise VerificationError(f"{artifact}: output shape {tuple(got.shape)} != PyTorch {tuple(want.shape)}")
    mab, cos = compare(got, want)
    v = Verification(str(artifact), runtime, len(images), mab, cos, max_abs, min_cosine,
                     passed=bool(mab <= max_abs and cos >= min_cosine))
    if not v.passed and floor_noise:
        f_mab, f_cos = self_sensitivity(reference, images, floor_noise, want=want)
        v.floor_noise, v.floor_max_abs, v.floor_cosine = floor_noise, f_mab, f_cos
        v.max_abs_limit = max(max_abs, FLOOR_FACTOR * f_mab)
        v.min_cosine = min(min_cosine, 1 - FLOOR_FACTOR * (1 - f_cos))
        v.passed = bool(mab <= v.max_abs_limit and cos >= v.min_cosine)
    if strict and not v.passed:
        raise VerificationError(f"verification failed: {v.line()}")
    return v
