"""Each pass declares its ordering rules and config version as data; they are checked before anything runs."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from compress.errors import UserError
from compress.pipeline.base import Pass, PassConfig, available_passes, register_pass
from compress.pipeline.plan import load_recipe


def _recipe(tmp_path, passes: str):
    p = tmp_path / "r.yaml"
    p.write_text("name: r\npasses:\n" + textwrap.indent(textwrap.dedent(passes), "  "))
    return p


@pytest.mark.parametrize("passes,match", [
    ("align: {}\nprune: {}\n", r"passes\.prune \(prune\) cannot run after passes\.align \(align\)"),
    ("quantize: {}\nalign: {}\n", r"passes\.align \(align\) cannot run after passes\.quantize \(quantize\)"),
    ("q1: {type: quantize}\nfold: {}\nq2: {type: quantize}\n", r"passes\.q2 \(quantize\) cannot run after passes\.q1"),
])
def test_bad_order_is_refused_when_the_recipe_loads(tmp_path, passes, match):
    with pytest.raises(UserError, match=match):
        load_recipe(_recipe(tmp_path, passes))


def test_good_order_loads(tmp_path):
    lr = load_recipe(_recipe(tmp_path, "prune: {}\nalign: {}\nfold: {}\nquantize: {}\n"))
    assert [p.name for _, p in lr.passes] == ["prune", "align", "fold", "quantize"]


def test_bad_order_exits_2_in_seconds_before_any_pass_runs(tmp_path):
    out = tmp_path / "run"
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "compress", "--recipe", str(_recipe(tmp_path, "align: {}\nprune: {}\n")),
                        "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "cannot run after" in r.stderr.strip().splitlines()[-1]
    assert time.time() - t0 < 60 and not (out / "passes").exists()


def test_rules_are_data_on_each_pass():
    reg = available_passes()
    assert "align" in reg["prune"].forbid_after and "quantize" in reg["align"].forbid_after
    assert "quantize" in reg["quantize"].forbid_after
    assert all(isinstance(c.Config.VERSION, int) for c in reg.values())


def test_must_follow_is_checked(tmp_path, monkeypatch):
    from compress.pipeline import base

    class NeedsFold(Pass):
        name = "needs-fold-test"
        Config = PassConfig
        must_follow = ("fold",)

    monkeypatch.setitem(base.PASSES, NeedsFold.name, NeedsFold)
    with pytest.raises(UserError, match=r"needs fold to run before it"):
        load_recipe(_recipe(tmp_path, "needs-fold-test: {}\n"))
    assert [n for n, _ in load_recipe(_recipe(tmp_path, "fold: {}\nneeds-fold-test: {}\n")).passes][-1] == \
        "needs-fold-test"


def test_duplicate_registration_is_an_error(monkeypatch):
    from compress import registry
    from compress.runtime import RUNNERS, register_runner

    monkeypatch.setattr(registry.PASSES, "builtins", ())
    for k, v in list(available_passes().items()):
        monkeypatch.setitem(registry.PASSES, k, v)  # restored after the test
    with pytest.raises(ValueError, match="pass 'fold' is registered twice"):
        register_pass(type("OtherFold", (Pass,), {"name": "fold", "__module__": "elsewhere"}))
    again = registry.PASSES["fold"]
    assert register_pass(again) is again  # the same definition (e.g. a reloaded module) is not a duplicate

    assert "x-test" not in registry.TARGET_EXPORTERS
    register = registry.TARGET_EXPORTERS.add("x-test")
    try:
        register(lambda req: [])
        with pytest.raises(ValueError, match="target exporter 'x-test' is registered twice"):
            def other(req):
                return []
            register(other)
    finally:  # not monkeypatch: its teardown would put the test exporter back into the shared table
        registry.TARGET_EXPORTERS.pop("x-test", None)

    with pytest.raises(ValueError, match="runtime 'onnxruntime' is registered twice"):
        register_runner("onnxruntime")(lambda path, threads: None)
    assert RUNNERS["onnxruntime"].__name__ == "OrtRunner"


def test_the_descriptor_owns_its_exporter_and_report_section(tmp_path, monkeypatch):
    """Export and report find a pass's artifacts and section through its descriptor, and nowhere else."""
    from compress import registry, report
    from compress.export import artifacts, exporters
    from compress.passes.quantize.export import export_quantized
    from compress.passes.quantize.report import quantize_section

    reg = available_passes()
    assert reg["quantize"].exporter is export_quantized and reg["quantize"].report_section is quantize_section
    assert {n for n, c in reg.items() if c.exporter} == {"distill", "quantize", "split"}
    assert {n for n, c in reg.items() if c.report_section} == {"align", "distill", "kernels", "prune", "quantize", "split"}
    for mod in (artifacts, exporters, report):  # no second table keyed by pass name
        assert not {"EXPORTERS", "SECTIONS", "register_exporter", "register_section"} & set(vars(mod))

    import torch

    from compress.models import build
    from compress.pipeline.context import RunContext
    from compress.pipeline.state import ModelState
    from compress.recipes.schema import Recipe

    from conftest import tiny_config

    def marked_export(req):
        a = artifacts.Artifact("marked", "artifacts/model.onnx", "onnx", "onnxruntime", "fp32",
                               notes=[f"float graph at {req.float_onnx.name}"])
        return [a]

    class Marked(Pass):
        name = "marked-test"
        exporter = staticmethod(marked_export)
        replaces_float_graph = True  # its artifact stands for the model: the float graph is kept unscored
        report_section = staticmethod(lambda rec, run_dir: f"- marked by the descriptor: {rec['value']}")

    monkeypatch.setitem(registry.PASSES, Marked.name, Marked)
    torch.manual_seed(0)
    ref = ModelState(build(tiny_config()), "tiny", [])
    st = ref.clone()
    st.history.append({"name": "m1", "type": "marked-test", "value": 7})
    arts = exporters.export_all(st, RunContext(Recipe(), tmp_path / "run", ref, []), torch.randn(2, 3, 32, 32))
    assert [a.name for a in arts] == ["baseline-fp32", "float-graph", "marked"]
    assert arts[-1].notes == ["float graph at model.onnx"]
    report.write_report(tmp_path, {"recipe": "r", "model": "m", "passes": st.history, "artifacts": []})
    assert "- marked by the descriptor: 7" in (tmp_path / "report.md").read_text()


def test_a_stored_config_of_another_version_is_refused(tmp_path, tiny_model, monkeypatch):
    from compress.pipeline.checkpoint import load_checkpoint
    from compress.pipeline.state import ModelState

    ModelState(tiny_model, "tiny", [{"name": "fold", "type": "fold", "config_version": 1}]).save(tmp_path / "a")
    assert load_checkpoint(tmp_path / "a")[0].history[0]["type"] == "fold"
    monkeypatch.setattr(available_passes()["fold"].Config, "VERSION", 2)
    with pytest.raises(UserError, match=r"config version 1, this vitforge reads version 2"):
        load_checkpoint(tmp_path / "a")


def test_a_last_pass_refuses_any_later_pass_at_load(tmp_path):
    """``last`` is descriptor data checked when the recipe is bound, before anything runs."""
    from compress.errors import UserError
    from compress.pipeline.plan import load_recipe
    from compress.registry import PASSES

    split = PASSES.loaded()["split"]
    assert split.last and not split.replaces_float_graph and PASSES["quantize"].replaces_float_graph
    r = tmp_path / "r.yaml"
    r.write_text("name: t\nmodel: timm:test_vit\ndata: {path: cifar10}\npasses:\n  split: {parts: 2}\n  fold: {}\n")
    with pytest.raises(UserError, match="passes.fold cannot run after passes.split"):
        load_recipe(r)
    r.write_text("name: t\nmodel: timm:test_vit\ndata: {path: cifar10}\npasses:\n  fold: {}\n  split: {parts: 2}\n")
    assert [n for n, _ in load_recipe(r).passes] == ["fold", "split"]
