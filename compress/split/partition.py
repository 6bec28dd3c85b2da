"""Class partition for ED-ViT splitting: C classes into K balanced subsets, one per sub-model.

The rule (``similar``): confusable classes go to the same part, so each sub-model is the one that
has to tell them apart (and the fusion head rarely has to arbitrate between parts on a hard pair).

* similarity S (C x C, symmetric, diagonal ignored): the cosine similarity of the teacher's class-mean
  features (``similarity_from_features``), or the symmetrised, row-normalised confusion matrix on
  calibration images (``similarity_from_confusion``);
* sizes: the first ``C mod K`` parts hold ceil(C/K) classes, the others floor(C/K) (they differ by at most 1);
* greedy growth: part after part, the seed is the unassigned class with the largest summed similarity to
  the other unassigned classes; the part then takes, one at a time, the unassigned class with the largest
  summed similarity to its members (ties: the lowest class index);
* refinement: swaps of two classes between two parts while one raises the total within-part similarity
  (best swap first, at most ``max_swaps``); swaps keep the sizes.

Deterministic: the same S gives the same partition. ``random_partition`` (seeded) is the comparison.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError


def part_sizes(classes: int, parts: int) -> list[int]:
    if not 1 <= parts <= classes:
        raise UserError(f"cannot split {classes} classes into {parts} parts", f"use 1..{classes} parts")
    q, r = divmod(classes, parts)
    return [q + 1 if k < r else q for k in range(parts)]


def similarity_from_features(features: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Cosine similarity of class-mean features ([N, D] features, [N] labels in 0..classes-1)."""
    f = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    missing = sorted(set(range(classes)) - set(labels.tolist()))
    if missing:
        raise UserError(f"no calibration image of class {missing[0]}", "use more calibration images per class")
    means = np.stack([f[labels == c].mean(0) for c in range(classes)])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return means @ means.T


def similarity_from_confusion(pred: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Symmetrised confusion: S[a, b] = (P(pred b | a) + P(pred a | b)) / 2 on calibration images."""
    m = np.zeros((classes, classes))
    np.add.at(m, (np.asarray(labels), np.asarray(pred)), 1.0)
    m /= np.maximum(m.sum(1, keepdims=True), 1.0)
    return (m + m.T) / 2


def within_similarity(sim: np.ndarray, parts: list[list[int]]) -> float:
    """Sum over parts of the similarity between distinct members (the objective the rule raises)."""
    s = np.asarray(sim, np.float64)
    return float(sum(s[np.ix_(p, p)].sum() - np.trace(s[np.ix_(p, p)]) for p in parts) / 2)


def partition_classes(sim: np.ndarray, parts: int, max_swaps: int = 1000) -> list[list[int]]:
    """K balanced class subsets grouping similar classes (module docstring); each sorted."""
    s = np.array(sim, np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or not np.isfinite(s).all():
        raise UserError(f"class similarity must be a finite square matrix, not shape {s.shape}",
                        "compute it with similarity_from_features or similarity_from_confusion")
    s = (s + s.T) / 2
    np.fill_diagonal(s, 0.0)
    C = s.shape[0]
    free = list(range(C))
    out: list[list[int]] = []
    for size in part_sizes(C, parts):
        seed = max(free, key=lambda c: (s[c, free].sum(), -c))
        members = [seed]
        free.remove(seed)
        while len(members) < size:
            nxt = max(free, key=lambda c: (s[c, members].sum(), -c))
            members.append(nxt)
            free.remove(nxt)
        out.append(members)
    return [sorted(p) for p in _refine(s, out, max_swaps)]


def _refine(s: np.ndarray, parts: list[list[int]], max_swaps: int) -> list[list[int]]:
    """Best-improvement swaps between parts until none raises the within-part similarity."""
    parts = [list(p) for p in parts]
    for _ in range(max_swaps):
        r = np.stack([s[:, p].sum(1) for p in parts], 1)  # r[c, k]: similarity of class c to part k
        best, move = 1e-12, None
        for i in range(len(parts)):
            a = np.asarray(parts[i])
            for j in range(i + 1, len(parts)):
                b = np.asarray(parts[j])
                # gain of swapping a (in i) with b (in j); s[a, b] is counted in r[b, i] and r[a, j] once each
                gain = (r[b, i][None, :] - r[a, i][:, None] + r[a, j][:, None] - r[b, j][None, :]
                        - 2 * s[np.ix_(a, b)])
                k = int(np.argmax(gain))
                if gain.flat[k] > best:
                    best, move = float(gain.flat[k]), (i, j, int(a[k // len(b)]), int(b[k % len(b)]))
        if move is None:
            break
        i, j, a, b = move
        parts[i][parts[i].index(a)] = b
        parts[j][parts[j].index(b)] = a
    return parts


def random_partition(classes: int, parts: int, seed: int = 0) -> list[list[int]]:
    """The comparison: a seeded random permutation cut into the same balanced sizes."""
    perm = np.random.default_rng(seed).permutation(classes).tolist()
    out, at = [], 0
    for size in part_sizes(classes, parts):
        out.append(sorted(perm[at:at + size]))
        at += size
    return out
