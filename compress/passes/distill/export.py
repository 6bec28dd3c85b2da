"""The distill pass's artifact: the student CLIP's text tower as ONNX (the image tower is the pipeline's model and
ships as every pruned encoder does), so a deployment runs zero-shot with both towers from verified artifacts."""
from __future__ import annotations

from ...export.artifacts import Artifact, ExportRequest
from ...export.clip_text import export_text_tower
from ...models import clip as clip_models


def export_student_text(req: ExportRequest) -> list[Artifact]:
    rec = req.state.record("distill")
    student = clip_models.load_dir(req.run_dir / rec["student_clip"])
    path = req.artifacts_dir / "text-tower.onnx"
    v = req.recipe.export.verify
    ver = export_text_tower(student, path, req.recipe.export.onnx.opset, v.max_abs, v.min_cosine)
    return [Artifact("text-tower-fp32", str(path.relative_to(req.run_dir)), "onnx", "onnxruntime", "fp32",
                     verification=ver.to_dict(), evaluate=False, inputs="text",
                     notes=["the student CLIP's text tower: (input_ids, attention_mask) -> text embedding before "
                            "normalisation; tokenizer: the text tower's own (" + student.cfg.text.get("kind", "?") + ")"])]


__all__ = ["export_student_text"]
