"""Triton kernels (run on NVIDIA/AMD GPUs, and on CPU under ``TRITON_INTERPRET=1`` for tests)."""
from .gelu import gelu
from .softmax import softmax, softmax_codes

__all__ = ["gelu", "softmax", "softmax_codes"]
