"""A second probe task on images no pass saw: fidelity (the fp32 head, unchanged) and capacity (a refitted head).

A user replacing an encoder under an existing head needs its function preserved off the data it was tuned on:
a linear head fitted on the fp32 model's features of another dataset is applied to each artifact's features
(top-1 change and agreement with the fp32 predictions); a head refitted on the artifact's own features of the same
train images measures what the features still carry.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from . import leakage
from .evaluate import Evaluator, cached_features, draw, extract, head_agreement
from .probe import LinearProbe


def _resolved(spec: str) -> str:
    from ..data.catalog import resolve

    return str(Path(resolve(spec).path).resolve())


class OffDomain:
    """``skipped``: why there is no off-domain task (same data as the run's, or not on this machine), else None."""

    def __init__(self, ev: Evaluator, spec: str | None):
        self.ev, self.spec, self.skipped = ev, spec, None
        if not spec:
            self.skipped = "off-domain probe off (evaluation.off_domain is empty)"
            return
        try:
            self.dataset = _resolved(spec)
            run = _resolved(ev.data.path)
        except UserError as e:
            self.skipped = f"off-domain data {spec!r} unavailable: {e.message}"
            return
        if self.dataset == run:
            self.skipped = (f"off-domain probe skipped: {spec} is the data this run used ({run}), so it is not "
                            "off the calibration domain; set evaluation.off_domain to another dataset")
            return
        cfg, vit = ev.cfg, ev.vit
        passes = [s for s in ev.sets if not s["evaluation"]]
        self.train = draw(spec, "train", cfg.off_domain_train or cfg.probe_train, cfg.seed, vit,
                          leakage.excluded(passes, self.dataset, "train"), top_up=True)
        self.test = draw(spec, "test", cfg.off_domain_test or cfg.test, cfg.seed, vit,
                         leakage.excluded(passes, self.dataset, "test"))
        ev.sets += [leakage.entry("off-domain train", self.dataset, "train", self.train.indices, True),
                    leakage.entry("off-domain test", self.dataset, "test", self.test.indices, False)]
        bs = ev.data.batch_size
        self.ref_train = cached_features(ev.reference, ev.key, f"{self.dataset}|train", self.train, bs,
                                         f"fp32 features ({spec} train)")
        self.ref_test = cached_features(ev.reference, ev.key, f"{self.dataset}|test", self.test, bs,
                                        f"fp32 features ({spec} test)")
        self.classes = len(self.train.source.classes)
        self.head = LinearProbe.fit(self.ref_train.pooled, self.ref_train.labels, self.classes)
        self.reference_top1 = self._top1(self.head, self.ref_test.pooled)

    def _top1(self, head: LinearProbe, feats: torch.Tensor) -> float:
        return float((head.logits(feats).argmax(1) == self.ref_test.labels).double().mean()) * 100

    def describe(self) -> dict:
        if self.skipped:
            return {"skipped": self.skipped}
        return {"dataset": self.spec, "path": self.dataset, "train_images": len(self.train),
                "test_images": len(self.test), "reference_top1": self.reference_top1, "l2": self.head.l2}

    def score(self, runner, name: str) -> dict:
        ev = self.ev
        prefix, bs = ev.vit.num_prefix_tokens, ev.data.batch_size
        test = extract(runner, self.test, bs, prefix, f"{self.spec} test features {name}")
        train = extract(runner, self.train, bs, prefix, f"{self.spec} train features {name}")
        refit = LinearProbe.fit(train.pooled, train.labels, self.classes, l2=self.head.l2)
        top1_refit = self._top1(refit, test.pooled)
        out = {"images": len(test.labels), "top1_refit": top1_refit, "delta_top1_refit": top1_refit - self.reference_top1}
        if test.pooled.shape[1] == self.ref_test.pooled.shape[1]:
            pred, ref_pred = self.head.logits(test.pooled).argmax(1), self.head.logits(self.ref_test.pooled).argmax(1)
            top1 = self._top1(self.head, test.pooled)
            out |= {"top1": top1, "delta_top1": top1 - self.reference_top1,
                    "agreement": float((pred == ref_pred).double().mean()) * 100}
        else:
            out["note"] = (f"features are {test.pooled.shape[1]}-d, the fp32 head reads "
                           f"{self.ref_test.pooled.shape[1]}-d: only a refitted head applies")
        head = head_agreement(test.pooled, self.ref_test.pooled, ev.vit.num_classes)
        if head is not None:
            out["head_agreement"] = head
        return out


__all__ = ["OffDomain"]
