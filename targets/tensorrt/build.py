"""``compress build --target T KIT``: build the engine of a TensorRT build kit, on the device.

With the ``tensorrt`` Python package the kit's ``build_engine.build`` runs the builder; without it
``trtexec`` (JetPack ships it in /usr/src/tensorrt/bin) runs the manifest's command line. The kit
must have been made for this target, and the device's TensorRT should be the version the profile names.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

from ...errors import UserError
from .. import load_profile

TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")


def find_kit(path: Path, target: str) -> Path:
    """``path`` is a kit, or a run folder holding kits for ``target`` (the lowest precision is taken)."""
    if (path / "manifest.json").is_file():
        return path
    kits = sorted((path / "artifacts" / target).glob("*.trt-kit")) if path.is_dir() else []
    if not kits:
        raise UserError(f"{path} is not a TensorRT build kit (no manifest.json) and holds no kits for {target}",
                        f"export one with a recipe listing targets: [{target}]")
    order = {"int4": 0, "int8": 1, "fp16": 2, "fp32": 3}
    return min(kits, key=lambda k: order.get(json.loads((k / "manifest.json").read_text())["precision"], 9))


def load_kit_module(kit: Path):
    spec = importlib.util.spec_from_file_location("vitforge_build_engine", kit / "build_engine.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def trtexec_binary() -> str | None:
    return shutil.which("trtexec") or next((p for p in TRTEXEC_PATHS if Path(p).is_file()), None)


def build_from_kit(path: Path, target: str, timing_cache: str | None = None, dry_run: bool = False, trt=None) -> dict:
    prof = load_profile(target)
    if "tensorrt" not in prof["runtimes"]:
        raise UserError(f"target {target} does not run TensorRT", "compress build is for Jetson and NVIDIA GPU targets")
    kit = find_kit(Path(path), target)
    mod = load_kit_module(kit)
    man = mod.manifest(kit)
    if man.get("target") != target:
        raise UserError(f"{kit} was made for {man.get('target')}, not {target}",
                        f"export for {target}, or run compress build --target {man.get('target')}")
    cmd = mod.trtexec_command(man, cache=timing_cache or "timing.cache")
    result = {"kit": str(kit), "target": target, "precision": man["precision"], "trtexec": " ".join(cmd)}
    if dry_run:
        return result | {"built": False}
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
        return result | mod.build(kit, cache=Path(timing_cache) if timing_cache else None, trt=trt) | {"built": True}
    exe = trtexec_binary()
    if exe is None:
        raise UserError(f"TensorRT is not installed here (no tensorrt Python package, no trtexec): engines are built "
                        f"on the {target} itself", f"copy {kit} there and run: {result['trtexec']}")
    proc = subprocess.run([exe, *cmd[1:]], cwd=kit, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"trtexec failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or proc.stdout[-200:]}",
                        "see the kit's manifest.json for the Q/DQ rule check and the command")
    return result | {"built": True, "engine": str(kit / "model.engine")}
