"""What the approximations cost on the inputs a real model produces: captured pre-softmax logits and
pre-GELU activations, and each method's error on them."""
from __future__ import annotations

import torch

from . import reference as R


@torch.no_grad()
def capture_inputs(model, images: torch.Tensor, keep_every: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(logit rows [R, T] entering every block's attention softmax, flat activations entering every mlp.act)."""
    logits, acts = [], []
    hooks = []
    for blk in model.blocks:
        hooks.append(blk.attn.softmax.register_forward_hook(
            lambda _m, i, _o: logits.append(i[0].reshape(-1, i[0].shape[-1])[::keep_every].float())))
        hooks.append(blk.mlp.act.register_forward_hook(
            lambda _m, i, _o: acts.append(i[0].reshape(-1)[::keep_every].float())))
    try:
        model.eval()(images)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(logits), torch.cat(acts)


def softmax_errors(logits: torch.Tensor, method: str) -> dict:
    """Errors of ``method`` vs the exact softmax (float64): max |dp|, max relative error where p > 1e-3, max KL."""
    exact = torch.softmax(logits.double(), -1)
    p = R.softmax_f32(logits, 1.0, None, method).double()
    err = (p - exact).abs()
    big = exact > 1e-3
    kl = (exact * (exact.clamp_min(1e-300).log() - p.clamp_min(1e-300).log())).sum(-1)
    return {"max_abs": float(err.max()), "max_rel_p>1e-3": float((err[big] / exact[big]).max()),
            "max_kl": float(kl.max()), "rows": logits.shape[0]}


def gelu_errors(acts: torch.Tensor, method: str, table: R.GeluTable | None = None, act: str = "gelu") -> dict:
    """Errors of ``method`` vs the model's activation ``act`` (float64) on ``acts``."""
    exact = R.ACT_FNS[act](acts.double())
    vals, inv = (table.values(), table.inv_step) if table else (None, 0.0)
    err = (R.gelu_f32(acts, None, method, vals, inv).double() - exact).abs()
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()), "values": acts.numel(),
            "range": [float(acts.min()), float(acts.max())]}
