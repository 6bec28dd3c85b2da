"""The deployment manifest of a split model (``split.json``), validated strictly before anything is loaded.

Every file it names is relative to the manifest's folder and must stay inside it (no absolute path, no
``..``, no symlink out); its sha256 is checked before the file is opened by anything else. Malformed,
oversized or hostile manifests get one line (UserError, exit 2). Format in docs/splitting.md.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import UserError

FORMAT = "vitforge-split/1"
MAX_MANIFEST_BYTES = 1 << 20
SHA256 = Field(pattern=r"^[0-9a-f]{64}$")
_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Preprocess(Strict):
    """As compress.data.Preprocess: resize (shorter side then centre crop, or pad), then (x/255 - mean) / std."""

    size: int = Field(ge=1, le=4096)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Literal["bicubic", "bilinear", "nearest", "area", "lanczos"] = "bicubic"
    crop_pct: float = Field(1.0, gt=0, le=1)
    resize: Literal["crop", "pad"] = "crop"

    @model_validator(mode="after")
    def _std(self):
        if min(self.std) <= 0:
            raise ValueError("std values must be > 0")
        return self


class Part(Strict):
    index: int = Field(ge=0, le=1023)
    classes: list[int] = Field(min_length=1)
    artifact: str = Field(min_length=1, max_length=255)
    sha256: str = SHA256
    device: str = Field(pattern=_NAME)
    endpoint: str | None = Field(None, pattern=r"^tcp://[A-Za-z0-9.\-\[\]:]{1,200}:([0-9]{1,5}|\*)$")  # its default
    output: Literal["logits", "features"] = "logits"
    output_dim: int = Field(ge=1, le=1_000_000)
    preprocess: Preprocess


class Fusion(Strict):
    weights: str = Field(min_length=1, max_length=255)  # the trained head, safetensors
    weights_sha256: str = SHA256
    onnx: str = Field(min_length=1, max_length=255)  # the same head, run by the client
    onnx_sha256: str = SHA256
    order: list[int] = Field(min_length=1)  # part indices, in the order their outputs are concatenated
    missing: Literal["zeros-and-mask"] = "zeros-and-mask"


class Degraded(Strict):
    policy: Literal["fuse_available", "fail"] = "fail"
    min_parts: int = Field(1, ge=1)  # fuse_available: fewer answering parts than this -> fail


class RuntimeConfig(Strict):
    deadline_ms: int = Field(2000, ge=10, le=600_000)  # one call, every attempt included
    retries: int = Field(1, ge=0, le=10)  # re-sends within the deadline to parts that have not answered
    max_batch: int = Field(64, ge=1, le=4096)


class Manifest(Strict):
    format: Literal["vitforge-split/1"]
    build_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")
    model: str = Field(max_length=512)
    num_classes: int = Field(ge=2, le=1_000_000)
    class_names: list[str] | None = None
    parts: list[Part] = Field(min_length=1, max_length=1024)
    fusion: Fusion
    degraded: Degraded = Degraded()
    runtime: RuntimeConfig = RuntimeConfig()
    plan: dict | None = None  # device assignment with predicted latency (assign.Plan.to_dict), informative

    @model_validator(mode="after")
    def _consistent(self):
        K = len(self.parts)
        if sorted(p.index for p in self.parts) != list(range(K)):
            raise ValueError(f"parts must have indices 0..{K - 1}, each once")
        if sorted(self.fusion.order) != list(range(K)):
            raise ValueError(f"fusion.order must list the part indices 0..{K - 1}, each once")
        seen = sorted(c for p in self.parts for c in p.classes)
        if seen != list(range(self.num_classes)):
            raise ValueError(f"the parts' classes must cover 0..{self.num_classes - 1}, each in exactly one part")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError("class_names must have num_classes entries")
        if self.degraded.min_parts > K:
            raise ValueError(f"degraded.min_parts {self.degraded.min_parts} exceeds the {K} parts")
        for p in self.parts:
            if p.output == "logits" and p.output_dim != len(p.classes):
                raise ValueError(f"part {p.index}: logits output_dim must equal its {len(p.classes)} classes")
        return self

    def part(self, i: int) -> Part:
        for p in self.parts:
            if p.index == i:
                return p
        raise UserError(f"the manifest has no part {i}", f"parts are 0..{len(self.parts) - 1}")


def _where(err: dict) -> str:
    return ".".join(str(x) for x in err.get("loc", ())) or "manifest"


def parse(text: str, source: str = "manifest") -> Manifest:
    try:
        data = json.loads(text)
    except RecursionError:
        raise UserError(f"{source} is nested too deeply to be a manifest", "see docs/splitting.md for the format") \
            from None
    except ValueError as e:
        raise UserError(f"{source} is not valid JSON ({e})", "write the manifest as JSON (docs/splitting.md)") from None
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a JSON object", "see docs/splitting.md for the format")
    if data.get("format") != FORMAT:
        raise UserError(f"{source}: format must be {FORMAT!r}, not {str(data.get('format'))[:40]!r}",
                        "rebuild it with this vitforge")
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = " ".join(str(err.get("msg", "")).split())[:200]
        raise UserError(f"{source}: {_where(err)}: {msg}", "fix the manifest (docs/splitting.md)") from None


def load(path: str | Path) -> tuple[Manifest, Path]:
    """(manifest, its folder); nothing it names is read yet."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise UserError(f"manifest {p} {what}", "give the split.json written with the parts")
    if p.stat().st_size > MAX_MANIFEST_BYTES:
        raise UserError(f"manifest {p} is larger than {MAX_MANIFEST_BYTES} bytes", "give the split.json itself")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read manifest {p} ({e})", "give a UTF-8 JSON file") from None
    return parse(text, str(p)), p.resolve().parent


_SAFE_REL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$")


def confined(folder: Path, rel: str, what: str) -> Path:
    """``rel`` inside ``folder`` (after resolving symlinks), or one line saying why not."""
    if not _SAFE_REL.fullmatch(rel) or ".." in rel.split("/") or rel.startswith("/"):
        raise UserError(f"{what} {rel!r} is not a plain relative path inside the manifest's folder",
                        "use a file name like part0.onnx (no '..', no absolute path)")
    full = (folder / rel).resolve()
    if not full.is_relative_to(folder.resolve()):
        raise UserError(f"{what} {rel!r} points outside the manifest's folder", "keep every file beside split.json")
    return full


def verified(folder: Path, rel: str, sha: str, what: str) -> Path:
    """The path of a file named by the manifest, once its sha256 matches (checked before anything opens it)."""
    from ..utils.io import sha256_file

    full = confined(folder, rel, what)
    if not full.is_file():
        raise UserError(f"{what} {rel} is missing beside the manifest", "copy every file the manifest names")
    got = sha256_file(full)
    if got != sha:
        raise UserError(f"{what} {rel} does not match the manifest's sha256 ({got[:12]}... != {sha[:12]}...)",
                        "the file was changed or belongs to another build: copy the build's files again")
    return full


def write(path: str | Path, manifest: Manifest) -> None:
    from ..utils.io import write_text

    write_text(path, manifest.model_dump_json(indent=2, exclude_none=True) + "\n")
