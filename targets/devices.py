"""Device profiles: reading ``profiles/<name>.yaml`` and choosing the precision a device runs."""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import yaml

from ..errors import UserError

PROFILE_DIR = Path(__file__).parent / "profiles"

# the precision to try next when a device cannot run the one asked for ("int4" = weight-only)
FALLBACK = {"fp8": ["int8", "fp16", "bf16", "fp32"], "int4": ["int8", "fp16", "bf16", "fp32"],
            "int8": ["fp16", "bf16", "fp32"], "fp16": ["bf16", "fp32"], "bf16": ["fp16", "fp32"], "fp32": ["fp16"]}


# the device exporters of the upper layer (compress.targets.deploy registers one under each name): recipes and
# profiles are checked against these names without importing any exporter
BUILTIN_EXPORTERS = ("executorch", "onnxruntime", "openvino", "tensorrt")


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


@lru_cache(maxsize=None)
def _read(name: str) -> dict:
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown target {name!r}", f"known targets: {', '.join(list_profiles())}")
    prof = yaml.safe_load(path.read_text())
    missing = [k for k in ("name", "runtimes", "precisions", "exporters", "roofline", "sources") if k not in prof]
    if missing:
        raise UserError(f"target profile {path} lacks {', '.join(missing)}", "see docs/targets.md for the fields")
    return prof


def load_profile(target) -> dict:
    """A target's profile; ``target`` is a name, or a recipe ``TargetSpec`` whose options are merged in
    (``precision`` -> ``requested_precision``, ``exporters``, ``targets_check``)."""
    if isinstance(target, str):
        return copy.deepcopy(_read(target))
    spec = target if isinstance(target, dict) else target.model_dump()
    prof = copy.deepcopy(_read(spec["name"]))
    if spec.get("precision"):
        prof["requested_precision"] = spec["precision"]
    if spec.get("exporters"):
        prof["exporters"] = list(spec["exporters"])
    if spec.get("targets_check"):
        prof["targets_check"] = spec["targets_check"]
    return prof


def resolve_precision(profile: dict, wanted: str) -> tuple[str, str | None]:
    """(precision the target runs, a note when it is not ``wanted``)."""
    from .latency_models import canonical_precision

    want = canonical_precision(wanted)
    native = [canonical_precision(p) for p in profile["precisions"]]
    if want in native:
        return want, None
    for alt in FALLBACK.get(want, []):
        if alt in native:
            return alt, (f"{profile['name']} does not run {want} natively ({', '.join(native)}): "
                         f"using the nearest, {alt}")
    raise UserError(f"{profile['name']} runs none of {want} or its fallbacks", f"it runs {', '.join(native)}")

