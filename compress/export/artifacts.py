"""Artifacts a model state ships as, and the exporters that make them.

The base exporter writes the float ONNX graph. A pass's descriptor declares the artifacts it adds (its
``exporter``: Q/DQ INT8, INT4 MatMulNBits); the upper targets layer registers the device exporters (ExecuTorch,
OpenVINO, TensorRT kits, ONNX Runtime .ort) here with ``register_target_exporter``. Each returns verified
``Artifact`` records.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .. import ui
from ..errors import UserError
from ..registry import TARGET_EXPORTERS
from ..runtime import OrtRunner
from ..utils.io import write_json
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
    inputs: str = "images"  # what the artifact takes: images, or text (a CLIP text tower)

    def to_dict(self) -> dict:
        return asdict(self)


ExporterFn = Callable[["ExportRequest"], list[Artifact]]


def register_target_exporter(name: str):
    """Decorator: ``fn`` exports for targets whose profile (or recipe entry) lists ``name`` under ``exporters``."""
    return TARGET_EXPORTERS.add(name)


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
    from ..models.float_view import float_view

    cfg = req.recipe.export
    path = req.artifacts_dir / (filename or plain_filename(cfg.onnx.filename))
    with float_view(req.state.model) as model, staged(req.run_dir, path) as tmp:
        export_onnx(model, tmp, cfg.onnx.opset, cfg.onnx.dynamic_batch)
        check_onnx(tmp)
        v = verify(path, OrtRunner(tmp), model, req.verify_images, cfg.verify.max_abs, cfg.verify.min_cosine)
    ui.info(f"  verified {v.line()}")
    return Artifact("onnx-fp32", str(path.relative_to(req.run_dir)), "onnx", "onnxruntime", "fp32",
                    verification=v.to_dict(), evaluate=evaluate)


def plain_filename(name: str) -> str:
    """``export.onnx.filename``: a plain ``.onnx`` file name inside artifacts/, never a path."""
    if (not name or "/" in name or "\\" in name or name.startswith(".") or Path(name).is_absolute()
            or Path(name).suffix != ".onnx" or name == "baseline-fp32.onnx"):
        raise UserError(f"export.onnx.filename {name!r} is not a plain .onnx file name",
                        "give a name like model.onnx (it is written inside the run's artifacts/ folder)")
    return name


@contextlib.contextmanager
def staged(run_dir: Path, dest: Path):
    """Yield a hidden path beside ``dest`` to write and verify an artifact at; it becomes ``dest`` only when the
    block succeeds. On an error the staged file, and any earlier artifact at ``dest``, are removed and ``dest``
    is taken out of the run's records (``withdraw``): nothing unverified is left or stays listed as verified."""
    tmp = dest.with_name(f".{dest.name}.staged{dest.suffix}")
    try:
        yield tmp
        os.replace(tmp, dest)
    except Exception:
        withdraw(run_dir, dest)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def withdraw(run_dir: Path, dest: Path) -> None:
    """Remove ``dest`` and its entries in export.json, report.json and (last) manifest.json."""
    shutil.rmtree(dest, ignore_errors=True) if dest.is_dir() else dest.unlink(missing_ok=True)
    rel = str(dest.relative_to(run_dir))
    for name in ("export.json", "report.json", "manifest.json"):
        f = run_dir / name
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        changed = False
        for key in ("artifacts", "files"):
            items = data.get(key) if isinstance(data, dict) else None
            if isinstance(items, list):
                keep = [a for a in items if not (isinstance(a, dict) and _within(str(a.get("path")), rel))]
                changed |= len(keep) != len(items)
                data[key] = keep
        if changed:
            write_json(f, data)


def _within(path: str, rel: str) -> bool:
    return path == rel or path.startswith(rel + "/")


def clean_stale(artifacts: Path) -> None:
    """Remove what an interrupted (killed) export left behind: hidden temporary files and folders
    (``atomic_path``/``atomic_dir``/``staged`` name theirs ``.<name>.*``) anywhere under artifacts/."""
    if not artifacts.is_dir():
        return
    for p in sorted(artifacts.rglob(".*"), key=lambda p: len(p.parts)):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
