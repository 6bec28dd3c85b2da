"""Drop-in modules for a model's attention softmax and MLP activation, backed by the custom ops.

``KernelSoftmax`` is a ``compress.models.vit.Softmax`` and ``KernelGELU`` an ``nn.GELU``: same call
signature, same type checks, so quantizers that wrap ``attn.softmax`` or read ``mlp.act`` keep working
(they must call the wrapped module, not recompute the function). When traced for export (ONNX,
TorchScript, torch.export/dynamo), or when gradients are needed, they compute the reference in plain
PyTorch ops, so the exported graph holds the approximation itself in standard ONNX ops.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..models.vit import Softmax
from . import ops, reference
from .reference import GeluTable


def plain_ops_wanted(x: torch.Tensor) -> bool:
    """True while tracing/compiling (custom ops have no ONNX symbolic) or when autograd is needed."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or (x.requires_grad and torch.is_grad_enabled()))


class KernelSoftmax(Softmax):
    """Attention softmax over the last axis computed by ``method`` on ``backend``."""

    def __init__(self, method: str = "exact", backend: str = "auto"):
        super().__init__()
        self.method = reference.check_method(method, reference.SOFTMAX_METHODS, "softmax")
        self.backend = reference.check_method(backend, ops.BACKENDS, "kernel backend")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if plain_ops_wanted(x):
            return reference.softmax(x, 1.0, None, self.method)
        return ops.softmax(x, 1.0, None, self.method, self.backend)

    def extra_repr(self) -> str:
        return f"dim=-1, method={self.method}, backend={self.backend}"


class KernelGELU(nn.GELU):
    """MLP activation: ``erf``, ``tanh`` or ``relu-lut`` (ReLU minus a table built from ``table.act``)."""

    def __init__(self, method: str = "erf", backend: str = "auto", table: GeluTable | None = None):
        super().__init__(approximate="tanh" if method == "tanh" else "none")
        self.method = reference.check_method(method, reference.GELU_METHODS, "gelu")
        self.backend = reference.check_method(backend, ops.BACKENDS, "kernel backend")
        self.spec = (table or GeluTable()) if method == "relu-lut" else None
        # derived from the spec, so not saved in checkpoints (the pass's rebuild() recreates it)
        self.register_buffer("table", self.spec.values() if self.spec else None, persistent=False)
        self.inv_step = self.spec.inv_step if self.spec else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if plain_ops_wanted(x):
            return reference.gelu(x, None, self.method, self.table, self.inv_step)
        return ops.gelu(x, None, self.method, self.table, self.inv_step, self.backend)

    def extra_repr(self) -> str:
        lut = f", table={self.spec.act}[{self.spec.entries}] on [0, {self.spec.x_max}]" if self.spec else ""
        return f"method={self.method}, backend={self.backend}{lut}"
