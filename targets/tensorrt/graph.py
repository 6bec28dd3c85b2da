"""TensorRT-ready ONNX: opset >= 17 (LayerNormalization one node), fp16 typing for ``--stronglyTyped``,
and INT4 weights as blocked DequantizeLinear (opset 21) instead of ONNX Runtime's ``MatMulNBits``.

Strongly typed networks take every tensor's type from the graph, so the fp16 conversion decides the
precision of each layer: weights, activations and Q/DQ scales go to fp16, while LayerNormalization and
Softmax run in fp32 islands (Cast in, Cast out) -- their reductions are where fp16 overflows. The graph
keeps fp32 inputs and outputs, so callers feed the same arrays as to the fp32 model.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import UserError

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
KEEP_FP32 = ("LayerNormalization", "Softmax")


def opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def set_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """Raise the default-domain opset with ONNX's version converter. Where it has no adapter for an op the
    graph uses, this fails: ops do change between opsets (``Reduce*`` take ``axes`` as an input from 18), so
    the number alone is never bumped."""
    if opset(model) >= version:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, version)
    except Exception as e:  # the converter raises several types (RuntimeError, ConvertError, ...)
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"the ONNX graph cannot be converted from opset {opset(model)} to {version} ({why})",
                        f"export it at opset {version} directly: set export.onnx.opset: {version}") from None


def needed_opset(model: onnx.ModelProto) -> int:
    """The lowest default-domain opset the graph needs: 21 for INT4 tensors or blocked Q/DQ, 19 for fp16/bf16
    Q/DQ scales, else 17 (LayerNormalization; per-axis INT8 Q/DQ is opset 13)."""
    inits = {t.name: t.data_type for t in model.graph.initializer}
    need = 17
    if any(t in (TensorProto.INT4, TensorProto.UINT4) for t in inits.values()):
        need = 21
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if any(a.name == "block_size" for a in n.attribute):
                need = 21
            elif inits.get(n.input[1]) in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
                need = max(need, 19)
    return need


def cap_opset(model: onnx.ModelProto, cap: int | None) -> onnx.ModelProto:
    """Stamp the graph (in place) down to ``cap``, an older TensorRT's ONNX parser, when nothing in it needs more."""
    if cap is None or opset(model) <= cap or needed_opset(model) > cap:
        return model
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(cap, 17)
    return model


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def to_fp16(model: onnx.ModelProto, keep_fp32: tuple[str, ...] = KEEP_FP32) -> onnx.ModelProto:
    """fp16 everywhere except ``keep_fp32`` ops (and the graph's fp32 inputs/outputs, cast at the edges)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        model = set_opset(model, 19)  # fp16 Q/DQ scales need opset 19
    g = model.graph
    _fold_weight_identities(g)
    cons = _consumers(g)
    kept = set()  # fp32 initializers only keep_fp32 ops read (LayerNorm scale and bias)
    for init in g.initializer:
        if init.data_type != FLOAT:
            continue
        if cons.get(init.name) and all(c.op_type in keep_fp32 for c in cons[init.name]):
            kept.add(init.name)
        else:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    new_nodes = []
    for n in g.node:
        if n.op_type in ("Constant", "ConstantOfShape"):
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        elif n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == FLOAT:
                    a.i = HALF
        if n.op_type in keep_fp32:  # fp32 island: Cast in, op, Cast out
            for k, x in enumerate(n.input):
                if x and x not in kept:
                    x32 = f"{x}__fp32__{n.name}"
                    new_nodes.append(helper.make_node("Cast", [x], [x32], to=FLOAT, name=f"{n.name}/CastIn{k}"))
                    n.input[k] = x32
            y32 = f"{n.output[0]}__fp32"
            out = n.output[0]
            n.output[0] = y32
            new_nodes.append(n)
            new_nodes.append(helper.make_node("Cast", [y32], [out], to=HALF, name=f"{n.name}/CastOut"))
            continue
        new_nodes.append(n)
    for inp in g.input:  # fp32 in: cast to fp16 once
        if inp.type.tensor_type.elem_type == FLOAT:
            h = f"{inp.name}__fp16"
            for n in new_nodes:
                for k, i in enumerate(n.input):
                    if i == inp.name:
                        n.input[k] = h
            new_nodes.insert(0, helper.make_node("Cast", [inp.name], [h], to=HALF, name=f"/{inp.name}/CastFp16"))
    for out in g.output:  # fp16 -> fp32 out
        if out.type.tensor_type.elem_type == FLOAT:
            h = f"{out.name}__fp16"
            for n in new_nodes:
                for k, o in enumerate(n.output):
                    if o == out.name:
                        n.output[k] = h
            new_nodes.append(helper.make_node("Cast", [h], [out.name], to=FLOAT, name=f"/{out.name}/CastFp32"))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def _fold_weight_identities(graph) -> None:
    """Drop ``Identity`` nodes on initializers (the exporter adds them for shared weights): consumers read
    the initializer, so its users (a LayerNorm's scale) are visible."""
    inits = {i.name for i in graph.initializer}
    outs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outs}
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        for k, i in enumerate(n.input):
            if i in alias:
                n.input[k] = alias[i]
    del graph.node[:]
    graph.node.extend(keep)


def _attrs(n) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def matmulnbits_to_dq(model: onnx.ModelProto) -> onnx.ModelProto:
    """``com.microsoft.MatMulNBits`` (4-bit) -> blocked ``DequantizeLinear`` (int4, axis 0) + ``MatMul``.

    MatMulNBits stores unsigned 4-bit codes (zero point 8 when none is given) as [N, blocks, bytes];
    TensorRT takes signed int4 [K, N] with scales [K / block, N] and zero points of 0, so the codes are
    re-centred. Explicit zero points other than 8 are asymmetric and are refused (TensorRT is symmetric).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes, drop = [], set()
    for n in g.node:
        if n.op_type != "MatMulNBits":
            nodes.append(n)
            continue
        a = _attrs(n)
        K, N, bits, bs = a["K"], a["N"], a.get("bits", 4), a["block_size"]
        if bits != 4:
            raise ValueError(f"{n.name}: MatMulNBits with {bits} bits; only 4-bit converts to INT4 DequantizeLinear")
        packed = numpy_helper.to_array(inits[n.input[1]]).reshape(N, -1)
        codes = np.stack([packed & 0x0F, packed >> 4], -1).reshape(N, -1)[:, :K].astype(np.int16)
        blocks = (K + bs - 1) // bs
        scales = numpy_helper.to_array(inits[n.input[2]]).reshape(N, blocks).astype(np.float32)
        if len(n.input) > 3 and n.input[3]:
            zp = numpy_helper.to_array(inits[n.input[3]])
            zp = np.stack([zp & 0x0F, zp >> 4], -1).reshape(N, -1)[:, :blocks] if zp.dtype == np.uint8 else zp.reshape(N, blocks)
            if np.any(zp != 8):
                raise ValueError(f"{n.name}: asymmetric INT4 (zero points other than 8); TensorRT needs symmetric weights")
        q = (codes - 8).astype(np.int8)  # [N, K] signed int4 values
        # ONNX Runtime's symmetric blocks may carry negative scales (block maximum -> -8); TensorRT needs
        # positive ones: flip the sign of a block when -q stays in int4 (no -8 code in it)
        qb = np.pad(q, ((0, 0), (0, blocks * bs - K))).reshape(N, blocks, bs)
        flip = (scales < 0) & ~np.any(qb == -8, axis=2)
        qb = np.where(flip[..., None], -qb, qb)
        scales = np.where(flip, -scales, scales)
        q = qb.reshape(N, -1)[:, :K].T  # [K, N]
        base = n.name or n.output[0]
        wq = helper.make_tensor(f"{base}.weight_int4", TensorProto.INT4, [K, N], q.flatten().tolist())
        sc = numpy_helper.from_array(np.ascontiguousarray(scales.T), f"{base}.weight_scale")  # [blocks, N]
        g.initializer.extend([wq, sc])
        drop.update(i for i in n.input[1:4] if i)
        w = f"{base}.weight_dq"
        nodes.append(helper.make_node("DequantizeLinear", [wq.name, sc.name], [w], axis=0, block_size=bs,
                                      name=f"{base}/DequantizeLinear"))
        bias = n.input[5] if len(n.input) > 5 and n.input[5] else None
        mm_out = f"{n.output[0]}__mm" if bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], w], [mm_out], name=f"{base}/MatMul"))
        if bias:
            nodes.append(helper.make_node("Add", [mm_out, bias], [n.output[0]], name=f"{base}/Add"))
    keep = [i for i in g.initializer if i.name not in drop or any(i.name in m.input for m in nodes)]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(nodes)
    if not any(n.domain == "com.microsoft" for n in nodes):
        ms = [o for o in model.opset_import if o.domain == "com.microsoft"]
        for o in ms:
            model.opset_import.remove(o)
    return set_opset(model, 21)


def has_decomposed_layernorm(model: onnx.ModelProto) -> int:
    """Count ReduceMean -> Sub -> (Pow|Mul) -> ReduceMean chains: LayerNorm exported as separate ops."""
    cons = _consumers(model.graph)
    count = 0
    for n in model.graph.node:
        if n.op_type != "ReduceMean":
            continue
        for sub in cons.get(n.output[0], []):
            if sub.op_type == "Sub" and any(c.op_type in ("Pow", "Mul") and any(
                    r.op_type == "ReduceMean" for r in cons.get(c.output[0], [])) for c in cons.get(sub.output[0], [])):
                count += 1
    return count
