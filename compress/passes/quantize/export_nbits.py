"""ONNX Runtime ``MatMulNBits`` (com.microsoft) artifact: n-bit weights packed for ORT's CPU kernels.

MatMulNBits stores 2, 4 or 8-bit codes; other widths go in the next container up (3 -> 4, 5/6/7 -> 8,
same values). Weights are symmetric (no zero-point input: ORT's default 2^(bits-1) offset). Per-channel
scales use the largest power-of-two block dividing K, so a scale is repeated only K / block times.
Activation quantizers, if any, stay as Q/DQ in front (ORT then runs the GEMM in fp32 on the dequantized
int8 values at ``accuracy_level`` 0, exactly what PyTorch computes; level 4 re-quantizes the activations
per block to int8 inside the kernel: faster, not bit-exact).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .export_qdq import QdqBuilder, weight_codes
from .modules import QuantLinear, quantized_modules
from ...utils.onnx_graph import node_name, set_opset

CONTAINERS = (2, 4, 8)


def container_bits(bits: int) -> int:
    return next(c for c in CONTAINERS if c >= bits)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """[N, K] unsigned codes -> [N, K * bits / 8] bytes, lowest bits first (ORT's layout)."""
    per = 8 // bits
    c = codes.astype(np.uint8).reshape(codes.shape[0], -1, per)
    out = np.zeros(c.shape[:2], np.uint8)
    for j in range(per):
        out |= (c[..., j] << (bits * j)).astype(np.uint8)
    return out


MAX_BLOCK = {2: 256}  # ORT rejects larger 2-bit blocks


def block_for(k: int, group: int | None, preferred: int, bits: int = 4) -> int:
    if group:
        return group
    b = 1
    cap = min(max(preferred, 16) * 64, MAX_BLOCK.get(bits, 1 << 30))
    while k % (b * 2) == 0 and b * 2 <= cap:
        b *= 2
    return max(b, 16)


def nbits_weights(mod: QuantLinear, preferred_block: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """MatMulNBits attributes, packed B [N, blocks, blob] and scales [N * blocks] for one linear."""
    codes, q = weight_codes(mod)  # [N, K] signed
    n, k = codes.shape
    bits = container_bits(q.bits)
    block = block_for(k, q.group, preferred_block, bits)
    blocks = -(-k // block)
    pad = blocks * block - k
    u = codes + 2 ** (bits - 1)
    if pad:
        u = np.concatenate([u, np.full((n, pad), 2 ** (bits - 1))], 1)
    packed = pack(u, bits).reshape(n, blocks, block * bits // 8)
    scale = q.scale.detach().float().numpy().reshape(n, -1)
    if scale.shape[1] == 1:
        scale = np.repeat(scale, blocks, 1)
    elif pad:  # groups never pad (group divides K by construction)
        raise ValueError("group scales with padding")
    return {"K": k, "N": n, "bits": bits, "block_size": block}, packed, scale.reshape(-1).astype(np.float32)


def build_nbits(float_onnx, model, block: int = 32, accuracy_level: int = 0) -> tuple[onnx.ModelProto, list[str]]:
    b = QdqBuilder(float_onnx, model, "onnxruntime", weights="none")
    mods = quantized_modules(model)
    ed = b.ed
    widened = set()
    for path, mod in mods.items():
        if not isinstance(mod, QuantLinear) or mod.weight_quant is None:
            continue
        node = ed.nodes[node_name(path, "MatMul")]
        attrs, packed, scale = nbits_weights(mod, block)
        if attrs["bits"] != mod.weight_quant.bits:
            widened.add((mod.weight_quant.bits, attrs["bits"]))
        tag = path.replace(".", "_")
        bname = ed.raw(ed.name(f"{tag}_B{attrs['bits']}"), packed)
        sname = ed.const(f"{tag}_scales", scale)
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        node.op_type, node.domain = "MatMulNBits", "com.microsoft"
        node.input[1:] = [bname, sname]
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    model_proto = b.build()  # activation Q/DQ (and the patch embedding's weight Q/DQ via weights="none": float)
    set_opset(model_proto, 21, ms_domain=True)
    notes = b.notes + [f"{lo}-bit weights stored in {hi}-bit MatMulNBits containers (same values)" for lo, hi in sorted(widened)]
    return model_proto, notes
