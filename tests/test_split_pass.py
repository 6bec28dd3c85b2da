"""The split pass end to end through the CLI on a tiny, **randomly initialised** ViT (mechanics only: no
accuracy is claimed): recipe -> partition, per-part pruning + recovery, fusion head -> verified bundle ->
served evaluation on real part processes; bad configs exit 2 with one line."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import make_image_folder, tiny_config

from compress.cli import main
from compress.models import build
from compress.pipeline.state import ModelState

pytestmark = pytest.mark.timeout(240)

FAST = {"roofline": True, "saliency": {"images": 8, "batch_size": 4},
        "recovery": {"steps": 4, "images": 16, "batch_size": 4, "cache_teacher": False},
        "probe": {"images": 16, "epochs": 50}, "fusion": {"images": 12, "epochs": 50, "hidden": 16},
        "deploy": {"measure_runs": 3}}


def _recipe(tmp: Path, split: dict, after: str = "") -> Path:
    if not (tmp / "tiny").is_dir():
        torch.manual_seed(0)
        ModelState(build(tiny_config(embed_dim=64, depth=2, num_heads=4)).eval(), "tiny").save(tmp / "tiny")
        make_image_folder(tmp / "imgs", classes=4, per_class=8, split="train")
        make_image_folder(tmp / "imgs", classes=4, per_class=4, split="test")
    r = tmp / f"r{len(list(tmp.glob('r*.yaml')))}.yaml"
    r.write_text(f"""
name: tiny-split
model: {tmp / 'tiny'}
data: {{path: {tmp / 'imgs'}, calibration: {{count: 8}}, batch_size: 4}}
passes:
  split: {json.dumps(FAST | split)}
{after}evaluation: {{enabled: false}}
export: {{verify: {{images: 2}}}}
""")
    return r


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_split_recipe_builds_a_verified_bundle_served_like_the_ensemble(tmp_path, capsys):
    runs = []
    for i in range(2):  # twice: each part is deterministic given the seed
        out = tmp_path / f"run{i}"
        assert main(["--recipe", str(_recipe(tmp_path, {"parts": 2})), "--out", str(out), "--quiet"]) == 0
        runs.append(out)
    out = runs[0]
    man = out / "artifacts" / "split" / "split.json"
    m = json.loads(man.read_text())
    rec = json.loads((out / "passes" / "01-split" / "config.json").read_text())["history"][0]
    # the bundle: every file's sha256 as the manifest says
    for p in m["parts"]:
        assert _sha(man.parent / p["artifact"]) == p["sha256"]
    assert _sha(man.parent / m["fusion"]["onnx"]) == m["fusion"]["onnx_sha256"]
    assert _sha(man.parent / m["fusion"]["weights"]) == m["fusion"]["weights_sha256"]
    assert _sha(man) == rec["manifest_sha256"]
    # the parts cover the classes exactly once, and match the partition the pass recorded
    assert sorted(c for p in m["parts"] for c in p["classes"]) == list(range(4))
    assert [p["classes"] for p in m["parts"]] == rec["partition"]
    # each part within its parameter budget (1.3 x original / 2), counted in its exported graph as well
    budget = 1.3 * rec["original"]["params"] / 2
    assert rec["part_budget_params"] == pytest.approx(budget)
    for p, r in zip(m["parts"], rec["parts"]):
        g = onnx.load(str(man.parent / p["artifact"]))
        in_graph = sum(int(np.prod(t.dims)) for t in g.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
        assert r["params"] <= budget and r["params_ok"]
        assert in_graph <= budget and abs(in_graph - r["params"]) <= 0.02 * r["params"]
        assert r["params"] < rec["original"]["params"]
    assert all(v["passed"] and v["max_abs"] <= 1e-3 for v in rec["verification"])  # ONNX Runtime vs PyTorch
    ens = rec["ensemble_verification"]  # fused logits: ONNX parts + ONNX head vs the PyTorch parts + head
    assert ens["images"] == 4 and ens["max_abs"] <= 1e-3 and ens["argmax_agreement"] == 1.0
    # determinism: the second run produced the same parts, head and build
    m2 = json.loads((runs[1] / "artifacts" / "split" / "split.json").read_text())
    assert [p["sha256"] for p in m2["parts"]] == [p["sha256"] for p in m["parts"]]
    assert m2["fusion"]["onnx_sha256"] == m["fusion"]["onnx_sha256"] and m2["build_id"] == m["build_id"]
    # (the safetensors bytes may differ: its metadata map is written in a per-process random order)
    from safetensors.torch import load_file

    w1, w2 = (load_file(str(r / "artifacts" / "split" / "fusion.safetensors")) for r in runs)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    # the split artifacts are listed (not scored as single models) beside the unsplit baseline
    names = {a["name"] for a in json.loads((out / "export.json").read_text())["artifacts"]}
    assert {"split-part0", "split-part1", "split-fusion", "split-manifest", "baseline-fp32"} <= names
    assert "| part |" in (out / "report.md").read_text() and "the largest part is" in (out / "report.md").read_text()
    ms = rec["measured"]  # timed (random weights: no latency claim), each part against the unsplit model
    assert len(ms["parts_ms"]) == 2 and ms["unsplit_ms"] > 0 and ms["largest_ratio"] == max(ms["parts_ms"]) / ms["unsplit_ms"]
    # served (2 part processes + the client) vs the in-memory ensemble (same ONNX files, one process, no RPC)
    capsys.readouterr()
    assert main(["eval", str(man), "--data", str(tmp_path / "imgs"), "--images", "16", "--runs", "3",
                 "--reference", str(out / "artifacts" / "baseline-fp32.onnx"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 16 and r["degraded_calls"] == 0
    assert r["ensemble_argmax_agreement"] == 1.0 and r["ensemble_max_abs_diff"] <= 1e-5
    lat = r["latency"]
    assert lat["end_to_end_ms_p50"] > 0 and lat["empty_model_rpc_ms_p50"] > 0 and lat["unsplit_reference_ms_p50"] > 0
    assert lat["end_to_end_ms_p50"] >= lat["slowest_part_ms_p50"]


def test_one_part_is_the_uniformly_pruned_comparison(tmp_path):
    """parts: 1 with budget.params = 1.3 / K: one all-class model pruned to a K-way part's size (the baseline of
    K copies of one uniformly pruned model), deployed and verified like a split (random weights: mechanics)."""
    out = tmp_path / "run"
    r = _recipe(tmp_path, {"parts": 1, "budget": {"params": 0.65, "iterations": 1}})
    assert main(["--recipe", str(r), "--out", str(out), "--quiet"]) == 0
    rec = json.loads((out / "passes" / "01-split" / "config.json").read_text())["history"][0]
    assert rec["partition"] == [[0, 1, 2, 3]] and len(rec["parts"]) == 1
    assert rec["parts"][0]["params"] <= 0.65 * rec["original"]["params"] == rec["part_budget_params"]
    m = json.loads((out / "artifacts" / "split" / "split.json").read_text())
    assert len(m["parts"]) == 1 and m["parts"][0]["classes"] == [0, 1, 2, 3]
    assert rec["ensemble_verification"]["argmax_agreement"] == 1.0


@pytest.mark.parametrize("split, after, match", [
    ({"parts": 5}, "", "parts is 5 but the data has 4 classes"),
    ({"parts": 0}, "", "parts"),
    ({"parts": 2}, "  fold: {}\n", "cannot run after passes.split (split)"),  # refused at load, before any work
])
def test_bad_split_configs_exit_2_with_one_line(tmp_path, capsys, split, after, match):
    r = _recipe(tmp_path, split, after)
    capsys.readouterr()
    code = main(["--recipe", str(r), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0] and "Traceback" not in err[0]


def test_parts_are_assigned_to_the_recipe_targets_at_the_smallest_predicted_makespan():
    """Several targets: the plan is the brute-force optimum of the predicted per-device latencies."""
    import itertools
    from types import SimpleNamespace

    from compress.targets import load_profile

    from compress.passes.split import SplitConfig, SplitPass
    from compress.split.assign import make_device, part_costs
    from compress.split.submodel import PartModel

    torch.manual_seed(0)
    parts = [PartModel(build(tiny_config(embed_dim=e, depth=d, num_heads=2)), [k]) for k, (e, d) in
             enumerate([(64, 3), (32, 2), (48, 2)])]
    recs = [{"params": sum(p.numel() for p in m.parameters())} for m in parts]
    ctx = SimpleNamespace(targets=[load_profile("raspberry-pi-5"), load_profile("x86-avx512")])
    plan = SplitPass(SplitConfig(parts=3))._assign(ctx, parts, recs)
    devs = [make_device(t["name"], t["name"]) for t in ctx.targets]
    lat, _, _ = part_costs([m.encoder.cfg for m in parts], [r["params"] for r in recs], devs)
    best = min(max(sum(lat[i][d] for i in range(3) if a[i] == d) for d in range(2))
               for a in itertools.product(range(2), repeat=3))
    assert plan.makespan_ms == pytest.approx(best) and len(plan.device_of) == 3
    assert SplitPass(SplitConfig(parts=3))._assign(SimpleNamespace(targets=ctx.targets[:1]), parts, recs) is None


def test_a_classifier_is_split_on_its_own_logits(tmp_path, image_folder):
    """A model whose head has the data's classes: parts output their classes' logits (no probe), recovered with
    the KL on those logits; the bundle verifies (random weights: mechanics only)."""
    from compress.passes.split import SplitConfig, SplitPass
    from compress.pipeline.context import RunContext
    from compress.recipes.schema import Recipe

    torch.manual_seed(0)
    state = ModelState(build(tiny_config(embed_dim=64, depth=2, num_heads=4, num_classes=3,
                                         global_pool="token")).eval(), "tiny-cls")
    recipe = Recipe(data={"path": str(image_folder), "batch_size": 4, "calibration": {"count": 6}},
                    passes={"split": {}})
    ctx = RunContext(recipe, tmp_path, state.clone())
    rec = SplitPass(SplitConfig(**FAST | {"parts": 2, "saliency": {"images": 6, "batch_size": 3},
                                          "fusion": {"images": 6, "epochs": 20, "hidden": 8}})).run(state, ctx)
    assert not rec["probe_protocol"] and sorted(c for p in rec["partition"] for c in p) == [0, 1, 2]
    m = json.loads((tmp_path / rec["bundle"]).read_text())
    assert [p["output_dim"] for p in m["parts"]] == [len(c) for c in rec["partition"]]
    assert all(p["params_ok"] for p in rec["parts"]) and rec["ensemble_verification"]["argmax_agreement"] == 1.0
