"""TensorRT build kits: the TensorRT-ready graph, Q/DQ placement rules on the graph, INT4 conversion,
the build script up to the builder call, and ``compress build``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import make_image_folder, tiny_config

pytestmark = pytest.mark.timeout(120)


def int8_qdq(src: Path, dest: Path, symmetric: bool = True) -> Path:
    """ONNX Runtime's static QDQ quantization of the MatMul/Conv layers (a stand-in for the quantize pass)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"images": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dest), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Conv"],
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
    return dest


def strip_qdq_before(model: onnx.ModelProto, ops=("Softmax", "LayerNormalization")) -> onnx.ModelProto:
    """Remove Q->DQ pairs that feed ``ops`` (the placement TensorRT wants)."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    drop = set()
    for n in g.node:
        if n.op_type in ops and prod.get(n.input[0]) is not None and prod[n.input[0]].op_type == "DequantizeLinear":
            dq = prod[n.input[0]]
            q = prod[dq.input[0]]
            n.input[0] = q.input[0]
            drop |= {id(dq), id(q)}
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(keep)
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model state, its verified float graph, and INT8 Q/DQ graphs, as an ExportRequest."""
    from compress.export.artifacts import Artifact, ExportRequest, export_float_onnx
    from compress.models import build
    from compress.pipeline.state import ModelState
    from compress.recipes.schema import Recipe

    root = tmp_path_factory.mktemp("trt")
    make_image_folder(root / "imgs", split="train")
    make_image_folder(root / "imgs", split="test")
    torch.manual_seed(0)
    state = ModelState(build(tiny_config()), "tiny")
    req = ExportRequest(state, root / "run", Recipe(data={"path": str(root / "imgs")}), torch.randn(4, 3, 32, 32), [],
                        reference=state)
    a = export_float_onnx(req)
    req.float_onnx = root / "run" / a.path
    art = req.run_dir / "artifacts"
    int8_qdq(req.float_onnx, art / "ort-default-int8.onnx")
    clean = strip_qdq_before(onnx.load(str(art / "ort-default-int8.onnx")))
    onnx.save(clean, str(art / "model-int8.onnx"))
    int8_qdq(req.float_onnx, art / "asym-int8.onnx", symmetric=False)
    req.artifacts = [a, Artifact("int8", "artifacts/model-int8.onnx", "onnx", "onnxruntime", "w8a8")]
    return req


def test_fp16_graph_keeps_layernorm_and_softmax_in_fp32(run):
    from compress.targets.tensorrt.graph import HALF, FLOAT, opset, to_fp16

    m = to_fp16(onnx.load(str(run.float_onnx)))
    assert opset(m) >= 17
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("LayerNormalization") == 5 and "ReduceMean" not in ops  # one node per LayerNorm
    inits = {i.name: i.data_type for i in m.graph.initializer}
    assert inits["blocks.0.norm1.weight"] == FLOAT and inits["patch_embed.proj.weight"] == HALF
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(m.graph.value_info) + list(m.graph.output)}
    for n in m.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert types[n.output[0]] == FLOAT  # computed in fp32 ...
        if n.op_type == "MatMul":
            assert types[n.output[0]] == HALF  # ... between fp16 layers
    assert m.graph.input[0].type.tensor_type.elem_type == FLOAT == m.graph.output[0].type.tensor_type.elem_type


def test_qdq_rules_on_the_graph(run):
    from compress.targets.tensorrt.rules import check_qdq, summary

    art = run.run_dir / "artifacts"
    default = summary(check_qdq(onnx.load(str(art / "ort-default-int8.onnx")), ["fp16", "int8"]))
    assert not default["passed"]
    assert {v["rule"] for v in default["violations"] if v["severity"] == "error"} == {"norm-softmax"}
    clean = summary(check_qdq(onnx.load(str(art / "model-int8.onnx")), ["fp16", "int8"]))
    assert clean["passed"], clean
    asym = summary(check_qdq(onnx.load(str(art / "asym-int8.onnx")), ["int8"]))
    assert "symmetric" in {v["rule"] for v in asym["violations"]}
    assert not summary(check_qdq(onnx.load(str(art / "model-int8.onnx")), ["fp16"]))["passed"]  # no int8 here
    # per-channel weight scales on the reduction axis cannot be factored out of the GEMM
    m = onnx.load(str(art / "model-int8.onnx"))
    fc1 = next(n for n in m.graph.node if n.name == "/blocks.0/mlp/fc1/MatMul")
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == fc1.input[1])
    for a in dq.attribute:
        if a.name == "axis":
            a.i = 0
    bad = check_qdq(m, ["int8"])
    assert any(v.rule == "weight-axis" and v.node == dq.name for v in bad)
    # a decomposed LayerNorm (opset < 17 export) is flagged
    from compress.export.onnx_export import export_onnx

    old = export_onnx(run.state.model, run.run_dir / "op13.onnx", opset=13)
    rules = {v.rule for v in check_qdq(old)}
    assert rules == {"opset"}


def _matmulnbits_graph(K=32, N=8, block=16, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, (N, K)).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(N, K // block, block // 2)
    scales = rng.uniform(0.01, 0.1, (N, K // block)).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["a", "b", "s"], ["y"], domain="com.microsoft", K=K, N=N, bits=4,
                            block_size=block, name="mm")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, N])],
                          [numpy_helper.from_array(packed, "b"), numpy_helper.from_array(scales.flatten(), "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    w = (codes.astype(np.float32) - 8) * np.repeat(scales, block, axis=1)  # [N, K]
    return m, w


def test_matmulnbits_becomes_blocked_int4_dequantize_exactly():
    from compress.runtime import ort_session
    from compress.targets.tensorrt.graph import matmulnbits_to_dq, opset
    from compress.targets.tensorrt.rules import check_qdq

    m, w = _matmulnbits_graph()
    dq = matmulnbits_to_dq(m)
    assert opset(dq) == 21 and [n.op_type for n in dq.graph.node] == ["DequantizeLinear", "MatMul"]
    attrs = {a.name: helper.get_attribute_value(a) for a in dq.graph.node[0].attribute}
    assert attrs == {"axis": 0, "block_size": 16}
    assert next(i for i in dq.graph.initializer if i.data_type == TensorProto.INT4).dims == [32, 8]
    x = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    y0 = ort_session(m.SerializeToString()).run(None, {"a": x})[0]
    y1 = ort_session(dq.SerializeToString()).run(None, {"a": x})[0]
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y1, x @ w.T, rtol=1e-4, atol=1e-4)
    assert not [v for v in check_qdq(dq, ["fp16", "int8", "int4"]) if v.severity == "error"]
    assert [v.rule for v in check_qdq(dq, ["fp16", "int8"])] == ["types"]  # Xavier: no INT4


def test_kits_for_orin_and_xavier(run):
    from compress.targets.deploy import TARGET_EXPORTERS
    from compress.targets import load_profile

    run.target = load_profile({"name": "jetson-orin-nano"})
    arts = TARGET_EXPORTERS["tensorrt"](run)
    assert sorted(a.precision for a in arts) == ["fp16", "int8"]
    for a in arts:
        kit = run.run_dir / a.path
        man = json.loads((kit / "manifest.json").read_text())
        assert man["target"] == "jetson-orin-nano" and man["strongly_typed"] and man["qdq_rules"]["passed"]
        assert "--stronglyTyped" in man["trtexec"] and "--fp16" not in man["trtexec"]
        assert "--minShapes=images:1x3x32x32" in man["trtexec"] and "--maxShapes=images:8x3x32x32" in man["trtexec"]
        assert "--timingCacheFile=timing.cache" in man["trtexec"]
        assert a.verification["passed"] and a.verification["cosine"] > 0.999 and not a.evaluate
        assert (kit / "build_engine.py").is_file() and (kit / "trtexec.sh").is_file()
    run.target = load_profile({"name": "jetson-xavier-nx", "precision": "int4"})
    arts = TARGET_EXPORTERS["tensorrt"](run)
    (a,) = arts
    man = json.loads((run.run_dir / a.path / "manifest.json").read_text())
    assert a.precision == "int8" and any("does not run int4" in n for n in a.notes)
    assert not man["strongly_typed"] and "--int8" in man["trtexec"] and "--stronglyTyped" not in man["trtexec"]
    # TensorRT 8.5 parses up to opset 17: the INT8 graph (opset 21 from the Q/DQ export) is stamped down to it
    assert man["opset"] == 17 and onnx.load(str(run.run_dir / a.path / "model.onnx")).opset_import[0].version == 17


def test_opset_cap_only_where_the_graph_allows_it():
    from compress.targets.tensorrt.graph import cap_opset, needed_opset, opset
    from compress.targets.tensorrt.rules import check_qdq

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])
    w = numpy_helper.from_array(np.arange(32, dtype=np.int8).reshape(8, 4), "w")
    s = numpy_helper.from_array(np.full(4, 0.1, np.float32), "s")
    dq = helper.make_node("DequantizeLinear", ["w", "s"], ["wf"], axis=1)
    g = helper.make_graph([dq, helper.make_node("MatMul", ["x", "wf"], ["y"])], "g", [x], [y], [w, s])
    errors = lambda m: [v.rule for v in check_qdq(m, None, 17) if v.severity == "error"]  # noqa: E731
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    assert needed_opset(m) == 17 and errors(m) == ["opset"]
    assert opset(cap_opset(m, 17)) == 17 and errors(m) == []
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.full(4, 0.1, np.float16), "s"))
    assert needed_opset(m) == 19 and opset(cap_opset(m, 17)) == 21  # fp16 scales need 19: kept,
    assert errors(m) == ["opset"]  # and the rule says why no kit


def test_opset_is_converted_or_the_kit_fails_never_just_renumbered():
    from compress.errors import UserError
    from compress.targets.tensorrt.graph import opset, set_opset

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 1])
    g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=1)], "g", [x], [y])
    m = set_opset(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), 19)
    assert opset(m) == 19 and list(m.graph.node[-1].input)[1:]  # axes moved to an input, as opset 18 wants
    onnx.checker.check_model(m, full_check=True)
    g = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x], [y])  # no adapter for it
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UserError, match="cannot be converted from opset 17 to 19"):
        set_opset(m, 19)
    assert opset(m) == 17


def test_kit_with_broken_rules_is_not_shipped(run):
    from compress.export.artifacts import Artifact
    from compress.targets.deploy import TARGET_EXPORTERS
    from compress.targets import load_profile

    saved = run.artifacts
    run.artifacts = [saved[0], Artifact("int8", "artifacts/ort-default-int8.onnx", "onnx", "onnxruntime", "w8a8")]
    run.target = load_profile({"name": "jetson-agx-orin", "precision": "int8"})
    try:
        arts = TARGET_EXPORTERS["tensorrt"](run)
    finally:
        run.artifacts = saved
    assert arts == []  # neither a kit that breaks the rules, nor a silent fp16 one in its place


class FakeTRT:
    """Records what build_engine does with the TensorRT Python API (TensorRT cannot be installed here).

    The enum values are TensorRT's own (NvInfer.h): NetworkDefinitionCreationFlag kEXPLICIT_BATCH = 0, and
    kSTRONGLY_TYPED = 1 from TensorRT 9; TensorRT 8.5 has no strongly typed flag (its value 1 is the
    deprecated kEXPLICIT_PRECISION), so the 8.x fake lacks the attribute."""

    def __init__(self, version: str = "10.3.0"):
        self.calls = {}
        self.__version__ = version
        fake = self

        class NetworkDefinitionCreationFlag:
            EXPLICIT_BATCH = 0
            if int(version.split(".")[0]) >= 9:
                STRONGLY_TYPED = 1

        class BuilderFlag:
            FP16, INT8 = "FP16", "INT8"

        class ProfilingVerbosity:
            DETAILED = "detailed"

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls["shape"] = (name, lo, opt, hi)

        class Cache:
            def serialize(self):
                return b"cache-v2"

        class Config:
            profiling_verbosity = None

            def set_flag(self, f):
                fake.calls.setdefault("flags", []).append(f)

            def add_optimization_profile(self, p):
                fake.calls["profiles"] = fake.calls.get("profiles", 0) + 1

            def create_timing_cache(self, data):
                fake.calls["cache_in"] = data
                return Cache()

            def set_timing_cache(self, c, ignore):
                fake.calls["cache_ignore_mismatch"] = ignore

            def get_timing_cache(self):
                return Cache()

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls["network_flags"] = flags
                return "network"

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls["built"] = (network, config.profiling_verbosity)
                return b"engine-bytes"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls["onnx"] = path
                return Path(path).is_file()

        for k, v in list(locals().items()):
            if isinstance(v, type):
                setattr(self, k, v)


def test_build_engine_script_up_to_the_builder_call(run, tmp_path):
    from compress.targets.tensorrt.build import build_from_kit

    kits = run.run_dir / "artifacts" / "jetson-orin-nano"
    kit = kits / "model-int8.trt-kit"
    (kit / "timing.cache").write_bytes(b"cache-v1")
    trt = FakeTRT()
    res = build_from_kit(kit, "jetson-orin-nano", trt=trt)
    c = trt.calls
    assert c["onnx"] == str(kit / "model.onnx") and c["network_flags"] == 0b10  # kSTRONGLY_TYPED only
    assert "flags" not in c  # strongly typed: no precision flags
    assert c["shape"] == ("images", (1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 32, 32)) and c["profiles"] == 1
    assert c["cache_in"] == b"cache-v1" and c["built"] == ("network", "detailed")
    assert (kit / "model.engine").read_bytes() == b"engine-bytes" and (kit / "timing.cache").read_bytes() == b"cache-v2"
    assert res["built"] and res["precision"] == "int8"
    # Xavier (TensorRT 8.5): explicit batch and precision flags instead of strong typing
    x = run.run_dir / "artifacts" / "jetson-xavier-nx" / "model-int8.trt-kit"
    trt8 = FakeTRT("8.5.2")
    build_from_kit(x, "jetson-xavier-nx", trt=trt8)
    assert trt8.calls["network_flags"] == 0b1 and trt8.calls["flags"] == ["FP16", "INT8"]  # kEXPLICIT_BATCH only


def test_compress_build_without_tensorrt(run, capsys):
    from compress.cli import main

    kit = run.run_dir / "artifacts" / "jetson-orin-nano" / "model-fp16.trt-kit"
    assert main(["build", "--target", "jetson-orin-nano", str(kit), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trtexec"].startswith("trtexec --onnx=model.onnx --saveEngine=model.engine") and not out["built"]
    assert main(["build", "--target", "jetson-orin-nano", str(run.run_dir)]) == 2  # a run folder: its kits
    err = capsys.readouterr().err
    assert "TensorRT is not installed here" in err and "trtexec --onnx=model.onnx" in err
    assert main(["build", "--target", "jetson-agx-orin", str(kit)]) == 2
    assert "was made for jetson-orin-nano" in capsys.readouterr().err
    assert main(["build", "--target", "x86-avx512", str(kit)]) == 2
    assert "does not run TensorRT" in capsys.readouterr().err


def _kit_copy(run, dest: Path, name: str = "model-int8.trt-kit") -> Path:
    import shutil

    return Path(shutil.copytree(run.run_dir / "artifacts" / "jetson-orin-nano" / name, dest / name))


RAN = "\nPath(__file__).with_name('RAN').write_text('the kit ran code here')\n"  # appended to a kit's script


def test_dry_run_executes_nothing_from_the_kit(run, tmp_path, capsys):
    from compress.cli import main

    kit = _kit_copy(run, tmp_path)
    with open(kit / "build_engine.py", "a") as f:
        f.write(RAN)
    assert main(["build", "--target", "jetson-orin-nano", str(kit), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trtexec"].startswith("trtexec --onnx=model.onnx") and not out["built"]
    assert not (kit / "RAN").exists()


@pytest.mark.parametrize("name", ["model.onnx", "build_engine.py"])
def test_real_build_checks_every_file_hash_first(run, tmp_path, capsys, name):
    from compress.cli import main
    from compress.errors import UserError
    from compress.targets.tensorrt.build import build_from_kit

    kit = _kit_copy(run, tmp_path)
    with open(kit / name, "a") as f:
        f.write(RAN if name.endswith(".py") else "x")
    trt = FakeTRT()
    with pytest.raises(UserError, match="does not match the sha256"):
        build_from_kit(kit, "jetson-orin-nano", trt=trt)
    assert "built" not in trt.calls and "onnx" not in trt.calls and not (kit / "RAN").exists()
    assert main(["build", "--target", "jetson-orin-nano", str(kit)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{name} does not match the sha256" in err and "Traceback" not in err


def test_kit_manifest_fields_are_validated_before_any_command(run, tmp_path, capsys):
    from compress.cli import main

    kit = _kit_copy(run, tmp_path)
    man = json.loads((kit / "manifest.json").read_text())
    bad = [{"input": man["input"] | {"name": "images --plugins=/tmp/evil.so"}}, {"onnx": "../../etc/passwd"},
           {"builder_flags": ["fp16", "plugins=/tmp/evil.so"]}, {"files": {"model.onnx": man["files"]["model.onnx"]}}]
    for change in bad:
        (kit / "manifest.json").write_text(json.dumps(man | change))
        args = ["build", "--target", "jetson-orin-nano", str(kit)]
        code = main(args if "files" in change else args + ["--dry-run"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "manifest.json" in err, (change, err)
