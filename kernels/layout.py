"""How the GPU kernels see their operands: rows of the last axis, and a broadcast mask without copies."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def rows_of(x: torch.Tensor) -> torch.Tensor:
    """``x`` as [rows, n] with unit stride along n (a view when possible)."""
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


@dataclass
class MaskView:
    """An additive mask broadcast to x's shape, read in place: row r = (a, b, c) in a [A, B, C] grid of rows."""

    tensor: torch.Tensor  # float32, the view whose strides are given
    B: int
    C: int
    strides: tuple[int, int, int, int]  # a, b, c, column (0 on broadcast axes)

    def geometry(self) -> list[int]:
        return [self.B, self.C, *self.strides]


def mask_view(mask: torch.Tensor, shape: torch.Size) -> MaskView:
    if mask.dtype != torch.float32:
        mask = mask.float()
    if mask.ndim > len(shape):
        raise ValueError(f"mask of shape {tuple(mask.shape)} has more axes than the scores {tuple(shape)}")
    m = mask.expand(shape)
    lead = list(shape[:-1])
    lead = [1] * (3 - len(lead)) + lead if len(lead) <= 3 else [math.prod(lead[:-2])] + lead[-2:]
    m = m.reshape(*lead, shape[-1])  # folding broadcast leading axes keeps a view; otherwise a copy
    return MaskView(m, lead[1], lead[2], tuple(m.stride()))


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
