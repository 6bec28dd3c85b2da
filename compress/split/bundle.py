"""Writing a split deployment: one ONNX artifact per part, the fusion head, and ``split.json`` with sha256s.

    write_bundle(out, parts=[(submodel_0, classes_0), ...], head=fusion_head, preprocess=pre,
                 build_id="run-3f2a", model="dinov2-s14-focus", devices=["pi-a", "pi-b"])
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

from ..utils.io import atomic_path, sha256_file
from . import manifest as mf
from .fusion import FusionHead, export_onnx, save_fusion


def export_part(module: torch.nn.Module, size: int, path: str | Path, opset: int = 17) -> int:
    """ONNX of one sub-model (input ``images`` [N, 3, size, size], dynamic N); returns its output width."""
    x = torch.zeros(2, 3, size, size)
    with torch.inference_mode():
        width = int(module.eval()(x).reshape(2, -1).shape[1])
    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["out"], dynamic_axes={"images": {0: "batch"}, "out": {0: "batch"}})
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return width


def write_bundle(out: str | Path, parts: list, head: FusionHead, preprocess: dict, build_id: str, model: str,
                 devices: list[str] | None = None, output: str = "logits", order: list[int] | None = None,
                 degraded: dict | None = None, runtime: dict | None = None, class_names: list[str] | None = None,
                 endpoints: list[str] | None = None, plan=None) -> Path:
    """Export every part and the head into ``out`` and write ``out/split.json``; returns its path.
    ``plan`` (an ``assign.Plan``) names each part's device and is recorded with its predicted latencies."""
    if plan is not None and hasattr(plan, "to_dict"):
        devices = devices or [plan.devices[d] if plan.devices else f"device{d}" for d in plan.device_of]
        plan = plan.to_dict()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pre = mf.Preprocess(**preprocess)
    entries = []
    for i, (module, classes) in enumerate(parts):
        name = f"part{i}.onnx"
        dim = export_part(module, pre.size, out / name)
        entries.append({"index": i, "classes": [int(c) for c in classes], "artifact": name,
                        "sha256": sha256_file(out / name), "device": (devices or [])[i] if devices else f"device{i}",
                        "output": output, "output_dim": dim, "preprocess": pre.model_dump(),
                        **({"endpoint": endpoints[i]} if endpoints else {})})
    save_fusion(head, out / "fusion.safetensors")
    export_onnx(head, out / "fusion.onnx")
    data = {"format": mf.FORMAT, "build_id": build_id, "model": model,
            "num_classes": sum(len(c) for _, c in parts), "parts": entries,
            "fusion": {"weights": "fusion.safetensors", "weights_sha256": sha256_file(out / "fusion.safetensors"),
                       "onnx": "fusion.onnx", "onnx_sha256": sha256_file(out / "fusion.onnx"),
                       "order": order if order is not None else list(range(len(parts)))},
            "degraded": degraded or {}, "runtime": runtime or {}}
    if class_names is not None:
        data["class_names"] = class_names
    if plan is not None:
        data["plan"] = plan
    m = mf.Manifest.model_validate(data)
    mf.write(out / "split.json", m)
    return out / "split.json"
