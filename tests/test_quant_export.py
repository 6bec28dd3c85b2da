"""Quantized artifacts: Q/DQ placement, integer kernels in ONNX Runtime, INT4 storage, MatMulNBits, the
TensorRT flavour and its fallbacks, and the pass end to end through a recipe (tiny models)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compress.errors import UserError
from compress.export.onnx_export import export_onnx
from compress.models import build
from compress.passes.quantize import ptq
from compress.passes.quantize.config import QuantizeConfig
from compress.passes.quantize.export import tensorrt_view
from compress.passes.quantize.export_nbits import block_for, build_nbits, pack
from compress.passes.quantize.export_qdq import build_qdq
from compress.models.float_view import float_view
from compress.pipeline.state import ModelState
from compress.pipeline.checkpoint import load_checkpoint
from conftest import tiny_config

pytestmark = pytest.mark.timeout(180)
X = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _quantized(cfg: dict, tmp_path, **over):
    torch.manual_seed(0)
    m = build(tiny_config(embed_dim=64, depth=2, num_heads=2, layer_scale=False, **over)).eval()
    c = QuantizeConfig(**cfg)
    ptq.reparameterize_model(m, X, c)
    ptq.quantize(m, c, X)
    with float_view(m):
        export_onnx(m, tmp_path / "float.onnx")
    return m


def _run(proto: onnx.ModelProto, tmp_path, name: str) -> tuple[np.ndarray, Counter]:
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"images": X.numpy()})[0]
    ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return out, ops


def _close(a: np.ndarray, model) -> float:
    with torch.no_grad():
        b = model(X).numpy()
    return float(np.abs(a - b).max())


def _per_image_diff(a: np.ndarray, model) -> np.ndarray:
    with torch.no_grad():
        b = model(X).numpy()
    return np.abs(a - b).reshape(len(a), -1).max(1)


def test_w8a8_qdq_runs_int8_gemms_and_matches_pytorch(tmp_path):
    m = _quantized({}, tmp_path)
    proto, _ = build_qdq(tmp_path / "float.onnx", m)
    produced = {o: n.op_type for n in proto.graph.node for o in n.output}
    for n in proto.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax", "Erf") or (n.op_type == "Add" and "blocks" in n.name
                                                                     and "/Add" in n.name and "attn" not in n.name
                                                                     and "mlp" not in n.name):
            assert all(produced.get(i) != "DequantizeLinear" for i in n.input), f"{n.name} reads a DQ output"
        if n.op_type == "MatMul" and any(s in n.name for s in ("/q/", "/k/", "/v/", "/proj/", "/fc1/", "/fc2/")):
            assert all(produced.get(i) == "DequantizeLinear" for i in n.input), f"{n.name} has a float input"
    out, ops = _run(proto, tmp_path, "w8")
    assert ops["MatMulIntegerToFloat"] == 12  # every linear runs int8 x int8 in ONNX Runtime
    assert ops["QuantizeLinear"] == 2 * 4  # q/k/v share one: per block LN1, attn out, LN2, GELU out
    assert _close(out, m) < 5e-3  # same integers; a float ulp may flip a rare rounding


def test_sub_byte_weights_are_int4_on_disk_and_still_int8_gemms(tmp_path):
    over = {f"blocks.{i}.{n}": 3 for i in range(2) for n in ("attn.q", "mlp.fc1")}
    m = _quantized({"weights": {"bits": 4}, "overrides": over}, tmp_path)
    proto, _ = build_qdq(tmp_path / "float.onnx", m)
    # ORT int8 GEMMs take the weights unsigned (u8 x u8 is exact without AVX-VNNI): UINT4 codes, zero point 8
    int4 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.UINT4]
    assert len(int4) == 12
    codes = onnx.numpy_helper.to_array(next(t for t in int4 if "blocks_0_attn_q" in t.name)).astype(int) - 8
    assert codes.min() >= -4 and codes.max() <= 3  # the 3-bit layers use 3 bits of the container
    out, ops = _run(proto, tmp_path, "w4")
    assert ops["MatMulIntegerToFloat"] == 12 and ops.get("Cast", 0) == 0  # casts constant-folded at load
    # same integers: images match to float precision, but a float ulp may flip a rare activation code (measured
    # here on AVX2: 1 image of 12, by one code step, 0.018), which then moves that image's later tokens
    per_image = _per_image_diff(out, m)
    assert (per_image < 1e-4).mean() >= 0.75 and per_image.max() < 0.05, per_image
    w8, _ = build_qdq(tmp_path / "float.onnx", _quantized({}, tmp_path))
    weight_bytes = lambda p: sum(len(t.raw_data) for t in p.graph.initializer  # noqa: E731
                                 if t.data_type in (onnx.TensorProto.UINT4, onnx.TensorProto.UINT8)
                                 and "blocks" in t.name and "_w_" in t.name and "zp" not in t.name)
    assert weight_bytes(proto) * 2 == weight_bytes(w8) == 12 * 64 * 128  # 4 bits per weight on disk


def test_sub_8bit_activations_and_sulq_are_exact_in_onnxruntime(tmp_path):
    m = _quantized({"weights": {"bits": 4}, "activations": {"bits": 4}, "attention": {"quantize": True}}, tmp_path)
    proto, _ = build_qdq(tmp_path / "float.onnx", m)
    out, ops = _run(proto, tmp_path, "w4a4")
    # 4-bit ranges as Clips; SULQ (softmax and GELU outputs) as float ops
    assert ops["Clip"] >= 8 and ops["Log"] == 4 and ops["Exp"] == 4
    assert ops["MatMulIntegerToFloat"] == 12  # 10 linears + the two q.k matmuls; fc2 reads a log grid
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(out).flatten(), m(X).flatten(), dim=0)
    assert cos > 0.999  # same ops, but a float ulp can flip a fine log-grid rounding (no int kernel here)


def test_blocked_weights_with_static_activations_run_in_onnxruntime(tmp_path):
    # 8-bit blocked weights beside quantized inputs once crashed ONNX Runtime's MatMulIntegerToFloat fusion
    over = {f"blocks.{i}.{n}": 8 for i in range(2) for n in ("attn.proj", "mlp.fc2")}
    m = _quantized({"weights": {"bits": 4, "granularity": "group", "group_size": 16}, "overrides": over}, tmp_path)
    proto, _ = build_qdq(tmp_path / "float.onnx", m)
    blocked = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
               and any(a.name == "block_size" and a.i == 16 for a in n.attribute)]
    assert len(blocked) == 12
    f16 = [t for t in proto.graph.initializer if t.name.endswith("_w_scale_f16")]
    assert len(f16) == 12 and all(t.data_type == onnx.TensorProto.FLOAT16 for t in f16)  # half the scale bytes
    s = m.blocks[0].mlp.fc2.weight_quant.scale
    assert torch.equal(s, s.half().float())  # the PyTorch model computes with exactly the stored scales
    out, ops = _run(proto, tmp_path, "g16")
    assert ops.get("MatMulIntegerToFloat", 0) == 0  # blocked scales: float GEMMs on dequantized weights
    assert _close(out, m) < 5e-3


def test_matmulnbits_packing_and_numerics(tmp_path):
    codes = np.arange(16).reshape(1, 16) % 16
    packed = pack(codes, 4)
    assert packed.tolist() == [[0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]]
    # per-channel scales use the largest power-of-two block dividing K, but ORT caps 2-bit blocks at 256
    assert block_for(1536, None, 32, bits=4) == 512 and block_for(1536, None, 32, bits=2) == 256
    assert block_for(384, None, 32, bits=2) == 128 and block_for(384, 16, 32, bits=2) == 16
    for cfg in ({"weights": {"bits": 4}, "activations": {"bits": None}},
                {"weights": {"bits": 3, "granularity": "group", "group_size": 16}, "activations": {"bits": None}},
                {"weights": {"bits": 6}, "activations": {"bits": 8}}):
        m = _quantized(cfg, tmp_path)
        proto, notes = build_nbits(tmp_path / "float.onnx", m)
        out, ops = _run(proto, tmp_path, "nbits")
        assert ops["MatMulNBits"] == 12
        # weight-only: exact; behind activation Q/DQ a float-ulp difference can flip a rounding downstream
        assert _close(out, m) < (1e-3 if cfg["activations"]["bits"] is None else 0.05)
        if cfg["weights"]["bits"] in (3, 6):
            assert any("containers" in n for n in notes)


def test_tensorrt_flavour_is_symmetric_and_falls_back_with_a_message(tmp_path):
    m = _quantized({"weights": {"bits": 4}, "activations": {"bits": 4}, "attention": {"quantize": True}}, tmp_path)
    view, notes = tensorrt_view(m)
    proto, more = build_qdq(tmp_path / "float.onnx", view, "tensorrt")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            assert inits[n.input[2]].dtype == np.int8 and inits[n.input[2]] == 0
    assert any("INT8 over the same clipping range" in s for s in notes)
    assert any("SULQ" in s for s in notes) and any("INT8 containers" in s for s in more)
    out, _ = _run(proto, tmp_path, "trt")
    with torch.no_grad():
        want, w4a4 = view(X), m(X)
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))  # noqa: E731
    # the fallback model is what the artifact computes (the folded GELU shift may flip a rare rounding)
    assert _close(out, view) < 0.05 and cos(torch.from_numpy(out), want) > 0.99999
    assert 0.99 < cos(want, w4a4) < 0.99999  # widened activations: close to the W4A4 model, not equal


def test_recipe_quantizes_exports_verifies_and_reloads(tmp_path, image_folder):
    from compress.pipeline.run import RunOptions, run_recipe
    from compress.pipeline.plan import load_recipe

    torch.manual_seed(0)
    m = build(tiny_config(embed_dim=64, depth=2, num_heads=2)).eval()
    ModelState(m, "tiny").save(tmp_path / "tiny")
    recipe = tmp_path / "r.yaml"
    passes = {"fold": {}, "quantize": {"weights": {"bits": 4}, "mixed": {"strategy": "sensitivity",
              "candidates": [3, 4, 6, 8], "budget": {"kind": "avg_bits", "value": 5}},
              "export": ["qdq", "tensorrt", "matmulnbits"], "evaluate": ["qdq"]}}
    recipe.write_text(f"""
name: tiny-quant
model: {tmp_path / 'tiny'}
data: {{path: {image_folder}, calibration: {{count: 8}}, batch_size: 4}}
passes: {json.dumps(passes)}
evaluation: {{probe_train: 12, test: 12, fidelity_images: 4, latency: {{runs: 2, warmup: 1, pytorch: false}}}}
export: {{verify: {{images: 2}}}}
""")
    out = tmp_path / "run"
    summary = run_recipe(load_recipe(recipe), RunOptions(out=out))
    rec = summary["passes"][1]
    assert rec["mixed"]["avg_bits"] <= 5 + 1e-9 and len(set(rec["bits"].values())) >= 2
    arts = {a["name"]: a for a in summary["artifacts"]}
    assert {"quantized-qdq", "quantized-tensorrt", "quantized-matmulnbits"} <= set(arts)
    assert all(a["verification"]["passed"] for a in arts.values())
    assert arts["quantized-qdq"]["precision"].startswith("w") and "int8-gemm" in arts["quantized-qdq"]["precision"]
    assert arts["quantized-tensorrt"]["runtime"] == "tensorrt"
    rows = {r["name"]: r for r in summary["evaluation"]["rows"]}
    assert "top1" in rows["quantized-qdq"] and "top1" not in rows["quantized-matmulnbits"]
    report = (out / "report.md").read_text()
    assert "plots/quant_bits.png" in report and "mixed precision: strategy **sensitivity**" in report
    # the reloaded checkpoint is the quantized model that was exported: it computes what the verified Q/DQ
    # artifact computes, and not what the float model before the pass computes
    from compress.runtime import OrtRunner

    back, _ = load_checkpoint(out / "passes" / "02-quantize")
    before, _ = load_checkpoint(out / "passes" / "01-fold")
    x = X[:2, :, :32, :32]
    with torch.no_grad():
        got, flt = back.model(x), before.model(x)
    art = OrtRunner(out / arts["quantized-qdq"]["path"])(x)
    cos = torch.nn.functional.cosine_similarity(got.flatten(), art.flatten(), dim=0)
    gap = (got - art).abs().max()
    assert cos > 0.9999 and gap <= arts["quantized-qdq"]["verification"]["max_abs"] * 10 + 1e-4, (cos, gap)
    assert (got - flt).abs().max() > 10 * gap  # quantization changed the model far more than the export did


@pytest.mark.parametrize("bad, what", [({"weights": {"bits": 9}}, "bits"), ({"nbits_block": 24}, "power of two"),
                                       ({"mixed": {"candidates": [1, 4]}}, "2..8"),
                                       ({"activations": {"bits": None}, "attention": {"quantize": True}}, "weight-only")])
def test_bad_configs_are_one_line_errors(tmp_path, bad, what):
    from compress.pipeline.plan import load_recipe

    r = tmp_path / "r.yaml"
    r.write_text(f"name: bad\npasses:\n  quantize: {json.dumps(bad)}\n")
    with pytest.raises(UserError) as e:
        load_recipe(r)
    assert what in str(e.value) and "\n" not in e.value.message
