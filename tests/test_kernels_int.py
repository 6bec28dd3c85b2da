"""Integer softmax / GELU (compress.kernels.integer): the PyTorch reference, the exported ONNX graph and the
host build of the CUDA kernels' code compute equal codes; bounded error vs float; the kernels pass with the
quantize pass exports an artifact verified code for code (the Triton kernels: tests/kernels_triton_cases.py)."""
from __future__ import annotations

import ctypes
import io
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from compress.kernels import integer as I

pytestmark = pytest.mark.timeout(240)
INT_OPS = {"Add", "Sub", "Mul", "Div", "Min", "Abs", "Relu", "BitShift", "ReduceMax",
           "ReduceSum", "Constant"}


def _cases():
    """(kind, shape, k, float input) over the ranges a ViT produces: logits within +-100, GELU inputs +-10."""
    g = torch.Generator().manual_seed(0)
    out = []
    for shape in [(1, 1), (3, 7), (2, 3, 17, 257), (5, 1000), (2, 4096)]:
        for amax in (0.5, 8.0, 100.0):
            x = (torch.rand(shape, generator=g) * 2 - 1) * amax
            out.append(("softmax", x, I.exponent_for(amax, "softmax")))
    for shape in [(1,), (7, 3), (2, 50, 1536), (4099,)]:
        for amax in (0.1, 3.0, 10.0):
            x = torch.randn(shape, generator=g) * amax / 3
            out.append(("gelu", x.clamp(-amax, amax), I.exponent_for(amax, "gelu")))
    return out


def _export(kind: str, k: int, x: torch.Tensor) -> bytes:
    mod = I.IntSoftmax(k) if kind == "softmax" else I.IntGELU(k)
    b = io.BytesIO()
    torch.onnx.export(mod, (x,), b, dynamo=False, opset_version=18, input_names=["x"])
    return b.getvalue()


def test_onnx_integer_graph_equals_reference_codes():
    graphs = {}
    for kind, x, k in _cases():
        key = (kind, k, tuple(x.shape))
        if key not in graphs:
            graphs[key] = _export(kind, k, x)
            ops = {n.op_type for n in onnx.load_from_string(graphs[key]).graph.node}
            # float only at the edges: Mul/Round/Clip/Cast in (quantize), Cast/Mul out; no Exp/Erf/Softmax
            assert ops <= INT_OPS | {"Cast", "Round", "Clip"}, ops
        sess = ort.InferenceSession(graphs[key], providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": x.numpy()})[0]
        want = (I.softmax if kind == "softmax" else I.gelu)(x, k).numpy()
        # outputs are code * 2^-s exactly, so equal floats are equal codes
        assert np.array_equal(got, want), (kind, tuple(x.shape), k)


def test_every_intermediate_stays_below_2_31():
    """Exhaustive over every input the kernels can see: the int32 arithmetic never overflows, so int32, C,
    Triton and ONNX agree (and the non-negative shifts equal truncating division)."""
    n = np.arange(0, 65536, dtype=np.int64)  # max - code
    assert (n * I.L14).max() < 2**31 and (32768 * I.L14) < 2**31  # T = code * L and max T - T
    for k in range(1, 15):
        t = (n * I.L14) >> (k + 4)
        q = t >> I.T_BITS
        f = t - (q << I.T_BITS)
        assert f.max() < 2**I.T_BITS and (I.B2 * f).max() < I.B1
        y = I.Y_ONE - f * (I.B1 - I.B2 * f)
        assert y.min() > 0 and y.max() <= 2**29 and (f * I.B1).max() < 2**31
        e = y >> (np.minimum(q, 16) + 14)
        assert e.max() == 2**15 and e[0] == 2**15  # the row max term is exactly 1.0 in Q15
        assert 65535 * 2**15 < 2**31  # the row sum
    a = np.arange(0, 32769, dtype=np.int64)  # |code|
    for k in range(15):
        d = I.KNEE[k] - np.minimum(a, I.KNEE[k])
        assert (d * I.ROOT[k]).max() < 2**31
        r = (d * I.ROOT[k]) >> I.M_BITS
        assert (r * r).max() < 2**15 and (a * r * r).max() < 2**31
        assert ((a * r * r) >> 15 <= a).all()  # out = relu(I) - that: never past 0 on the wrong side


def test_errors_against_float_are_bounded():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 257, generator=g) * 25  # attention logits of a real ViT: within +-100
    k = I.exponent_for(float(x.abs().max()), "softmax")
    p = I.softmax(x, k)
    assert (p - torch.softmax(x, -1)).abs().max() <= 2e-3
    assert ((p.sum(-1) - 1).abs() <= 257 * 2**-15).all()
    assert (p >= 0).all() and (p.sum(-1) <= 1).all()  # out = E * floor(2^30 / S): never above 1
    xg = torch.linspace(-10, 10, 200_001)
    kg = I.exponent_for(10.0, "gelu")
    # I-BERT's polynomial (0.01815) + input rounding (half a step, slope <= 1.13) + truncated Phi and output
    assert (I.gelu(xg, kg) - torch.nn.functional.gelu(xg)).abs().max() <= 0.0182 + 4 * 2.0**-kg
    with pytest.raises(ValueError, match="k=0"):
        I.softmax_codes(torch.zeros(2, dtype=torch.int32), 0)


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_cuda_kernel_code_built_for_the_host_equals_reference(tmp_path):
    """integer_math.h, the per-element code the CUDA kernels call, compiled for the CPU (the kernels themselves
    only compile here: tests/test_kernels_cuda.py; running them needs a GPU)."""
    from compress.kernels import cuda

    lib = ctypes.CDLL(str(cuda.build_host_integer(tmp_path)))
    g = torch.Generator().manual_seed(2)
    for rows, cols, k in ((1, 1, 1), (37, 257, 8), (5, 4096, 14), (3, 65535, 3)):
        c = torch.randint(-32768, 32768, (rows, cols), generator=g, dtype=torch.int32)
        out = torch.empty_like(c)
        lib.vf_int_softmax(ctypes.c_void_p(c.data_ptr()), ctypes.c_void_p(out.data_ptr()), ctypes.c_int64(rows),
                           ctypes.c_int64(cols), ctypes.c_int(k))
        assert torch.equal(out, I.softmax_codes(c, k))
    c = torch.arange(-32768, 32768, dtype=torch.int32)  # every int16 code
    for k in range(15):
        out = torch.empty_like(c)
        lib.vf_int_gelu(ctypes.c_void_p(c.data_ptr()), ctypes.c_void_p(out.data_ptr()), ctypes.c_int64(c.numel()),
                        ctypes.c_int(k))
        assert torch.equal(out, I.gelu_codes(c, k))


def _quantized_int_model(tmp_path):
    from compress.models import build
    from compress.passes.kernel_swap import KernelsConfig, KernelsPass
    from compress.pipeline.base import available_passes
    from compress.pipeline.state import ModelState
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = build(tiny_config()).eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ctx = SimpleNamespace(calibration_batches=lambda count=None, batch_size=None: [x[:4], x[4:]])
    qp = available_passes()["quantize"]
    qcfg = qp.Config(weights={"rounding": "nearest"})
    state = ModelState(model, "tiny", [])
    state.history.append({"name": "quantize", "type": "quantize", "config": qcfg.model_dump(),
                          **qp(qcfg).run(state, ctx)})
    kcfg = KernelsConfig(softmax="int", gelu="int")
    state.history.append({"name": "kernels", "type": "kernels", "config": kcfg.model_dump(),
                          **KernelsPass(kcfg).run(state, ctx)})
    return state, x


def test_w8a8_with_int_kernels_exports_equal_codes_and_reloads(tmp_path):
    """The recipe's shape (recipes/kernels-int8-int.yaml): quantize + int kernels -> float graph -> Q/DQ;
    ONNX Runtime's codes equal the PyTorch reference's; a changed constant in the graph fails the check."""
    from compress.errors import VerificationError
    from compress.export.onnx_export import export_onnx
    from compress.models.float_view import float_view
    from compress.passes.quantize.export import int_codes_check
    from compress.passes.quantize.export_qdq import build_qdq
    from compress.pipeline.checkpoint import load_checkpoint
    from compress.pipeline.plan import load_recipe
    from compress.runtime import OrtRunner

    rec = load_recipe("recipes/kernels-int8-int.yaml", []).recipe
    assert rec.passes["kernels"]["softmax"] == "int" and "quantize" in rec.passes
    state, x = _quantized_int_model(tmp_path)
    model = state.model
    assert isinstance(model.blocks[0].attn.softmax, I.IntSoftmax) and isinstance(model.blocks[1].mlp.act, I.IntGELU)
    with float_view(model):
        export_onnx(model, tmp_path / "f.onnx", opset=18)
    proto, _ = build_qdq(tmp_path / "f.onnx", model, "onnxruntime")
    onnx.save(proto, str(tmp_path / "q.onnx"))
    r = int_codes_check(tmp_path / "q.onnx", model, x)
    # the TensorRT form (no uint32: the shift as a Div by a Gather of powers of two) computes the same codes
    trt, _ = build_qdq(tmp_path / "f.onnx", model, "tensorrt")
    assert I.gather_shifts(trt) == 2 and not {n.op_type for n in trt.graph.node} & {"BitShift"}
    assert not any(a.name == "to" and a.i == onnx.TensorProto.UINT32 for n in trt.graph.node for a in n.attribute)
    onnx.save(trt, str(tmp_path / "trt.onnx"))
    assert int_codes_check(tmp_path / "trt.onnx", model, x)["kernel_mismatches"] == 0
    assert r["kernels"] == 4 and r["codes"] > 40_000 and r["kernel_codes_equal"] and r["kernel_mismatches"] == 0
    assert r["model_output_codes_equal"] > 0.999
    with torch.no_grad():
        want = model(x)
    assert torch.nn.functional.cosine_similarity(OrtRunner(tmp_path / "q.onnx")(x).flatten(1), want.flatten(1)).min() > 0.999
    # a wrong constant (the exp polynomial's B1) changes codes: the check fails
    for t in proto.graph.node:
        if t.op_type == "Constant" and t.name.startswith("/blocks.0/attn/softmax/"):
            v = onnx.numpy_helper.to_array(t.attribute[0].t)
            if v.ndim == 0 and int(v) == I.B1:
                t.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(np.array(I.B1 + 700, np.int32)))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(VerificationError, match="integer-kernel codes differ"):
        int_codes_check(tmp_path / "bad.onnx", model, x)
    # the record rebuilds the modules, with their calibrated scales, before the weights load
    state.save(tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.model.blocks[1].attn.softmax.k == model.blocks[1].attn.softmax.k
    with torch.no_grad():
        assert torch.equal(loaded.model(x), want)
