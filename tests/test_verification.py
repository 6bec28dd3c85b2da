"""Verification honesty: bounded relaxations, what each artifact was compared with, staged artifacts."""
from __future__ import annotations

import pytest
import torch

from compress.errors import VerificationError
from compress.pipeline.checkpoint import load_checkpoint


def _chaos(x):
    """A reference so sensitive that 1e-6 of input noise scrambles its output (cosine ~0 to itself)."""
    return torch.sin(x * 1e9)


def test_noise_floor_relaxation_has_an_absolute_limit():
    from compress.export.verify import FLOOR_MIN_COSINE, verify

    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    garbage = lambda t: torch.randn(t.shape, generator=torch.Generator().manual_seed(1))  # noqa: E731
    with pytest.raises(VerificationError, match="verification failed") as e:
        verify("a", garbage, _chaos, x, 10.0, 0.99, floor_noise=1e-6)
    assert f"cosine {FLOOR_MIN_COSINE:g}" in str(e.value)  # the limit the relaxation stopped at is named
    v = verify("a", garbage, _chaos, x, 10.0, 0.99, floor_noise=1e-6, strict=False)
    assert not v.passed and v.min_cosine == FLOOR_MIN_COSINE and v.requested_min_cosine == 0.99
    assert v.floor_cosine < 0.5 and v.to_dict()["min_cosine"] == FLOOR_MIN_COSINE


def test_every_check_is_bounded_element_wise_and_by_predictions():
    from compress.export.verify import verify

    x = torch.randn(8, 50, 16, generator=torch.Generator().manual_seed(0))
    ref = lambda t: t  # noqa: E731

    def one_token_off(t):  # one token of one image is wrong: the global cosine barely moves
        t = t.clone()
        t[3, 2, 5] += 6
        return t
    v = verify("a", one_token_off, ref, x, float("inf"), 0.99, max_rel=0.25, strict=False)
    assert v.cosine > 0.99 and not v.passed and v.max_abs_limit < 6
    assert v.agreement == 1.0

    def swapped(t):  # the class token's largest feature moves on every image: predictions differ
        t = t.clone()
        t[:, 0] = t[:, 0].roll(1, dims=-1)
        return t
    v = verify("a", swapped, ref, x, 100.0, 0.0, min_agreement=0.75, strict=False)
    assert v.agreement < 0.75 and not v.passed
    with pytest.raises(Exception, match="finite"):
        verify("a", ref, ref, x, float("inf"), 0.99)


def test_report_says_what_each_artifact_was_compared_with(tmp_path):
    from compress.export.verify import verify
    from compress.report import write_report

    class GraphRef:  # an ONNX graph run in ONNX Runtime, as OrtRunner describes itself
        kind, path = "onnxruntime", tmp_path / "model-qdq.onnx"

        def __call__(self, t):
            return t

    x = torch.randn(4, 10)
    v_ov = verify("model-qdq.xml", lambda t: t, GraphRef(), x, 1e-3, 0.999, runtime="openvino").to_dict()
    v_kit = verify("model.onnx", lambda t: t, GraphRef(), x, 1e-3, 0.999).to_dict()
    v_pt = verify("model.onnx", lambda t: t, lambda t: t, x, 1e-3, 0.999).to_dict()
    assert v_ov["reference"] == "model-qdq.onnx in ONNX Runtime" and v_ov["reference_runtime"] == "onnxruntime"
    assert v_pt["reference"] == "the PyTorch model" and v_pt["requested_max_abs"] == 1e-3
    arts = [{"path": "artifacts/x86/model-qdq.xml", "format": "openvino-ir", "runtime": "openvino",
             "precision": "w8a8", "verification": v_ov},
            {"path": "artifacts/orin/model.trt-kit", "format": "tensorrt-kit", "runtime": "tensorrt",
             "precision": "int8", "verification": v_kit},
            {"path": "artifacts/model.onnx", "format": "onnx", "runtime": "onnxruntime", "precision": "fp32",
             "verification": v_pt}]
    write_report(tmp_path, {"recipe": "r", "model": "m", "passes": [], "artifacts": arts, "evaluation": None})
    lines = {ln.split("`")[1]: ln for ln in (tmp_path / "report.md").read_text().splitlines() if ln.startswith("- `")}
    assert "verified in OpenVINO against model-qdq.onnx in ONNX Runtime" in lines["artifacts/x86/model-qdq.xml"]
    kit = lines["artifacts/orin/model.trt-kit"]
    assert "in ONNX Runtime against model-qdq.onnx" in kit and "no TensorRT engine was built or run" in kit
    assert "verified in ONNX Runtime against the PyTorch model" in lines["artifacts/model.onnx"]
    assert "(limit 0.001)" in lines["artifacts/model.onnx"]
    assert all("verified against PyTorch" not in ln for ln in lines.values())


def _run(tmp_path, history=(), **export):
    from compress.models import build
    from compress.pipeline.context import RunContext
    from compress.pipeline.state import ModelState
    from compress.recipes.schema import Recipe

    from conftest import tiny_config

    torch.manual_seed(0)
    st = ModelState(build(tiny_config()), "tiny", list(history))
    return st, RunContext(Recipe(export=export), tmp_path / "run", st, [])


def test_an_artifact_that_fails_verification_is_removed_and_unlisted(tmp_path):
    import json

    from compress.export.exporters import export_all

    st, ctx = _run(tmp_path)
    export_all(st, ctx, torch.randn(2, 3, 32, 32))  # a verified model.onnx from an earlier export
    art = ctx.run_dir / "artifacts" / "model.onnx"
    assert art.is_file()
    listing = {"artifacts": [{"path": "artifacts/model.onnx", "verification": {"passed": True}}]}
    (ctx.run_dir / "export.json").write_text(json.dumps(listing))
    (ctx.run_dir / "manifest.json").write_text(json.dumps(listing | {"files": [{"path": "artifacts/model.onnx"}]}))
    st2, ctx2 = _run(tmp_path, verify={"max_abs": 1e-30})  # ONNX Runtime's float rounding is past this
    with pytest.raises(VerificationError):
        export_all(st2, ctx2, torch.randn(2, 3, 32, 32))
    assert not art.exists() and not list((ctx.run_dir / "artifacts").iterdir())  # nothing staged left either
    assert json.loads((ctx.run_dir / "export.json").read_text())["artifacts"] == []
    man = json.loads((ctx.run_dir / "manifest.json").read_text())
    assert man["artifacts"] == [] and man["files"] == []


def test_temporaries_of_a_killed_export_are_cleaned_up(tmp_path):
    from compress.export.exporters import export_all

    st, ctx = _run(tmp_path)
    arts = ctx.run_dir / "artifacts"
    (arts / "x86" / ".model-fp32.abc").mkdir(parents=True)
    for leftover in (arts / ".baseline-fp32.onnx.k3j4.onnx", arts / "x86" / ".model-fp32.abc" / "m.bin"):
        leftover.write_bytes(b"")
    export_all(st, ctx, torch.randn(2, 3, 32, 32))
    assert sorted(p.name for p in arts.rglob("*")) == ["model.onnx", "x86"]


@pytest.mark.parametrize("name", ["ABS", "../up.onnx", "sub/dir.onnx", "..", ".hidden.onnx", ""])
def test_onnx_filename_must_be_a_plain_name(tmp_path, name):
    from compress.errors import UserError
    from compress.export.exporters import export_all

    name = str(tmp_path / "elsewhere.onnx") if name == "ABS" else name
    st, ctx = _run(tmp_path, onnx={"filename": name})
    with pytest.raises(UserError, match="export.onnx.filename"):
        export_all(st, ctx, torch.randn(2, 3, 32, 32))
    assert not (tmp_path / "up.onnx").exists() and not list(tmp_path.rglob("*.onnx"))


def test_export_verifies_at_the_models_own_input_size(tmp_path):
    from compress.export.exporters import export_all

    st, ctx = _run(tmp_path)  # a 32-px model, images from a 224-px reference
    (a,) = export_all(st, ctx, torch.randn(2, 3, 224, 224))
    assert a.verification["passed"] and a.verification["images"] == 2


def _with_foreign_op(src, dest):
    """``src`` with an op from a domain no runtime here reads, appended at the output (to make a conversion fail)."""
    import onnx
    from onnx import helper

    m = onnx.load(str(src))
    out = m.graph.output[0]
    m.graph.node[-1].output[0] = "pre_" + out.name
    m.graph.node.append(helper.make_node("FooBar", ["pre_" + out.name], [out.name], domain="com.example"))
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(m, str(dest))


@pytest.mark.parametrize("optional", [False, True])
def test_openvino_conversion_failure_fails_the_target_unless_optional(tmp_path, capsys, optional):
    from compress.errors import UserError
    from compress.targets.deploy import TARGET_EXPORTERS
    from compress.export.artifacts import Artifact, ExportRequest, export_float_onnx
    from compress.targets import load_profile

    st, ctx = _run(tmp_path)
    req = ExportRequest(st, ctx.run_dir, ctx.recipe, torch.randn(2, 3, 32, 32), [], reference=st)
    a = export_float_onnx(req, evaluate=False)
    req.float_onnx = ctx.run_dir / a.path
    _with_foreign_op(req.float_onnx, ctx.run_dir / "artifacts" / "model-qdq.onnx")
    req.artifacts = [a, Artifact("quantized-qdq", "artifacts/model-qdq.onnx", "onnx", "onnxruntime", "w8a8 int8-gemm")]
    req.target = load_profile("x86-avx512") | {"optional": optional}
    if not optional:
        with pytest.raises(UserError, match="OpenVINO cannot convert artifacts/model-qdq.onnx"):
            TARGET_EXPORTERS["openvino"](req)
        return
    arts = TARGET_EXPORTERS["openvino"](req)
    assert [x.precision for x in arts] == ["fp32"] and "(optional target: skipped)" in capsys.readouterr().err


@pytest.mark.parametrize("optional", [False, True])
def test_a_failing_target_fails_the_run_unless_the_recipe_marks_it_optional(tmp_path, monkeypatch, optional):
    from compress.errors import VerificationError
    from compress.export import artifacts
    from compress.export.exporters import export_all
    from compress.pipeline.context import RunContext
    from compress.recipes.schema import Recipe
    from compress.targets import load_profile
    from compress.targets.deploy import TARGET_EXPORTERS

    def broken(req):
        (artifacts.Path(req.artifacts_dir) / req.target["name"]).mkdir(exist_ok=True)
        (req.artifacts_dir / req.target["name"] / "half.xml").write_text("x")
        raise VerificationError("verification failed: half.xml")

    monkeypatch.setitem(TARGET_EXPORTERS, "openvino", broken)
    st, _ = _run(tmp_path)
    r = Recipe(targets=[{"name": "x86-avx512", "exporters": ["openvino"], "optional": optional}])
    ctx = RunContext(r, tmp_path / "run", st, [load_profile(t) for t in r.targets])
    if optional:
        arts = export_all(st, ctx, torch.randn(2, 3, 32, 32))
        assert [a.name for a in arts] == ["onnx-fp32"]
    else:
        with pytest.raises(VerificationError):
            export_all(st, ctx, torch.randn(2, 3, 32, 32))
    assert not (ctx.run_dir / "artifacts" / "x86-avx512").exists()


def test_fp32_onnx_row_is_measured_in_onnx_runtime(tmp_path, image_folder):
    from compress.evaluation.report_eval import evaluate_run
    from compress.export.onnx_export import export_onnx
    from compress.models import build
    from compress.pipeline.context import RunContext
    from compress.pipeline.state import ModelState
    from compress.recipes.schema import Recipe

    from conftest import tiny_config

    torch.manual_seed(0)
    ref = ModelState(build(tiny_config()), "tiny")
    torch.manual_seed(1)
    other = build(tiny_config()).eval()  # what the baseline file really holds: other weights
    r = Recipe(data={"path": str(image_folder), "batch_size": 4},
               evaluation={"probe_train": 12, "test": 12, "latency": {"enabled": False}})
    ctx = RunContext(r, tmp_path / "run", ref, [])
    export_onnx(other, ctx.run_dir / "artifacts" / "baseline-fp32.onnx")
    arts = [{"name": "baseline-fp32", "path": "artifacts/baseline-fp32.onnx", "format": "onnx",
             "runtime": "onnxruntime", "precision": "fp32", "evaluate": False}]
    ev = evaluate_run(ref, ref, ctx, arts)
    row = next(x for x in ev["rows"] if x["name"] == "baseline-fp32")
    assert row["images"] == 12 and row["feature_cosine"] < 0.99  # measured, not copied from the PyTorch row


def _checkpoint(tmp_path, edit=None, history=()):
    import json

    from compress.models import build
    from compress.pipeline.state import ModelState

    from conftest import tiny_config

    torch.manual_seed(0)
    st = ModelState(build(tiny_config()), "tiny", list(history))
    st.save(tmp_path / "ckpt")
    if edit:
        meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
        edit(meta)
        (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    return tmp_path / "ckpt"


@pytest.mark.parametrize("edit,what", [
    (lambda m: m["vit"].update(patch_size=0), "impossible model config"),
    (lambda m: m.update(history=[{"name": "q"}]), "needs a 'type'"),
    (lambda m: m.update(history=[{"name": "q", "type": "quantize", "config": {}}]), "history entry 0 \\(quantize\\)"),
    (lambda m: m["vit"].update(embed_dim=8192, blocks=50 * [{"num_heads": 64, "qk_dim": 8192, "v_dim": 8192,
                                                             "mlp_dim": 32768}]), "does not match its own config"),
])
def test_corrupt_checkpoint_configs_are_one_line_errors(tmp_path, edit, what):
    from compress.errors import UserError

    ckpt = _checkpoint(tmp_path, edit)
    with pytest.raises(UserError, match=what):  # the 50 x 8192-wide config (40G params, 160 GB) is refused unallocated
        load_checkpoint(ckpt)


def test_checkpoint_loads_after_the_header_check(tmp_path):
    st, _ = load_checkpoint(_checkpoint(tmp_path))
    assert st.cfg.patch_size == 8 and next(st.model.parameters()).device.type == "cpu"


def test_unreadable_onnx_given_to_a_runner_is_a_user_error(tmp_path):
    from compress.errors import UserError
    from compress.export.onnx_export import export_onnx
    from compress.models import build
    from compress.runtime import OrtRunner

    from conftest import tiny_config

    good = tmp_path / "m.onnx"
    export_onnx(build(tiny_config()), good)
    (tmp_path / "trunc.onnx").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "text.onnx").write_text("not a model\n")
    for bad in ("trunc.onnx", "text.onnx", "missing.onnx"):
        with pytest.raises(UserError, match="cannot be loaded by ONNX Runtime"):
            OrtRunner(tmp_path / bad)
    with pytest.raises(UserError, match="not images of shape \\[2, 3, 224, 224\\]"):
        OrtRunner(good)(torch.randn(2, 3, 224, 224))


@pytest.mark.parametrize("drop,what", [("num_attention_heads", "config.json lacks num_attention_heads"),
                                       (None, "lacks tensor 'embeddings.cls_token'")])
def test_hf_folder_missing_config_keys_or_tensors_is_a_user_error(tmp_path, drop, what):
    import json

    from safetensors.torch import save_file

    from compress.errors import UserError
    from compress.models import load_model

    cfg = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "patch_size": 8, "image_size": 32, "intermediate_size": 64}
    cfg.pop(drop, None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({"embeddings.position_embeddings": torch.zeros(1, 17, 32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match=what):
        load_model(str(tmp_path))
