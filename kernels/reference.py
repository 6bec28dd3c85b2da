"""Pure PyTorch reference of every kernel: what runs on CPU, what the ONNX export traces, what tests compare to.

Softmax (over the last axis, fp32 accumulation, output in the input dtype)::

    z = x * scale + mask                       (mask additive, broadcastable; fully masked rows give zeros)
    exact / online:  p = exp(z - max z) / sum        (online = same math, single-pass running max and sum)
    online-polyK:    t = z * log2(e), m = ceil(max t) (an integer: the running max rescales by exact shifts),
                     e = P_K(frac(t - m)) * 2^floor(t - m), p = e / sum e     (Softermax / Edge-MoE style)

GELU, with an optional bias added first (the fused bias + GELU)::

    erf:       x * Phi(x)
    tanh:      0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    relu-lut:  ReLU(x) - delta(|x|), delta = ReLU - act, an even function, linearly interpolated from a
               table of ``entries + 1`` samples on [0, x_max] (last sample 0: exactly ReLU beyond x_max)

Post-softmax quantized codes (``LogCodes``): q = clamp(floor((log2(p + eta) - lo) / step + 0.5), 0, 2^b - 1),
covering the log2 quantizer (eta=0, lo=0, step=-1) and I&S-ViT's shift-uniform-log2 quantizer (SULQ).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# 2^f ~ 1 + f (c1 + f (c2 + f c3)) on [0, 1), with P(0) = 1 and P(1) = 2 (continuous across integers);
# minimax relative error 6.1e-2 (K=1, Mitchell), 2.7e-3 (K=2), 1.0e-4 (K=3)
POLY = {1: (1.0, 0.0, 0.0), 2: (0.6602339, 0.3397661, 0.0), 3: (0.6954244, 0.2263077, 0.0782679)}
SOFTMAX_METHODS = ("exact", "online", "online-poly1", "online-poly2", "online-poly3")
GELU_METHODS = ("erf", "tanh", "relu-lut")
GELU_IDS = {m: i for i, m in enumerate(GELU_METHODS)}


def check_method(method: str, choices: tuple[str, ...], what: str) -> str:
    if method not in choices:
        raise ValueError(f"unknown {what} method {method!r}; choose one of {', '.join(choices)}")
    return method


def poly_degree(method: str) -> int:
    """0 for the exact exponential, K for ``online-polyK``."""
    check_method(method, SOFTMAX_METHODS, "softmax")
    return int(method[-1]) if method.startswith("online-poly") else 0


def exp2_poly(d: torch.Tensor, degree: int) -> torch.Tensor:
    """2^d for d <= 0: polynomial of the fraction times an exact power of two; 0 below 2^-126."""
    c1, c2, c3 = POLY[degree]
    d = d.clamp_min(-127.0)  # also maps -inf (masked) to the zero branch
    k = torch.floor(d)
    f = d - k
    p = 1.0 + f * (c1 + f * (c2 + f * c3))
    # ONNX has no ldexp and its Pow is slow: exported graphs take 2^k as Exp(k ln 2), within 4e-6 of exact
    two_k = torch.exp(k * LN2) if torch.onnx.is_in_onnx_export() else torch.pow(2.0, k)
    return (p * two_k).masked_fill(k < -126, 0.0)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def softmax_f32(x: torch.Tensor, scale: float = 1.0, mask: torch.Tensor | None = None,
                method: str = "exact") -> torch.Tensor:
    degree = poly_degree(method)
    z = _f32(x)
    if scale != 1.0:
        z = z * scale
    if mask is not None:
        z = z + _f32(mask)
    if degree == 0 and mask is None:
        return torch.softmax(z, -1)  # one ONNX Softmax node when exported
    if degree == 0:
        m = z.amax(-1, keepdim=True)
        e = torch.exp(z - torch.where(torch.isneginf(m), torch.zeros_like(m), m))
    else:
        t = z * LOG2E
        m = torch.ceil(t.amax(-1, keepdim=True))
        if mask is not None:
            m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
        e = exp2_poly(t - m, degree)
    s = e.sum(-1, keepdim=True)
    if mask is None:
        return e / s
    return torch.where(s > 0, e / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(e))


def softmax(x: torch.Tensor, scale: float = 1.0, mask: torch.Tensor | None = None,
            method: str = "exact") -> torch.Tensor:
    return softmax_f32(x, scale, mask, method).to(x.dtype)


@dataclass(frozen=True)
class LogCodes:
    """A log-domain quantizer of probabilities: codes in [0, 2^bits - 1] (uint8)."""

    bits: int = 4
    eta: float = 0.0  # shift added before the log (SULQ's eta)
    lo: float = 0.0  # log2 value of code 0
    step: float = -1.0  # log2 step per code

    def __post_init__(self):
        if not 1 <= self.bits <= 8 or self.step == 0 or self.eta < 0:
            raise ValueError(f"bad LogCodes {self}: need 1 <= bits <= 8, step != 0, eta >= 0")

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @classmethod
    def log2(cls, bits: int = 4) -> "LogCodes":
        """FQ-ViT's log2 quantizer: q = round(-log2 p); the top code also holds everything smaller (and 0)."""
        return cls(bits, 0.0, 0.0, -1.0)

    @classmethod
    def sulq(cls, bits: int = 4, eta: float = 0.01) -> "LogCodes":
        """I&S-ViT's shift-uniform-log2 quantizer, uniform in log2(p + eta) over [log2 eta, log2(1 + eta)]."""
        lo, hi = math.log2(eta), math.log2(1.0 + eta)
        return cls(bits, eta, lo, (hi - lo) / (2**bits - 1))

    def encode(self, p: torch.Tensor) -> torch.Tensor:
        t = torch.log2(_f32(p) + self.eta)
        q = torch.floor((t - self.lo) / self.step + 0.5)
        return q.clamp(0, self.qmax).to(torch.uint8)

    @classmethod
    def of(cls, quantizer) -> "LogCodes":
        """The codes of a calibrated post-softmax quantizer (``bits``, ``mode`` log2|sulq, ``eta``, ``lo``, ``delta``)."""
        if quantizer.mode == "log2":
            return cls.log2(quantizer.bits)
        return cls(quantizer.bits, float(quantizer.eta), float(quantizer.lo), float(quantizer.delta))

    def decode(self, q: torch.Tensor) -> torch.Tensor:
        """Dequantized probabilities 2^(lo + q step) - eta; the log2 top code also stands for 0 and decodes to 0."""
        v = torch.pow(2.0, self.lo + q.float() * self.step) - self.eta
        if self.eta == 0.0:
            v = torch.where(q.long() == self.qmax, torch.zeros_like(v), v)
        return v

    def to_dict(self) -> dict:
        return asdict(self)


def softmax_codes(x: torch.Tensor, codes: LogCodes, scale: float = 1.0, mask: torch.Tensor | None = None,
                  method: str = "exact") -> torch.Tensor:
    return codes.encode(softmax_f32(x, scale, mask, method))


# -- GELU ----------------------------------------------------------------------------------------
ACT_FNS = {
    "gelu": lambda t: t * 0.5 * (1.0 + torch.erf(t / math.sqrt(2.0))),
    "gelu_tanh": lambda t: 0.5 * t * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (t + 0.044715 * t**3))),
    "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t),
}


@dataclass(frozen=True)
class GeluTable:
    """The correction table of ``relu-lut``: delta(i * x_max / entries), i = 0..entries (last one 0)."""

    act: str = "gelu"
    entries: int = 64
    x_max: float = 6.0

    @property
    def inv_step(self) -> float:
        return self.entries / self.x_max

    def values(self) -> torch.Tensor:
        if self.act not in ACT_FNS:
            raise ValueError(f"no correction table for activation {self.act!r}; choose one of {sorted(ACT_FNS)}")
        t = torch.arange(self.entries + 1, dtype=torch.float64) / self.inv_step
        delta = torch.relu(t) - ACT_FNS[self.act](t)  # = t * g(-t) for act = x g(x) with g(-x) = 1 - g(x)
        delta[-1] = 0.0
        return delta.float()


def lut_delta(a: torch.Tensor, table: torch.Tensor, inv_step: float) -> torch.Tensor:
    """delta(a) for a >= 0 by linear interpolation in ``table``; 0 beyond its range.

    One lookup of (value, slope) rows: a single Gather when exported (ONNX Runtime's Gather is the cost of
    this approximation on CPU); bit-identical to d0 + f (d1 - d0) with two lookups, as the kernels do.
    """
    last = table.numel() - 1
    t = (a * inv_step).clamp(max=float(last))
    i = torch.floor(t).clamp(max=float(last - 1))
    f = t - i
    rows = torch.stack([table[:-1], table[1:] - table[:-1]], -1)[i.long()]  # constant-folded when exported
    d0, slope = rows.split(1, -1)
    return d0.squeeze(-1) + f * slope.squeeze(-1)


def gelu_f32(x: torch.Tensor, bias: torch.Tensor | None = None, method: str = "erf",
             table: torch.Tensor | None = None, inv_step: float = 0.0) -> torch.Tensor:
    check_method(method, GELU_METHODS, "gelu")
    z = _f32(x)
    if bias is not None:
        z = z + _f32(bias)
    if method == "erf":
        return F.gelu(z)
    if method == "tanh":
        return F.gelu(z, approximate="tanh")
    if table is None or inv_step <= 0:
        raise ValueError("relu-lut needs its correction table and inv_step (see GeluTable)")
    return torch.relu(z) - lut_delta(z.abs(), _f32(table).to(z.device), inv_step)


def gelu(x: torch.Tensor, bias: torch.Tensor | None = None, method: str = "erf",
         table: torch.Tensor | None = None, inv_step: float = 0.0) -> torch.Tensor:
    return gelu_f32(x, bias, method, table, inv_step).to(x.dtype)
