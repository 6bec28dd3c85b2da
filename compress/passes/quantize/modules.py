"""Quantized twins of the canonical ViT's weighted ops: same module paths, same parameters, plus quantizers.

``QuantLinear`` / ``QuantConv2d`` quantize their input (``input_quant``, per tensor, what the deployed
graph's QuantizeLinear does) and their weight (``weight_quant``). ``QuantMatMul`` quantizes both operands
of the attention matmuls. A plan (module path -> quantizer specs) describes the wrapping; it is stored in
the pass record so ``rebuild`` can recreate the modules before a checkpoint's weights load.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.vit import MatMul
from .quantizers import FakeQuant, make_quantizer


class _QuantWeighted:
    """Shared by the quantized weighted ops: the input and weight quantizers applied."""

    weight: torch.Tensor
    weight_quant: FakeQuant | None
    input_quant: FakeQuant | None

    def qweight(self) -> torch.Tensor:
        """The fake-quantized weight, cached while neither the weight nor the scales change (inference)."""
        q = self.weight_quant
        if q is None or not q.quant_enabled:
            return self.weight
        if torch.is_grad_enabled() and (self.weight.requires_grad or q.scale_override is not None):
            return q(self.weight)
        key = (self.weight._version, id(self.weight), q.scale._version, q.zero_point._version, q.bits)
        cache = self.__dict__.get("_wcache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, q(self.weight).detach())
            self.__dict__["_wcache"] = cache
        return cache[1]

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quant is None else self.input_quant(x)


class QuantLinear(_QuantWeighted, nn.Linear):
    def __init__(self, lin: nn.Linear, weight_quant: FakeQuant | None, input_quant: FakeQuant | None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.weight, self.bias = lin.weight, lin.bias
        self.weight_quant, self.input_quant = weight_quant, input_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quant_input(x), self.qweight(), self.bias)


class QuantConv2d(_QuantWeighted, nn.Conv2d):
    def __init__(self, conv: nn.Conv2d, weight_quant: FakeQuant | None, input_quant: FakeQuant | None):
        nn.Module.__init__(self)
        for k in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                  "padding_mode", "transposed", "output_padding", "_reversed_padding_repeated_twice"):
            setattr(self, k, getattr(conv, k))
        self.weight, self.bias = conv.weight, conv.bias
        self.weight_quant, self.input_quant = weight_quant, input_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quant_input(x), self.qweight(), self.bias)


class QuantMatMul(MatMul):
    def __init__(self, a_quant: FakeQuant | None, b_quant: FakeQuant | None):
        super().__init__()
        self.a_quant, self.b_quant = a_quant, b_quant

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.a_quant is not None:
            a = self.a_quant(a)
        if self.b_quant is not None:
            b = self.b_quant(b)
        return a @ b


WEIGHTED = (QuantLinear, QuantConv2d)
SLOTS = {QuantLinear: ("weight_quant", "input_quant"), QuantConv2d: ("weight_quant", "input_quant"),
         QuantMatMul: ("a_quant", "b_quant")}


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent, _, leaf = path.rpartition(".")
    return (model.get_submodule(parent) if parent else model), leaf


def wrap(model: nn.Module, plan: dict[str, dict]) -> None:
    """Replace each planned module by its quantized twin; quantizers are built from the specs."""
    for path, slots in plan.items():
        parent, leaf = _parent(model, path)
        mod = getattr(parent, leaf)
        q = {k: make_quantizer(v) for k, v in slots.items()}
        if isinstance(mod, WEIGHTED + (QuantMatMul,)):
            for k, v in q.items():
                setattr(mod, k, v)
            continue
        if isinstance(mod, nn.Linear):
            new = QuantLinear(mod, q.get("weight_quant"), q.get("input_quant"))
        elif isinstance(mod, nn.Conv2d):
            new = QuantConv2d(mod, q.get("weight_quant"), q.get("input_quant"))
        elif isinstance(mod, MatMul):
            new = QuantMatMul(q.get("a_quant"), q.get("b_quant"))
        else:
            raise ValueError(f"cannot quantize {path} ({type(mod).__name__})")
        setattr(parent, leaf, new)


def plan_of(model: nn.Module) -> dict[str, dict]:
    """The plan that rebuilds ``model``'s quantized modules (inverse of ``wrap``)."""
    out = {}
    for name, mod in model.named_modules():
        if type(mod) in SLOTS:
            out[name] = {k: (getattr(mod, k).spec() if getattr(mod, k) is not None else None) for k in SLOTS[type(mod)]}
    return out


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if type(m) in SLOTS}


@contextlib.contextmanager
def quant_state(model: nn.Module, weights: bool | None = None, inputs: bool | None = None):
    """Temporarily switch weight and/or activation quantizers on or off (None: leave as is)."""
    saved = []
    for mod in quantized_modules(model).values():
        for slot in SLOTS[type(mod)]:
            q = getattr(mod, slot)
            want = weights if slot == "weight_quant" else inputs
            if q is not None and want is not None:
                saved.append((q, q.quant_enabled))
                q.quant_enabled = want
    try:
        yield model
    finally:
        for q, s in saved:
            q.quant_enabled = s
