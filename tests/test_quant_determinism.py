"""A recipe's result does not depend on the machine's load: block reconstruction is budgeted in steps,
so two runs of a W4A4 recipe with reconstruction give byte-identical artifacts, even when the second
runs on a machine whose clock says every step took an hour."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from compress.models import build
from compress.pipeline.state import ModelState
from compress.utils.io import sha256_file
from compress.pipeline.checkpoint import load_checkpoint
from conftest import tiny_config

pytestmark = pytest.mark.timeout(600)

ITERS = 6


def _recipe(tmp_path: Path, image_folder: Path, extra: str = "") -> Path:
    torch.manual_seed(0)
    ModelState(build(tiny_config(embed_dim=64, depth=2, num_heads=2)).eval(), "tiny").save(tmp_path / "tiny")
    passes = {"fold": {}, "quantize": {"weights": {"bits": 4}, "activations": {"bits": 4},
                                       "attention": {"quantize": True, "softmax": "sulq"},
                                       "reconstruction": {"enabled": True, "iters": ITERS, "batch": 2}, "export": ["qdq"]}}
    r = tmp_path / "w4a4.yaml"
    r.write_text(f"""
name: tiny-w4a4
model: {tmp_path / 'tiny'}
data: {{path: {image_folder}, calibration: {{count: 8}}, batch_size: 4}}
passes: {json.dumps(passes)}
evaluation: {{enabled: false}}
export: {{verify: {{images: 2, quantized_max_abs: 10.0, quantized_min_cosine: 0.9}}}}
{extra}""")
    return r


class SlowClock:
    """``time`` as a heavily loaded machine sees it: each reading is an hour after the last."""

    def __init__(self):
        self.t = 0.0

    def time(self) -> float:
        self.t += 3600.0
        return self.t

    perf_counter = process_time = time


def test_two_runs_give_byte_identical_artifacts_whatever_the_load(tmp_path, image_folder, monkeypatch):
    from compress.passes.quantize import reconstruct
    from compress.pipeline.run import RunOptions, run_recipe
    from compress.pipeline.plan import load_recipe

    recipe = load_recipe(_recipe(tmp_path, image_folder))
    runs = {}
    for name in ("quiet", "loaded"):
        if name == "loaded":
            clock = SlowClock()
            monkeypatch.setattr(reconstruct, "time", types.SimpleNamespace(time=clock.time, perf_counter=clock.time,
                                                                           process_time=clock.time))
        out = tmp_path / name
        runs[name] = (run_recipe(recipe, RunOptions(out=out)), out)
    hashes = {}
    for name, (summary, out) in runs.items():
        arts = summary["artifacts"]
        assert arts and all(a.get("sha256") for a in arts)
        assert {a["sha256"] for a in arts} == {sha256_file(out / a["path"]) for a in arts}
        hashes[name] = {a["path"]: a["sha256"] for a in arts}
        rec = next(p for p in summary["passes"] if p["type"] == "quantize")
        assert [r["block"] for r in rec["reconstruction"]] == [0, 1]
        assert all(r["steps"] == ITERS for r in rec["reconstruction"])  # every block, all its steps
        assert f"steps per block: 0: {ITERS}, 1: {ITERS}" in (out / "report.md").read_text()
    assert hashes["quiet"] == hashes["loaded"]
    a, _ = load_checkpoint(runs["quiet"][1] / "passes" / "02-quantize")
    b, _ = load_checkpoint(runs["loaded"][1] / "passes" / "02-quantize")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_wall_clock_budget_is_refused_with_the_fix(tmp_path, image_folder):
    from compress.errors import UserError
    from compress.pipeline.plan import load_recipe

    r = _recipe(tmp_path, image_folder)
    r.write_text(r.read_text().replace('"batch": 2}', '"batch": 2, "time_budget_s": 60}'))
    with pytest.raises(UserError) as e:
        load_recipe(r)
    assert "time_budget_s was removed" in e.value.message and "iters" in e.value.message
    assert "\n" not in e.value.message
