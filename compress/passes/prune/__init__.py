"""Hessian-aware, latency-aware global structural pruning (NViT) with distillation recovery.

    passes:
      prune: {latency_target: 0.5, criterion: hessian, recovery: {steps: 300}}

Modules: ``gates`` (per-sample structure gates), ``saliency`` (Hessian / magnitude / Taylor),
``select`` (latency-aware global greedy), ``remove`` (physical removal with Torch-Pruning),
``latency`` (predicted and measured), ``pruner`` (the pass; distillation recovery from
``compress.distill``), ``report`` (its report section). See docs/pruning.md.
"""
from .pruner import PruneConfig, PrunePass  # noqa: F401
from .remove import Plan, apply_plan  # noqa: F401
