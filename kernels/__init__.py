"""Softmax and GELU kernels (Triton, CUDA) with PyTorch reference implementations.

Installed as ``compress.kernels``.
"""
