"""Fake quantizers: what a deployed integer op computes, simulated in float so PyTorch and ONNX agree.

* ``UniformQuantizer``: affine uniform quantization, per tensor, per output channel or per group of
  input channels, symmetric (zero point 0) or asymmetric. Weights and most activations.
* ``LogQuantizer``: post-softmax attention probabilities. ``log2`` (FQ-ViT / RepQ-ViT style: powers of
  two, 2^-q) or ``sulq``, the shift-uniform-log2 quantizer of I&S-ViT: shift by eta, take log2, quantize
  uniformly over the calibrated log range, map back and remove the shift. SULQ keeps resolution both
  near 0 (where most probabilities lie) and near 1 (the few that matter most).

Every quantizer carries ``quant_enabled`` (``float_view`` turns it off to export the float graph) and a
JSON ``spec`` from which ``make_quantizer`` rebuilds it with the right buffer shapes, so a quantized
checkpoint reloads before its state dict does.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


LN2 = math.log(2.0)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (ties to even, as ONNX QuantizeLinear), straight-through gradient."""
    return (torch.round(x) - x).detach() + x


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class FakeQuant(nn.Module):
    kind = "none"

    def __init__(self, bits: int):
        super().__init__()
        if not 2 <= bits <= 16:
            raise ValueError(f"quantizer bits must be in 2..16, got {bits}")
        self.bits = int(bits)
        self.quant_enabled = True

    def spec(self) -> dict:
        return {"kind": self.kind, "bits": self.bits}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.spec().items() if k != "kind")


FP16_TINY = 2.0**-14  # smallest normal float16: group scales below it (all-zero groups) are raised to it


class UniformQuantizer(FakeQuant):
    """x -> (clamp(round(x / s) + z, qmin, qmax) - z) * s with ``scale`` s and ``zero_point`` z buffers.

    ``shape`` is the scale's shape: ``[]`` per tensor, ``[C, 1]`` per output channel of a [C, K] weight,
    ``[C, K // group, 1]`` per group (the weight is viewed as [C, K // group, group]).
    """

    kind = "uniform"

    def __init__(self, bits: int = 8, symmetric: bool = True, shape: list[int] | tuple = (), group: int | None = None):
        super().__init__(bits)
        self.symmetric, self.group = bool(symmetric), group
        self.scale_override: torch.Tensor | None = None  # a trainable scale while reconstructing
        self.register_buffer("scale", torch.ones(tuple(shape)))
        self.register_buffer("zero_point", torch.zeros(tuple(shape)))

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]

    @property
    def per_tensor(self) -> bool:
        return self.scale.ndim == 0

    def spec(self) -> dict:
        return {"kind": self.kind, "bits": self.bits, "symmetric": self.symmetric, "shape": list(self.scale.shape),
                "group": self.group}

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1, self.group) if self.group else x

    def set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Scale and zero point that map [lo, hi] (broadcast to the scale's shape) onto the integer grid."""
        lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
        if self.symmetric:
            amax = torch.maximum(-lo, hi)
            scale = amax / self.qmax
            zp = torch.zeros_like(scale)
        else:
            scale = (hi - lo) / (2**self.bits - 1)
            zp = torch.round(-lo / scale.clamp_min(1e-12)).clamp(self.qmin, self.qmax)
        if self.group:  # one scale per few weights: stored as float16 in the file, so it must be one exactly
            scale = scale.clamp(FP16_TINY, 65504.0).half().float()
        self.scale.copy_(scale.clamp_min(1e-10).reshape(self.scale.shape))
        self.zero_point.copy_(zp.reshape(self.zero_point.shape))

    def quantize_int(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (as float) of ``x``, in [qmin, qmax]."""
        v = self._view(x)
        return torch.clamp(torch.round(v / self.scale) + self.zero_point, self.qmin, self.qmax).reshape(x.shape)

    def fake(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        s = self.scale if scale is None else scale
        v = self._view(x)
        q = torch.clamp(round_ste(v / s) + self.zero_point, self.qmin, self.qmax)
        return ((q - self.zero_point) * s).reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fake(x, self.scale_override) if self.quant_enabled else x


class LogQuantizer(FakeQuant):
    """Log-domain quantizer for skewed non-negative-ish values: post-softmax in [0, 1], post-GELU (>= -0.17).

    ``log2``: q = clamp(round(-log2 x), 0, 2^b - 1), x^ = 2^-q (codes past the range dequantize to 0).
    ``sulq``: t = log2(x + eta); q = clamp(round((t - lo) / delta), 0, 2^b - 1); x^ = 2^(lo + q delta) - eta,
    with ``eta``, ``lo`` and ``delta`` calibrated (for GELU outputs eta sits just past the minimum, -0.17, so
    the dense region near zero gets fine steps and the rare large values coarse ones).
    """

    kind = "log"

    def __init__(self, bits: int = 4, mode: str = "sulq"):
        super().__init__(bits)
        if mode not in ("log2", "sulq"):
            raise ValueError(f"unknown log quantizer mode {mode!r}")
        self.mode = mode
        self.register_buffer("eta", torch.tensor(0.0))
        self.register_buffer("lo", torch.tensor(-float(2**bits - 1)))
        self.register_buffer("delta", torch.tensor(1.0))

    def spec(self) -> dict:
        return {"kind": self.kind, "bits": self.bits, "mode": self.mode}

    def fake(self, x: torch.Tensor, eta=None, lo=None, delta=None) -> torch.Tensor:
        eta = self.eta if eta is None else eta
        lo = self.lo if lo is None else lo
        delta = self.delta if delta is None else delta
        levels = 2**self.bits - 1
        if self.mode == "log2":
            q = round_ste(-torch.log2(x.clamp_min(1e-30)))
            out = torch.exp2(-q.clamp(0, levels))
            return torch.where(q > levels, torch.zeros_like(out), out)
        # the same float ops, in the same order, as the exported ONNX subgraph (Log / ln2, Exp of x ln2)
        t = torch.log((x + eta).clamp_min(1e-30)) / LN2
        q = torch.clamp(round_ste((t - lo) / delta), 0, levels)
        return torch.exp((q * delta + lo) * LN2) - eta

    def set_params(self, eta: float, lo: float, delta: float) -> None:
        self.eta.fill_(eta)
        self.lo.fill_(lo)
        self.delta.fill_(delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fake(x) if self.quant_enabled else x


def make_quantizer(spec: dict | None) -> FakeQuant | None:
    if spec is None:
        return None
    kind = spec["kind"]
    if kind == "uniform":
        return UniformQuantizer(spec["bits"], spec["symmetric"], spec["shape"], spec.get("group"))
    if kind == "log":
        return LogQuantizer(spec["bits"], spec["mode"])
    raise ValueError(f"unknown quantizer kind {kind!r} in checkpoint")


def weight_shape(weight: torch.Tensor, granularity: str, group: int | None) -> tuple[list[int], int | None]:
    """Scale shape for a [C, ...] weight at a granularity; per group needs K divisible by the group."""
    c, k = weight.shape[0], int(math.prod(weight.shape[1:]))
    if granularity == "tensor":
        return [], None
    if granularity == "channel":
        return [c] + [1] * (weight.ndim - 1), None
    if not group or k % group:
        raise ValueError(f"group size {group} does not divide the {k} input channels")
    return [c, k // group, 1], group
