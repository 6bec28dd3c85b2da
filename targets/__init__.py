"""Target device profiles (data files, one per device class) and their exporters and profilers.

Installed as ``compress.targets``. Adding a device is adding ``profiles/<name>.yaml``.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from ..errors import UserError

PROFILE_DIR = Path(__file__).parent / "profiles"


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


@lru_cache(maxsize=None)
def load_profile(name: str) -> dict:
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown target {name!r}", f"known targets: {', '.join(list_profiles())}")
    return yaml.safe_load(path.read_text())
