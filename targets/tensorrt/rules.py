"""Q/DQ placement rules for TensorRT explicit quantization, checked on the ONNX graph itself.

From the TensorRT developer guide (Working with Quantized Types / Explicit Quantization) and the
ONNX operator contracts, for a graph TensorRT will build and run fast:

  opset            opset >= 17, LayerNorm one LayerNormalization node (not ReduceMean/Sub/Pow/... chains);
                   at most the target parser's newest opset (TensorRT 8.5: 17)
  symmetric        Q/DQ zero points are 0: TensorRT quantization is symmetric
  scale            scales are build-time constants, finite and > 0
  pairs            every QuantizeLinear feeds only DequantizeLinear; every activation DQ is fed by a Q
  weight-axis      per-channel weight scales along the output channels (Conv axis 0, MatMul [K, N] axis 1);
                   blocked INT4 along K (axis 0) with K divisible by the block
  int4-weights     INT4 only on constant weights (weight-only), never on activations
  types            no FP8 and INT8 in one network; FP8 / INT4 only where the target runs them
  gemm-inputs      an INT8 MatMul/Conv has both inputs dequantized, else TensorRT runs it in float
  norm-softmax     no Q/DQ directly on a LayerNormalization or Softmax input (int8 statistics/logits)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .graph import _attrs, _consumers, has_decomposed_layernorm, opset

INT_TYPES = {TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT4: "int4", TensorProto.UINT4: "uint4",
             TensorProto.FLOAT8E4M3FN: "fp8"}
GEMMS = ("MatMul", "Gemm", "Conv")


@dataclass
class Violation:
    rule: str
    severity: str  # error: TensorRT rejects it or computes it wrong; warning: builds, but slow or risky
    node: str
    message: str


def _const(graph) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _qtype(n, consts, inits) -> str | None:
    """Quantized type of a Q (its zero point / output_dtype) or a DQ (its input)."""
    src = n.input[2] if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] else None
    if n.op_type == "DequantizeLinear":
        src = n.input[0]
    if src and src in inits:
        return INT_TYPES.get(inits[src].data_type, str(inits[src].data_type))
    a = _attrs(n)
    if "output_dtype" in a:
        return INT_TYPES.get(a["output_dtype"], str(a["output_dtype"]))
    return "int8" if n.op_type == "QuantizeLinear" and not src else None


def check_qdq(model: onnx.ModelProto, precisions: list[str] | None = None,
              max_opset: int | None = None) -> list[Violation]:
    """Rule violations of ``model`` for TensorRT; ``precisions``: what the target runs natively;
    ``max_opset``: the newest opset the target's TensorRT ONNX parser reads."""
    g = model.graph
    v: list[Violation] = []
    if opset(model) < 17:
        v.append(Violation("opset", "error", "", f"opset {opset(model)} < 17: LayerNorm is exported as separate ops"))
    if max_opset and opset(model) > max_opset:
        v.append(Violation("opset", "error", "", f"opset {opset(model)} > {max_opset}, the newest this TensorRT's "
                                                  "ONNX parser reads (the graph needs it: INT4 or fp16 Q/DQ)"))
    dec = has_decomposed_layernorm(model)
    if dec:
        v.append(Violation("opset", "error", "", f"{dec} LayerNorm(s) decomposed into ReduceMean/Sub/Pow chains: "
                                                  "TensorRT runs them as separate fp16 layers (overflow risk)"))
    consts, cons = _const(g), _consumers(g)
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    types = set()
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        qt = _qtype(n, consts, inits)
        types.add(qt)
        scale = consts.get(n.input[1])
        if scale is None:
            v.append(Violation("scale", "error", n.name, "scale is not a constant: TensorRT needs build-time scales"))
        elif not np.all(np.isfinite(scale.astype(np.float64))):
            v.append(Violation("scale", "error", n.name, "scale has non-finite values"))
        elif np.any(scale <= 0):
            v.append(Violation("scale", "error", n.name, f"{int(np.sum(scale <= 0))} of {scale.size} scales are <= 0 "
                               "(ONNX Runtime's symmetric 4-bit blocks map the maximum to -8 with a negative scale): "
                               "TensorRT needs positive scales"))
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is not None and np.any(zp.astype(np.int32) != 0):
            v.append(Violation("symmetric", "error", n.name, f"zero point {int(zp.flatten()[0])}: TensorRT needs 0"))
        if qt in ("uint8", "uint4"):
            v.append(Violation("symmetric", "error", n.name, f"{qt} quantization: TensorRT takes signed types"))
        if n.op_type == "QuantizeLinear":
            bad = [c for c in cons.get(n.output[0], []) if c.op_type != "DequantizeLinear"]
            if bad:
                v.append(Violation("pairs", "error", n.name, f"Q feeds {bad[0].op_type} ({bad[0].name}), not a DQ"))
            if qt == "int4" and n.input[0] not in inits:
                v.append(Violation("int4-weights", "error", n.name, "INT4 on an activation: TensorRT INT4 is weight-only"))
            continue
        weight = n.input[0] in inits or producer.get(n.input[0]) is None
        if not weight and producer[n.input[0]].op_type != "QuantizeLinear":
            v.append(Violation("pairs", "error", n.name, f"DQ input comes from {producer[n.input[0]].op_type}, not a Q"))
        if not weight and qt == "int4":
            v.append(Violation("int4-weights", "error", n.name, "INT4 on an activation: TensorRT INT4 is weight-only"))
        if weight:
            v += _weight_axis(n, inits, cons, qt)
    types.discard(None)
    if "fp8" in types and "int8" in types:
        v.append(Violation("types", "error", "", "FP8 and INT8 in one network: TensorRT does not mix them"))
    for t, want in (("fp8", "fp8"), ("int4", "int4"), ("int8", "int8")):
        if t in types and precisions is not None and want not in precisions:
            v.append(Violation("types", "error", "", f"{t} Q/DQ, but the target runs only {', '.join(precisions)}"))
    v += _gemm_inputs(g, producer, inits)
    for n in g.node:
        if n.op_type in ("LayerNormalization", "Softmax"):
            p = producer.get(n.input[0])
            while p is not None and p.op_type == "Cast":  # through the fp32 island's Cast
                p = producer.get(p.input[0])
            if p is not None and p.op_type == "DequantizeLinear":
                v.append(Violation("norm-softmax", "error", n.name,
                                   f"{n.op_type} input is dequantized INT8: quantize its output, not its input"))
    return v


def _weight_axis(dq, inits, cons, qt) -> list[Violation]:
    a = _attrs(dq)
    axis, block = a.get("axis", 1), a.get("block_size", 0)
    w = inits.get(dq.input[0])
    scale = inits.get(dq.input[1])
    per_tensor = scale is not None and int(np.prod(scale.dims)) == 1
    out = []
    for c in cons.get(dq.output[0], []):
        if c.op_type not in GEMMS or per_tensor:
            continue
        rank = len(w.dims) if w is not None else 2
        ax = axis % rank
        if block:
            if c.op_type != "MatMul" or ax != 0:
                out.append(Violation("weight-axis", "error", dq.name, f"blocked {qt} scales on axis {axis} of a "
                                     f"{c.op_type} weight: blocks run along K (axis 0 of [K, N])"))
            elif w is not None and w.dims[0] % block:
                out.append(Violation("weight-axis", "error", dq.name, f"K={w.dims[0]} is not a multiple of block {block}"))
            continue
        want = 0 if c.op_type == "Conv" else rank - 1  # output channels
        if c.op_type == "Gemm" and _attrs(c).get("transB", 0):
            want = 0
        if ax != want:
            out.append(Violation("weight-axis", "error", dq.name, f"per-channel scales on axis {axis} of a "
                                 f"{c.op_type} weight: TensorRT needs the output-channel axis {want}"))
    return out


def _gemm_inputs(g, producer, inits) -> list[Violation]:
    out = []
    for n in g.node:
        if n.op_type not in GEMMS:
            continue
        dq = [producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input[:2]]
        if any(dq) and not all(dq):
            src = producer.get(n.input[1]) if dq[1] else None
            weight_only = src is not None and src.input[0] in inits and _attrs(src).get("block_size", 0)
            if not weight_only:
                out.append(Violation("gemm-inputs", "warning", n.name, "only one input is quantized: TensorRT runs "
                                     "this layer in float, without an INT8 kernel"))
    return out


def summary(violations: list[Violation]) -> dict:
    errors = [x for x in violations if x.severity == "error"]
    return {"passed": not errors, "errors": len(errors), "warnings": len(violations) - len(errors),
            "violations": [asdict(x) for x in violations]}
