"""The integer softmax and GELU of ``compress.kernels.integer`` in Triton: int32 codes in, int32 codes out,
the same integer operations in the same order (every shifted or divided value is non-negative)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import integer as I
from .layout import next_pow2, rows_of

_L14 = tl.constexpr(I.L14)
_B1 = tl.constexpr(I.B1)
_B2 = tl.constexpr(I.B2)
_R14 = tl.constexpr(I.R14)
_BQ = tl.constexpr(I.BQ)
_A14 = tl.constexpr(I.A14)
TILE = 2048


@triton.jit
def _int_softmax_kernel(x_ptr, out_ptr, n_cols, K: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK)
    valid = cols < n_cols
    i = tl.load(x_ptr + row + cols, mask=valid, other=-32768)
    n = tl.max(i, 0) - i
    t = (n * _L14) >> (K - 1)
    q = t >> 15
    f = t & 0x7FFF
    e = 32768 - ((f * (_B1 - ((f * _B2) >> 15))) >> 15)
    big = tl.where(valid, e >> tl.minimum(q, 31), 0)
    s = tl.sum(big, 0)
    out = ((big << 15) + (s >> 1)) // s
    tl.store(out_ptr + row + cols, out, mask=valid)


@triton.jit
def _int_gelu_kernel(x_ptr, out_ptr, n, K: tl.constexpr, BLOCK: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * BLOCK
    offs = tl.arange(0, BLOCK)
    valid = offs < n - base
    i = tl.load(x_ptr + base + offs, mask=valid, other=0)
    a = tl.abs(i)
    u = (a * _R14) >> K
    d = _BQ - tl.minimum(u, _BQ)
    h = 16384 - ((((d * d) >> 14) * _A14) >> 14)
    w = tl.where(i < 0, 16384 - h, 16384 + h)
    mag = (a * w + 16384) >> 15
    tl.store(out_ptr + base + offs, tl.where(i < 0, -mag, mag), mask=valid)


def int_softmax_codes(codes: torch.Tensor, k: int) -> torch.Tensor:
    I.check_k(k, "softmax")
    cols = codes.shape[-1]
    if cols > I.MAX_ROW:
        raise ValueError(f"integer softmax rows hold at most {I.MAX_ROW} values, got {cols}")
    x = rows_of(codes.to(torch.int32))
    out = torch.empty_like(x)
    if x.numel():
        _int_softmax_kernel[(x.shape[0],)](x, out, cols, K=k, BLOCK=next_pow2(cols),
                                           num_warps=min(16, max(1, next_pow2(cols) // 256)))
    return out.reshape(codes.shape)


def int_gelu_codes(codes: torch.Tensor, k: int, *, tile: int = TILE, warps: int = 4) -> torch.Tensor:
    I.check_k(k, "gelu")
    x = codes.to(torch.int32).contiguous()
    out = torch.empty_like(x)
    if x.numel():
        _int_gelu_kernel[(triton.cdiv(x.numel(), tile),)](x, out, x.numel(), K=k, BLOCK=tile, num_warps=warps)
    return out
