"""Structural pruning core, below the passes (as Torch-Pruning's core: dependency graph, importance, pruner).

``gates`` (per-sample structure gates), ``saliency`` (Hessian / magnitude / Taylor importance of every
head, QK/V dim, MLP unit and embedding channel group), ``select`` (latency-aware global greedy selection),
``remove`` (physical removal with Torch-Pruning's dependency graph), ``compensate`` (least-squares refit of
a layer whose inputs were removed), ``budget`` (predicted and measured latency of a pruned structure),
``masks`` (structure masks: the masked computation, learnable hard-concrete L0 masks) and ``inherit`` (TinyCLIP
weight inheritance to a parameter budget). Used by the ``prune`` pass and by passes that carve sub-networks
(ED-ViT ``split``, TinyCLIP ``distill``).
"""
