"""Calibration: choose each quantizer's range from observed values (min-max, percentile, MSE search)."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .quantizers import FP16_TINY, LogQuantizer, UniformQuantizer

METHODS = ("minmax", "percentile", "mse")
COARSE = torch.logspace(-3, 0, 31)  # clipping ratios (of the observed range) the MSE search tries first,
FINE = torch.linspace(-1, 1, 11)  # then these steps of the coarse grid's ratio around the best one
SAMPLE = 1 << 18  # values an activation search looks at (a random sample plus the extremes)


def sample(x: torch.Tensor, n: int = SAMPLE, extremes: int = 256, seed: int = 0) -> torch.Tensor:
    """A reproducible random sample of ``x`` that always includes its largest and smallest values."""
    flat = x.detach().flatten().float()
    if flat.numel() <= n:
        return flat
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, flat.numel(), (n,), generator=g)
    return torch.cat([flat[idx], _extreme(flat, extremes, True), _extreme(flat, extremes, False)])


def _extreme(flat: torch.Tensor, k: int, largest: bool, width: int = 64) -> torch.Tensor:
    """``flat.topk(k, largest).values`` of a large tensor without sorting all of it: the k-th most extreme of
    the per-row extremes of ``flat`` viewed as rows of ``width`` is a bound that at least k values reach, so
    every one of the k most extreme values is among the values past it (the same values, ~4x faster)."""
    n = flat.numel() - flat.numel() % width
    if n < (1 << 20):
        return flat.topk(k, largest=largest).values
    rows = flat[:n].view(-1, width)
    bound = (rows.amax(1) if largest else rows.amin(1)).topk(k, largest=largest).values[-1]
    past = flat >= bound if largest else flat <= bound
    return flat[past].topk(k, largest=largest).values


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    flat = x.flatten()
    k = min(max(int(round(q * (flat.numel() - 1))) + 1, 1), flat.numel())
    return flat.kthvalue(k).values


def fit_activation(q: UniformQuantizer, x: torch.Tensor, method: str = "mse", percentile: float = 99.99,
                   objective: Callable | None = None) -> float:
    """Set a per-tensor quantizer's range from samples ``x``; returns the relative MSE it leaves.

    ``objective(fq) -> error``, given the candidate fake-quantizer, replaces the MSE of the search (e.g. the
    error it causes in the consumer's output)."""
    xs = sample(x)
    lo, hi = xs.min(), xs.max()
    if method == "minmax":
        q.set_range(lo, hi)
    elif method == "percentile":
        q.set_range(quantile(xs, 1 - percentile / 100), quantile(xs, percentile / 100))
    elif method == "mse":
        objective = objective or (lambda fq: (fq(xs) - xs).pow(2).sum().item())
        best = _search(q, lambda a: (lo * a, hi * a), objective)
        if not q.symmetric and lo < 0:  # then the low end alone (GELU's small negative tail)
            a_hi = best
            _search(q, lambda a: (lo * a, hi * a_hi), objective)
    else:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {METHODS}")
    return relative_error(q.fake(xs), xs)


def _search(q: UniformQuantizer, bounds, objective: Callable) -> float:
    """Clipping ratio with the least error: log grid over 1e-3..1, then refined."""
    def err(a: float) -> float:
        q.set_range(*bounds(a))
        return objective(q.fake)

    step = float(COARSE[1] / COARSE[0])
    best = min(COARSE.tolist(), key=err)
    best = min([min(1.0, best * step ** (f / 2)) for f in FINE.tolist()], key=err)
    q.set_range(*bounds(best))
    return best


def relative_error(xq: torch.Tensor, x: torch.Tensor) -> float:
    return float((xq - x).pow(2).sum() / x.pow(2).sum().clamp_min(1e-30))


def fit_weight(q: UniformQuantizer, w: torch.Tensor, method: str = "mse") -> None:
    """Per-channel (or per-group) weight ranges; ``mse`` picks each row's clipping ratio separately."""
    w2 = w.detach().float().reshape(w.shape[0], -1)
    v = w2.reshape(1, -1) if q.per_tensor else (w2.reshape(w2.shape[0], -1, q.group) if q.group else w2)
    red = (v.ndim - 1,)
    lo, hi = v.amin(red, keepdim=True), v.amax(red, keepdim=True)
    shape = q.scale.shape
    if method == "minmax" or method == "percentile":
        q.set_range(lo.reshape(shape), hi.reshape(shape))
        return
    if method != "mse":
        raise ValueError(f"unknown calibration method {method!r}; choose one of {METHODS}")
    best_err = torch.full(lo.shape, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    amax = torch.maximum(-lo.clamp_max(0), hi.clamp_min(0))
    for a in torch.linspace(0.3, 1.0, 36).tolist():  # weights have no far outliers: a linear grid
        if q.symmetric:  # set_range and fake's arithmetic for zero point 0, without their generic steps
            err = _symmetric_error(q, v, amax * a, red)
        else:
            q.set_range((lo * a).reshape(shape), (hi * a).reshape(shape))
            err = (q.fake(v.reshape(w.shape)).reshape(v.shape) - v).pow(2).sum(red, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, lo * a, best_lo), torch.where(better, hi * a, best_hi)
    q.set_range(best_lo.reshape(shape), best_hi.reshape(shape))


def _symmetric_error(q: UniformQuantizer, v: torch.Tensor, amax: torch.Tensor, red: tuple) -> torch.Tensor:
    """Squared error per row / group of quantizing ``v`` symmetrically with range ``amax`` (the values
    ``set_range(-amax, amax)`` then ``fake`` give: max(-lo a, hi a) = max(-lo, hi) a for a > 0)."""
    scale = amax / q.qmax
    if q.group:
        scale = scale.clamp(FP16_TINY, 65504.0).half().float()
    scale = scale.clamp_min(1e-10)
    t = torch.div(v, scale).round_().clamp_(q.qmin, q.qmax).mul_(scale).sub_(v)
    return t.pow_(2).sum(red, keepdim=True)


def fit_log(q: LogQuantizer, x: torch.Tensor, objective: Callable | None = None) -> float:
    """SULQ: search the shift eta (past the smallest value, so x + eta > 0) and the log-domain step."""
    xs = sample(x)
    if q.mode == "log2":
        return relative_error(q.fake(xs), xs)
    objective = objective or (lambda fq: (fq(xs) - xs).pow(2).sum().item())
    levels = 2**q.bits - 1
    best, best_err = (0.0, -float(levels), 1.0), float("inf")
    floor, top = max(0.0, -float(xs.min())), float(xs.max())
    for extra in (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3):
        eta = floor * 1.0001 + extra
        if eta <= 0:
            continue
        hi = math.log2(top + eta)
        for step in (0.125, 0.1875, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0, 1.25, 1.5, 2.0):
            p = (torch.tensor(eta), torch.tensor(hi - levels * step), torch.tensor(step))
            err = objective(lambda t, p=p: q.fake(t, *p))
            if err < best_err:
                best, best_err = (eta, float(p[1]), step), err
    q.set_params(*best)
    return relative_error(q.fake(xs), xs)


def output_objective(x: torch.Tensor, consumer: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """Error a quantizer of ``x`` causes in the (linear) consumer's output: ||consumer(fq(x) - x)||^2."""
    return lambda fq: consumer(fq(x) - x).pow(2).sum().item()


def token_sample(x: torch.Tensor, n: int = 384, seed: int = 0) -> torch.Tensor:
    """``n`` random tokens (rows of the last axis) of an activation, for output-error objectives."""
    rows = x.detach().reshape(-1, x.shape[-1])
    idx = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return rows[idx].float()


def channel_ranges(x: torch.Tensor, method: str = "percentile", percentile: float = 99.99) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (last axis) [lo, hi] of activations, clipped by percentile (``minmax``: no clipping)."""
    x = x.detach().reshape(-1, x.shape[-1]).float()
    if x.shape[0] > 65536:  # rows are tokens: a fixed subsample keeps quantiles cheap
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:65536]]
    if method == "minmax":
        return x.amin(0), x.amax(0)
    k_hi = max(1, min(x.shape[0], int(round(percentile / 100 * (x.shape[0] - 1))) + 1))
    k_lo = max(1, min(x.shape[0], int(round((1 - percentile / 100) * (x.shape[0] - 1))) + 1))
    xt = x.T.contiguous()  # channels as rows, contiguous: selection along them is faster, same values
    return _kth(xt, k_lo), _kth(xt, k_hi)


def _kth(rows: torch.Tensor, k: int) -> torch.Tensor:
    """``rows.kthvalue(k, 1).values``; near either end as the last of a small topk (the same value, ~8x faster)."""
    n = rows.shape[1]
    if k <= n // 16:
        return rows.topk(k, 1, largest=False).values[:, -1]
    if n - k + 1 <= n // 16:
        return rows.topk(n - k + 1, 1).values[:, -1]
    return rows.kthvalue(k, 1).values
