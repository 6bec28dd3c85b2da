"""Knowledge distillation from the unpruned fp32 model: the loss the saliency estimates and recovery
minimises. No labels are used.

Encoders (tokens or pooled features out): relative squared error of the output tokens plus that of
the pooled vector a probe reads ([class token, mean patch token]). Classifiers: KL divergence of the
logits. ``sampled`` gives a scalar whose per-sample gradients g_n satisfy E[g_n g_n^T] = the
Gauss-Newton matrix of the per-sample loss (the true Fisher: directions drawn from the model's own
predictive distribution), which stays informative where the loss and its gradient are zero (the
unpruned student equals its teacher).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.pooling import pooled


class Distiller:
    def __init__(self, cfg):
        self.logits = cfg.num_classes > 0 and cfg.global_pool != "none"
        self.num_prefix = cfg.num_prefix_tokens

    def loss(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss [B]."""
        y, t = y.float(), t.float()
        if self.logits:
            return F.kl_div(F.log_softmax(y, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
        out = _rel_sq(y, t)
        if y.ndim == 3:
            out = out + _rel_sq(pooled(y, self.num_prefix), pooled(t, self.num_prefix))
        return out

    def sampled(self, y: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """sum_n <y_n, v_n> with v_n drawn so that E[v_n v_n^T] is the loss Hessian w.r.t. y_n."""
        y, t = y.float(), t.float()
        if self.logits:  # categorical: v = p - onehot(c), c ~ p
            p = F.softmax(y, -1).detach()
            c = torch.multinomial(p, 1, generator=gen)
            return (y * (p - F.one_hot(c[:, 0], p.shape[-1]).to(p))).sum()
        out = (y * _gauss(t, gen)).sum()
        if y.ndim == 3:  # the pooled term: its own independent draw
            out = out + (pooled(y, self.num_prefix) * _gauss(pooled(t, self.num_prefix), gen)).sum()
        return out


def _rel_sq(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, y.ndim))
    return (y - t).pow(2).sum(dims) / t.pow(2).sum(dims).clamp_min(1e-12)


def _gauss(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """N(0, 2/||t_n||^2 I): the Hessian of ||y - t||^2 / ||t||^2."""
    scale = (2.0 / t.pow(2).sum(tuple(range(1, t.ndim)), keepdim=True).clamp_min(1e-12)).sqrt()
    return torch.randn(t.shape, generator=gen) * scale
