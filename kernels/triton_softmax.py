"""Row softmax in Triton: scale and additive mask fused, fp32 accumulation, optional log-domain output codes.

Two layouts of the same math (see ``compress.kernels.reference``):
- fused: a block of rows held in registers, one read and one write per element (rows up to FUSED_MAX wide);
- streaming (``online*`` methods, and any wider row): one pass keeps a running max and sum per lane
  (rescaling the sum when the max grows), a second pass writes. With the base-2 polynomial exponential
  the running max is an integer, so every rescale is an exact power of two.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layout import mask_view, next_pow2, rows_of
from .triton_common import cast_out
from .reference import LOG2E, POLY, LogCodes, poly_degree

FUSED_MAX = 32768  # widest row kept in registers (32 warps: 32 fp32 values a thread)
STREAM_BLOCK = 4096  # chunk of the streaming layout

_LOG2E = tl.constexpr(LOG2E)
_C21 = tl.constexpr(POLY[2][0])
_C22 = tl.constexpr(POLY[2][1])
_C31 = tl.constexpr(POLY[3][0])
_C32 = tl.constexpr(POLY[3][1])
_C33 = tl.constexpr(POLY[3][2])


@triton.jit
def _exp(d, POLY: tl.constexpr):
    """e^d (POLY=0), or 2^d by a degree-POLY polynomial of the fraction and an exponent-bit shift."""
    if POLY == 0:
        r = tl.exp(d)
    else:
        d = tl.maximum(d, -127.0)
        k = tl.floor(d)
        f = d - k
        if POLY == 1:
            p = 1.0 + f
        elif POLY == 2:
            p = 1.0 + f * (_C21 + f * _C22)
        else:
            p = 1.0 + f * (_C31 + f * (_C32 + f * _C33))
        ki = k.to(tl.int32)
        pow2 = ((tl.maximum(ki, -127) + 127) << 23).to(tl.float32, bitcast=True)
        r = tl.where(ki < -126, 0.0, p * pow2)
    return r


@triton.jit
def _logits(x_ptr, mask_ptr, row0, rows, cols, n_rows, n_cols, x_stride, mB, mC, sa, sb, sc, sn, scale,
            HAS_MASK: tl.constexpr, POLY: tl.constexpr):
    """Scaled (+ masked) logits of the tile; x_ptr points at row ``row0``, ``rows`` / ``n_rows`` are relative."""
    valid = (rows < n_rows) & (cols < n_cols)
    z = tl.load(x_ptr + rows * x_stride + cols, mask=valid, other=0.0).to(tl.float32) * scale
    if HAS_MASK:
        r = row0 + rows
        moff = (r // (mB * mC)) * sa + ((r // mC) % mB) * sb + (r % mC) * sc + cols * sn
        z += tl.load(mask_ptr + moff, mask=valid, other=0.0).to(tl.float32)
    if POLY > 0:
        z = z * _LOG2E
    return tl.where(valid, z, float("-inf"))


@triton.jit
def _store(out_ptr, p, rows, cols, n_rows, n_cols, eta, lo, step, qmax, CODES: tl.constexpr):
    valid = (rows < n_rows) & (cols < n_cols)
    if CODES:
        q = tl.floor((tl.log2(p + eta) - lo) / step + 0.5)
        q = tl.minimum(tl.maximum(q, 0.0), qmax)
        tl.store(out_ptr + rows * n_cols + cols, q.to(tl.uint8), mask=valid)
    else:
        tl.store(out_ptr + rows * n_cols + cols, cast_out(p, out_ptr), mask=valid)


@triton.jit
def _softmax_kernel(x_ptr, out_ptr, mask_ptr, n_rows, n_cols, x_stride, mB, mC, sa, sb, sc, sn, scale,
                    eta, lo, step, qmax, BLOCK: tl.constexpr, ROWS: tl.constexpr, STREAM: tl.constexpr,
                    POLY: tl.constexpr, HAS_MASK: tl.constexpr, CODES: tl.constexpr):
    row0 = tl.program_id(0).to(tl.int64) * ROWS  # 64-bit offsets once per program, 32-bit within the tile
    x_ptr += row0 * x_stride
    out_ptr += row0 * n_cols
    n_rows -= row0
    rows = tl.arange(0, ROWS)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]
    if not STREAM:
        z = _logits(x_ptr, mask_ptr, row0, rows, cols, n_rows, n_cols, x_stride, mB, mC, sa, sb, sc, sn, scale,
                    HAS_MASK, POLY)
        m = tl.max(z, 1)
        if POLY > 0:
            m = -tl.floor(-m)  # integer max: rescaling by it is a shift
        m = tl.where(m == float("-inf"), 0.0, m)  # fully masked row
        e = _exp(z - m[:, None], POLY)
        s = tl.sum(e, 1)[:, None]
        p = tl.where(s > 0, e / tl.where(s > 0, s, 1.0), 0.0)
        _store(out_ptr, p, rows, cols, n_rows, n_cols, eta, lo, step, qmax, CODES)
    else:
        m_i = tl.full([ROWS, BLOCK], float("-inf"), tl.float32)
        s_i = tl.zeros([ROWS, BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):  # pass 1: running max and sum (single pass over x)
            z = _logits(x_ptr, mask_ptr, row0, rows, cols + start, n_rows, n_cols, x_stride, mB, mC, sa, sb, sc, sn,
                        scale, HAS_MASK, POLY)
            if POLY > 0:
                m_new = tl.maximum(m_i, -tl.floor(-z))
            else:
                m_new = tl.maximum(m_i, z)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s_i = s_i * _exp(m_i - m_safe, POLY) + _exp(z - m_safe, POLY)
            m_i = m_new
        m = tl.max(m_i, 1)
        m = tl.where(m == float("-inf"), 0.0, m)[:, None]
        s = tl.sum(s_i * _exp(m_i - m, POLY), 1)[:, None]
        inv_ok = s > 0
        s = tl.where(inv_ok, s, 1.0)
        for start in range(0, n_cols, BLOCK):  # pass 2: normalise and write
            z = _logits(x_ptr, mask_ptr, row0, rows, cols + start, n_rows, n_cols, x_stride, mB, mC, sa, sb, sc, sn,
                        scale, HAS_MASK, POLY)
            p = tl.where(inv_ok, _exp(z - m, POLY) / s, 0.0)
            _store(out_ptr, p, rows, cols + start, n_rows, n_cols, eta, lo, step, qmax, CODES)


def _launch(x, scale, mask, method, codes: LogCodes | None, block: int | None, warps: int | None = None,
            rows: int | None = None) -> torch.Tensor:
    poly = poly_degree(method)
    n = x.shape[-1]
    x2 = rows_of(x)
    R = x2.shape[0]
    out = torch.empty((R, n), dtype=torch.uint8 if codes else x.dtype, device=x.device)
    if R == 0 or n == 0:
        return out.reshape(x.shape)
    stream = method != "exact" or n > FUSED_MAX or block is not None
    BLOCK = min(next_pow2(n), block or STREAM_BLOCK) if stream else next_pow2(n)
    ROWS = rows or max(1, min(16, 2048 // BLOCK, next_pow2(R)))  # short rows: several per program
    mv = mask_view(mask, x.shape) if mask is not None else None
    geo = mv.geometry() if mv else [1, 1, 0, 0, 0, 0]
    c = codes or LogCodes()
    tile = BLOCK * ROWS  # warps per tile size: the H200 sweep of benchmarks/kernels_gpu_bench.py
    warps = warps or (4 if tile <= 2048 else 8 if tile <= 8192 else 16 if tile <= 16384 else 32)
    _softmax_kernel[(triton.cdiv(R, ROWS),)](
        x2, out, mv.tensor if mv else x2, R, n, x2.stride(0), *geo, float(scale), c.eta, c.lo, c.step,
        float(c.qmax), BLOCK=BLOCK, ROWS=ROWS, STREAM=stream, POLY=poly, HAS_MASK=mv is not None,
        CODES=codes is not None, num_warps=warps)
    return out.reshape(x.shape)


def softmax(x: torch.Tensor, scale: float = 1.0, mask: torch.Tensor | None = None, method: str = "exact",
            block: int | None = None, *, warps: int | None = None, rows: int | None = None) -> torch.Tensor:
    """Softmax over the last axis in x's dtype. ``block`` forces the streaming layout with that chunk width;
    ``warps`` / ``rows`` (rows per program) override the launch heuristics (tuning sweeps)."""
    return _launch(x, scale, mask, method, None, block, warps, rows)


def softmax_codes(x: torch.Tensor, codes: LogCodes, scale: float = 1.0, mask: torch.Tensor | None = None,
                  method: str = "exact", block: int | None = None) -> torch.Tensor:
    """uint8 log-domain codes of the softmax (the probabilities never reach memory)."""
    return _launch(x, scale, mask, method, codes, block)
