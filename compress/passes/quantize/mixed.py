"""Mixed precision: measure each layer's quantization error at every candidate width, then allocate.

The error of layer l at width b is its relative output error tr(dW H dW^T) / tr(W H W^T) on the
calibration inputs (H = X^T X of the float, reparameterized model), with the same rounding the pass
will use (GPTQ or nearest). The allocator (``allocate.py``) then minimises sum_l w_l * error_l(b_l)
under the budget: w_l = the layer's LRP contribution score for ``relevance`` (LRP-QViT), 1 for
``sensitivity`` (error only); ``uniform`` takes the widest common width that fits.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch

from ... import ui
from . import allocate as alloc
from .calibrate import fit_weight
from .config import QuantizeConfig
from .gptq import factor, gptq_many, hessian_update, output_energy, output_error
from .ptq import _blockwise, _run, block_linears
from .quantizers import UniformQuantizer, weight_shape


@torch.no_grad()
def layer_hessians(model, images: torch.Tensor, names: list[str],
                   per_block: Callable[[dict[str, torch.Tensor]], None] | None = None) -> dict[str, torch.Tensor]:
    """Gram matrix X^T X / n of each named linear's input; k and v reuse q's (they read the same tensor).

    ``per_block``: called with each block's Hessians as soon as that block has run; they are then dropped
    (one block's Hessians are held at a time) and the returned dict is empty."""
    alias = {n: n.rsplit(".", 1)[0] + ".q" for n in names if n.endswith(("attn.k", "attn.v"))}
    alias = {n: a for n, a in alias.items() if a in names}
    hs: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    out: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_m, args):
            hs[name] = hessian_update(hs.get(name), args[0])
            count[name] = count.get(name, 0) + args[0][..., 0].numel()
        return fn

    def done(b: int) -> None:
        mine = [n for n in names if n.startswith(f"blocks.{b}.")]
        own = {n: hs.pop(n).div_(count[n]) for n in mine if n not in alias}
        got = {n: own[alias.get(n, n)] for n in mine}
        if per_block is None:
            out.update(got)
        else:
            per_block(got)

    hooks = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names if n not in alias]
    try:
        _blockwise(model, images, done)
    finally:
        for h in hooks:
            h.remove()
    return out


def candidate_errors(model, hessians: dict[str, torch.Tensor], candidates: list[int], cfg: QuantizeConfig,
                     bar=None) -> dict:
    """layer -> width -> relative output error after rounding at that width.

    Layers reading the same input (q, k, v) share one Hessian: it is factorised once and all of them, at
    every candidate width, are rounded together (``gptq_many``)."""
    errors: dict[str, dict[int, float]] = {n: {} for n in hessians}
    shared: dict[int, list[str]] = {}
    for name, h in hessians.items():
        shared.setdefault(id(h), []).append(name)
    with contextlib.nullcontext(bar) if bar is not None else ui.bar(
            total=len(hessians), desc="mixed precision: layer errors", unit="layer") as bar:
        for names in shared.values():
            h = hessians[names[0]]
            jobs = [(n, b, model.get_submodule(n).weight.detach()) for n in names for b in candidates]
            qs = []
            for _, b, w in jobs:
                grouped = cfg.weights.granularity != "group" or w.shape[1] % cfg.weights.group_size == 0
                gran = cfg.weights.granularity if grouped else "channel"
                shape, group = weight_shape(w, gran, cfg.weights.group_size)
                q = UniformQuantizer(b, True, shape, group)
                fit_weight(q, w, cfg.weights.calibration)
                qs.append(q)
            if cfg.weights.rounding == "gptq":
                wqs = gptq_many([w for *_, w in jobs], factor(h, cfg.weights.damp), qs)
            else:
                wqs = [q.fake(w) for (*_, w), q in zip(jobs, qs)]
            energy = {n: output_energy(model.get_submodule(n).weight.detach(), h) for n in names}  # once per layer
            for (n, b, w), wq in zip(jobs, wqs):
                errors[n][b] = output_error(w, wq, h, energy[n])
            bar.update(len(names))
    return errors


def storage_bits(bits: int) -> int:
    """Bits a weight of this width occupies in the exported file (INT4 or INT8 containers)."""
    return 4 if bits <= 4 else 8


def latency_costs(model, names: list[str], candidates: list[int], target: str, act_bits: int | None) -> dict:
    """Roofline ms of each linear at each width on ``target`` (batch 1): weight bytes of the storage
    container, INT8 GEMMs when activations are quantized, else weight-only dequantization to float."""
    from ...targets.latency_models import Op, roofline_model

    lm = roofline_model(target)
    tokens = model.cfg.num_tokens
    out = {}
    for n in names:
        w = model.get_submodule(n).weight
        o, i = w.shape
        out[n] = {}
        for b in candidates:
            precision = "int8" if act_bits else ("int4" if b <= 4 else "int8")
            act = 1 if act_bits else 4
            op = Op(2.0 * tokens * i * o, i * o * storage_bits(b) / 8 + tokens * (i + o) * act)
            out[n][b] = lm.ops_ms([op], precision)
    return out


def allocate_widths(model, images: torch.Tensor, cfg: QuantizeConfig, relevance: dict[str, float] | None) -> tuple[dict, dict]:
    """Widths per block linear under the recipe's budget; returns (bits, record)."""
    m = cfg.mixed
    t0 = time.time()
    names = [n for n in block_linears(model) if n not in cfg.skip and n not in cfg.overrides]
    ui.info(f"    mixed precision: errors of {len(names)} layers at widths {m.candidates}")
    errors: dict[str, dict[int, float]] = {}
    with ui.bar(total=len(names), desc="mixed precision: layer errors", unit="layer") as bar:
        # streamed: each block's Hessians are turned into errors and dropped once the block has run
        layer_hessians(model, images, names, lambda hs: errors.update(candidate_errors(model, hs, m.candidates,
                                                                                         cfg, bar)))
    params = {n: model.get_submodule(n).weight.numel() for n in names}
    weight = {n: (relevance or {}).get(n, 0.0) if m.strategy == "relevance" else 1.0 for n in names}
    layers = [alloc.LayerChoice(n, params[n], list(m.candidates), errors[n], weight[n]) for n in names]
    cost = None
    if m.budget.kind == "size_bytes":  # what the file stores: INT4 / INT8 containers
        cost = {n: {b: -(-params[n] * storage_bits(b) // 8) for b in m.candidates} for n in names}
    elif m.budget.kind == "latency_ms":
        cost = latency_costs(model, names, m.candidates, m.target, cfg.activations.bits)
    budget = alloc.Budget(m.budget.kind, m.budget.value, cost)
    result = alloc.allocate(layers, budget, m.strategy)
    record = {"strategy": m.strategy, "budget": m.budget.model_dump(), "avg_bits": result.avg_bits,
              "objective": result.objective, "cost": result.cost, "limit": result.limit, "exact": result.exact,
              "errors": {n: {str(b): e for b, e in errors[n].items()} for n in names},
              "weights": weight, "seconds": time.time() - t0}
    return result.bits, record


__all__ = ["allocate_widths", "layer_hessians", "candidate_errors", "_run"]
