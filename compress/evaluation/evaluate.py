"""The evaluator: reference features and probe computed once (cached), then every variant scored the same way.

Scores: top-1 (probe or the model's own head), agreement with the fp32 model's predictions,
feature cosine to the fp32 features, per-block SQNR (PyTorch models), size, parameters
and FLOPs from the exported graph, 1-thread latency.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import ui
from ..data import Preprocess, Subset, balanced_indices, batches, open_source
from ..recipes.schema import DataConfig, EvaluationConfig
from ..utils.io import cache_dir
from . import leakage
from ..models.pooling import pooled
from ..utils.fingerprint import model_fingerprint
from .probe import LinearProbe


@dataclass
class Features:
    pooled: torch.Tensor  # [N, F] what the probe sees
    labels: torch.Tensor


def extract(runner, ds: Subset, batch_size: int, num_prefix: int, desc: str) -> Features:
    feats = []
    for x, _ in ui.progress(batches(ds, batch_size), total=(len(ds) + batch_size - 1) // batch_size,
                            desc=desc, unit="batch"):
        feats.append(pooled(runner(x), num_prefix).float())
    return Features(torch.cat(feats), torch.as_tensor(ds.labels))


def draw(spec: str, split: str, count: int, seed: int, cfg, exclude: np.ndarray | None = None,
         top_up: bool = False) -> Subset:
    """``count`` class-balanced images of ``split`` that are not in ``exclude`` (with nothing excluded: exactly
    ``load_subset``'s images); ``top_up``: when fewer remain, add excluded ones up to ``count``."""
    src = open_source(spec, split)
    every = np.arange(len(src.labels))
    allowed = np.setdiff1d(every, exclude) if exclude is not None and len(exclude) else every
    pick = allowed[balanced_indices(src.labels[allowed], count, seed)]
    if top_up and len(pick) < min(count, len(every)):
        rest = np.setdiff1d(every, pick)
        pick = np.sort(np.concatenate([pick, rest[balanced_indices(src.labels[rest], count - len(pick), seed)]]))
    return Subset(src, pick, Preprocess.from_config(cfg))


def cached_features(reference: torch.nn.Module, key: str, where: str, ds: Subset, batch_size: int, desc: str) -> Features:
    """The fp32 model's features of ``ds`` (``where``: its data spec and split), cached on disk by model fingerprint,
    source, images and preprocessing."""
    from ..runtime import TorchRunner

    tag = hashlib.sha256(f"{key}|{ds.source.__class__.__name__}|{getattr(ds.source, 'root', where)}|{where}|"
                         f"{leakage.digest(ds.indices)}|{ds.preprocess}".encode()).hexdigest()[:20]
    path = cache_dir("features") / f"{tag}.safetensors"
    if path.is_file():
        from ..models.checkpoint import load_state_dict
        from ..errors import UserError

        try:
            t = load_state_dict(path)
            return Features(t["pooled"], t["labels"])
        except UserError:
            pass
    f = extract(TorchRunner(reference), ds, batch_size, reference.cfg.num_prefix_tokens, desc)
    from safetensors.torch import save_file

    from ..utils.io import atomic_path

    with atomic_path(path) as tmp:
        save_file({"pooled": f.pooled.contiguous(), "labels": f.labels.contiguous()}, str(tmp))
    return f


def head_agreement(out: torch.Tensor, ref: torch.Tensor, num_classes: int) -> float | None:
    """Share (%) of images where the model's own classifier head picks the fp32 model's class; None without one."""
    if not num_classes or out.ndim != 2 or out.shape[1] != num_classes:
        return None
    return float((out.argmax(1) == ref.argmax(1)).double().mean()) * 100


class Evaluator:
    """Scores runners (PyTorch models or artifacts) against the fp32 reference model."""

    def __init__(self, reference: torch.nn.Module, data: DataConfig, cfg: EvaluationConfig, run_dir: Path | None = None,
                 seen: list[dict] | None = None, dataset: str | None = None):
        """``seen``: image sets the passes drew (``leakage.pass_sets``), recorded under ``dataset``; every set the
        evaluator draws from the recipe's data excludes them, and is recorded in ``self.sets``."""
        self.reference, self.data, self.cfg = reference.eval(), data, cfg
        self.run_dir = run_dir
        self.dataset = dataset or data.path
        self.sets: list[dict] = list(seen or [])
        self._drawn: dict[tuple, Subset] = {}
        self.vit = reference.cfg
        self.key = model_fingerprint(reference)
        self._test: Subset | None = None
        self.probe: LinearProbe | None = None
        self.ref_test: Features | None = None
        self.method = cfg.method

    # -- reference features and probe -------------------------------------------------
    def subset(self, split: str, count: int, role: str | None = None, fits: bool = False) -> Subset:
        """Images of the recipe's data that no pass drew; ``role``: record the set (``fits``: a head is fitted on it)."""
        key = (split, count, fits)
        if key not in self._drawn:
            self._drawn[key] = draw(self.data.path, split, count, self.cfg.seed, self.vit, leakage.excluded(
                [s for s in self.sets if not s["evaluation"]], self.dataset, split), top_up=fits)
        ds = self._drawn[key]
        if not len(ds):
            raise leakage.LeakageError(f"every {split} image of {self.data.path} was drawn by a pass: none is left "
                                       "to evaluate on", "draw the passes' data from another split or fewer images")
        if role and not any(s["role"] == role for s in self.sets):
            self.sets.append(leakage.entry(role, self.dataset, split, ds.indices, fits))
        return ds

    def _cached_features(self, split: str, count: int, role: str, fits: bool = False) -> Features:
        return cached_features(self.reference, self.key, f"{self.data.path}|{split}", self.subset(split, count, role, fits),
                               self.data.batch_size, f"fp32 features ({split})")

    def prepare(self) -> None:
        if self.ref_test is not None:
            return
        self._test = self.subset("test", self.cfg.test, "probe test")
        classes = len(self._test.source.classes)
        if self.method == "auto":
            self.method = "classifier" if self.vit.num_classes == classes else "probe"
        self.ref_test = self._cached_features("test", self.cfg.test, "probe test")
        if self.method == "probe":
            probe_path = self.run_dir / "probe.safetensors" if self.run_dir else None
            if probe_path and probe_path.is_file():
                self.probe = LinearProbe.load(probe_path)
            else:
                train = self._cached_features("train", self.cfg.probe_train, "probe train", fits=True)
                ui.info(f"training linear probe on {len(train.labels)} fp32 feature vectors")
                self.probe = LinearProbe.fit(train.pooled, train.labels, classes)
                if probe_path:
                    self.probe.save(probe_path)

    @property
    def refits(self) -> bool:
        """Whether scores include a probe refitted on each variant's own features."""
        self.prepare()
        return self.method == "probe" and self.cfg.probe_refit

    def _predict(self, f: torch.Tensor) -> torch.Tensor:
        return (self.probe.logits(f) if self.method == "probe" else f).argmax(1)

    @property
    def reference_top1(self) -> float:
        self.prepare()
        return float((self._predict(self.ref_test.pooled) == self.ref_test.labels).double().mean()) * 100

    # -- scoring ------------------------------------------------------------------------
    def score(self, runner, name: str) -> dict:
        self.prepare()
        f = extract(runner, self._test, self.data.batch_size, self.vit.num_prefix_tokens, f"evaluating {name}")
        pred, ref_pred = self._predict(f.pooled), self._predict(self.ref_test.pooled)
        cos = torch.nn.functional.cosine_similarity(f.pooled.double(), self.ref_test.pooled.double(), dim=1)
        top1 = float((pred == f.labels).double().mean()) * 100
        out = {"top1": top1, "delta_top1": top1 - self.reference_top1,
               "agreement": float((pred == ref_pred).double().mean()) * 100,
               "feature_cosine": float(cos.mean()), "feature_cosine_min": float(cos.min()),
               "images": len(f.labels), "method": self.method}
        head = head_agreement(f.pooled, self.ref_test.pooled, self.vit.num_classes)
        if head is not None:
            out["head_agreement"] = head
        if self.refits:
            out |= self.refit(runner, name, f)
        return out

    def refit(self, runner, name: str, test: Features) -> dict:
        """Top-1 of a probe fitted on the runner's own features of the same train images, with the fp32
        probe's procedure and L2 strength: the linear-probe score of the changed encoder itself. (Picking
        L2 again per variant on the 400-image held-out fifth moved scores by up to 3 points.)"""
        train = extract(runner, self.subset("train", self.cfg.probe_train, fits=True), self.data.batch_size,
                        self.vit.num_prefix_tokens, f"probe features {name}")
        probe = LinearProbe.fit(train.pooled, train.labels, len(self._test.source.classes), l2=self.probe.l2)
        top1 = float((probe.logits(test.pooled).argmax(1) == test.labels).double().mean()) * 100
        return {"top1_refit": top1, "delta_top1_refit": top1 - self.reference_top1, "probe_refit_l2": probe.l2}

    def fidelity_images(self) -> torch.Tensor:
        ds = self.subset("test", self.cfg.fidelity_images)
        return torch.stack([ds[i][0] for i in range(len(ds))])


def block_sqnr(reference: torch.nn.Module, model: torch.nn.Module, images: torch.Tensor) -> list[float] | None:
    """SQNR (dB) of each block's output vs the reference; None when widths differ (pruned embedding)."""
    outs: dict[str, list] = {"ref": [], "new": []}

    def hook(tag):
        return lambda _m, _i, o: outs[tag].append(o.detach().double())

    hs = [b.register_forward_hook(hook("ref")) for b in reference.blocks]
    hs += [b.register_forward_hook(hook("new")) for b in model.blocks]
    try:
        with torch.inference_mode():
            reference(images)
            model(images)
    finally:
        for h in hs:
            h.remove()
    if len(outs["ref"]) != len(outs["new"]) or any(a.shape != b.shape for a, b in zip(outs["ref"], outs["new"])):
        return None
    return [float(10 * torch.log10(a.pow(2).sum() / (a - b).pow(2).sum().clamp_min(1e-30))) for a, b in
            zip(outs["ref"], outs["new"])]


__all__ = ["Evaluator", "block_sqnr", "cached_features", "draw", "extract", "head_agreement"]
