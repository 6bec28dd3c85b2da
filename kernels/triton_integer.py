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
_Y1 = tl.constexpr(I.Y_ONE)
_TB = tl.constexpr(I.T_BITS)
_ONE = tl.constexpr(2**I.OUT_BITS)
_MB = tl.constexpr(I.M_BITS)
TILE = 2048


@triton.jit
def _int_softmax_kernel(x_ptr, out_ptr, n_cols, K: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK)
    valid = cols < n_cols
    tt = tl.load(x_ptr + row + cols, mask=valid, other=-32768) * _L14
    t = (tl.max(tt, 0) - tt) >> (K + 4)
    q = t >> _TB
    f = t - (q << _TB)
    y = _Y1 - f * (_B1 - _B2 * f)
    e = tl.where(valid, y >> (tl.minimum(q, 16) + 14), 0)
    s = tl.sum(e, 0)
    tl.store(out_ptr + row + cols, e * (_ONE // s), mask=valid)


@triton.jit
def _int_gelu_kernel(x_ptr, out_ptr, n, C: tl.constexpr, M: tl.constexpr, BLOCK: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * BLOCK
    offs = tl.arange(0, BLOCK)
    valid = offs < n - base
    i = tl.load(x_ptr + base + offs, mask=valid, other=0)
    a = tl.abs(i)
    r = ((C - tl.minimum(a, C)) * M) >> _MB
    tl.store(out_ptr + base + offs, tl.maximum(i, 0) - ((a * (r * r)) >> 15), mask=valid)


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
        _int_gelu_kernel[(triton.cdiv(x.numel(), tile),)](x, out, x.numel(), C=I.KNEE[k], M=I.ROOT[k],
                                                         BLOCK=tile, num_warps=warps)
    return out
