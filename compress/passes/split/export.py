"""The split pass's artifacts: the bundle it wrote (``artifacts/split/``), re-checked against its manifest."""
from __future__ import annotations

from ...errors import UserError
from ...export.artifacts import Artifact, ExportRequest


def export_split(req: ExportRequest) -> list[Artifact]:
    from ...split import manifest as mf
    from ...utils.io import sha256_file

    rec = req.state.record("split")
    path = req.run_dir / rec["bundle"]
    if not path.is_file() or sha256_file(path) != rec["manifest_sha256"]:
        raise UserError(f"the split bundle {path} is missing or changed since the split pass wrote it",
                        "rerun with --force to rebuild it")
    m, folder = mf.load(path)  # schema, path confinement
    out = []
    for p, v in zip(m.parts, rec["verification"]):
        mf.verified(folder, p.artifact, p.sha256, f"part {p.index}")
        out.append(Artifact(f"split-part{p.index}", str((folder / p.artifact).relative_to(req.run_dir)), "onnx",
                            "onnxruntime", "fp32", target=p.device, verification=v, sha256=p.sha256, evaluate=False,
                            notes=[f"classes {p.classes}; served by compress serve-part {rec['bundle']} --part {p.index}"]))
    mf.verified(folder, m.fusion.onnx, m.fusion.onnx_sha256, "fusion head")
    mf.verified(folder, m.fusion.weights, m.fusion.weights_sha256, "fusion weights")
    out.append(Artifact("split-fusion", str((folder / m.fusion.onnx).relative_to(req.run_dir)), "onnx", "onnxruntime",
                        "fp32", verification=rec["fusion_verification"], sha256=m.fusion.onnx_sha256, evaluate=False))
    out.append(Artifact("split-manifest", rec["bundle"], "split-manifest", "vitforge-split", "fp32",
                        sha256=rec["manifest_sha256"], evaluate=False,
                        notes=["score through the served path: compress eval " + rec["bundle"]]))
    return out
