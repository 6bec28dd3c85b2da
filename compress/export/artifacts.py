"""Artifacts a model state ships as, and the exporters that make them.

The base exporter writes the float ONNX graph. Passes and targets register more (Q/DQ
INT8, INT4 MatMulNBits, ExecuTorch, OpenVINO, TensorRT kits) with ``register_exporter``;
each returns verified ``Artifact`` records.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .. import ui
from ..runtime import OrtRunner
from .onnx_export import export_onnx
from .verify import check_onnx, verify


@dataclass
class Artifact:
    name: str
    path: str  # relative to the run folder
    format: str  # onnx | ort | pte | openvino-ir | tensorrt-kit
    runtime: str  # onnxruntime | executorch | openvino | tensorrt
    precision: str  # what it really computes, e.g. fp32, w8a8, w4a16
    target: str | None = None
    notes: list[str] = field(default_factory=list)
    verification: dict | None = None
    sha256: str | None = None
    evaluate: bool = True  # run accuracy/latency on it here
    check: dict | None = None  # a target's targets_check result (speed-up over its baseline)

    def to_dict(self) -> dict:
        return asdict(self)


ExporterFn = Callable[["ExportRequest"], list[Artifact]]
EXPORTERS: dict[str, ExporterFn] = {}


def register_exporter(name: str):
    def deco(fn: ExporterFn) -> ExporterFn:
        EXPORTERS[name] = fn
        return fn

    return deco


@dataclass
class ExportRequest:
    state: object  # ModelState
    run_dir: Path
    recipe: object  # Recipe
    verify_images: object  # torch.Tensor
    targets: list[dict]
    float_onnx: Path | None = None  # written by the base exporter, reused by graph exporters
    reference: object = None  # the fp32 ModelState (targets export their fp32 baselines from it)
    artifacts: list = field(default_factory=list)  # artifacts so far (target exporters convert these)
    target: dict | None = None  # the target profile a ``target:`` exporter is called for

    @property
    def artifacts_dir(self) -> Path:
        d = self.run_dir / "artifacts"
        d.mkdir(parents=True, exist_ok=True)
        return d


def export_float_onnx(req: ExportRequest, filename: str | None = None, evaluate: bool = True) -> Artifact:
    """Float ONNX of ``req.state.model`` (its quantizers, if any, disabled), checked and verified."""
    from ..pipeline.float_view import float_view

    cfg = req.recipe.export
    path = req.artifacts_dir / (filename or cfg.onnx.filename)
    with float_view(req.state.model) as model:
        export_onnx(model, path, cfg.onnx.opset, cfg.onnx.dynamic_batch)
        check_onnx(path)
        v = verify(path, OrtRunner(path), model, req.verify_images, cfg.verify.max_abs, cfg.verify.min_cosine)
    ui.info(f"  verified {v.line()}")
    return Artifact("onnx-fp32", str(path.relative_to(req.run_dir)), "onnx", "onnxruntime", "fp32",
                    verification=v.to_dict(), evaluate=evaluate)
