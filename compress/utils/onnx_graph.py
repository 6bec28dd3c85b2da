"""Small ONNX graph-editing helpers (no onnx-graphsurgeon dependency), used by the quantization exporters and the
integer kernels."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphEditor:
    """Adds initializers and nodes to a float graph and rewires consumer inputs; names stay unique."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph = model, model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.nodes = {n.name: n for n in self.graph.node}
        self.new_nodes: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []  # (before this node, new node)
        self._names: set[str] = set(self.inits) | {o for n in self.graph.node for o in n.output}

    def name(self, base: str) -> str:
        n, i = base, 1
        while n in self._names:
            n, i = f"{base}_{i}", i + 1
        self._names.add(n)
        return n

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def value(self, name: str) -> np.ndarray:
        """A constant tensor: an initializer, possibly behind the Identity nodes the exporter adds for shared ones."""
        while name not in self.inits:
            src = next((n for n in self.graph.node if name in n.output), None)
            if src is None or src.op_type != "Identity":
                raise KeyError(f"{name} is not a constant")
            name = src.input[0]
        return self.array(name)

    def const(self, base: str, value, dtype=np.float32) -> str:
        name = self.name(base)
        arr = np.asarray(value, dtype=dtype)
        self.graph.initializer.append(numpy_helper.from_array(arr, name))
        return name

    def const_int4(self, base: str, codes: np.ndarray, signed: bool = True) -> str:
        """A 4-bit initializer, INT4 (codes in [-8, 7]) or UINT4 ([0, 15]); onnx packs two per byte."""
        name = self.name(base)
        nib = (codes.astype(np.int16).flatten() & 0x0F).astype(np.uint8)
        if nib.size % 2:
            nib = np.append(nib, np.uint8(0))
        packed = (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)  # two per byte, low nibble first
        t = helper.make_tensor(name, TensorProto.INT4 if signed else TensorProto.UINT4, codes.shape, packed.tobytes(),
                               raw=True)
        self.graph.initializer.append(t)
        return name

    def raw(self, name: str, arr: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, before: str, op: str, inputs: list[str], base: str, domain: str | None = None, **attrs) -> str:
        out = self.name(f"{base}_output_0")
        n = helper.make_node(op, inputs, [out], name=self.name(base), domain=domain, **attrs)
        self.new_nodes.append((self.nodes[before], n))
        return out

    def finish(self, drop_unused: bool = True) -> onnx.ModelProto:
        """Insert new nodes before the nodes they feed (keeps a topological order), drop dead initializers."""
        order = []
        pending: dict[int, list] = {}
        for anchor, n in self.new_nodes:
            pending.setdefault(id(anchor), []).append(n)
        for n in self.graph.node:
            order += pending.get(id(n), [])
            order.append(n)
        del self.graph.node[:]
        self.graph.node.extend(order)
        if drop_unused:
            used = {i for n in self.graph.node for i in n.input} | {o.name for o in self.graph.output}
            keep = [t for t in self.graph.initializer if t.name in used]
            del self.graph.initializer[:]
            self.graph.initializer.extend(keep)
        return self.model


def set_opset(model: onnx.ModelProto, version: int, ms_domain: bool = False) -> None:
    """Raise the default opset (Q/DQ with int4 and block_size need 21); add com.microsoft when used."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, version)
    if ms_domain and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.ir_version = max(model.ir_version, 10)


def node_name(path: str, op: str) -> str:
    """The exporter's node name for a module path: blocks.3.attn.q -> /blocks.3/attn/q/MatMul."""
    parts = path.split(".")
    segs, i = [], 0
    while i < len(parts):  # "blocks.3" stays one segment, as torch.onnx names ModuleList children
        if i + 1 < len(parts) and parts[i + 1].isdigit():
            segs.append(f"{parts[i]}.{parts[i + 1]}")
            i += 2
        else:
            segs.append(parts[i])
            i += 1
    return "/" + "/".join(segs) + f"/{op}"
