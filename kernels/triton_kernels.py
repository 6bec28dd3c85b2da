"""Triton kernels (run on NVIDIA/AMD GPUs, and on CPU under ``TRITON_INTERPRET=1`` for tests)."""
from .triton_gelu import gelu
from .triton_softmax import softmax, softmax_codes

__all__ = ["gelu", "softmax", "softmax_codes"]
