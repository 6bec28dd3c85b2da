"""Parameters and FLOPs counted from an exported ONNX graph (what actually ships), at batch 1."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

# 2 FLOPs per multiply-accumulate; elementwise ops are not counted (they are <2% of a ViT)
MATMUL_OPS = {"MatMul", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "Gemm", "DynamicQuantizeMatMul"}
CONV_OPS = {"Conv", "ConvInteger", "QLinearConv"}


def _fix_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    for inp in m.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            if d.dim_param:
                d.Clear()
                d.dim_value = 1
    return m


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # contrib op it cannot handle: plain ONNX inference still covers standard ops
        return shape_inference.infer_shapes(model)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = dims
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def graph_stats(path: str | Path) -> dict:
    model = onnx.load(str(path))
    inferred = _infer(_fix_batch(model))
    shapes = _shapes(inferred)
    inits = {i.name: i for i in model.graph.initializer}
    flops, unknown, weight_params = 0, 0, 0
    counted = set()
    for n in inferred.graph.node:
        f = None
        if n.op_type in MATMUL_OPS:
            f = _matmul_flops(n, shapes)
        elif n.op_type in CONV_OPS:
            f = _conv_flops(n, shapes)
        if n.op_type in MATMUL_OPS | CONV_OPS:
            if f is None:
                unknown += 1
            else:
                flops += f
        if n.op_type == "MatMulNBits":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            weight_params += a["K"] * a["N"]
            counted.update(n.input[1:])
    # count per use: the exporter shares identical initializers (e.g. fresh zero biases) between nodes
    params = weight_params
    for n in model.graph.node:
        for name in n.input:
            t = inits.get(name)
            if t is None or name in counted or t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
                continue
            numel = int(np.prod(t.dims)) if t.dims else 1
            if numel > 1:
                params += numel
    return {"params": int(params), "gflops": flops / 1e9, "flops_unknown_nodes": unknown,
            "size_mb": Path(path).stat().st_size / 2**20, "nodes": len(model.graph.node),
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)}


def _matmul_flops(n, shapes) -> int | None:
    if n.op_type == "MatMulNBits":
        a = shapes.get(n.input[0])
        attrs = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        if not a or None in a:
            return None
        return 2 * int(np.prod(a[:-1])) * attrs["K"] * attrs["N"]
    a, y = shapes.get(n.input[0]), shapes.get(n.output[0])  # the left operand: input 0 (QLinearMatMul too)
    if not a or not y or None in a or None in y:
        return None
    k = a[-1] if n.op_type != "Gemm" or not _attr(n, "transA") else a[-2]
    return 2 * int(np.prod(y)) * int(k)


def _conv_flops(n, shapes) -> int | None:
    w_idx = 3 if n.op_type == "QLinearConv" else 1
    w, y = shapes.get(n.input[w_idx]), shapes.get(n.output[0])
    if not w or not y or None in w or None in y:
        return None
    return 2 * int(np.prod(y)) * int(np.prod(w[1:]))


def _attr(n, name, default=0):
    for a in n.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def op_histogram(path: str | Path) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node).most_common())


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)
