"""Forward hooks that never outlive the pass that set them."""
from __future__ import annotations

import torch


def forward_with_hooks(model: torch.nn.Module, x: torch.Tensor, handles: list) -> torch.Tensor:
    """``model(x)`` without autograd, then the hook ``handles`` removed (also when the forward fails)."""
    try:
        with torch.inference_mode():
            return model(x)
    finally:
        for h in handles:
            h.remove()
