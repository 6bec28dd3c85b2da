"""A run of a randomly initialised model (``timm:<arch>`` without weights) says so in report.json and
report.md, and gives no accuracy verdict; a model with real weights is not flagged."""
from __future__ import annotations

import json

import pytest
import torch

from compress.models import build, weights_note
from compress.pipeline.state import ModelState
from conftest import tiny_config

pytestmark = pytest.mark.timeout(300)

RECIPE = """
name: random-run
model: {model}
data: {{path: {data}, calibration: {{count: 4}}, batch_size: 4}}
passes:
  fold: {{}}
evaluation: {{enabled: false}}
export: {{verify: {{images: 2}}}}
"""


def _run(tmp_path, image_folder, model: str) -> dict:
    from compress.cli import main

    r = tmp_path / f"{abs(hash(model))}.yaml"
    r.write_text(RECIPE.format(model=model, data=image_folder))
    out = tmp_path / f"run-{abs(hash(model))}"
    assert main(["--recipe", str(r), "--out", str(out), "--quiet"]) == 0
    return {"json": json.loads((out / "report.json").read_text()), "md": (out / "report.md").read_text()}


def test_random_weights_are_flagged_with_no_accuracy_verdict(tmp_path, image_folder):
    rep = _run(tmp_path, image_folder, "timm:vit_tiny_patch16_224")
    w = rep["json"]["weights"]
    assert w["random"] is True and w["accuracy_verdict"] is None and "no accuracy verdict" in w["note"]
    assert "**Random weights**" in rep["md"]


def test_real_weights_are_not_flagged(tmp_path, image_folder):
    torch.manual_seed(0)
    ModelState(build(tiny_config()), "tiny").save(tmp_path / "tiny")  # a saved model: its weights are given
    rep = _run(tmp_path, image_folder, str(tmp_path / "tiny"))
    assert rep["json"]["weights"] == {"random": False} and "Random weights" not in rep["md"]
    cfg = tiny_config()
    cfg.extra = {"randomly_initialized": True}
    assert weights_note(cfg)["random"]
