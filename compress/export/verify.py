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

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (f"{Path(self.artifact).name} [{self.runtime}]: max|diff| {self.max_abs:.3g} (limit {self.max_abs_limit:g}), "
                f"cosine {self.cosine:.6f} (min {self.min_cosine:g}) on {self.images} images: {verdict}")


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, cosine similarity of the flattened outputs)."""
    a, b = a.double().flatten(), b.double().flatten()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return (a - b).abs().max().item(), cos


def check_onnx(path: str | Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # checker raises ValidationError / InferenceError
        raise VerificationError(f"{path}: onnx.checker failed: {str(e).splitlines()[0][:200]}") from None


def verify(artifact: str | Path, run_artifact: Callable, reference: Callable, images: torch.Tensor,
           max_abs: float, min_cosine: float, runtime: str = "onnxruntime", strict: bool = True) -> Verification:
    """Run ``images`` through the artifact and the PyTorch reference; fail loudly past the limits."""
    got = run_artifact(images)
    with torch.inference_mode():
        want = reference(images)
    if got.shape != want.shape:
        raise VerificationError(f"{artifact}: output shape {tuple(got.shape)} != PyTorch {tuple(want.shape)}")
    mab, cos = compare(got, want)
    v = Verification(str(artifact), runtime, len(images), mab, cos, max_abs, min_cosine,
                     passed=bool(mab <= max_abs and cos >= min_cosine))
    if strict and not v.passed:
        raise VerificationError(f"verification failed: {v.line()}")
    return v
