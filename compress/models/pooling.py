"""What a probe or head reads from token outputs, and how alike two outputs are."""
from __future__ import annotations

import torch


def pooled(out: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Token outputs [N,T,D] -> [N,2D] (class token, mean of patch tokens); vectors pass through.

    Without prefix tokens (Swin, class-token-free ViTs) there is no class token: the mean token [N,D] alone."""
    if out.ndim == 2:
        return out
    if num_prefix_tokens == 0:
        return out.mean(1)
    return torch.cat([out[:, 0], out[:, num_prefix_tokens:].mean(1)], dim=1)


def token_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1).mean())
