"""One export path: the pipeline and `compress export` both call compress.pipeline.export_stage; every command-line
model option (--model, --weights, --data) goes through the recipe loader."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from compress.errors import UserError
from compress.pipeline.plan import load_recipe

REPO = Path(__file__).resolve().parents[1]


def test_compress_export_calls_the_pipelines_export_stage(tmp_path, monkeypatch, image_folder):
    from compress import cli
    from compress.pipeline import export_stage, run

    assert run.export_stage is export_stage.export_stage  # the runner's stage is this function
    calls = []

    def stage(state, ctx):
        calls.append((state, ctx))
        return {"artifacts": []}

    monkeypatch.setattr(export_stage, "export_stage", stage)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: timm:test_vit\ndata: {{path: {image_folder}}}\ntargets: [x86-avx512]\n")
    assert cli.main(["export", "timm:test_vit", "--recipe", str(recipe), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    ((state, ctx),) = calls
    assert ctx.run_dir == tmp_path / "o" and [t["name"] for t in ctx.targets] == ["x86-avx512"]
    assert ctx.reference.model is not state.model and (tmp_path / "o" / "export.json").is_file()


def test_commands_has_no_export_of_its_own():
    """commands.py reaches the exporters only through the export stage (no export_all, no __import__ hack)."""
    tree = ast.parse((REPO / "compress" / "commands.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "export_all" not in names and "__import__" not in names
    assert "export_stage" in names


def test_weights_go_through_the_recipe_loader(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: timm:test_vit\n")
    lr = load_recipe(recipe, weights="w.safetensors")
    assert lr.recipe.weights == "w.safetensors" and lr.raw["weights"] == "w.safetensors"  # recorded in recipe.yaml
    assert str(lr.origins[("weights",)]).startswith("--weights")
    assert load_recipe(recipe).recipe.weights is None


def test_weights_on_the_command_line_are_checked_like_the_recipes(tmp_path, image_folder, capsys):
    from compress import cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: timm:test_vit\ndata: {{path: {image_folder}}}\n")
    rc = cli.main(["--recipe", str(recipe), "--weights", str(tmp_path / "missing.safetensors"),
                   "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.safetensors" in err[0], err
    with pytest.raises(UserError):
        load_recipe(recipe, ["weights=[1, 2]"])  # a list is no weights file: the schema refuses it
