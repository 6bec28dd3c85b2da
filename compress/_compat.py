"""The one guarded place for environment quirks.

* PyPI's torchvision is a CUDA build whose compiled ops do not load beside the CPU
  torch wheel; timm imports torchvision, which registers fake kernels for
  ``torchvision::nms``/``qnms`` and fails if their schemas are unknown. We define
  the two schemas (no kernels) before anything imports torchvision.
* Threads: one intra-op thread unless the user asked otherwise
  (two threads made a ViT-Tiny forward 40x slower on the 2-core CI machines).
"""
from __future__ import annotations

import os

_PATCHED = False


def ensure_torchvision_ops() -> None:
    global _PATCHED
    if _PATCHED:
        return
    import torch  # noqa: F401  loads torch (and its operator registry) before the schemas are looked up

    for name, schema in (("nms", "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"),
                         ("qnms", "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")):
        if not _schema_exists(f"torchvision::{name}"):
            _lib().define(schema)
    _PATCHED = True


_LIB = None


def _lib():
    global _LIB
    import torch

    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "FRAGMENT")
    return _LIB


def _schema_exists(qualname: str) -> bool:
    import torch

    try:
        torch._C._get_schema(qualname, "")
        return True
    except RuntimeError:
        return False


def import_timm():
    ensure_torchvision_ops()
    import timm

    return timm


def set_threads(n: int | None = None) -> int:
    """Pin torch to ``n`` intra-op threads (default: $VITFORGE_THREADS or 1)."""
    import torch

    n = int(n or os.environ.get("VITFORGE_THREADS", 1))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
