"""Malformed recipes and bad inputs: exit code 2 and one clear line naming what is wrong."""
from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest
import torch

from compress.cli import main


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


def recipe(tmp_path: Path, text: str, name: str = "r.yaml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


CASES = {
    "malformed_yaml": ("name: x\npasses: [fold: {\n", r"r\.yaml:\d+: malformed YAML"),
    "unknown_key_did_you_mean": ("name: x\nevaluation:\n  tset: 10\n",
                                 r"r\.yaml:3: unknown key evaluation\.tset; did you mean evaluation\.test\?"),
    "wrong_type": ("evaluation:\n  test: many\n", r"r\.yaml:2: evaluation\.test: input should be a valid integer"),
    "out_of_range": ("data:\n  batch_size: 0\n", r"r\.yaml:2: data\.batch_size: input should be greater than or equal to 1"),
    "unknown_pass": ("passes:\n  fodl: {}\n", r"r\.yaml:2: unknown pass 'fodl' at passes\.fodl; did you mean 'fold'\?"),
    "unknown_pass_key": ("passes:\n  fold:\n    layerscale: true\n",
                         r"r\.yaml:3: unknown key passes\.fold\.layerscale; did you mean passes\.fold\.layer_scale\?"),
    "unknown_target": ("targets: [x86-avx51]\n",
                       r"r\.yaml:1: unknown target 'x86-avx51' at targets\.0; did you mean 'x86-avx512'\?"),
    "duplicate_key": ("name: a\nname: b\n", r"r\.yaml:2: key name appears twice"),
    "not_a_mapping": ("- just\n- a list\n", r"r\.yaml:1: a recipe must be a mapping"),
    "empty": ("", r"recipe .*r\.yaml is empty"),
    "missing_extends": ("extends: nothere.yaml\n", r"r\.yaml:1: extends 'nothere.yaml' not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_recipe_exits_2_with_location(case, tmp_path, capsys):
    text, pattern = CASES[case]
    code, line = run_cli(["--recipe", recipe(tmp_path, text), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert line.startswith("error: ")
    import re

    assert re.search(pattern, line), line
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_error_in_base_recipe_points_at_base_file(tmp_path, capsys):
    recipe(tmp_path, "evaluation:\n  test: -5\n", "base.yaml")
    code, line = run_cli(["--recipe", recipe(tmp_path, "extends: base.yaml\nname: child\n"), "--out",
                          str(tmp_path / "o")], capsys)
    assert code == 2 and "base.yaml:2: evaluation.test" in line


def test_bad_set_override(tmp_path, capsys):
    r = recipe(tmp_path, "name: x\n")
    code, line = run_cli(["--recipe", r, "--set", "evaluation.test", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "is not key=value" in line
    code, line = run_cli(["--recipe", r, "--set", "evaluation.tets=5", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--set evaluation.tets: unknown key evaluation.tets; did you mean evaluation.test?" in line


def test_missing_recipe_file(tmp_path, capsys):
    code, line = run_cli(["--recipe", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "nope.yaml does not exist" in line


def test_unknown_model(tmp_path, capsys):
    code, line = run_cli(["inspect", "vit_huge_imaginary", "--images", "0"], capsys)
    assert code == 2 and "unknown model 'vit_huge_imaginary'" in line and "timm:<arch>" in line


def test_corrupt_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "bad.safetensors"
    ckpt.write_bytes(b"\x00\x01garbage" * 10)
    code, line = run_cli(["inspect", f"timm:vit_tiny_patch16_224@{ckpt}", "--images", "0"], capsys)
    assert code == 2 and "is corrupt or not a safetensors file" in line
    truncated = tmp_path / "trunc.pth"
    torch.save({"w": torch.zeros(3)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    code, line = run_cli(["inspect", f"timm:vit_tiny_patch16_224@{truncated}", "--images", "0"], capsys)
    assert code == 2 and "cannot be loaded safely" in line


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {_Evil.marker}",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    _Evil.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    code, line = run_cli(["inspect", f"timm:vit_tiny_patch16_224@{path}", "--images", "0"], capsys)
    assert code == 2 and "cannot be loaded safely" in line
    assert not _Evil.marker.exists()


def test_weights_of_another_architecture(tmp_path, capsys):
    from safetensors.torch import save_file

    w = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(w))
    code, line = run_cli(["inspect", f"timm:vit_tiny_patch16_224@{w}", "--images", "0"], capsys)
    assert code == 2 and "do not fit timm vit_tiny_patch16_224" in line


def test_missing_data_path(tmp_path, capsys):
    code, line = run_cli(["inspect", "timm:vit_tiny_patch16_224", "--data", str(tmp_path / "nodata")], capsys)
    assert code == 2 and "data path" in line and "does not exist" in line


def test_wrong_image_folder(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "notes.txt").write_text("no images here")
    code, line = run_cli(["inspect", "timm:vit_tiny_patch16_224", "--data", str(tmp_path / "flat")], capsys)
    assert code == 2 and "holds no class folders with images" in line


def test_corrupt_archive(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VITFORGE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "data.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 30)
    code, line = run_cli(["inspect", "timm:vit_tiny_patch16_224", "--data", str(bad)], capsys)
    assert code == 2 and "is corrupt or unreadable" in line


def test_corrupt_image_file(tmp_path, capsys):
    from conftest import make_image_folder

    make_image_folder(tmp_path / "imgs", classes=2, per_class=1)
    (tmp_path / "imgs" / "class0" / "000.png").write_bytes(b"not a png")
    code, line = run_cli(["inspect", "timm:vit_tiny_patch16_224", "--data", str(tmp_path / "imgs"), "--images", "2"], capsys)
    assert code == 2 and "cannot read image" in line and "000.png" in line


def test_nonempty_foreign_out_dir_is_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, line = run_cli(["--recipe", recipe(tmp_path, "model: timm:vit_tiny_patch16_224\n"), "--out", str(out)], capsys)
    assert code == 2 and "is not empty and holds no vitforge run" in line
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_validate(path):
    """Every recipe we ship composes and its pass configs validate (a typo there would only show at run time)."""
    from compress.pipeline.plan import load_recipe

    lr = load_recipe(path, [])
    assert lr.recipe.name == path.stem
    assert [n for n, _ in lr.passes] == list(lr.recipe.passes)


def test_int4_vit_fast_keeps_the_int4_vit_budget_with_per_channel_weights():
    """Same 4-bit average, activations and exports; only the weight layout (and its calibration) differ."""
    from compress.pipeline.plan import load_recipe

    root = Path(__file__).resolve().parents[1] / "recipes"
    (qa,), (qf,) = ([p.config for n, p in load_recipe(root / f"{r}.yaml", []).passes if n == "quantize"]
                    for r in ("int4-vit", "int4-vit-fast"))
    assert (qa.weights.granularity, qf.weights.granularity) == ("group", "channel")
    assert qa.mixed.budget == qf.mixed.budget and qa.mixed.budget.value == 4.0
    assert qa.activations == qf.activations and qa.export == qf.export
