"""Asymmetric calibration (GPTAQ, Li et al. 2025) and bias correction (Nagel et al. 2019).

GPTQ rounds W so that Q(W) X_q ~ W X_q on the quantized model's input X_q: the error made upstream is copied
on. The asymmetric objective ||Q(W) X_q - W X_fp||^2 targets the float model's output on its own input X_fp.
It splits exactly: W* = W M H^-1 (M = X_fp^T X_q / n, H = X_q^T X_q / n, damped as GPTQ damps it) is its
least-squares optimum, and what is left, ||(Q(W) - W*) X_q||^2, is GPTQ's loss on W* with the same H.
Bias correction then removes the mean output error that is left: b += W mu_fp - Q(W) mu_q.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Targets:
    """The float weights and both inputs' means, kept for the bias correction after rounding."""

    weights: list[torch.Tensor]
    mean_fp: torch.Tensor
    mean_q: torch.Tensor
    bias_correction: bool

    @torch.no_grad()
    def correct_bias(self, mods: list[nn.Module]) -> None:
        if not self.bias_correction:
            return
        for m, w in zip(mods, self.weights):
            if m.bias is not None:
                shift = w.double() @ self.mean_fp - m.weight.detach().double() @ self.mean_q
                m.bias.add_(shift.to(m.bias.dtype))


@torch.no_grad()
def asymmetric_targets(mods: list[nn.Module], x_q: torch.Tensor, x_fp: torch.Tensor, quant, h: torch.Tensor,
                       cfg) -> Targets:
    """Move each weight to the asymmetric least-squares optimum W* (when ``cfg.asymmetric``) before GPTQ rounds
    it. ``x_q``: the group's input in the quantized model (``quant``: its input quantizer, or None), ``x_fp``: in
    the float model; ``h``: the Gram matrix of the quantized input."""
    k = x_q.shape[-1]
    n = x_q[..., 0].numel()
    m = torch.zeros(k, k, dtype=torch.float64) if cfg.asymmetric else None
    sum_q = torch.zeros(k, dtype=torch.float64)
    sum_fp = torch.zeros(k, dtype=torch.float64)
    for xc, fc in zip(x_q.split(4), x_fp.split(4)):
        xc = (xc if quant is None else quant(xc)).reshape(-1, k).float()
        fc = fc.reshape(-1, k).float()
        sum_q += xc.sum(0, dtype=torch.float64)
        sum_fp += fc.sum(0, dtype=torch.float64)
        if m is not None:
            m += (fc.T @ xc).double()
    weights = [mod.weight.detach().clone() for mod in mods]
    if m is not None:
        hd = h.double() + torch.eye(k, dtype=torch.float64) * cfg.damp * torch.diag(h).double().mean()
        mt = (m / n).T
        for mod, w in zip(mods, weights):
            w_star = torch.linalg.solve(hd, mt @ w.double().T).T
            mod.weight.copy_(w_star.to(mod.weight.dtype))
    return Targets(weights, sum_fp / n, sum_q / n, cfg.bias_correction)


__all__ = ["Targets", "asymmetric_targets"]
