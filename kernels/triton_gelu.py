"""GELU in Triton: exact (erf), tanh approximation, ReLU minus an interpolated correction table; bias fused.

With a bias, tiles are [rows, columns] of the [N, C] view, so the bias is loaded once per tile and no index
is divided; without one, the flat tensor is cut in blocks of TILE. 64-bit offsets only per program.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layout import next_pow2
from .reference import GELU_IDS, GELU_METHODS, check_method
from .triton_common import cast_out

TILE = 2048  # elements per program (the launch sweep of benchmarks/kernels_gpu_bench.py)
WARPS = 4


@triton.jit
def _act(x, table_ptr, inv_step, entries, valid, METHOD: tl.constexpr):
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
    return y


@triton.jit
def _gelu_flat_kernel(x_ptr, table_ptr, out_ptr, n, inv_step, entries, BLOCK: tl.constexpr, METHOD: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * BLOCK  # the only 64-bit arithmetic: per program, not per element
    offs = tl.arange(0, BLOCK)
    valid = offs < n - base
    x = tl.load(x_ptr + base + offs, mask=valid, other=0.0).to(tl.float32)
    y = _act(x, table_ptr, inv_step, entries, valid, METHOD)
    tl.store(out_ptr + base + offs, cast_out(y, out_ptr), mask=valid)


@triton.jit
def _gelu_bias_kernel(x_ptr, bias_ptr, table_ptr, out_ptr, n_rows, n_cols, inv_step, entries,
                      R: tl.constexpr, BN: tl.constexpr, METHOD: tl.constexpr):
    row0 = tl.program_id(0).to(tl.int64) * R
    rows = tl.arange(0, R)[:, None]
    cols = tl.program_id(1) * BN + tl.arange(0, BN)[None, :]
    valid = (rows < n_rows - row0) & (cols < n_cols)
    offs = row0 * n_cols + (rows * n_cols + cols)  # the tile's offsets fit 32 bits; its base may not
    x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    x += tl.load(bias_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    y = _act(x, table_ptr, inv_step, entries, valid, METHOD)
    tl.store(out_ptr + offs, cast_out(y, out_ptr), mask=valid)


def gelu(x: torch.Tensor, bias: torch.Tensor | None = None, method: str = "erf", table: torch.Tensor | None = None,
         inv_step: float = 0.0, *, warps: int = WARPS, tile: int = TILE) -> torch.Tensor:
    """act(x + bias) elementwise in x's dtype (fp32 math); ``bias`` broadcasts along the last axis.
    ``warps`` and ``tile`` (elements per program) are the launch parameters (tuning sweeps)."""
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
    tab = table.float().contiguous() if m == 2 else xc
    if bias is None:
        _gelu_flat_kernel[(triton.cdiv(n, tile),)](xc, tab, out, n, float(inv_step), tab.numel() - 1, BLOCK=tile,
                                                    METHOD=m, num_warps=warps)
        return out
    cols = x.shape[-1]
    BN = min(next_pow2(cols), 1024)
    R = max(1, tile // BN)
    rows = n // cols
    _gelu_bias_kernel[(triton.cdiv(rows, R), triton.cdiv(cols, BN))](
        xc, bias.contiguous(), tab, out, rows, cols, float(inv_step), tab.numel() - 1, R=R, BN=BN, METHOD=m,
        num_warps=warps)
    return out
