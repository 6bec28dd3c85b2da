"""Q/DQ ONNX from a quantized model: the float graph plus QuantizeLinear/DequantizeLinear where the
PyTorch fake quantizers sit, with the integer weights the pass chose.

Placement is TensorRT's explicit-quantization style: the inputs of weighted ops (and, when the recipe
quantizes attention, of the attention matmuls) get a Q/DQ pair, one per distinct tensor (q, k and v share
theirs); LayerNorm, softmax, GELU and the residual adds stay in float. Weights are integer initializers
behind a DequantizeLinear (per output channel, or per block with opset-21 ``block_size``).

Widths: b < 8 bit activations are exact on int8 Q/DQ behind a Clip to the b-bit range; weights of 4 bits
or fewer are stored as INT4. For ONNX Runtime, an INT4 weight feeding an int8 GEMM goes through a Cast
to INT8 that the session constant-folds at load, so the file keeps 4 bits per weight and the GEMM runs
as MatMulIntegerToFloat (int8 x int8 -> int32). For TensorRT (``flavor="tensorrt"``) activations are
symmetric only: an asymmetric quantizer (GELU output) becomes a shift before a symmetric Q/DQ, with the
shift folded into the consumer's bias (exact), and sub-8-bit weights use INT8 containers, since TensorRT
has no INT4-weight x INT8-activation GEMM.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import torch

from .modules import QuantConv2d, QuantLinear, QuantMatMul, quantized_modules
from ...utils.onnx_graph import GraphEditor, node_name, set_opset
from .quantizers import LogQuantizer, UniformQuantizer

LN2 = math.log(2.0)


def weight_codes(mod) -> tuple[np.ndarray, UniformQuantizer]:
    q: UniformQuantizer = mod.weight_quant
    with torch.no_grad():
        codes = q.quantize_int(mod.weight.detach().float())
    return codes.numpy().astype(np.int64), q


def weight_dq(ed: GraphEditor, node, path: str, mod, *, ort_int8_gemm: bool, int4: bool = True) -> str:
    """DequantizeLinear of ``mod``'s integer weight, laid out like the float initializer it replaces.

    ``ort_int8_gemm``: the weight feeds an ONNX Runtime integer GEMM. It is stored unsigned, with the zero point
    moved by the same offset (the same values): ONNX Runtime's x86 kernels for u8 x s8 sum pairs of products in
    16 bits (``vpmaddubsw``), which saturate on CPUs without AVX-VNNI (measured: max|diff| 0.28 vs 2e-6 on a
    2-block ViT, AVX2), while u8 x u8 widens first and is exact everywhere. Weights of 4 bits or fewer stay
    4-bit on disk (UINT4) behind a Cast to UINT8 that the session constant-folds at load."""
    codes, q = weight_codes(mod)
    scale = q.scale.detach().float().numpy()
    small = q.bits <= 4 and int4
    tag = path.replace(".", "_")
    attrs = {}
    if isinstance(mod, QuantConv2d):  # [C, Cin, kh, kw], per output channel on axis 0
        w = codes
        s = scale.reshape(-1)
        attrs = {"axis": 0} if s.size > 1 else {}
    else:  # MatMul initializer is W^T: [K, N]
        w = codes.T
        if q.group:  # scale [N, K/g, 1] -> [K/g, N], blocks along K (axis 0)
            s = scale.reshape(scale.shape[0], -1).T.copy()
            attrs = {"axis": 0, "block_size": q.group}
        else:
            s = scale.reshape(-1)
            attrs = {"axis": 1} if s.size > 1 else {}
    s = s if s.size > 1 else s.reshape(())
    if ort_int8_gemm:
        off = 8 if small else 128
        wname = ed.const_int4(f"{tag}_w_uint4", w + off, signed=False) if small else \
            ed.const(f"{tag}_w_uint8", w + off, np.uint8)
        if small:
            wname = ed.node(node.name, "Cast", [wname], f"/{tag}/WeightCast", to=onnx.TensorProto.UINT8)
        zp = ed.const(f"{tag}_w_zp", np.full(s.shape, off), np.uint8)
    else:
        wname = ed.const_int4(f"{tag}_w_int4", w) if small else ed.const(f"{tag}_w_int8", w, np.int8)
        zp = None
    if q.group:  # float16-exact block scales (see UniformQuantizer.set_range): half the bytes on disk, widened
        # to float32 by a Cast of a constant (folded when the runtime loads the graph)
        sname = ed.node(node.name, "Cast", [ed.const(f"{tag}_w_scale_f16", s, np.float16)], f"/{tag}/ScaleCast",
                        to=onnx.TensorProto.FLOAT)
    else:
        sname = ed.const(f"{tag}_w_scale", s)
    inputs = [wname, sname] + ([zp] if zp else [])
    return ed.node(node.name, "DequantizeLinear", inputs, f"/{tag}/WeightDQ", **attrs)


def _uniform_qdq(ed: GraphEditor, before: str, src: str, q: UniformQuantizer, tag: str, shift: float = 0.0,
                 unsigned: bool = True) -> str:
    """Q/DQ pair for a per-tensor quantizer. ``unsigned``: symmetric grids too go to uint8 with zero point
    128 (the same values; ONNX Runtime's x86 int8 GEMMs take u8 activations, and one shared Q then feeds
    q, k and v), else int8 with zero point 0 (TensorRT)."""
    s = float(q.scale)
    if q.bits > 8:
        qmin, qmax, zp, dtype = q.qmin, q.qmax, float(q.zero_point), (np.int16 if q.symmetric else np.uint16)
    elif (q.symmetric or shift) and not unsigned:
        qmin, qmax = (q.qmin, q.qmax) if q.symmetric else (q.qmin - 2 ** (q.bits - 1), q.qmax - 2 ** (q.bits - 1))
        zp, dtype = 0.0, np.int8
    elif q.symmetric:
        qmin, qmax, zp, dtype = q.qmin + 128, q.qmax + 128, 128.0, np.uint8
    else:
        qmin, qmax, zp, dtype = q.qmin, q.qmax, float(q.zero_point), np.uint8
    x = src
    if shift:
        x = ed.node(before, "Add", [x, ed.const(f"{tag}_shift", np.float32(shift))], f"/{tag}/Shift")
    full = (-128, 127) if dtype == np.int8 else (0, 255) if dtype == np.uint8 else None
    if full is not None and (qmin, qmax) != full:  # narrower than the container: clip to the b-bit range
        lo, hi = np.float32(s * (qmin - zp)), np.float32(s * (qmax - zp))
        x = ed.node(before, "Clip", [x, ed.const(f"{tag}_lo", lo), ed.const(f"{tag}_hi", hi)], f"/{tag}/Clip")
    sc, z = ed.const(f"{tag}_scale", np.float32(s)), ed.const(f"{tag}_zp", np.asarray(zp).astype(dtype), dtype)
    xq = ed.node(before, "QuantizeLinear", [x, sc, z], f"/{tag}/QuantizeLinear")
    return ed.node(before, "DequantizeLinear", [xq, sc, z], f"/{tag}/DequantizeLinear")


def _log_graph(ed: GraphEditor, before: str, src: str, q: LogQuantizer, tag: str) -> str:
    """The log2 / SULQ quantizer as float ops (no integer runtime op computes it): ORT runs it exactly."""
    levels = float(2**q.bits - 1)
    c = lambda n, v: ed.const(f"{tag}_{n}", np.float32(v))  # noqa: E731
    n = lambda op, ins, name, **a: ed.node(before, op, ins, f"/{tag}/{name}", **a)  # noqa: E731
    if q.mode == "log2":
        lg = n("Log", [n("Max", [src, c("tiny", 1e-30)], "Floor0")], "Log")
        r = n("Round", [n("Mul", [lg, c("neg_inv_ln2", -1 / LN2)], "ToLog2")], "Round")
        e = n("Exp", [n("Mul", [n("Clip", [r, c("zero", 0), c("levels", levels)], "Clip"), c("neg_ln2", -LN2)],
                          "ToLn")], "Exp")
        return n("Where", [n("Greater", [r, c("max_code", levels)], "Past"), c("zero_out", 0), e], "Where")
    eta, lo, delta = float(q.eta), float(q.lo), float(q.delta)
    shifted = n("Max", [n("Add", [src, c("eta", eta)], "Shift"), c("tiny", 1e-30)], "Floor0")
    t = n("Div", [n("Log", [shifted], "Log"), c("ln2", LN2)], "Log2")
    code = n("Clip", [n("Round", [n("Div", [n("Sub", [t, c("lo", lo)], "Offset"), c("delta", delta)], "Step")],
                        "Round"), c("zero", 0), c("levels", levels)], "Clip")
    lvl = n("Add", [n("Mul", [code, c("delta2", delta)], "Level"), c("lo2", lo)], "Exponent")
    return n("Sub", [n("Exp", [n("Mul", [lvl, c("ln2b", LN2)], "ToLn")], "Exp"), c("eta2", eta)], "Unshift")


class QdqBuilder:
    """Builds one Q/DQ graph; ``flavor`` is ``onnxruntime`` or ``tensorrt``."""

    def __init__(self, float_onnx, model, flavor: str = "onnxruntime", weights: str = "qdq"):
        self.ed = GraphEditor(onnx.load(str(float_onnx)))
        self.model, self.flavor, self.weights = model, flavor, weights
        self.cache: dict[tuple, str] = {}
        self.notes: list[str] = []
        self.bias_shift: dict[str, float] = {}

    def act(self, node, idx: int, q, tag: str, consumer_bias: bool = False) -> None:
        if q is None or not q.quant_enabled:
            return
        src = node.input[idx]
        key = (src,) + tuple(np.round(t.detach().numpy().ravel(), 12).tobytes() for t in q.buffers()) + (repr(q.spec()),)
        if key not in self.cache:
            if isinstance(q, LogQuantizer):
                self.cache[key] = _log_graph(self.ed, node.name, src, q, tag)
            else:
                shift = 0.0
                if self.flavor == "tensorrt" and not q.symmetric and q.bits <= 8:
                    if not consumer_bias:
                        raise ValueError(f"{tag}: asymmetric quantizer before a non-linear op cannot be made symmetric")
                    shift = float(q.scale) * (float(q.zero_point) - 2 ** (q.bits - 1))
                self.cache[key] = _uniform_qdq(self.ed, node.name, src, q, tag, shift, self.flavor != "tensorrt")
                if shift:
                    self.bias_shift[node.name] = shift
        node.input[idx] = self.cache[key]

    def build(self) -> onnx.ModelProto:
        ed = self.ed
        acts_on = any(getattr(m, "input_quant", None) is not None for m in quantized_modules(self.model).values())
        for path, mod in quantized_modules(self.model).items():
            tag = path.replace(".", "_")
            if isinstance(mod, QuantMatMul):
                node = ed.nodes[node_name(path, "MatMul")]
                self.act(node, 0, mod.a_quant, f"{tag}_a")
                self.act(node, 1, mod.b_quant, f"{tag}_b")
                continue
            op = "Conv" if isinstance(mod, QuantConv2d) else "MatMul"
            node = ed.nodes[node_name(path, op)]
            self.act(node, 0, mod.input_quant, f"{tag}_in", consumer_bias=isinstance(mod, QuantLinear))
            if mod.weight_quant is not None and self.weights == "qdq":
                int8_gemm = mod.input_quant is not None and mod.weight_quant.group is None
                node.input[1] = weight_dq(ed, node, path, mod, ort_int8_gemm=int8_gemm and self.flavor == "onnxruntime",
                                          int4=not (self.flavor == "tensorrt" and int8_gemm))
                if mod.input_quant is not None and mod.weight_quant.group and self.flavor == "onnxruntime":
                    # ONNX Runtime 1.2x fuses DQ(x) x DQ(blocked int8 W) into MatMulIntegerToFloat, ignoring
                    # block_size (it fails at run time): a same-shape Reshape keeps this GEMM in float
                    k_n = np.array([mod.weight.shape[1], mod.weight.shape[0]], np.int64)
                    node.input[1] = ed.node(node.name, "Reshape", [node.input[1], ed.const(f"{tag}_w_shape", k_n, np.int64)],
                                            f"/{tag}/WeightReshape")
            if node.name in self.bias_shift:
                self._fold_shift(path, mod, node)
        if self.flavor == "tensorrt" and acts_on and any(
                m.weight_quant is not None and m.weight_quant.bits <= 4 and m.input_quant is not None
                for m in quantized_modules(self.model).values() if not isinstance(m, QuantMatMul)):
            self.notes.append("TensorRT has no INT4-weight x INT8-activation GEMM: weights of 4 bits or fewer are "
                              "stored in INT8 containers (same values, same results, twice the weight bytes)")
        model = ed.finish()
        set_opset(model, 21)
        return model

    def _fold_shift(self, path: str, mod, node) -> None:
        """x^ = DQ(q') - c: fold -c * colsum(W) into the bias Add after the MatMul (a fresh initializer)."""
        c = self.bias_shift[node.name]
        w = mod.qweight().detach().double()  # [N, K]
        delta = (-c * w.sum(1)).float().numpy()
        add = next(n for n in self.ed.graph.node if n.op_type == "Add" and node.output[0] in n.input)
        j = 1 - list(add.input).index(node.output[0])
        bias = self.ed.value(add.input[j]).astype(np.float32)
        add.input[j] = self.ed.const(f"{path.replace('.', '_')}_bias_shifted", bias + delta)


def build_qdq(float_onnx, model, flavor: str = "onnxruntime") -> tuple[onnx.ModelProto, list[str]]:
    b = QdqBuilder(float_onnx, model, flavor)
    return b.build(), b.notes
