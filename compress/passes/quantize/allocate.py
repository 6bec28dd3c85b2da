"""Bit allocation for mixed precision (LRP-QViT): a multiple-choice knapsack solved exactly.

Each quantizable layer l picks one width b_l from its candidates. We minimise the
relevance-weighted quantization error  sum_l weight_l * error_l(b_l)  subject to
sum_l cost_l(b_l) <= budget, where cost is bits x parameters (``avg_bits``), bytes
(``size_bytes``) or a measured per-layer latency (``latency_ms``).

Solved by dynamic programming over the budget in integer units. Bit and byte costs are
integers: the unit is their greatest common divisor, so the solution is exactly optimal.
Float costs (latency), or integer budgets too fine for ``max_states`` units, are rounded
*up* to the unit, so the returned allocation never exceeds the real budget and is optimal
for the rounded costs (``Allocation.exact`` says which). Ties: the smallest total cost wins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import reduce
from typing import Literal

import numpy as np

from ...errors import UserError

BUDGETS = ("avg_bits", "size_bytes", "latency_ms")
STRATEGIES = ("relevance", "uniform", "sensitivity")
MAX_STATES = 1 << 18


@dataclass
class LayerChoice:
    name: str
    params: int  # weights quantized at this layer's width
    candidates: list[int]  # allowed widths, e.g. [2, 3, 4, 6, 8]
    error: dict[int, float] = field(default_factory=dict)  # width -> quantization error (e.g. output MSE)
    weight: float = 1.0  # relevance (contribution score) of the layer


@dataclass
class Budget:
    kind: Literal["avg_bits", "size_bytes", "latency_ms"]
    value: float
    cost: dict[str, dict[int, float]] | None = None  # layer -> width -> cost (required for latency_ms)


@dataclass
class Allocation:
    bits: dict[str, int]
    objective: float  # sum weight * error
    cost: float  # in the budget's unit
    limit: float
    avg_bits: float  # parameter-weighted mean width
    exact: bool  # optimal for the real costs (integer costs) rather than rounded-up ones


def _check(layers: list[LayerChoice], budget: Budget, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise UserError(f"unknown bit allocation strategy {strategy!r}", f"choose one of {', '.join(STRATEGIES)}")
    if budget.kind not in BUDGETS:
        raise UserError(f"unknown budget kind {budget.kind!r}", f"choose one of {', '.join(BUDGETS)}")
    if not (isinstance(budget.value, (int, float)) and math.isfinite(budget.value) and budget.value > 0):
        raise UserError(f"budget {budget.kind} must be a positive number, got {budget.value!r}",
                        "e.g. avg_bits: 4")
    if not layers:
        raise UserError("bit allocation got no layers", "the model has no quantizable layers selected")
    names = [lay.name for lay in layers]
    if len(set(names)) != len(names):
        raise UserError("bit allocation got duplicate layer names", "pass each layer once")
    if budget.kind == "avg_bits" and budget.cost is not None:
        raise UserError("an avg_bits budget counts bits x parameters and takes no per-layer costs",
                        "drop Budget.cost, or budget size_bytes / latency_ms with those costs")
    if budget.kind == "latency_ms" and budget.cost is None:
        raise UserError("a latency_ms budget needs measured per-layer costs (Budget.cost)",
                        "measure each layer's latency per width, or budget avg_bits / size_bytes instead")
    for lay in layers:
        if not lay.candidates or any(int(b) != b or b < 1 for b in lay.candidates):
            raise UserError(f"layer {lay.name}: candidate widths must be positive integers, got {lay.candidates}",
                            "e.g. candidates: [2, 3, 4, 6, 8]")
        if lay.params <= 0:
            raise UserError(f"layer {lay.name}: params must be positive, got {lay.params}", "count its weights")
        if strategy != "uniform":
            missing = [b for b in lay.candidates if b not in lay.error]
            bad = [b for b, e in lay.error.items() if not (math.isfinite(e) and e >= 0)]
            if missing or bad:
                raise UserError(f"layer {lay.name}: quantization error missing for widths {missing} "
                                f"or not a finite non-negative number for {bad}",
                                "measure the error at every candidate")
            if not (math.isfinite(lay.weight) and lay.weight >= 0):
                raise UserError(f"layer {lay.name}: relevance weight must be finite and >= 0, got {lay.weight}",
                                "use the scores of relevance.layer_relevance")
        if budget.cost is not None:
            given = budget.cost.get(lay.name, {})
            missing = [b for b in lay.candidates if b not in given]
            if missing:
                raise UserError(f"layer {lay.name}: budget cost missing for widths {missing}",
                                "give Budget.cost[layer][width] for every candidate")
            if not all(math.isfinite(given[b]) and given[b] >= 0 for b in lay.candidates):
                raise UserError(f"layer {lay.name}: budget costs must be finite and >= 0, got {given}",
                                "give measured costs per width")


def _costs(layers: list[LayerChoice], budget: Budget) -> tuple[list[list[float]], float, bool]:
    """Per layer per candidate cost, the limit, and whether all costs are integers."""
    if budget.cost is not None:
        costs = [[float(budget.cost[lay.name][b]) for b in lay.candidates] for lay in layers]
        integer = all(c.is_integer() for row in costs for c in row)
        return costs, float(budget.value), integer
    if budget.kind == "avg_bits":
        costs = [[lay.params * b for b in lay.candidates] for lay in layers]
        return costs, _floor(budget.value * sum(lay.params for lay in layers)), True
    # size_bytes: packed weights, rounded up to whole bytes per layer
    return [[-(-lay.params * b // 8) for b in lay.candidates] for lay in layers], _floor(budget.value), True


def _floor(x: float) -> int:
    """Integer limit; a float within 1e-9 (relative) of an integer is that integer (4.1 x 10 params = 41 bits)."""
    r = round(x)
    return int(r) if abs(x - r) <= 1e-9 * max(1.0, abs(x)) else math.floor(x)


def _units(costs: list[list[float]], limit: float, integer: bool,
           max_states: int) -> tuple[list[np.ndarray], int, bool]:
    """Costs in integer units and the capacity; exact when the unit is the gcd of integer costs."""
    if integer:
        g = reduce(math.gcd, (int(c) for row in costs for c in row))
        if g and limit // g <= max_states:
            return [np.array([int(c) // g for c in row], np.int64) for row in costs], int(limit // g), True
    unit = limit / max_states
    return [np.array([math.ceil(c / unit) for c in row], np.int64) for row in costs], int(limit // unit), False


def _knapsack(values: list[np.ndarray], units: list[np.ndarray], capacity: int) -> list[int] | None:
    """Exact multiple-choice knapsack: min sum values[l][j_l] with sum units[l][j_l] <= capacity."""
    dp = np.full(capacity + 1, np.inf)
    dp[0] = 0.0
    choice = np.zeros((len(values), capacity + 1), np.uint8)
    for l, (val, u) in enumerate(zip(values, units)):
        new = np.full(capacity + 1, np.inf)
        for j in range(len(val)):
            c = int(u[j])
            if c > capacity:
                continue
            cand = dp[: capacity + 1 - c] + val[j]
            better = cand < new[c:]
            new[c:][better] = cand[better]
            choice[l, c:][better] = j
        dp = new
    if not np.isfinite(dp).any():
        return None
    best = dp.min()
    c = int(np.flatnonzero(dp == best)[0])  # smallest cost among the optimal ones
    picks = []
    for l in range(len(values) - 1, -1, -1):
        j = int(choice[l, c])
        picks.append(j)
        c -= int(units[l][j])
    return picks[::-1]


def _summary(layers, bits, costs, limit, exact) -> Allocation:
    idx = [lay.candidates.index(bits[lay.name]) for lay in layers]
    params = sum(lay.params for lay in layers)
    objective = sum(lay.weight * lay.error[bits[lay.name]] for lay in layers if bits[lay.name] in lay.error)
    cost = sum(row[j] for row, j in zip(costs, idx))
    return Allocation(bits, objective, cost, limit, sum(lay.params * bits[lay.name] for lay in layers) / params, exact)


def _infeasible(layers, budget, least: float, what: str) -> UserError:
    if budget.kind == "avg_bits":
        need = f"{least / sum(lay.params for lay in layers):.4g} average bits"
    else:
        need = f"{least:.6g} {'bytes' if budget.kind == 'size_bytes' else 'ms'}"
    return UserError(f"bit budget {budget.kind}={budget.value:g} is infeasible: {what} need {need}",
                     "raise the budget or allow narrower candidate widths")


def allocate(layers: list[LayerChoice], budget: Budget, strategy: str = "relevance",
             max_states: int = MAX_STATES) -> Allocation:
    """Widths per layer meeting ``budget``; see ``allocate_bits``. Returns the full record."""
    _check(layers, budget, strategy)
    costs, limit, integer = _costs(layers, budget)
    if strategy == "uniform":
        common = sorted(set.intersection(*(set(lay.candidates) for lay in layers)), reverse=True)
        for b in common:
            if sum(row[lay.candidates.index(b)] for row, lay in zip(costs, layers)) <= limit:
                return _summary(layers, {lay.name: b for lay in layers}, costs, limit, True)
        if not common:
            raise UserError("uniform allocation needs a width every layer allows, but the candidates share none",
                            "give all layers a common candidate width")
        b = common[-1]
        raise _infeasible(layers, budget, sum(row[lay.candidates.index(b)] for row, lay in zip(costs, layers)),
                          f"{b} bits everywhere (the narrowest common width)")
    weights = [1.0 if strategy == "sensitivity" else float(lay.weight) for lay in layers]
    values = [np.array([w * lay.error[b] for b in lay.candidates], np.float64) for w, lay in zip(weights, layers)]
    units, capacity, exact = _units(costs, limit, integer, max_states)
    picks = _knapsack(values, units, capacity)
    if picks is None:
        raise _infeasible(layers, budget, sum(min(row) for row in costs), "even the narrowest candidate widths")
    bits = {lay.name: lay.candidates[j] for lay, j in zip(layers, picks)}
    out = _summary(layers, bits, costs, limit, exact)
    assert out.cost <= limit, "allocation exceeds its budget"  # guaranteed by rounding costs up
    if strategy == "sensitivity":
        out.objective = sum(lay.error[bits[lay.name]] for lay in layers)
    return out


def allocate_bits(layers: list[LayerChoice], budget: Budget, strategy: str = "relevance", **kw) -> dict[str, int]:
    """Width per layer minimising sum weight_l * error_l(b_l) within the budget (never exceeded).

    ``relevance``: weights = LRP contribution scores. ``sensitivity``: all weights 1 (error only).
    ``uniform``: the largest width every layer allows that fits. Raises UserError when infeasible.
    """
    return allocate(layers, budget, strategy, **kw).bits
