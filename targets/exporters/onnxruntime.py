"""ONNX Runtime for CPU targets: the ``.onnx`` graphs the state has, plus ``.ort`` files for ONNX Runtime Mobile.

The ``.ort`` conversion follows ``onnxruntime.tools.convert_onnx_models_to_ort`` (fixed optimisations,
level "all"): for Arm devices without the x86-only NCHWc layout and with ``session.qdqisint8allowed``,
so the file stays portable to the device. Each ``.ort`` is loaded back and compared to the ``.onnx``
graph it came from (itself verified against PyTorch).
"""
from __future__ import annotations

from pathlib import Path

from ... import ui
from ...export.artifacts import Artifact, ExportRequest, register_target_exporter
from ...export.verify import verify
from ...runtime import OrtRunner
from ...utils.io import atomic_path
from . import art_precision, baseline_onnx, nearest, onnx_graphs, rel, target_dir, verify_limits, wanted_precisions

RUNS = ["fp32", "int8", "int4"]  # what ONNX Runtime's CPU kernels run from the graphs we ship


def is_arm(profile: dict) -> bool:
    return any(str(i).startswith("arm") for i in profile.get("device", {}).get("isa", [])) or \
        profile.get("device", {}).get("kind") in ("phone", "sbc")


def save_ort(src: Path, dest: Path, arm: bool) -> Path:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.add_session_config_entry("session.qdqisint8allowed", "1" if arm else "0")
    so.log_severity_level = 3
    with atomic_path(dest) as tmp:
        so.optimized_model_filepath = str(tmp)
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["NchwcTransformer"] if arm else [])
    return dest


@register_target_exporter("onnxruntime")
def export_onnxruntime(req: ExportRequest) -> list[Artifact]:
    prof, out_dir = req.target, target_dir(req)
    arm = is_arm(prof)
    max_abs, min_cos = verify_limits(req)
    graphs = onnx_graphs(req)
    have = {art_precision(a) for a, _ in graphs}
    notes = []
    for want in wanted_precisions(req):
        got, n = nearest(req, want, RUNS)
        notes += n
        if got not in have:
            notes.append(f"{prof['name']}: {got} asked, but the model state has no {got} ONNX graph "
                         f"(add a quantize pass); shipping {', '.join(sorted(have))}")
            ui.info(f"  note: {notes[-1]}")
    artifacts = []
    for a, src in graphs:
        dest = out_dir / (Path(a.path).stem + ".ort")
        save_ort(src, dest, arm)
        v = verify(dest, OrtRunner(dest), OrtRunner(src), req.verify_images, max_abs, min_cos)
        ui.info(f"  verified {v.line()} (against {Path(a.path).name})")
        artifacts.append(Artifact(
            f"{prof['name']}:{Path(a.path).stem}.ort", rel(req, dest), "ort", "onnxruntime", a.precision,
            target=prof["name"], verification=v.to_dict(), evaluate=False,
            notes=[f"ONNX Runtime Mobile format of {a.path} ({'arm' if arm else 'amd64'} optimisations); "
                   "accuracy equals that graph's"] + notes))
    from .check import run_check

    # the state's .onnx graphs themselves are what a CPU target runs: they carry the check
    run_check(req, "onnxruntime", baseline_onnx(req), [a for a, _ in graphs if a.evaluate])
    return artifacts
