"""The prune pass end to end on a tiny model: recipe -> pruned checkpoint -> verified ONNX -> report, the
measured-latency loop, and bad configurations."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress.errors import UserError
from compress.models import build
from compress.passes.prune import PruneConfig, PrunePass, pruner
from compress.pipeline.context import RunContext
from compress.pipeline.state import ModelState
from compress.recipes.schema import Recipe
from compress.pipeline.checkpoint import load_checkpoint

from conftest import tiny_config

pytestmark = pytest.mark.timeout(180)

FAST = {"roofline": True, "saliency": {"images": 8, "batch_size": 4},
        "recovery": {"steps": 4, "images": 8, "batch_size": 4, "cache_teacher": False}}


def _tiny_state() -> ModelState:
    torch.manual_seed(0)
    m = build(tiny_config(embed_dim=64, depth=3, num_heads=4)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                p.mul_(3)
    return ModelState(m, "tiny")


def test_recipe_run_prunes_exports_and_reports(tmp_path, image_folder):
    from compress.pipeline.run import RunOptions, run_recipe
    from compress.pipeline.plan import load_recipe

    _tiny_state().save(tmp_path / "tiny")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: tiny-prune
model: {tmp_path / 'tiny'}
data: {{path: {image_folder}, calibration: {{count: 8}}, batch_size: 4}}
passes:
  prune: {json.dumps(FAST | {"latency_target": 0.6, "iterations": 2, "measure": {"runs": 2, "max_rounds": 0}})}
evaluation: {{probe_train: 12, test: 12, fidelity_images: 4, latency: {{runs: 2, warmup: 1, pytorch: false}}}}
export: {{verify: {{images: 2}}}}
""")
    out = tmp_path / "run"
    summary = run_recipe(load_recipe(recipe), RunOptions(out=out))
    rec = summary["passes"][0]
    assert rec["type"] == "prune" and rec["predicted_ratio"] <= 0.6 + 1e-9
    assert rec["pruned"]["params"] < rec["original"]["params"] and rec["pruned"]["gflops"] < rec["original"]["gflops"]
    assert len(rec["steps"]) == 2 and rec["recovery"]["steps"] == 2
    assert all(len(s["stream_error"]) == 3 for s in rec["steps"])  # reconstructed after every step
    back, _ = load_checkpoint(out / "passes" / "01-prune")  # rebuilds from its config alone
    assert back.cfg.to_dict() == summary_cfg(out)
    model_row = next(r for r in summary["evaluation"]["rows"] if r["name"] == "onnx-fp32")
    assert model_row["params"] == sum(p.numel() for p in back.model.parameters())
    assert next(a for a in summary["artifacts"] if a["name"] == "onnx-fp32")["verification"]["passed"]
    report = (out / "report.md").read_text()
    assert "plots/prune_widths.png" in report and (out / "plots" / "prune_widths.png").stat().st_size > 5000
    assert "predicted by the latency model" in report


def summary_cfg(out: Path) -> dict:
    return json.loads((out / "passes" / "01-prune" / "config.json").read_text())["vit"]


def _ctx(tmp_path, image_folder, state) -> RunContext:
    recipe = Recipe(data={"path": str(image_folder), "batch_size": 4, "calibration": {"count": 8}})
    return RunContext(recipe, tmp_path, state.clone())


def test_measured_latency_loop_prunes_until_the_measurement_meets_the_target(tmp_path, image_folder, monkeypatch):
    # a fake ONNX Runtime whose pruned models run 30% slower than the latency model predicts
    def fake_best_ms(timers, runs=10, rounds=3):
        return [1.3 ** (t is not timers[0]) * t.predicted for t in timers]

    monkeypatch.setattr(pruner, "best_ms", fake_best_ms)

    class FakeTimer:
        def __init__(self, model, threads=1):
            self.predicted = pred.model(model.cfg)

        def stats(self):
            return {"params": 0, "gflops": 0.0}

        def close(self):
            pass

    monkeypatch.setattr(pruner, "OrtTimer", FakeTimer)
    state = _tiny_state()
    from compress.pruning.budget import Predictor, load

    pred = Predictor(load("x86-avx512", None, roofline=True), state.cfg, state.cfg.embed_dim)
    cfg = PruneConfig(**FAST | {"latency_target": 0.7, "iterations": 1, "measure": {"max_rounds": 4, "tolerance": 0.0}})
    rec = PrunePass(cfg).run(state, _ctx(tmp_path, image_folder, state))
    rounds = rec["measure_rounds"]
    assert len(rounds) >= 2 and rounds[0]["ratio"] > 0.7  # the first structure missed the measured target
    assert rec["target_met"] and rec["measured_ratio"] <= 0.7
    assert any(s.get("correction") for s in rec["steps"])


@pytest.mark.parametrize("bad, match", [
    ({"latency_target": 0}, "latency_target"), ({"latency_target": 1.5}, "latency_target"),
    ({"criterion": "random"}, "criterion"), ({"structures": ["heads", "layers"]}, "structures"),
    ({"structures": []}, "structures"), ({"recovery": {"lr": -1}}, "lr"), ({"align": 0}, "align"),
])
def test_bad_config_is_rejected_naming_the_field(bad, match):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=match):
        PruneConfig(**bad)


def test_unknown_target_and_non_vit_models_give_one_line_errors(tmp_path, image_folder):
    state = _tiny_state()
    with pytest.raises(UserError, match="unknown target 'no-such-device'"):
        PrunePass(PruneConfig(target="no-such-device")).run(state, _ctx(tmp_path, image_folder, state))
    with pytest.raises(UserError, match="latency table .* does not exist"):
        PrunePass(PruneConfig(lut=str(tmp_path / "missing.json"))).run(state, _ctx(tmp_path, image_folder, state))

    class NotViT(torch.nn.Module):
        cfg = None

    with pytest.raises(UserError, match="works on ViTs"):
        PrunePass(PruneConfig()).run(ModelState(NotViT(), "x"), _ctx(tmp_path, image_folder, state))


def test_pruned_encoder_with_lifted_output_quantizes_to_a_verified_int8_graph(tmp_path, image_folder):
    from compress.pipeline.run import RunOptions, run_recipe
    from compress.pipeline.plan import load_recipe

    _tiny_state().save(tmp_path / "tiny")
    prune = FAST | {"latency_target": 0.8, "iterations": 1, "structures": ["embed"], "min_embed": 0.5,
                    "recovery": FAST["recovery"] | {"steps": 0}, "measure": {"enabled": False}}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: tiny-prune-int8
model: {tmp_path / 'tiny'}
data: {{path: {image_folder}, calibration: {{count: 8}}, batch_size: 4}}
passes:
  prune: {json.dumps(prune)}
  quantize: {{weights: {{bits: 8}}, activations: {{bits: 8}}, export: [qdq]}}
evaluation: {{probe_train: 12, test: 12, fidelity_images: 4, latency: {{enabled: false}}}}
export: {{verify: {{images: 2}}}}
""")
    summary = run_recipe(load_recipe(recipe), RunOptions(out=tmp_path / "run"))
    rec = summary["passes"][0]
    assert rec["pruned"]["embed_dim"] < 64 and rec["output_width"] == 64
    q = next(a for a in summary["artifacts"] if a["precision"].startswith("w8a8"))
    assert q["verification"]["passed"]
    rows = {r["name"]: r for r in summary["evaluation"]["rows"]}
    assert rows[q["name"]]["top1"] is not None
