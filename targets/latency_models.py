"""Latency models for a target: a measured lookup table when one is stored, else a roofline estimate.

    lm = load_latency_model("x86-avx512")
    lm.block_ms(embed_dim=384, num_heads=6, qk_dim=64, v_dim=64, mlp_dim=1536, tokens=257)
    lm.model_ms(cfg)            # patch embed + blocks + final norm + head, batch 1
    lm.source                   # 'lut' or 'roofline' (fp32)
    lm.source_for("int8")       # a precision without its own table: 'lut-fp32-roofline-scaled'
    lm.predict(cfg, "int8")     # {"ms", "precision", "source", "measured"}: says which numbers are estimates

The LUT (``targets/luts/<target>.json``, written by ``compress profile --build-lut``) holds the
measured latency of the two halves of one canonical pre-norm block (norm1+attention+residual,
norm2+MLP+residual) on regular grids; values between grid points are interpolated multilinearly
(exact for costs bilinear in the widths, as matmul FLOPs are) and extrapolated linearly outside.
Attention with ``qk_dim != v_dim`` is the mean of the two square cases: the q/k and v/proj
linears and the two attention matmuls are symmetric in the two widths. A precision the table does
not hold (int8, fp16 when only fp32 was measured) is the fp32 table scaled by the roofline ratio
between the two precisions: an estimate, labelled ``lut-fp32-roofline-scaled``, never "measured".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UserError

LUT_DIR = Path(__file__).parent / "luts"

# bytes per weight / per matmul activation; "float" means the target's float precision
PRECISION_BYTES = {"fp32": (4, 4), "fp16": (2, 2), "bf16": (2, 2), "fp8": (1, 1), "int8": (1, 1), "int4": (0.5, None)}
ALIASES = {"w8a8": "int8", "w4a16": "int4", "int4-weight-only": "int4", "w4a8": "int8", "f32": "fp32"}


def canonical_precision(p: str) -> str:
    p = str(p).lower()
    p = ALIASES.get(p, p)
    if p not in PRECISION_BYTES:
        raise UserError(f"unknown precision {p!r}", f"use one of {', '.join(PRECISION_BYTES)}")
    return p


@dataclass(frozen=True)
class Op:
    flops: float  # multiply-adds x2
    bytes: float  # bytes moved to/from memory at roofline (weights + inputs + outputs)


def block_ops(D: int, h: int, qk: int, v: int, m: int, T: int, wb: float, ab: float, eb: float) -> list[Op]:
    """Ops of one pre-norm block at batch 1: matmul activations ``ab`` bytes, elementwise ``eb`` bytes."""

    def linear(i, o):
        return Op(2.0 * T * i * o, i * o * wb + T * (i + o) * ab)

    def elem(n, tensors=2):
        return Op(0.0, tensors * n * eb)

    ops = []
    if h > 0:
        ops += [elem(T * D), linear(D, h * qk), linear(D, h * qk), linear(D, h * v),
                Op(2.0 * h * T * T * qk, (2 * T * h * qk + h * T * T) * ab), elem(h * T * T),
                Op(2.0 * h * T * T * v, (h * T * T + 2 * T * h * v) * ab), linear(h * v, D), elem(T * D, 3)]
    if m > 0:
        ops += [elem(T * D), linear(D, m), elem(T * m), linear(m, D), elem(T * D, 3)]
    return ops


class LatencyModel:
    """Latency (ms, batch 1) of ViT blocks and whole models on one target."""

    source = "roofline"

    def __init__(self, target: str, profile: dict):
        self.target, self.profile = target, profile
        r = profile.get("roofline") or {}
        if not r.get("peak_gflops") or not r.get("bandwidth_gbs"):
            raise UserError(f"target {target!r} has no roofline figures",
                            f"add roofline.peak_gflops and roofline.bandwidth_gbs to targets/profiles/{target}.yaml")
        self.peak = {canonical_precision(k): float(v) for k, v in r["peak_gflops"].items()}
        self.bandwidth = float(r["bandwidth_gbs"])
        self.float_precision = canonical_precision(profile.get("float_precision", "fp32"))

    # -- roofline -----------------------------------------------------------------------
    def _bytes(self, precision: str) -> tuple[float, float, float, str]:
        p = canonical_precision(precision)
        wb, ab = PRECISION_BYTES[p]
        fl = self.float_precision
        eb = PRECISION_BYTES[fl][1] if p in ("int8", "int4", "fp8") else ab
        compute = fl if p == "int4" else p  # weight-only: dequantised weights meet float activations
        return wb, ab or PRECISION_BYTES[fl][1], eb, compute

    def _peak(self, compute: str) -> float:
        if compute in self.peak:
            return self.peak[compute]
        if compute in ("fp16", "bf16") and "fp32" in self.peak:
            return self.peak["fp32"]
        raise UserError(f"target {self.target!r} gives no peak for {compute}",
                        f"add roofline.peak_gflops.{compute} to its profile")

    def ops_ms(self, ops: list[Op], precision: str) -> float:
        _, _, _, compute = self._bytes(precision)
        peak, bw = self._peak(compute) * 1e9, self.bandwidth * 1e9
        return float(sum(max(o.flops / peak, o.bytes / bw) for o in ops) * 1e3)

    def roofline_block_ms(self, embed_dim, num_heads, qk_dim, v_dim, mlp_dim, tokens, precision="fp32") -> float:
        wb, ab, eb, _ = self._bytes(precision)
        return self.ops_ms(block_ops(embed_dim, num_heads, qk_dim, v_dim, mlp_dim, tokens, wb, ab, eb), precision)

    def stem_ms(self, cfg, precision: str = "fp32") -> float:
        """Patch embedding, position add, final norm and head, at roofline."""
        wb, ab, eb, _ = self._bytes(precision)
        D, T, P = cfg.embed_dim, cfg.num_tokens, cfg.grid**2
        k = cfg.in_chans * cfg.patch_size**2
        ops = [Op(2.0 * P * k * D, k * D * wb + P * (k + D) * 4), Op(0.0, 3 * T * D * eb), Op(0.0, 2 * T * D * eb)]
        if cfg.num_classes:
            ops.append(Op(2.0 * D * cfg.num_classes, D * cfg.num_classes * wb))
        return self.ops_ms(ops, precision)

    # -- the interface passes use -------------------------------------------------------
    def block_ms(self, embed_dim, num_heads, qk_dim, v_dim, mlp_dim, tokens, precision="fp32") -> float:
        return self.roofline_block_ms(embed_dim, num_heads, qk_dim, v_dim, mlp_dim, tokens, precision)

    def model_ms(self, cfg, precision: str = "fp32") -> float:
        T = cfg.num_tokens
        blocks = sum(self.block_ms(cfg.embed_dim, b.num_heads, b.qk_dim, b.v_dim, b.mlp_dim, T, precision)
                     for b in cfg.blocks)
        return blocks + self.stem_ms(cfg, precision)

    def roofline_model_ms(self, cfg, precision: str = "fp32") -> float:
        T = cfg.num_tokens
        return LatencyModel.stem_ms(self, cfg, precision) + sum(
            self.roofline_block_ms(cfg.embed_dim, b.num_heads, b.qk_dim, b.v_dim, b.mlp_dim, T, precision)
            for b in cfg.blocks)

    def source_for(self, precision: str = "fp32") -> str:
        canonical_precision(precision)
        return self.source

    def predict(self, cfg, precision: str = "fp32") -> dict:
        """Whole-model latency with what it rests on: ``measured`` only where a measured table covers it."""
        src = self.source_for(precision)
        return {"ms": self.model_ms(cfg, precision), "precision": canonical_precision(precision), "source": src,
                "measured": src == "lut"}

    def describe(self, precision: str = "fp32") -> str:
        return f"{self.target}: {self.source_for(precision)} latency model ({canonical_precision(precision)}, an estimate)"


class LutLatencyModel(LatencyModel):
    """Measured block latencies, interpolated; the roofline (scaled by the LUT's measured efficiency)
    covers the stem and precisions the table lacks."""

    source = "lut"

    def __init__(self, target: str, profile: dict, lut: dict, path: Path | None = None):
        super().__init__(target, profile)
        self.lut, self.path = lut, path
        self.tables = {canonical_precision(p): _Tables(t) for p, t in lut["precisions"].items()}

    def _scale(self, precision: str) -> float:
        """Measured / roofline ratio of the table's own grid (used for parts the table does not hold)."""
        return self.tables[precision].efficiency

    def block_ms(self, embed_dim, num_heads, qk_dim, v_dim, mlp_dim, tokens, precision="fp32") -> float:
        p = canonical_precision(precision)
        if p not in self.tables:  # the fp32 table scaled by the roofline ratio between the precisions
            base = self.block_ms(embed_dim, num_heads, qk_dim, v_dim, mlp_dim, tokens, "fp32")
            return base * (self.roofline_block_ms(embed_dim, num_heads, qk_dim, v_dim, mlp_dim, tokens, p)
                           / self.roofline_block_ms(embed_dim, num_heads, qk_dim, v_dim, mlp_dim, tokens, "fp32"))
        t = self.tables[p]
        attn = 0.0
        if num_heads > 0:
            attn = 0.5 * (t.attn(embed_dim, num_heads, qk_dim, tokens) + t.attn(embed_dim, num_heads, v_dim, tokens))
        mlp = t.mlp(embed_dim, mlp_dim, tokens) if mlp_dim > 0 else 0.0
        return attn + mlp

    def stem_ms(self, cfg, precision: str = "fp32") -> float:
        p = canonical_precision(precision)
        return super().stem_ms(cfg, p) * self._scale(p if p in self.tables else "fp32")

    def source_for(self, precision: str = "fp32") -> str:
        return "lut" if canonical_precision(precision) in self.tables else "lut-fp32-roofline-scaled"

    def describe(self, precision: str = "fp32") -> str:
        p, name = canonical_precision(precision), self.path.name if self.path else "LUT"
        if p in self.tables:
            return f"{self.target}: measured LUT {name} ({self.lut.get('runtime', '')}, {p})"
        return (f"{self.target}: {p} estimated: the measured fp32 LUT {name} scaled by the fp32 -> {p} roofline "
                f"ratio (not measured in {p})")


class _Tables:
    def __init__(self, t: dict):
        from scipy.interpolate import RegularGridInterpolator

        def interp(tab):
            axes = [np.asarray(v, float) for v in tab["axes"].values()]
            return RegularGridInterpolator(axes, np.asarray(tab["ms"], float), method="linear", bounds_error=False,
                                           fill_value=None)

        self._attn, self._mlp = interp(t["attn"]), interp(t["mlp"])
        self.efficiency = float(t.get("efficiency", 1.0))

    def attn(self, D, h, dh, T) -> float:
        return max(float(self._attn([[D, h, dh, T]])[0]), 0.0)

    def mlp(self, D, m, T) -> float:
        return max(float(self._mlp([[D, m, T]])[0]), 0.0)


def lut_path(target: str) -> Path:
    return LUT_DIR / f"{target}.json"


@lru_cache(maxsize=None)
def _cached(target: str, lut_mtime: float | None) -> LatencyModel:
    from . import load_profile

    profile = load_profile(target)
    path = lut_path(target)
    if lut_mtime is not None:
        try:
            lut = json.loads(path.read_text())
        except ValueError as e:
            raise UserError(f"latency table {path} is not valid JSON ({e})",
                            f"rebuild it: compress profile --build-lut --target {target}") from None
        return LutLatencyModel(target, profile, lut, path)
    return LatencyModel(target, profile)


def load_latency_model(target: str, lut: str | Path | None = None) -> LatencyModel:
    """The target's measured LUT when stored (or ``lut`` given), else its roofline model."""
    if lut is not None:
        from . import load_profile

        p = Path(lut)
        if not p.is_file():
            raise UserError(f"latency table {p} does not exist", "build one with compress profile --build-lut")
        return LutLatencyModel(target, load_profile(target), json.loads(p.read_text()), p)
    path = lut_path(target)
    return _cached(target, path.stat().st_mtime if path.is_file() else None)


def roofline_model(target: str) -> LatencyModel:
    from . import load_profile

    return LatencyModel(target, load_profile(target))
