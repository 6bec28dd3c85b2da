"""Hessian-aware, latency-aware global structural pruning (NViT) with distillation recovery.

    passes:
      prune: {latency_target: 0.5, criterion: hessian, recovery: {steps: 300}}

The structural-pruning core lives below the passes in ``compress.pruning`` (``gates``, ``saliency``,
``select``, ``remove``, ``compensate``, ``budget``), shared with the passes that prune sub-networks
(ED-ViT split, TinyCLIP inheritance). Here: ``pruner`` (the pass; distillation recovery from
``compress.distill``), ``reconstruct`` and ``report`` (its report section). See docs/pruning.md.
"""
from .pruner import PruneConfig, PrunePass  # noqa: F401
from ...pruning.remove import Plan, apply_plan  # noqa: F401
