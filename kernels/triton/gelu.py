"""GELU in Triton: exact (erf), tanh approximation, ReLU minus an interpolated correction table; bias fused.

Tiles are [rows, columns] of the [N, C] view, so a fused bias is loaded once per tile and no index is
divided; without a bias the flat tensor is cut in rows of 1024.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import next_pow2
from ..reference import GELU_IDS, GELU_METHODS, check_method
from .common import cast_out

FLAT_COLS = 1024


@triton.jit
def _gelu_kernel(x_ptr, bias_ptr, table_ptr, out_ptr, n, n_rows, n_cols, inv_step, entries,
                 R: tl.constexpr, BN: tl.constexpr, METHOD: tl.constexpr, HAS_BIAS: tl.constexpr):
    rows = (tl.program_id(0) * R + tl.arange(0, R)).to(tl.int64)[:, None]
    cols = (tl.program_id(1) * BN + tl.arange(0, BN))[None, :]
    offs = rows * n_cols + cols
    valid = (rows < n_rows) & (cols < n_cols) & (offs < n)
    x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    if METHOD == 0:  # erf
        y = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif METHOD == 1:  # tanh(u) = 1 - 2 / (1 + e^(2u)), saturating cleanly at +-1
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        y = 0.5 * x * (2.0 - 2.0 / (1.0 + tl.exp(2.0 * u)))
    else:  # ReLU(x) - delta(|x|), delta linearly interpolated in the table, 0 beyond it
        t = tl.minimum(tl.abs(x) * inv_step, entries * 1.0)
        i = tl.minimum(tl.floor(t), entries - 1.0)
        f = t - i
        ii = i.to(tl.int32)
        d0 = tl.load(table_ptr + ii, mask=valid, other=0.0)
        d1 = tl.load(table_ptr + ii + 1, mask=valid, other=0.0)
        y = tl.maximum(x, 0.0) - (d0 + f * (d1 - d0))
    tl.store(out_ptr + offs, cast_out(y, out_ptr), mask=valid)


def gelu(x: torch.Tensor, bias: torch.Tensor | None = None, method: str = "erf", table: torch.Tensor | None = None,
         inv_step: float = 0.0) -> torch.Tensor:
    """act(x + bias) elementwise in x's dtype (fp32 math); ``bias`` broadcasts along the last axis."""
    m = GELU_IDS[check_method(method, GELU_METHODS, "gelu")]
    if m == 2 and (table is None or inv_step <= 0):
        raise ValueError("relu-lut needs its correction table and inv_step (see GeluTable)")
    if bias is not None and bias.numel() != x.shape[-1]:
        raise ValueError(f"bias has {bias.numel()} values; x's last axis has {x.shape[-1]}")
    xc = x.contiguous()
    out = torch.empty_like(xc)
    n = xc.numel()
    if n == 0:
        return out
    if bias is not None:
        cols = x.shape[-1]
        BN = min(next_pow2(cols), 1024)
    else:
        cols = BN = FLAT_COLS
    rows = triton.cdiv(n, cols)
    R = max(1, 2048 // BN)
    tab = table.float().contiguous() if m == 2 else xc
    _gelu_kernel[(triton.cdiv(rows, R), triton.cdiv(cols, BN))](
        xc, bias.contiguous() if bias is not None else xc, tab, out, n, rows, cols, float(inv_step),
        tab.numel() - 1, R=R, BN=BN, METHOD=m, HAS_BIAS=bias is not None, num_warps=8)
    return out
