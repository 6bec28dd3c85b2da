"""Target exporters through the spine's export_all: ONNX Runtime .ort, OpenVINO IR, ExecuTorch .pte
(fp32 and PT2E INT8, run with the ExecuTorch runtime), runners for the Evaluator, and targets_check."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import compress.targets.deploy  # noqa: F401  the upper targets layer: registers the exporters export_all calls
from conftest import make_image_folder, tiny_config

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tx")
    make_image_folder(root / "imgs", split="train")
    make_image_folder(root / "imgs", split="test")
    return root


def _ctx(root, name, targets, state, reference, **recipe):
    from compress.pipeline.context import RunContext
    from compress.recipes.schema import Recipe
    from compress.targets import load_profile

    r = Recipe(data={"path": str(root / "imgs"), "calibration": {"count": 6}}, **recipe)
    return RunContext(r, root / name, reference, [load_profile(t) for t in targets])


def _state(seed=0, history=(), **kw):
    from compress.models import build
    from compress.pipeline.state import ModelState

    torch.manual_seed(seed)
    return ModelState(build(tiny_config(**kw)), "tiny", list(history))


def test_ort_and_openvino_for_x86(data):
    from compress.export.exporters import export_all
    from compress.runtime import RUNNERS

    st = _state()
    ctx = _ctx(data, "x86", ["x86-avx512", "android-arm64"], st, st)
    ctx.targets[1]["exporters"] = ["onnxruntime"]  # phone: only the .ort here (ExecuTorch has its own test)
    imgs = torch.randn(3, 3, 32, 32)
    arts = {a.name: a for a in export_all(st, ctx, imgs)}
    ort_x86, ort_arm = arts["x86-avx512:model.ort"], arts["android-arm64:model.ort"]
    assert ort_x86.format == ort_arm.format == "ort" and ort_x86.verification["max_abs"] < 1e-5
    assert "arm" in ort_arm.notes[0] and "amd64" in ort_x86.notes[0]
    ov = arts["x86-avx512:openvino-fp32"]
    assert ov.format == "openvino-ir" and ov.runtime == "openvino" and ov.verification["passed"]
    assert ov.verification["max_abs"] < 1e-4  # exact fp32 inference, not the plugin's default precision
    xml = ctx.run_dir / ov.path
    assert xml.with_suffix(".bin").is_file()
    run = RUNNERS["openvino"](xml, 1)
    assert run.precision == "f32"
    with torch.inference_mode():
        want = st.model(imgs)
    assert torch.allclose(run(imgs), want, atol=1e-4)
    assert torch.allclose(RUNNERS["onnxruntime"](ctx.run_dir / ort_arm.path, 1)(imgs), want, atol=1e-4)


def test_bf16_request_and_nearest_precision_recorded(data):
    from compress.targets.deploy import TARGET_EXPORTERS
    from compress.export.artifacts import ExportRequest, export_float_onnx
    from compress.targets import load_profile

    st = _state()
    req = ExportRequest(st, data / "bf16", _ctx(data, "bf16", [], st, st).recipe, torch.randn(2, 3, 32, 32), [],
                        reference=st)
    a = export_float_onnx(req)
    req.float_onnx, req.artifacts = data / "bf16" / a.path, [a]
    req.target = load_profile({"name": "x86-avx512", "precision": "fp16"})
    arts = {x.precision: x for x in TARGET_EXPORTERS["openvino"](req)}
    assert set(arts) == {"fp32", "bf16"}
    bf = arts["bf16"]
    assert any("does not run fp16 natively" in n and "bf16" in n for n in bf.notes)
    from compress.runtime import RUNNERS

    run, v = RUNNERS["openvino"](data / "bf16" / bf.path, 1), bf.verification
    if run.precision == "bf16":  # a CPU with bf16 (AVX512_BF16 / AMX): its rounding shows, within the bound
        assert v["max_abs"] > 1e-5 and 0.995 <= v["cosine"] < 1.0, v
    else:  # no bf16 on this CPU: the plugin computes in f32, so the artifact matches fp32 closely
        assert run.precision == "f32" and v["max_abs"] < 1e-4 and v["cosine"] > 0.99999, v


class WorkClock:
    """Stands in for ``time`` in targets.exporters.check: it advances only by the GFLOPs each ONNX Runtime call
    computes, so the check's timing and verdict are deterministic on a shared machine."""

    def __init__(self):
        self.t, self.calls = 0.0, []

    def perf_counter(self) -> float:
        return self.t

    process_time = perf_counter

    def runners(self, real):
        from compress.utils.graph_stats import graph_stats

        def factory(path, threads):
            run, gflops = real(path, threads), graph_stats(path)["gflops"]

            def timed(x):
                out = run(x)
                self.t += gflops
                self.calls.append(gflops)
                return out
            return timed
        return factory


def test_targets_check_passes_a_faster_model_and_fails_a_slow_one(data, monkeypatch):
    """A pruned (smaller) model beats its fp32 baseline in ONNX Runtime; a 50x demand fails, loudly.
    Time is the work clock above (graph GFLOPs per run): the check's own logic, not the machine's load."""
    from compress.utils.graph_stats import graph_stats
    from compress.export.exporters import export_all
    from compress.runtime import RUNNERS
    from compress.targets.exporters import check
    from compress.targets.exporters.check import TargetCheckError

    clock = WorkClock()
    monkeypatch.setattr(check, "time", clock)
    monkeypatch.setitem(RUNNERS, "onnxruntime", clock.runners(RUNNERS["onnxruntime"]))
    reference = _state(seed=1, depth=6, embed_dim=64, num_heads=4)
    small = _state(seed=2, history=[{"type": "test-prune", "name": "prune"}], depth=1, embed_dim=32)
    small.model.cfg.embed_dim = 32  # (a different model, as a pruning pass would leave)
    imgs = torch.randn(2, 3, 32, 32)
    ctx = _ctx(data, "chk", ["x86-avx512"], small, reference, targets_check={"min_speedup": 1.2},
               evaluation={"latency": {"warmup": 3, "runs": 15}})
    ctx.targets[0]["exporters"] = ["onnxruntime"]
    arts = {a.name: a for a in export_all(small, ctx, imgs)}
    model = arts["onnx-fp32"]
    ratio = graph_stats(ctx.run_dir / arts["baseline-fp32"].path)["gflops"] / \
        graph_stats(ctx.run_dir / model.path)["gflops"]
    assert 1.2 < ratio < 50  # the two models' work differs by this much
    assert model.check["passed"] and model.check["speedup"] == pytest.approx(ratio, rel=1e-9)
    assert model.check["runs"] == 15 and len(clock.calls) == 2 * (3 + 15)  # alternated, after the warm-up
    assert any("passes targets_check" in n for n in model.notes)
    ctx = _ctx(data, "chk2", [{"name": "x86-avx512", "exporters": ["onnxruntime"],
                               "targets_check": {"min_speedup": 50}}], small, reference,
               evaluation={"latency": {"warmup": 1, "runs": 5}})
    with pytest.raises(TargetCheckError, match="FAILS targets_check min_speedup 50"):
        export_all(small, ctx, imgs)
    ctx = _ctx(data, "chk3", [{"name": "x86-avx512", "exporters": ["onnxruntime"],
                               "targets_check": {"min_speedup": 50, "on_fail": "warn"}}], small, reference,
               evaluation={"latency": {"warmup": 1, "runs": 5}})
    arts = {a.name: a for a in export_all(small, ctx, imgs)}
    assert not arts["onnx-fp32"].check["passed"] and any("FAILS" in n for n in arts["onnx-fp32"].notes)


@pytest.fixture(scope="module")
def pte(data):
    """fp32 and INT8 (PT2E) ExecuTorch programs of a one-block model, made through export_all."""
    from compress.export.exporters import export_all

    st = _state(depth=1)
    ctx = _ctx(data, "et", [{"name": "android-arm64", "precision": "int4", "exporters": ["executorch"]}], st, st)
    imgs = torch.randn(3, 3, 32, 32)
    arts = {a.name: a for a in export_all(st, ctx, imgs)}
    return st, ctx, arts, imgs


def test_executorch_fp32_and_int8(pte):
    from compress.runtime import RUNNERS

    st, ctx, arts, imgs = pte
    fp32, int8 = arts["android-arm64:executorch-fp32"], arts["android-arm64:executorch-int8"]
    assert fp32.format == int8.format == "pte" and fp32.verification["max_abs"] < 1e-4
    assert int8.precision == "w8a8" and int8.verification["cosine"] >= 0.999
    assert any("does not run int4 natively" in n for n in int8.notes)  # asked int4, got the nearest
    with torch.inference_mode():
        want = st.model(imgs)
    run8 = RUNNERS["executorch"](ctx.run_dir / int8.path, 1)
    got = run8(imgs)  # batch-1 program, three images
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert got.shape == want.shape and 0.99 < cos < 1.0  # quantized, and close
    assert (ctx.run_dir / int8.path).stat().st_size < (ctx.run_dir / fp32.path).stat().st_size


def test_executorch_profile_uses_etdump(pte):
    st, ctx, arts, _ = pte
    path = ctx.run_dir / arts["android-arm64:executorch-int8"].path
    from compress.targets.profiler import RUNNER, last_json

    proc = subprocess.run([sys.executable, str(RUNNER), str(path), "--runs", "3", "--warmup", "1", "--ops"],
                          capture_output=True, text=True, check=True)
    r = last_json(proc.stdout)
    assert r["runtime"] == "executorch" and r["latency"]["p50_ms"] > 0
    ops = {x["op"] for x in r["ops"]["by_op"]}
    assert any(o.startswith("xnnpack:Fully Connected (NC, QS8") for o in ops), ops  # int8 GEMMs in XNNPACK
    assert json.dumps(r)  # JSON-able


def test_openvino_runs_a_quantized_qdq_graph_in_int8(data, tmp_path):
    """A Q/DQ graph (the quantize pass's format) becomes an INT8 IR whose float layers run in bf16 on x86."""
    from test_targets_tensorrt import int8_qdq

    from compress.targets.deploy import TARGET_EXPORTERS
    from compress.export.artifacts import Artifact, ExportRequest, export_float_onnx
    from compress.runtime import RUNNERS
    from compress.targets import load_profile

    st = _state()
    req = ExportRequest(st, tmp_path, _ctx(data, "q", [], st, st).recipe, torch.randn(3, 3, 32, 32), [], reference=st)
    a = export_float_onnx(req, evaluate=False)
    req.float_onnx = tmp_path / a.path
    int8_qdq(req.float_onnx, tmp_path / "artifacts" / "model-qdq.onnx")
    req.artifacts = [a, Artifact("quantized-qdq", "artifacts/model-qdq.onnx", "onnx", "onnxruntime", "w8a8 int8-gemm")]
    req.target = load_profile("x86-avx512")
    arts = {x.precision: x for x in TARGET_EXPORTERS["openvino"](req)}
    q = arts["w8a8 int8-gemm"]
    from compress.targets.exporters.openvino import VNNI_FLAGS, cpu_flags

    flags = cpu_flags()
    vnni, bf16 = bool(flags & VNNI_FLAGS) or not flags, bool(flags & {"avx512_bf16", "amx_bf16"})
    # exact-enough on VNNI CPUs; without VNNI OpenVINO's int8 kernels saturate (measured 0.9969 on AVX2), and say so
    assert q.verification["cosine"] >= (0.999 if vnni else 0.99)
    assert vnni or any("no AVX-VNNI" in n for n in q.notes)
    float_precision = "bf16" if bf16 else "f32"  # the plugin's real choice for the float layers, named in the note
    assert f"float layers in {float_precision}" in " ".join(q.notes)
    assert not arts["fp32"].evaluate  # the fp32 IR is only the baseline of a quantized state
    assert RUNNERS["openvino"](tmp_path / q.path, 1).precision == float_precision
    from compress.targets.exporters.runners import OpenVINORunner

    prof = OpenVINORunner(tmp_path / q.path, 1, profile=True)
    prof(req.verify_images)
    fc = [r for r in prof.op_profile() if r["op"].startswith("FullyConnected")]
    assert len(fc) == 12 and all("i8" in r["exec"].lower() for r in fc), fc  # the 12 linears in int8 kernels
