"""Scale reparameterization of post-LayerNorm activations (RepQ-ViT), folded so the deployed graph stays per tensor.

LayerNorm outputs of ViTs differ wildly between channels (DINOv2: 30x). Per channel c, a clipped range
[lo_c, hi_c] is observed; the channel is centred (m_c = (lo_c + hi_c) / 2) and divided by
r_c = (w_c / mean_geo(w))^alpha (w_c = hi_c - lo_c), so that with alpha = 1 every channel spans the same
range and one per-tensor symmetric quantizer fits all of them. The transform is exact in float:

    LayerNorm:  gamma' = gamma / r,   beta' = (beta - m) / r
    consumers:  W' = W diag(r),       b' = b + W m

(``alpha`` < 1 migrates only part of the spread into the weights, SmoothQuant-style.)
"""
from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def reparameterize(norm: nn.LayerNorm, consumers: list[nn.Linear], lo: torch.Tensor, hi: torch.Tensor,
                   alpha: float = 1.0) -> dict:
    """Fold per-channel centring and scaling of ``norm``'s output into it and its ``consumers``."""
    if norm.weight is None:
        raise ValueError("reparameterization needs a LayerNorm with an affine weight")
    width = (hi - lo).clamp_min(1e-6)
    centre = (hi + lo) / 2 if all(c.bias is not None for c in consumers) and norm.bias is not None else torch.zeros_like(lo)
    r = (width / width.log().mean().exp()).pow(alpha)
    norm.weight.div_(r)
    if norm.bias is not None:
        norm.bias.sub_(centre).div_(r)
    for lin in consumers:
        w = lin.weight.double()
        if lin.bias is not None:
            lin.bias.add_((w @ centre.double()).to(lin.bias.dtype))
        lin.weight.copy_((w * r.double()[None, :]).to(lin.weight.dtype))
    return {"spread_before": float(width.max() / width.median()),
            "spread_after": float((width / r).max() / (width / r).median()),
            "ratio_max": float(r.max()), "ratio_min": float(r.min())}


@torch.no_grad()
def balance_qk(attn, q_amax: torch.Tensor, k_amax: torch.Tensor) -> dict:
    """q_c / r_c and k_c * r_c leave every q.k product unchanged; r_c = sqrt(|q_c| / |k_c|) gives both
    operands of the attention matmul the same per-channel range (folded into the q and k linears)."""
    r = (q_amax.clamp_min(1e-6) / k_amax.clamp_min(1e-6)).sqrt()
    for lin, f in ((attn.q, 1 / r), (attn.k, r)):
        lin.weight.mul_(f[:, None])
        if lin.bias is not None:
            lin.bias.mul_(f)
    return {"ratio_max": float(r.max()), "ratio_min": float(r.min())}


@torch.no_grad()
def centre_k(attn, k_mean: torch.Tensor) -> float:
    """k_j - m for every key j changes each query's logits by the constant q.m, which softmax ignores:
    exact, and it removes k's per-channel offsets before its (symmetric) quantizer."""
    if attn.k.bias is None:
        return 0.0
    attn.k.bias.sub_(k_mean)
    return float(k_mean.abs().max())


@torch.no_grad()
def balance_v_proj(attn, v_amax: torch.Tensor, alpha: float = 1.0) -> dict:
    """v_c / r_c and proj's column c * r_c: exact (attention mixes tokens, not channels), and it flattens
    the channel spread of both v and the attention output that feeds proj."""
    a = v_amax.clamp_min(1e-6)
    r = (a / a.log().mean().exp()).pow(alpha)
    attn.v.weight.div_(r[:, None])
    if attn.v.bias is not None:
        attn.v.bias.div_(r)
    attn.proj.weight.mul_(r[None, :])
    return {"spread_before": float(a.max() / a.median()), "spread_after": float((a / r).max() / (a / r).median())}
