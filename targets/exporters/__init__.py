"""Target exporters: what each device runs, built from what the model state already has.

Registered by name with ``register_target_exporter`` (profiles list theirs under ``exporters``) when
``compress.targets.deploy`` imports them; ``check`` (targets_check) and ``runners`` (ExecuTorch and OpenVINO
runtimes) live beside them. They receive the
``ExportRequest`` with the target profile in ``req.target`` and the artifacts so far in
``req.artifacts`` (the float graph, and the quantization pass's Q/DQ INT8 / INT4 graphs when present),
convert what the device can run, verify every file in its runtime, and record the precision it
really computes plus a note whenever it differs from what the recipe asked for.
"""
from __future__ import annotations

import re
from pathlib import Path

from ... import ui
from ...export.artifacts import Artifact, ExportRequest
from .. import resolve_precision
from ..latency_models import canonical_precision

_LABEL = re.compile(r"^w(\d+(?:\.\d+)?)(?:\([^)]*\))?(?:a(\d+))?")


def art_precision(a: Artifact) -> str:
    """The target precision an artifact computes in: its precision string (``fp32``, or the quantize pass's
    ``w8a8 int8-gemm``, ``w4a16 fp32-gemm``, ``w4.50(mixed 4-8)a8 ...``) as fp32/fp16/bf16/fp8/int8/int4."""
    p = str(a.precision).lower().split()[0] if str(a.precision).strip() else "fp32"
    if p in ("fp32", "fp16", "bf16", "fp8", "int8", "int4"):
        return p
    m = _LABEL.match(p)
    if not m:
        return p
    w, act = float(m.group(1)), m.group(2)
    if act:  # activations quantized: the GEMMs run in int8 (sub-8-bit weights in int8 containers)
        return "int8"
    return "int4" if w <= 4 else "int8"  # weight-only


def target_dir(req: ExportRequest) -> Path:
    d = req.artifacts_dir / req.target["name"]
    d.mkdir(parents=True, exist_ok=True)
    return d


def rel(req: ExportRequest, path: Path) -> str:
    return str(Path(path).relative_to(req.run_dir))


def onnx_graphs(req: ExportRequest, runtime: str = "onnxruntime") -> list[tuple[Artifact, Path]]:
    """The state's ONNX graphs: the float graph first, then quantized ones (not the fp32 baseline), one per
    precision, preferring those made for ``runtime`` (the quantize pass writes a TensorRT-flavoured Q/DQ
    graph beside the ONNX Runtime one)."""
    cands = [a for a in req.artifacts if a.format == "onnx" and a.runtime in ("onnxruntime", "tensorrt")
             and a.name != "baseline-fp32" and not a.target and a.inputs == "images"]
    mine = {art_precision(a) for a in cands if a.runtime == runtime}
    keep = [a for a in cands if a.runtime == runtime or art_precision(a) not in mine]
    keep.sort(key=lambda a: art_precision(a) != "fp32")
    return [(a, req.run_dir / a.path) for a in keep]


def baseline_onnx(req: ExportRequest) -> Path | None:
    """The fp32 model's ONNX: ``baseline-fp32`` when the state changed, else the float graph."""
    for a in req.artifacts:
        if a.name == "baseline-fp32":
            return req.run_dir / a.path
    return req.float_onnx if not req.state.history else None


def wanted_precisions(req: ExportRequest) -> list[str]:
    """What the recipe asks of this target: its ``precision``, else what the state's graphs hold."""
    asked = req.target.get("requested_precision")
    if asked:
        return [canonical_precision(asked)]
    return list(dict.fromkeys(art_precision(a) for a, _ in onnx_graphs(req))) or ["fp32"]


def nearest(req: ExportRequest, wanted: str, runtime_precisions: list[str]) -> tuple[str, list[str]]:
    """The precision to build for ``wanted`` on this target and runtime, with the notes that explain it."""
    prof = dict(req.target)
    got, note = resolve_precision(prof, wanted)
    notes = [note] if note else []
    if got not in runtime_precisions:
        prof["precisions"] = [p for p in prof["precisions"] if canonical_precision(p) in runtime_precisions]
        got2, note2 = resolve_precision(prof, got)
        notes.append(f"this exporter builds {', '.join(runtime_precisions)}: {got} -> {got2}" if not note2 else note2)
        got = got2
    for n in notes:
        ui.info(f"  note: {n}")
    return got, notes


def verify_limits(req: ExportRequest) -> tuple[float, float]:
    v = req.recipe.export.verify
    return v.max_abs, v.min_cosine
