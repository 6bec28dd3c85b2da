"""Temporarily turn off every fake-quantizer in a model (modules with a ``quant_enabled`` flag)."""
from __future__ import annotations

import contextlib

import torch.nn as nn


@contextlib.contextmanager
def float_view(model: nn.Module):
    mods = [m for m in model.modules() if hasattr(m, "quant_enabled")]
    saved = [m.quant_enabled for m in mods]
    try:
        for m in mods:
            m.quant_enabled = False
        yield model
    finally:
        for m, s in zip(mods, saved):
            m.quant_enabled = s
