"""Integer-only softmax and GELU on quantized codes (I-ViT Shiftmax / I-BERT i-exp and i-GELU style).

Both take int16 codes ``I`` of a power-of-two scale ``2^-k`` (``quantize``: x * 2^k is exact in float, so
every runtime gets the same codes from the same float) and compute only integer adds, multiplies, shifts,
min / max, row max / sum and one integer division per row; every shifted or divided value is non-negative and
below 2^31, so shifts and truncating divisions agree in PyTorch, Triton, CUDA and the ONNX graph (int32).
The formulation is chosen for few elementwise passes (the ONNX graph runs one op per pass):

Softmax (over the last axis, rows of at most 65535), output codes in [0, 2^30] of scale 2^-30::

    T = I * L;  t = (max T - T) >> (k + 4)                  t = (max x - x) log2(e) in Q10, L = round(log2(e) 2^14)
    q = t >> 10, f = t - (q << 10)                          2^-t = 2^-q 2^-f
    Y = 2^29 - f (B1 - B2 f)                                 2^-f ~ 1 - b1 f + b2 f^2 in Q29 (rel. error 2.7e-3)
    E = Y >> (min(q, 16) + 14)                               the exp term in Q15 (the row max gives 2^15)
    S = sum E;  out = E * (2^30 // S)                        |out 2^-30 - E / S| < 2^-15

GELU, output codes of the input's scale 2^-k: GELU(x) = relu(x) - |x| Phi(-|x|), Phi from I-BERT's erf
polynomial (erf(u) ~ 1 - 0.2888 (1.769 - min(u, 1.769))^2 for u >= 0)::

    a = |I|;  d = C_k - min(a, C_k)                          C_k = round(1.769 sqrt(2) 2^k): 1.769 - |x|/sqrt(2) in codes
    r = (d * M_k) >> 20;  h = r * r                          h = Phi(-|x|) in Q15, M_k = round(sqrt(0.2888 2^13) 2^(20-k))
    out = max(I, 0) - ((a * h) >> 15)

``IntSoftmax`` / ``IntGELU`` are the drop-in modules: float in, codes in between, float (code * scale) out.
Exported, they become the same integer computation in standard ONNX ops (``_onnx_*``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..models.vit import Softmax
from ..utils.hooks import forward_with_hooks

# softmax constants
L14 = round(math.log2(math.e) * 2**14)  # 23637
T_BITS = 10  # t = (max - x) log2(e) in Q10
B1, B2 = round(0.6699 * 2**19), round(0.1699 * 2**9)  # 2^-f ~ 1 - 0.6699 f + 0.1699 f^2 (P(1) = 1/2), f in Q10
Y_ONE = 2**29  # the exp polynomial's 1.0
OUT_BITS = 30  # softmax output scale 2^-30
# GELU constants (I-BERT i-GELU: erf(u) ~ sign(u) (a (min(|u|, -b) + b)^2 + 1), a = -0.2888, b = -1.769)
A13 = round(0.2888 * 2**13)  # 2366: Phi(-|x|) = 0.1444 (1.769 - |x|/sqrt 2)^2 in Q15 is d^2 A13 4^-k
M_BITS = 20
CODE_MIN, CODE_MAX = -32768, 32767
K_RANGE = {"softmax": (1, 14), "gelu": (0, 14)}
KNEE = [round(1.769 * math.sqrt(2.0) * 2**k) for k in range(15)]  # C_k
ROOT = [round(math.sqrt(A13) * 2 ** (M_BITS - k)) for k in range(15)]  # M_k: (d M_k) >> 20 = d sqrt(A13) 2^-k
MAX_ROW = 65535  # sum E <= row * 2^15 stays below 2^31
INT_KINDS = ("softmax", "gelu")


def exponent_for(amax: float, kind: str) -> int:
    """The largest k (scale 2^-k) whose int16 codes still hold ``amax``, within the kind's range."""
    lo, hi = K_RANGE[kind]
    if not math.isfinite(amax) or amax <= 0:
        return hi
    return int(min(hi, max(lo, math.floor(math.log2(CODE_MAX / amax)))))


def check_k(k: int, kind: str) -> int:
    lo, hi = K_RANGE[kind]
    if not isinstance(k, int) or not lo <= k <= hi:
        raise ValueError(f"integer {kind}: scale exponent k={k!r} must be an integer in [{lo}, {hi}]")
    return k


def quantize(x: torch.Tensor, k: int) -> torch.Tensor:
    """int16 codes (held in int32) of x at scale 2^-k: round half to even, saturated."""
    return torch.round(x.float() * float(2**k)).clamp(CODE_MIN, CODE_MAX).to(torch.int32)


def exp_codes(d: torch.Tensor, k: int) -> torch.Tensor:
    """The softmax's exp term in Q15 of ``d = max I - I`` (int32, 0 <= d < 2^16): 2^-((d L14) >> (k + 4) / 2^10)."""
    t = (d * L14) >> (k + 4)  # = (max T - T) >> (k + 4): the products are below 2^31
    q = t >> T_BITS
    f = t - (q << T_BITS)
    y = Y_ONE - f * (B1 - B2 * f)
    return y >> (q.clamp_max(16) + 14)


def softmax_codes(codes: torch.Tensor, k: int) -> torch.Tensor:
    """Integer softmax of int32 codes (scale 2^-k) over the last axis: int32 codes of scale 2^-30."""
    check_k(k, "softmax")
    if codes.shape[-1] > MAX_ROW:
        raise ValueError(f"integer softmax rows hold at most {MAX_ROW} values, got {codes.shape[-1]}")
    c = codes.to(torch.int32)
    e = exp_codes(c.amax(-1, keepdim=True) - c, k)
    s = e.sum(-1, keepdim=True, dtype=torch.int32)
    return e * torch.div(2**OUT_BITS, s, rounding_mode="floor")


def gelu_codes(codes: torch.Tensor, k: int) -> torch.Tensor:
    """Integer GELU of int32 codes (scale 2^-k): int32 codes of the same scale."""
    check_k(k, "gelu")
    i = codes.to(torch.int32)
    a = i.abs()
    r = ((KNEE[k] - a.clamp_max(KNEE[k])) * ROOT[k]) >> M_BITS
    return i.clamp_min(0) - ((a * (r * r)) >> 15)


def softmax(x: torch.Tensor, k: int) -> torch.Tensor:
    return (softmax_codes(quantize(x, k), k).float() * 2.0**-OUT_BITS).to(x.dtype)


def gelu(x: torch.Tensor, k: int) -> torch.Tensor:
    return (gelu_codes(quantize(x, k), k).float() * 2.0**-k).to(x.dtype)


# -- ONNX: the same computation in standard int32 ops -----------------------------------------------------------


def _onnx_const(g, v, dtype):
    return g.op("Constant", value_t=torch.tensor(v, dtype=dtype))


def _onnx_quantize(g, x, k):
    from torch.onnx import _C_onnx

    f = g.op("Cast", x, to_i=_C_onnx.TensorProtoDataType.FLOAT)
    r = g.op("Round", g.op("Mul", f, _onnx_const(g, float(2**k), torch.float32)))
    r = g.op("Clip", r, _onnx_const(g, float(CODE_MIN), torch.float32), _onnx_const(g, float(CODE_MAX), torch.float32))
    return g.op("Cast", r, to_i=_C_onnx.TensorProtoDataType.INT32)


def _onnx_dequantize(g, codes, bits, like):
    from torch.onnx import _C_onnx, symbolic_helper

    y = g.op("Mul", g.op("Cast", codes, to_i=_C_onnx.TensorProtoDataType.FLOAT),
             _onnx_const(g, 2.0**-bits, torch.float32))
    st = symbolic_helper._try_get_scalar_type(like)
    return y if st is None or st.onnx_type() == _C_onnx.TensorProtoDataType.FLOAT else \
        g.op("Cast", y, to_i=st.onnx_type())


class _I32:
    """int32 helpers for the symbolic functions. Every shifted value is non-negative, so a right shift by a
    constant is a Div by 2^s (ONNX integer Div truncates: the same bits); the one shift by a per-element amount
    is a BitShift on uint32 (the values are below 2^30, so the uint32 bits are the int32 ones)."""

    def __init__(self, g):
        self.g = g

    def c(self, v):
        return self.g.op("Constant", value_t=torch.tensor(v, dtype=torch.int32))

    def shr(self, a, s: int):
        return self.g.op("Div", a, self.c(2**s)) if s > 0 else self.g.op("Mul", a, self.c(2**-s)) if s else a

    def shr_by(self, a, s):
        """a >> s elementwise: Cast to uint32, BitShift, Cast back (the exporter's type inference knows no
        uint32, so it is off for these three nodes; the int32 result type is set by hand)."""
        from torch.onnx import _C_onnx
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        u32, i32 = _C_onnx.TensorProtoDataType.UINT32, _C_onnx.TensorProtoDataType.INT32
        was, GLOBALS.onnx_shape_inference = GLOBALS.onnx_shape_inference, False
        try:
            out = self.g.op("Cast", self.g.op("BitShift", self.g.op("Cast", a, to_i=u32), self.g.op("Cast", s, to_i=u32),
                                              direction_s="RIGHT"), to_i=i32)
        finally:
            GLOBALS.onnx_shape_inference = was
        out.setType(a.type())
        return out


def _axis(g):
    return g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64))


class SoftmaxFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k: int):
        return softmax(x, k)

    @staticmethod
    def symbolic(g, x, k: int):
        u = _I32(g)
        tt = g.op("Mul", _onnx_quantize(g, x, k), u.c(L14))
        t = u.shr(g.op("Sub", g.op("ReduceMax", tt, _axis(g), keepdims_i=1), tt), k + 4)
        q = u.shr(t, T_BITS)
        f = g.op("Sub", t, g.op("Mul", q, u.c(2**T_BITS)))
        y = g.op("Sub", u.c(Y_ONE), g.op("Mul", f, g.op("Sub", u.c(B1), g.op("Mul", f, u.c(B2)))))
        sh = g.op("Add", g.op("Min", q, u.c(16)), u.c(14))
        e = u.shr_by(y, sh)
        r = g.op("Div", u.c(2**OUT_BITS), g.op("ReduceSum", e, _axis(g), keepdims_i=1))
        return _onnx_dequantize(g, g.op("Mul", e, r), OUT_BITS, x)


class GeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k: int):
        return gelu(x, k)

    @staticmethod
    def symbolic(g, x, k: int):
        u = _I32(g)
        i = _onnx_quantize(g, x, k)
        a = g.op("Abs", i)
        d = g.op("Sub", u.c(KNEE[k]), g.op("Min", a, u.c(KNEE[k])))
        r = u.shr(g.op("Mul", d, u.c(ROOT[k])), M_BITS)
        out = g.op("Sub", g.op("Relu", i), u.shr(g.op("Mul", a, g.op("Mul", r, r)), 15))
        return _onnx_dequantize(g, out, k, x)


# -- modules ---------------------------------------------------------------------------------------------------
def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def _run(kind: str, x: torch.Tensor, k: int, backend: str) -> torch.Tensor:
    """Float in, float out; the codes computed by ``backend`` (the reference off CUDA)."""
    from .ops import resolve_backend

    b = resolve_backend(backend, x.device)
    if b == "reference":
        return softmax(x, k) if kind == "softmax" else gelu(x, k)
    if b == "triton":
        from . import triton_integer as impl
    else:
        from . import cuda as impl
    fn = impl.int_softmax_codes if kind == "softmax" else impl.int_gelu_codes
    codes = fn(quantize(x, k), k)
    return (codes.float() * 2.0 ** -(OUT_BITS if kind == "softmax" else k)).to(x.dtype)


class _IntOp:
    kind = ""

    def _init(self, k: int, backend: str):
        from .ops import BACKENDS
        from .reference import check_method

        self.k = check_k(int(k), self.kind)
        self.backend = check_method(backend, BACKENDS, "kernel backend")

    @property
    def out_bits(self) -> int:
        return OUT_BITS if self.kind == "softmax" else self.k

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input codes, output codes) of the reference for float input ``x``."""
        i = quantize(x, self.k)
        return i, (softmax_codes(i, self.k) if self.kind == "softmax" else gelu_codes(i, self.k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _exporting():
            return (SoftmaxFn if self.kind == "softmax" else GeluFn).apply(x, self.k)
        return _run(self.kind, x, self.k, self.backend)

    def extra_repr(self) -> str:
        return f"integer, input scale 2^-{self.k}, output scale 2^-{self.out_bits}, backend={self.backend}"


class IntSoftmax(_IntOp, Softmax):
    """Attention softmax computed on int16 codes (scale 2^-k) by integer ops; output codes of scale 2^-15."""

    kind = "softmax"

    def __init__(self, k: int = 8, backend: str = "auto"):
        Softmax.__init__(self)
        self._init(k, backend)

    forward = _IntOp.forward


class IntGELU(_IntOp, nn.GELU):
    """MLP GELU computed on int16 codes (scale 2^-k) by integer ops; output codes of the same scale."""

    kind = "gelu"

    def __init__(self, k: int = 11, backend: str = "auto"):
        nn.GELU.__init__(self)
        self._init(k, backend)

    forward = _IntOp.forward


INT_MODULES = (IntSoftmax, IntGELU)


# -- verification: the artifact's codes against the reference ----------------------------------------------
def int_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, INT_MODULES)}


def code_taps(proto, path: str) -> tuple[str, str]:
    """(input codes, output codes) tensor names of the integer kernel exported from module ``path``: the
    output of its first Cast to INT32 and the input of its last Cast to FLOAT (the exporter's node scope)."""
    from ..utils.onnx_graph import node_name

    scope = node_name(path, "")
    nodes = [n for n in proto.graph.node if n.name.startswith(scope) and n.op_type == "Cast"]
    to = lambda n: next(a.i for a in n.attribute if a.name == "to")  # noqa: E731
    ins = [n.output[0] for n in nodes if to(n) == 6]
    outs = [n.input[0] for n in nodes if to(n) == 1]
    if not ins or not outs:
        raise ValueError(f"no integer kernel found under {scope} in the ONNX graph")
    return ins[0], outs[-1]


def verify_codes(onnx_path, model: nn.Module, images: torch.Tensor) -> dict:
    """Run ``images`` through the artifact in ONNX Runtime with every integer kernel's input and output codes as
    extra outputs. ``kernel_codes_equal``: each kernel's output codes equal the PyTorch reference's on the same
    input codes (the integer computation, bit for bit). ``model_*_codes_equal``: share of codes equal to those
    the PyTorch model computes from the same images (upstream float ops may round differently)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    mods = int_modules(model)
    proto = onnx.load(str(onnx_path))
    taps = {p: code_taps(proto, p) for p in mods}
    names = [t for pair in taps.values() for t in pair]
    for t in names:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: images.numpy()})))
    seen: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda m, a, _o, p=p: seen.__setitem__(p, m.codes(a[0])))
             for p, m in mods.items()]
    forward_with_hooks(model, images, hooks)
    out = {"kernels": len(mods), "codes": 0, "kernel_mismatches": 0, "model_input_equal": 0, "model_output_equal": 0,
           "per_kernel_model_output_equal": {}}
    for p, m in mods.items():
        i_ort, o_ort = got[taps[p][0]], got[taps[p][1]]
        ref = (softmax_codes if m.kind == "softmax" else gelu_codes)(torch.from_numpy(i_ort.astype(np.int32)), m.k)
        out["codes"] += o_ort.size
        out["kernel_mismatches"] += int((ref.numpy() != o_ort).sum())
        out["model_input_equal"] += int((seen[p][0].numpy() == i_ort).sum())
        same = int((seen[p][1].numpy() == o_ort).sum())
        out["model_output_equal"] += same
        out["per_kernel_model_output_equal"][p] = same / max(o_ort.size, 1)
    n = max(out["codes"], 1)
    out["kernel_codes_equal"] = out["kernel_mismatches"] == 0
    out["model_input_codes_equal"] = out.pop("model_input_equal") / n
    out["model_output_codes_equal"] = out.pop("model_output_equal") / n
    return out


def gather_shifts(proto) -> int:
    """Rewrite each integer kernel's per-element shift (Cast to uint32, BitShift, Cast back) as a Div by a Gather
    from the table 2^0 .. 2^30, for runtimes without uint32 tensors (TensorRT): the same bits (the shifted value
    is non-negative, the amount at most 30). Returns how many were rewritten; ``proto`` is changed in place."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = proto.graph
    by_out = {o: n for n in g.node for o in n.output}
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    table = "vf_int_pow2_table"
    done, drop, add = 0, set(), {}
    for n in g.node:
        if n.op_type != "BitShift":
            continue
        cy, cs = by_out.get(n.input[0]), by_out.get(n.input[1])
        back = users.get(n.output[0], [])
        if not (cy and cs and cy.op_type == cs.op_type == "Cast" and len(back) == 1 and back[0].op_type == "Cast"):
            continue
        base = n.name or n.output[0]
        gather = helper.make_node("Gather", [table, cs.input[0]], [base + "/pow2"], name=base + "/Gather", axis=0)
        div = helper.make_node("Div", [cy.input[0], base + "/pow2"], [back[0].output[0]], name=base + "/Div")
        add[id(back[0])] = [gather, div]
        drop |= {id(cy), id(cs), id(n)}
        done += 1
    if done:
        nodes = []
        for n in g.node:
            if id(n) in add:
                nodes += add[id(n)]
            elif id(n) not in drop:
                nodes.append(n)
        del g.node[:]
        g.node.extend(nodes)
        g.initializer.append(numpy_helper.from_array(np.array([2**j for j in range(31)], np.int32), table))
    return done
