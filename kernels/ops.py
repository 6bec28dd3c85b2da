"""PyTorch custom ops (``torch.ops.vitforge.*``) over the kernels.

On CUDA tensors they run the Triton kernels (backend ``triton``, the default when Triton is installed) or
the CUDA C++ ones (``cuda``); anywhere else they run the pure PyTorch reference, so a model using them
runs, exports and is tested on any machine. They are inference ops (no autograd formula): the modules in
``compress.kernels.modules`` route inputs that need gradients, and tracing for export, to the reference.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import Tensor

from . import cuda, reference
from .reference import LogCodes

BACKENDS = ("auto", "triton", "cuda", "reference")


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreting() -> bool:
    """Triton runs on CPU: TRITON_INTERPRET=1 was set before Triton was first imported (it decides then)."""
    if os.environ.get("TRITON_INTERPRET") != "1" or not triton_available():
        return False
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.max, InterpretedFunction)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The implementation that runs for ``backend`` on ``device``."""
    reference.check_method(backend, BACKENDS, "kernel backend")
    if backend == "reference":
        return backend
    if device.type == "cuda":
        if backend == "auto":
            return "triton" if triton_available() else "cuda" if cuda.available() else "reference"
        return backend
    if backend == "triton" and triton_interpreting():
        return "triton"  # the Triton interpreter on CPU: slow, for tests
    return "reference"


def _triton():
    from . import triton_kernels as tk

    return tk


def _run(fn: str, x: Tensor, backend: str, *args) -> Tensor:
    b = resolve_backend(backend, x.device)
    impl = _triton() if b == "triton" else cuda if b == "cuda" else reference
    return getattr(impl, fn)(x, *args)


@torch.library.custom_op("vitforge::softmax", mutates_args=())
def softmax_op(x: Tensor, scale: float, mask: Optional[Tensor], method: str, backend: str) -> Tensor:
    return _run("softmax", x, backend, scale, mask, method)


@softmax_op.register_fake
def _(x, scale, mask, method, backend):
    return torch.empty_like(x)


@torch.library.custom_op("vitforge::softmax_codes", mutates_args=())
def softmax_codes_op(x: Tensor, scale: float, mask: Optional[Tensor], method: str, bits: int, eta: float, lo: float,
                     step: float, backend: str) -> Tensor:
    return _run("softmax_codes", x, backend, LogCodes(bits, eta, lo, step), scale, mask, method)


@softmax_codes_op.register_fake
def _(x, scale, mask, method, bits, eta, lo, step, backend):
    return torch.empty_like(x, dtype=torch.uint8)


@torch.library.custom_op("vitforge::gelu", mutates_args=())
def gelu_op(x: Tensor, bias: Optional[Tensor], method: str, table: Optional[Tensor], inv_step: float,
            backend: str) -> Tensor:
    return _run("gelu", x, backend, bias, method, table, inv_step)


@gelu_op.register_fake
def _(x, bias, method, table, inv_step, backend):
    return torch.empty_like(x)


def softmax(x: Tensor, scale: float = 1.0, mask: Tensor | None = None, method: str = "exact",
            backend: str = "auto") -> Tensor:
    """softmax(x * scale + mask) over the last axis, in x's dtype (see ``reference`` for the methods)."""
    return softmax_op(x, float(scale), mask, method, backend)


def softmax_codes(x: Tensor, codes: LogCodes, scale: float = 1.0, mask: Tensor | None = None, method: str = "exact",
                  backend: str = "auto") -> Tensor:
    """uint8 log-domain codes of the softmax, for post-softmax log2 / SULQ quantizers."""
    return softmax_codes_op(x, float(scale), mask, method, codes.bits, codes.eta, codes.lo, codes.step, backend)


def gelu(x: Tensor, bias: Tensor | None = None, method: str = "erf", table: Tensor | None = None,
         inv_step: float = 0.0, backend: str = "auto") -> Tensor:
    """act(x + bias): ``erf``, ``tanh`` or ``relu-lut`` (with a ``GeluTable``'s values and inv_step)."""
    return gelu_op(x, bias, method, table, float(inv_step), backend)
