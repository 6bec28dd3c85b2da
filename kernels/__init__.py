"""Softmax and GELU kernels (Triton, CUDA C++) with PyTorch reference implementations.

Installed as ``compress.kernels``. ``softmax`` / ``softmax_codes`` / ``gelu`` are torch custom ops
(``torch.ops.vitforge.*``): Triton or CUDA on GPUs, the reference (``compress.kernels.reference``) elsewhere.
``KernelSoftmax`` / ``KernelGELU`` are the drop-in modules the ``kernels`` pass puts into a model.
"""
if __name__ != "compress.kernels":  # imported as a bare top-level `kernels`: not us (compress/_toplevel.py)
    from compress._toplevel import yield_name

    yield_name(__name__, __file__)
else:
    from .modules import KernelGELU, KernelSoftmax
    from .ops import BACKENDS, gelu, resolve_backend, softmax, softmax_codes
    from .reference import GELU_METHODS, SOFTMAX_METHODS, GeluTable, LogCodes

__all__ = ["BACKENDS", "GELU_METHODS", "SOFTMAX_METHODS", "GeluTable", "KernelGELU", "KernelSoftmax", "LogCodes",
           "gelu", "resolve_backend", "softmax", "softmax_codes"]
