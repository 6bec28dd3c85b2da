"""Bit allocator: exact (brute force), budget never exceeded, and relevance beats uniform where the answer is known."""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from compress.errors import UserError
from compress.passes.quantize.allocate import Budget, LayerChoice, _floor, allocate, allocate_bits
from compress.passes.quantize.relevance import layer_relevance, quantizable_layers

from conftest import tiny_config

pytestmark = pytest.mark.timeout(120)
WIDTHS = [2, 3, 4, 6, 8]


def _instance(rng: random.Random, n: int) -> list[LayerChoice]:
    layers = []
    for i in range(n):
        cand = sorted(rng.sample(WIDTHS, rng.randint(1, 4)))
        layers.append(LayerChoice(f"l{i}", rng.choice([7, 16, 48, 64, 100]), cand,
                                  {b: rng.random() * 2.0 ** -b for b in cand}, rng.random()))
    return layers


def _brute(layers, cost, limit, weights=None):
    """Best objective over every combination whose cost fits (None if nothing fits)."""
    weights = weights or [lay.weight for lay in layers]
    best = None
    for combo in itertools.product(*(lay.candidates for lay in layers)):
        if sum(cost(lay, b) for lay, b in zip(layers, combo)) <= limit:
            v = sum(w * lay.error[b] for w, lay, b in zip(weights, layers, combo))
            best = v if best is None else min(best, v)
    return best


def _total(layers, bits, cost):
    return sum(cost(lay, bits[lay.name]) for lay in layers)


@pytest.mark.parametrize("kind", ["avg_bits", "size_bytes"])
def test_matches_brute_force_and_never_exceeds(kind):
    rng = random.Random(0)
    cost = (lambda lay, b: lay.params * b) if kind == "avg_bits" else (lambda lay, b: -(-lay.params * b // 8))
    for _ in range(150):
        layers = _instance(rng, rng.randint(1, 5))
        params = sum(lay.params for lay in layers)
        lo = sum(cost(lay, min(lay.candidates)) for lay in layers)
        hi = sum(cost(lay, max(lay.candidates)) for lay in layers)
        total = rng.uniform(lo, hi)
        value = total / params if kind == "avg_bits" else total
        limit = _floor(total)
        a = allocate(layers, Budget(kind, value))
        assert a.exact and a.objective == pytest.approx(_brute(layers, cost, limit), abs=1e-12)
        assert _total(layers, a.bits, cost) <= limit
        if kind == "avg_bits":
            assert a.avg_bits * params <= limit and a.avg_bits <= value + 1e-12


def test_float_costs_are_rounded_up_never_exceeding():
    """Latency costs (floats): OPT(limit) <= ours <= OPT(limit - n * unit), and the real cost fits."""
    rng = random.Random(1)
    for _ in range(80):
        layers = _instance(rng, rng.randint(2, 5))
        ms = {lay.name: {b: lay.params * b * rng.uniform(0.8, 1.2) * 1e-3 for b in lay.candidates} for lay in layers}
        cost = lambda lay, b: ms[lay.name][b]  # noqa: E731
        lo = sum(min(ms[lay.name].values()) for lay in layers)
        hi = sum(max(ms[lay.name].values()) for lay in layers)
        limit, states = rng.uniform(lo, hi) * 1.05, 64
        try:
            a = allocate(layers, Budget("latency_ms", limit, ms), max_states=states)
        except UserError:  # rounding up can only lose combinations within n units of the limit
            assert _brute(layers, cost, limit - len(layers) * limit / states) is None
            continue
        assert not a.exact and a.cost <= limit and _total(layers, a.bits, cost) == pytest.approx(a.cost)
        assert _brute(layers, cost, limit) - 1e-12 <= a.objective
        tighter = _brute(layers, cost, limit - len(layers) * limit / states)
        assert tighter is None or a.objective <= tighter + 1e-12


def test_integer_custom_costs_are_exact():
    rng = random.Random(2)
    for _ in range(40):
        layers = _instance(rng, rng.randint(2, 5))
        us = {lay.name: {b: rng.randint(1, 40) * b for b in lay.candidates} for lay in layers}
        limit = rng.randint(sum(min(v.values()) for v in us.values()), sum(max(v.values()) for v in us.values()))
        a = allocate(layers, Budget("latency_ms", limit, us))
        best = _brute(layers, lambda lay, b: us[lay.name][b], limit)
        assert a.exact and a.objective == pytest.approx(best, abs=1e-12)


def test_uniform_is_the_widest_width_that_fits():
    layers = [LayerChoice(f"l{i}", 64 * (i + 1), WIDTHS) for i in range(3)]
    assert set(allocate_bits(layers, Budget("avg_bits", 5.9), "uniform").values()) == {4}
    assert set(allocate_bits(layers, Budget("avg_bits", 6), "uniform").values()) == {6}
    assert set(allocate_bits(layers, Budget("size_bytes", 384 * 3 / 8), "uniform").values()) == {3}
    layers[0].candidates = [2, 4, 8]  # common widths {2, 4, 8}
    assert set(allocate_bits(layers, Budget("avg_bits", 7), "uniform").values()) == {4}
    with pytest.raises(UserError, match="infeasible.*2 bits everywhere"):
        allocate_bits(layers, Budget("avg_bits", 1.5), "uniform")


def test_budget_met_exactly_when_it_pays():
    """Two equal layers, widths {4, 6}, budget 5 average bits: only 4+6 fits and beats 4+4."""
    layers = [LayerChoice(n, 64, [4, 6], {4: 1.0, 6: 0.1}, w) for n, w in (("a", 1.0), ("b", 3.0))]
    a = allocate(layers, Budget("avg_bits", 5))
    assert a.bits == {"a": 4, "b": 6} and a.avg_bits == 5.0 and a.cost == a.limit
    assert allocate_bits(layers, Budget("avg_bits", 4.99)) == {"a": 4, "b": 4}


def test_sensitivity_ignores_relevance():
    """Similar errors: relevance gives the relevant layer the bits; sensitivity (weights 1) does not."""
    layers = [LayerChoice("hot", 100, [2, 4, 6], {2: 0.5, 4: 0.05, 6: 0.01}, 0.99),
              LayerChoice("cold", 100, [2, 4, 6], {2: 0.6, 4: 0.05, 6: 0.01}, 0.01)]
    assert allocate_bits(layers, Budget("avg_bits", 4)) == {"hot": 6, "cold": 2}
    assert allocate_bits(layers, Budget("avg_bits", 4), "sensitivity") == {"hot": 4, "cold": 4}


def test_bad_inputs_raise_user_errors():
    ok = [LayerChoice("a", 10, [4, 8], {4: 1.0, 8: 0.1}, 1.0)]
    cases = [
        (ok, Budget("avg_bits", 3), "relevance", "infeasible.*4 average bits"),
        (ok, Budget("watts", 3), "relevance", "budget kind"),
        (ok, Budget("avg_bits", -1), "relevance", "positive"),
        (ok, Budget("avg_bits", 4), "greedy", "strategy"),
        (ok, Budget("latency_ms", 4), "relevance", "latency_ms budget needs"),
        (ok, Budget("latency_ms", 4, {"a": {4: 1.0}}), "relevance", "cost missing for widths \\[8\\]"),
        (ok, Budget("avg_bits", 4, {"a": {4: 1, 8: 2}}), "relevance", "takes no per-layer costs"),
        (ok, Budget("latency_ms", 4, {"a": {4: 1.0, 8: -2.0}}), "relevance", "finite and >= 0"),
        ([LayerChoice("a", 10, [4, 8], {4: 1.0})], Budget("avg_bits", 4), "relevance", "missing for widths \\[8\\]"),
        ([LayerChoice("a", 10, [4], {4: math.nan})], Budget("avg_bits", 4), "relevance", "finite"),
        ([LayerChoice("a", 10, [0])], Budget("avg_bits", 4), "uniform", "positive integers"),
        (ok + ok, Budget("avg_bits", 4), "relevance", "duplicate"),
        ([], Budget("avg_bits", 4), "relevance", "no layers"),
    ]
    for layers, budget, strategy, msg in cases:
        with pytest.raises(UserError, match=msg):
            allocate_bits(layers, budget, strategy)


# -- end to end: a ViT whose first two blocks are nearly switched off ---------------------------------
def _rtn(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel round-to-nearest (a stand-in for the real quantizer)."""
    q = 2 ** (bits - 1) - 1
    s = w.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (w.ndim - 1)) / q
    return (w / s).round().clamp(-q - 1, q) * s


def _layer_errors(model, x) -> dict[str, dict[int, float]]:
    """Relative output MSE of each layer with its weights at each width, on the calibration inputs."""
    inputs, hooks = {}, []
    for n, m in quantizable_layers(model).items():
        hooks.append(m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0])))
    with torch.no_grad():
        model(x)
        for h in hooks:
            h.remove()
        out = {}
        for n, m in quantizable_layers(model).items():
            f = torch.nn.functional.linear if isinstance(m, torch.nn.Linear) else \
                lambda a, w: torch.nn.functional.conv2d(a, w, stride=m.stride)
            ref = f(inputs[n], m.weight)
            out[n] = {b: ((f(inputs[n], _rtn(m.weight, b)) - ref).pow(2).sum() / ref.pow(2).sum()).item()
                      for b in WIDTHS}
    return out


def _damage(model, bits, x) -> float:
    from compress.models.pooling import pooled

    saved = {n: m.weight.detach().clone() for n, m in quantizable_layers(model).items()}
    with torch.no_grad():
        ref = pooled(model(x), 1)
        for n, m in quantizable_layers(model).items():
            m.weight.copy_(_rtn(m.weight, bits[n]))
        out = pooled(model(x), 1)
        for n, m in quantizable_layers(model).items():
            m.weight.copy_(saved[n])
    return ((out - ref).pow(2).sum() / (ref - ref.mean(0)).pow(2).sum()).item()


def test_relevance_beats_uniform_and_sensitivity_on_a_known_model():
    """Blocks 0-1 nearly off (LayerScale 0.01): their bits are better spent on blocks 2-3."""
    from compress.models import build

    torch.manual_seed(0)
    model = build(tiny_config(depth=4, layer_scale=True))
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            for ls in (blk.ls1, blk.ls2):
                ls.gamma.fill_(0.01 if i < 2 else 1.0)
    g = torch.Generator().manual_seed(0)
    calib, test = torch.randn(16, 3, 32, 32, generator=g), torch.randn(32, 3, 32, 32, generator=g)
    rel = layer_relevance(model, [calib])
    assert sum(v for n, v in rel.items() if n.startswith(("blocks.0.", "blocks.1."))) < 0.05
    errors = _layer_errors(model, calib)
    layers = [LayerChoice(n, m.weight.numel(), WIDTHS, errors[n], rel[n]) for n, m in quantizable_layers(model).items()]
    budget = Budget("avg_bits", 4)
    alloc = {s: allocate(layers, budget, s) for s in ("relevance", "uniform", "sensitivity")}
    assert all(a.avg_bits <= 4 for a in alloc.values()) and set(alloc["uniform"].bits.values()) == {4}
    bits = alloc["relevance"].bits
    for op in ("attn.v", "attn.proj", "mlp.fc1", "mlp.fc2"):  # the known answer: switched-off blocks get fewer bits
        assert max(bits[f"blocks.{i}.{op}"] for i in (0, 1)) < min(bits[f"blocks.{i}.{op}"] for i in (2, 3))
    damage = {s: _damage(model, a.bits, test) for s, a in alloc.items()}
    assert damage["relevance"] < 0.5 * damage["uniform"]
    assert damage["relevance"] < 0.5 * damage["sensitivity"]
