"""The align pass: a least-squares linear map after the final norm that makes the compressed encoder's
features match the teacher's (exact when the distortion is linear), its checkpoint, export and INT8."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from compress.errors import UserError
from compress.models.heads import OutputMap
from compress.passes.align import AlignConfig, AlignPass
from compress.passes.prune import PruneConfig, PrunePass
from compress.pipeline.context import RunContext
from compress.pipeline.state import ModelState
from compress.recipes.schema import Recipe
from compress.pipeline.checkpoint import load_checkpoint

from test_prune_pass import _tiny_state

pytestmark = pytest.mark.timeout(180)


def _ctx(tmp_path, image_folder, reference: ModelState) -> RunContext:
    recipe = Recipe(data={"path": str(image_folder), "batch_size": 4, "calibration": {"count": 8}})
    return RunContext(recipe, tmp_path, reference)


def _distorted(state: ModelState, seed: int = 3) -> tuple[ModelState, torch.Tensor, torch.Tensor]:
    """A student whose output is an invertible affine map of the teacher's: y = t A + b."""
    student = state.clone()
    d = student.cfg.embed_dim
    g = torch.Generator().manual_seed(seed)
    a = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g) / d**0.5
    b = torch.randn(d, generator=g)
    lin = torch.nn.Linear(d, d)
    with torch.no_grad():
        lin.weight.copy_(a.T)
        lin.bias.copy_(b)
    student.model.norm = torch.nn.Sequential(student.model.norm, lin)
    return student, a, b


def test_align_inverts_a_linear_distortion_of_the_output(tmp_path, image_folder):
    teacher = _tiny_state()
    student, _, _ = _distorted(teacher)
    cfg = AlignConfig(images=12, holdout=6, damp=0.0, rows="tokens")  # 204 token rows: determined exactly
    rec = AlignPass(cfg).run(student, _ctx(tmp_path, image_folder, teacher))
    assert rec["images"] == 12 and rec["holdout_images"] == 6 and rec["excluded_recovery_images"] == 0
    assert rec["loss_before"] > 0.05 and rec["loss_after"] < 1e-6 * rec["loss_before"]  # on images the fit never saw
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        s, t = student.model(x), teacher.model(x)
    assert (s - t).norm() < 1e-3 * t.norm()  # on inputs unlike the calibration images too


def test_align_reduces_the_held_out_loss_of_pruning_without_recovery(tmp_path, image_folder):
    """Half the last block's MLP units removed (no recovery): the error is not linear in the output, yet the
    map lowers it by a third (pooled rows) to a half (all tokens) on images the fit never saw; an unchanged
    student stays unchanged."""
    teacher = _tiny_state()
    with torch.no_grad():  # trained-like LayerScale: the branches matter
        for blk in teacher.model.blocks:
            blk.ls1.gamma.fill_(1.0)
            blk.ls2.gamma.fill_(1.0)
    same = teacher.clone()
    rec = AlignPass(AlignConfig(images=12, holdout=6)).run(same, _ctx(tmp_path, image_folder, teacher))
    assert rec["loss_before"] < 1e-6 and rec["loss_after"] < 1e-6  # teacher outputs are kept in fp16
    student = teacher.clone()
    with torch.no_grad():
        fc1 = student.model.blocks[-1].mlp.fc1
        fc1.weight[: fc1.out_features // 2] = 0
        fc1.bias[: fc1.out_features // 2] = 0
    pooled = AlignPass(AlignConfig(images=12, holdout=6)).run(student.clone(), _ctx(tmp_path, image_folder, teacher))
    assert pooled["loss_before"] > 0.05 and pooled["loss_after"] < 0.7 * pooled["loss_before"]
    assert pooled["pooled_loss_after"] < 0.7 * pooled["pooled_loss_before"]
    tokens = AlignPass(AlignConfig(images=12, holdout=6, rows="tokens")).run(student, _ctx(tmp_path, image_folder, teacher))
    assert tokens["loss_after"] < 0.5 * tokens["loss_before"]  # it fits the token term too


def test_align_refuses_classifiers_quantized_models_and_pruning_after_it(tmp_path, image_folder):
    teacher = _tiny_state()
    clf = copy.deepcopy(teacher)
    clf.model.cfg.num_classes = 3
    with pytest.raises(UserError, match="without classification head"):
        AlignPass(AlignConfig()).run(clf, _ctx(tmp_path, image_folder, teacher))
    aligned = teacher.clone()
    aligned.history.append({"type": "align"})
    with pytest.raises(UserError, match="prune pass must run before align"):
        PrunePass(PruneConfig()).run(aligned, _ctx(tmp_path, image_folder, teacher))
    q = teacher.clone()
    q.history.append({"type": "quantize"})
    with pytest.raises(UserError, match="before quantize"):
        AlignPass(AlignConfig()).run(q, _ctx(tmp_path, image_folder, teacher))


def test_prune_align_int8_recipe_reloads_exports_and_folds_the_final_norm(tmp_path, image_folder):
    """recipes/prune-int8-vit.yaml itself on a tiny model, prune -> align -> fold -> W8A8: the aligned
    checkpoint rebuilds from its config, the map's input range is reparameterized like every post-LayerNorm
    linear, and the INT8 graph verifies against the pruned model and is scored."""
    from compress.pipeline.run import RunOptions, run_recipe
    from compress.pipeline.plan import load_recipe

    _tiny_state().save(tmp_path / "tiny")
    small = {"roofline": True, "saliency": {"images": 8, "batch_size": 4}, "reconstruct": {"images": 8}, "iterations": 1,
             "recovery": {"steps": 2, "images": 6, "batch_size": 4, "cache_teacher": False},
             "measure": {"runs": 2, "max_rounds": 0}}
    sets = [f"model={tmp_path / 'tiny'}", f"data={{path: {image_folder}, calibration: {{count: 8}}, batch_size: 4}}",
            "evaluation={probe_train: 12, test: 12, fidelity_images: 4, latency: {enabled: false}}",
            "export={verify: {images: 2}}", "passes.align={images: 8, holdout: 4}"]
    sets += [f"passes.prune.{k}={json.dumps(v)}" for k, v in small.items()]
    lr = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "prune-int8-vit.yaml", sets)
    assert [p.name for _, p in lr.passes] == ["prune", "align", "fold", "quantize"]
    out = tmp_path / "run"
    summary = run_recipe(lr, RunOptions(out=out))
    align = summary["passes"][1]
    assert align["images"] == 8 and align["pooled_loss_after"] < align["pooled_loss_before"]
    assert "images the fit did not see" in (out / "report.md").read_text()
    back, _ = load_checkpoint(out / "passes" / "02-align")
    assert isinstance(back.model.norm, OutputMap)
    x = torch.randn(2, 3, 32, 32)
    ref, _ = load_checkpoint(out / "passes" / "01-prune")
    with torch.inference_mode():
        assert not torch.allclose(back.model(x), ref.model(x))  # the map is not the identity
    quant = summary["passes"][-1]
    assert len(quant["reparam"]["post_layernorm"]) == 2 * 3 + 1  # norm1, norm2 of 3 blocks, and the final norm
    for a in summary["artifacts"]:
        assert a["verification"]["passed"], a["name"]
    prune = summary["passes"][0]
    assert prune["predicted_ratio"] <= 0.6 + 1e-9  # the recipe's latency target
    q = next(a for a in summary["artifacts"] if a["precision"].startswith("w8a8"))
    row = next(r for r in summary["evaluation"]["rows"] if r["name"] == q["name"])
    assert row["top1"] is not None and row["params"] < prune["original"]["params"]
