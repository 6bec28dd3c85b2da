"""Which images each stage saw: every set recorded (indices, hash), evaluation sets drawn disjoint by construction.

Passes draw through ``RunContext.data`` (recorded per pass in its checkpoint's config.json as ``data_draws``);
the evaluator draws its test sets and its heads' train sets excluding every image a pass drew from the same
dataset and split (a head's train set is topped up with pass images only when the split has too few others, and
the report says so). ``check`` fails the run when an image that is scored was also fitted or tuned on.
"""
from __future__ import annotations

import base64
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from ..errors import UserError


class LeakageError(UserError):
    """An evaluation image was also seen by a pass or by a head's fitting (exit 2: the recipe's data overlaps)."""


def pack(indices) -> str:
    """Sorted indices -> base64(zlib(uint32 deltas)): a few KB for thousands of images."""
    idx = np.unique(np.asarray(indices, dtype=np.int64))
    return base64.b64encode(zlib.compress(np.diff(idx, prepend=0).astype("<u4").tobytes(), 9)).decode()


def unpack(packed: str) -> np.ndarray:
    return np.cumsum(np.frombuffer(zlib.decompress(base64.b64decode(packed)), "<u4").astype(np.int64))


def digest(indices) -> str:
    return hashlib.sha256(np.unique(np.asarray(indices, dtype=np.int64)).astype("<u4").tobytes()).hexdigest()


def entry(role: str, dataset: str, split: str, indices, fits: bool) -> dict:
    """One evaluation image set. ``fits``: a head is fitted on it (a probe's train set); else it is scored."""
    idx = np.unique(np.asarray(indices, dtype=np.int64))
    return {"role": role, "dataset": dataset, "split": split, "count": int(len(idx)), "fits": fits,
            "evaluation": True, "sha256": digest(idx), "indices": pack(idx)}


def pack_draws(draws: list[dict]) -> list[dict]:
    """``RunContext.draws`` (role, split, indices) in the checkpoint's JSON form."""
    return [{"role": d["role"], "split": d["split"], "count": int(len(d["indices"])),
             "sha256": digest(d["indices"]), "indices": pack(d["indices"])} for d in draws]


def pass_sets(run_dir: Path | None, dataset: str) -> tuple[list[dict], list[str]]:
    """Image sets the run's passes drew (from each pass checkpoint's ``data_draws``), and the passes that did not
    record theirs (checkpoints written before this was recorded)."""
    sets, unknown = [], []
    folders = sorted((Path(run_dir) / "passes").glob("*/config.json")) if run_dir else []
    for f in folders:
        try:
            meta = json.loads(f.read_text())
        except (OSError, ValueError):
            unknown.append(f.parent.name)
            continue
        if "data_draws" not in meta:
            unknown.append(meta.get("pass") or f.parent.name)
            continue
        for d in meta["data_draws"]:
            sets.append({"role": f"{meta.get('pass') or f.parent.name} ({d['role']})", "dataset": dataset,
                         "split": d["split"], "count": d["count"], "fits": True, "evaluation": False,
                         "sha256": d["sha256"], "indices": d["indices"]})
    return sets, unknown


def excluded(sets: list[dict], dataset: str, split: str) -> np.ndarray:
    """Every index recorded for ``dataset``/``split``."""
    parts = [unpack(s["indices"]) for s in sets if s["dataset"] == dataset and s["split"] == split]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def overlaps(sets: list[dict]) -> list[dict]:
    """Every pair of sets in the same dataset and split that share images, when one of them was fitted on; ``leak``:
    the other is scored (an evaluation test set). Two fitted sets sharing images is reuse, recorded, not leakage."""
    out, idx = [], [set(unpack(s["indices"]).tolist()) for s in sets]
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            b = sets[j]
            if (a["dataset"], a["split"]) != (b["dataset"], b["split"]) or not (a["fits"] or b["fits"]):
                continue
            n = len(idx[i] & idx[j])
            if n:
                out.append({"a": a["role"], "b": b["role"], "dataset": a["dataset"], "split": a["split"],
                            "images": n, "leak": not (a["fits"] and b["fits"])})
    return out


def check(sets: list[dict]) -> list[dict]:
    """The overlaps; raises LeakageError when a scored set shares images with a set that was fitted on."""
    found = overlaps(sets)
    bad = [o for o in found if o["leak"]]
    if bad:
        o = bad[0]
        raise LeakageError(f"{o['a']} and {o['b']} share {o['images']} {o['split']} images of {o['dataset']}"
                           + (f" (and {len(bad) - 1} more overlapping pair(s))" if len(bad) > 1 else ""),
                           "draw the passes' data from another split or a smaller count so that the evaluation "
                           "can use images nothing was fitted on")
    return found


__all__ = ["LeakageError", "check", "digest", "entry", "excluded", "overlaps", "pack", "pack_draws", "pass_sets",
           "unpack"]
