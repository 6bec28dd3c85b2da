"""``compress build --target T KIT``: build the engine of a TensorRT build kit, on the device.

With the ``tensorrt`` Python package this package's ``build_engine.build`` runs the builder; without
it ``trtexec`` (JetPack ships it in /usr/src/tensorrt/bin) runs the command line made from the
manifest's fields. No code from the kit is ever executed, and a real build first checks every file
against the sha256 the manifest lists. The kit must have been made for this target, and the device's
TensorRT should be the version the profile names.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from ...errors import UserError
from ...utils.io import sha256_file
from .. import load_profile
from . import build_engine

TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")
PRECISIONS = ("int4", "int8", "fp16", "fp32")
_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")  # an ONNX tensor name trtexec's --shapes can carry


def read_manifest(kit: Path) -> dict:
    """The kit's manifest, with the fields the build uses checked (a command line is made only from them)."""
    try:
        man = json.loads((kit / "manifest.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{kit}/manifest.json cannot be read ({e})", "re-export the kit") from None
    bad = _bad_field(man)
    if bad:
        raise UserError(f"{kit}/manifest.json is not a vitforge TensorRT kit manifest: {bad}", "re-export the kit")
    return man


def _bad_field(man) -> str | None:
    if not isinstance(man, dict) or man.get("kind") != "tensorrt-build-kit":
        return "kind is not tensorrt-build-kit"
    if man.get("precision") not in PRECISIONS:
        return f"precision {man.get('precision')!r}"
    if man.get("onnx") != "model.onnx":
        return f"onnx {man.get('onnx')!r} (must be model.onnx)"
    if not isinstance(man.get("strongly_typed"), bool):
        return "strongly_typed is not true/false"
    flags = man.get("builder_flags", [])
    if not isinstance(flags, list) or any(f not in ("fp16", "int8") for f in flags):
        return f"builder_flags {flags!r}"
    inp = man.get("input")
    if not isinstance(inp, dict) or not isinstance(inp.get("name"), str) or not _NAME.fullmatch(inp["name"]):
        return "input.name"
    if not isinstance(inp.get("dynamic"), bool):
        return "input.dynamic"
    ints = [inp.get(k) for k in ("min_batch", "opt_batch", "max_batch")] + list(inp.get("shape") or [None])
    if not all(type(v) is int and 0 < v < 1 << 20 for v in ints) or len(inp["shape"]) < 2:
        return "input shape / batch sizes are not positive integers"
    return None


def check_files(kit: Path, man: dict) -> None:
    """Every file the manifest lists must be in the kit with that sha256 (and the model and script listed)."""
    files = man.get("files")
    if not isinstance(files, dict) or not {"model.onnx", "build_engine.py"} <= set(files):
        raise UserError(f"{kit}/manifest.json lists no sha256 for model.onnx and build_engine.py",
                        "re-export the kit with this vitforge version")
    for name, want in files.items():
        path = kit / str(name)
        if Path(str(name)).name != name or not path.is_file():
            raise UserError(f"{kit}: the manifest lists {name!r}, which is not a file in the kit", "re-export the kit")
        if sha256_file(path) != want:
            raise UserError(f"{path} does not match the sha256 in the kit's manifest (changed since export)",
                            "re-export the kit, or copy it again")


def find_kit(path: Path, target: str) -> Path:
    """``path`` is a kit, or a run folder holding kits for ``target`` (the lowest precision is taken)."""
    if (path / "manifest.json").is_file():
        return path
    kits = sorted((path / "artifacts" / target).glob("*.trt-kit")) if path.is_dir() else []
    if not kits:
        raise UserError(f"{path} is not a TensorRT build kit (no manifest.json) and holds no kits for {target}",
                        f"export one with a recipe listing targets: [{target}]")
    return min(kits, key=lambda k: PRECISIONS.index(read_manifest(k)["precision"]))


def trtexec_binary() -> str | None:
    return shutil.which("trtexec") or next((p for p in TRTEXEC_PATHS if Path(p).is_file()), None)


def build_from_kit(path: Path, target: str, timing_cache: str | None = None, dry_run: bool = False, trt=None) -> dict:
    prof = load_profile(target)
    if "tensorrt" not in prof["runtimes"]:
        raise UserError(f"target {target} does not run TensorRT", "compress build is for Jetson and NVIDIA GPU targets")
    kit = find_kit(Path(path), target)
    man = read_manifest(kit)
    if man.get("target") != target:
        raise UserError(f"{kit} was made for {man.get('target')}, not {target}",
                        f"export for {target}, or run compress build --target {man.get('target')}")
    cmd = build_engine.trtexec_command(man, cache=timing_cache or "timing.cache")
    result = {"kit": str(kit), "target": target, "precision": man["precision"], "trtexec": " ".join(cmd)}
    if dry_run:
        return result | {"built": False}
    check_files(kit, man)
    if trt is None:
        try:
            import tensorrt as trt  # noqa: PLC0415 - only present on the device
        except ImportError:
            trt = None
    if trt is not None:
        want = str(prof["runtimes"]["tensorrt"]["version"])
        have = str(trt.__version__)
        if have.split(".")[0] != want.split(".")[0]:
            result["warning"] = f"TensorRT {have} here, the {target} profile names {want}"
        return result | build_engine.build(kit, cache=Path(timing_cache) if timing_cache else None, trt=trt) | {
            "built": True}
    exe = trtexec_binary()
    if exe is None:
        raise UserError(f"TensorRT is not installed here (no tensorrt Python package, no trtexec): engines are built "
                        f"on the {target} itself", f"copy {kit} there and run: {result['trtexec']}")
    proc = subprocess.run([exe, *cmd[1:]], cwd=kit, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"trtexec failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or proc.stdout[-200:]}",
                        "see the kit's manifest.json for the Q/DQ rule check and the command")
    return result | {"built": True, "engine": str(kit / "model.engine")}
