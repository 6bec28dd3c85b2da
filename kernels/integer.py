"""Integer-only softmax and GELU on quantized codes (I-ViT Shiftmax / I-BERT i-exp and i-GELU style).

Both take int16 codes ``I`` of a power-of-two scale ``2^-k`` (``quantize``: x * 2^k is exact in float, so
every runtime gets the same codes from the same float) and compute only integer adds, multiplies, shifts,
min, row max / sum and one integer division; every shifted or divided value is non-negative and below 2^31,
so shifts and truncating divisions agree in PyTorch, Triton, CUDA and the ONNX graph (int32 throughout).

Softmax (over the last axis, rows of at most 65535), output codes in [0, 32768] of scale 2^-15::

    n = max I - I >= 0;  t = (n * L) >> (k - 1)          t = n 2^-k log2(e) in Q15, L = round(log2(e) 2^14)
    q = t >> 15, f = t & 0x7fff                            2^-t = 2^-q 2^-f
    e = 2^15 - ((f * (B1 - ((f * B2) >> 15))) >> 15)      2^-f ~ 1 - b1 f + b2 f^2 (rel. error 2.7e-3)
    E = e >> min(q, 31);  S = sum E;  out = (E 2^15 + S / 2) / S

GELU, output codes of the input's scale 2^-k (I-BERT's erf polynomial, a = -0.2888, b = -1.769)::

    a = |I|;  u = (a * R) >> k                             |x| / sqrt(2) in Q14, R = round(2^14 / sqrt(2))
    d = Bq - min(u, Bq);  h = 2^14 - ((((d * d) >> 14) * A) >> 14)    erf(|x|/sqrt 2) ~ 1 + a (min(.,-b) + b)^2
    w = 2^14 + h (x >= 0) or 2^14 - h (x < 0);  out = sign(I) ((a * w + 2^14) >> 15)

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
B1, B2 = round(0.6699 * 2**15), round(0.1699 * 2**15)  # 2^-f ~ 1 - 0.6699 f + 0.1699 f^2 (P(1) = 1/2)
OUT_BITS = 15  # softmax output scale 2^-15
# GELU constants (I-BERT i-GELU: erf(v) ~ sign(v) (a (min(|v|, -b) + b)^2 + 1))
R14 = round(2**14 / math.sqrt(2.0))  # 11585
BQ = round(1.769 * 2**14)  # 28983
A14 = round(0.2888 * 2**14)  # 4732
CODE_MIN, CODE_MAX = -32768, 32767
K_RANGE = {"softmax": (1, 14), "gelu": (0, 14)}
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


def softmax_codes(codes: torch.Tensor, k: int) -> torch.Tensor:
    """Integer softmax of int32 codes (scale 2^-k) over the last axis: int32 codes of scale 2^-15."""
    check_k(k, "softmax")
    if codes.shape[-1] > MAX_ROW:
        raise ValueError(f"integer softmax rows hold at most {MAX_ROW} values, got {codes.shape[-1]}")
    i = codes.to(torch.int32)
    n = i.amax(-1, keepdim=True) - i
    t = (n * L14) >> (k - 1)
    q = t >> 15
    f = t & 0x7FFF
    e = 32768 - ((f * (B1 - ((f * B2) >> 15))) >> 15)
    big = e >> q.clamp_max(31)
    s = big.sum(-1, keepdim=True, dtype=torch.int32)
    return torch.div((big << 15) + (s >> 1), s, rounding_mode="floor")


def gelu_codes(codes: torch.Tensor, k: int) -> torch.Tensor:
    """Integer GELU of int32 codes (scale 2^-k): int32 codes of the same scale."""
    check_k(k, "gelu")
    i = codes.to(torch.int32)
    a = i.abs()
    u = (a * R14) >> k
    d = BQ - u.clamp_max(BQ)
    h = 16384 - ((((d * d) >> 14) * A14) >> 14)
    w = torch.where(i < 0, 16384 - h, 16384 + h)
    return torch.sign(i) * ((a * w + 16384) >> 15)


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
    constant is a Div by 2^s (ONNX integer Div truncates: the same bits), and the shift by a per-element
    amount divides by a Gather from the table 2^0 .. 2^16 (e <= 2^15 is 0 past 16 anyway)."""

    def __init__(self, g):
        self.g = g

    def c(self, v):
        return self.g.op("Constant", value_t=torch.tensor(v, dtype=torch.int32))

    def shr(self, a, s: int):
        return self.g.op("Div", a, self.c(2**s)) if s else a

    def shr_by(self, a, s):
        p = self.g.op("Gather", self.c([2**j for j in range(17)]), self.g.op("Min", s, self.c(16)), axis_i=0)
        return self.g.op("Div", a, p)


def _axis(g):
    return g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64))


class SoftmaxFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k: int):
        return softmax(x, k)

    @staticmethod
    def symbolic(g, x, k: int):
        u = _I32(g)
        i = _onnx_quantize(g, x, k)
        n = g.op("Sub", g.op("ReduceMax", i, _axis(g), keepdims_i=1), i)
        t = u.shr(g.op("Mul", n, u.c(L14)), k - 1)
        f = g.op("BitwiseAnd", t, u.c(0x7FFF))
        inner = g.op("Sub", u.c(B1), u.shr(g.op("Mul", f, u.c(B2)), 15))
        e = g.op("Sub", u.c(32768), u.shr(g.op("Mul", f, inner), 15))
        big = u.shr_by(e, u.shr(t, 15))
        s = g.op("ReduceSum", big, _axis(g), keepdims_i=1)
        out = g.op("Div", g.op("Add", g.op("Mul", big, u.c(32768)), u.shr(s, 1)), s)
        return _onnx_dequantize(g, out, OUT_BITS, x)


class GeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k: int):
        return gelu(x, k)

    @staticmethod
    def symbolic(g, x, k: int):
        u = _I32(g)
        i = _onnx_quantize(g, x, k)
        a = g.op("Abs", i)
        d = g.op("Sub", u.c(BQ), g.op("Min", u.shr(g.op("Mul", a, u.c(R14)), k), u.c(BQ)))
        h = g.op("Sub", u.c(16384), u.shr(g.op("Mul", u.shr(g.op("Mul", d, d), 14), u.c(A14)), 14))
        w = g.op("Where", g.op("Less", i, u.c(0)), g.op("Sub", u.c(16384), h), g.op("Add", u.c(16384), h))
        mag = u.shr(g.op("Add", g.op("Mul", a, w), u.c(16384)), 15)
        return _onnx_dequantize(g, g.op("Mul", g.op("Sign", i), mag), k, x)


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
