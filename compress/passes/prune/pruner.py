"""The ``prune`` pass: NViT-style global structural pruning to a measured latency target.

Each iteration scores every head, QK/V dim chunk, MLP unit chunk and embedding channel chunk of the
whole model on one scale (``saliency.py``), removes the least loss per millisecond saved until the
iteration's predicted latency budget is met (``select.py``), really removes the weights
(``remove.py``) and recovers by distillation from the unpruned model (``compress.distill``). Budgets go
geometrically from the original to the target; the pruned model is then exported and timed in ONNX
Runtime against the original, and pruned further until the measured ratio meets the target.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Literal

import torch
from pydantic import Field

from ... import ui
from ...errors import UserError
from ...models.vit import VisionTransformer
from ...pipeline.base import Pass, PassConfig, register_pass
from ...recipes.schema import Strict
from ...pruning import compensate, remove, saliency
from .refit import reconstruct
from ...distill import Distiller, TeacherTargets, distill, teacher_outputs
from ...pruning.budget import OrtTimer, Predictor, alignment, best_ms, load, resolve_target
from ...pruning.select import STRUCTURES, Limits, Selector
from .report import section as prune_section

Structure = Literal["heads", "qk", "v", "mlp", "embed"]


class SaliencyConfig(Strict):
    images: int = Field(64, ge=1, le=100_000, description="calibration images the saliency is estimated on")
    batch_size: int = Field(8, ge=1, le=1024)
    first_order: bool = True  # add the distillation-loss gradient term once the model differs from its teacher


class RecoveryConfig(Strict):
    steps: int = Field(200, ge=0, le=1_000_000, description="AdamW steps in all (between and after pruning steps)")
    final_share: float = Field(0.5, ge=0, le=1, description="share of the steps after the last pruning step")
    batch_size: int = Field(16, ge=1, le=1024)
    images: int = Field(4096, ge=1, le=1_000_000, description="distillation images from the recipe's data")
    split: Literal["train", "test"] = "train"
    seed: int = 1
    lr: float = Field(1e-5, gt=0, le=1)
    warmup: float = Field(0.1, ge=0, le=1, description="share of each phase's steps with a linear lr warm-up")
    weight_decay: float = Field(0.0, ge=0, le=1)
    clip: float = Field(1.0, gt=0)
    bf16: bool = True  # autocast matmuls to bfloat16 where the CPU has native support
    cache_teacher: bool = True  # teacher outputs cached on disk (~/.cache/vitforge/prune-teacher)


class ReconstructConfig(Strict):
    enabled: bool = True  # closed-form refit of every proj / fc2 towards the teacher's stream after each step
    images: int = Field(128, ge=1, le=100_000, description="calibration images the least squares are fitted on")
    damp: float = Field(0.01, ge=0, le=1, description="ridge, share of the mean diagonal of E[x x^T]")


class MeasureConfig(Strict):
    enabled: bool = True
    runs: int = Field(12, ge=1, le=10_000)
    threads: int = Field(1, ge=1, le=256)
    tolerance: float = Field(0.02, ge=0, le=1, description="accepted measured overshoot of the target ratio")
    max_rounds: int = Field(3, ge=0, le=20, description="extra pruning rounds when the measurement misses")


class PruneConfig(PassConfig):
    latency_target: float = Field(0.5, gt=0, le=1, description="fraction of the original measured latency")
    criterion: Literal["hessian", "magnitude", "taylor"] = "hessian"
    structures: list[Structure] = Field(default_factory=lambda: list(STRUCTURES), min_length=1)
    target: str | None = Field(None, description="latency model's target (default: the recipe's first, else local)")
    lut: str | None = Field(None, description="latency table path (default: the target's stored table)")
    roofline: bool = Field(False, description="use the analytic roofline even where a measured table exists")
    align: int | None = Field(None, ge=1, le=256, description="width multiple (default: the target's, else 8)")
    iterations: int = Field(4, ge=1, le=100)
    compensate: bool = Field(True, description="least-squares refit of fc2/proj after removing their inputs")
    min_heads: int = Field(1, ge=1, le=64)
    min_embed: float = Field(0.5, gt=0, le=1, description="smallest embedding width, fraction of the original")
    keep_output_width: bool | None = Field(None, description="lift pruned features back (default: models without head)")
    saliency: SaliencyConfig = SaliencyConfig()
    reconstruct: ReconstructConfig = ReconstructConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    measure: MeasureConfig = MeasureConfig()


def widths(cfg) -> dict:
    return {"embed_dim": cfg.embed_dim, "blocks": [[b.num_heads, b.qk_dim, b.v_dim, b.mlp_dim] for b in cfg.blocks]}


@register_pass
class PrunePass(Pass):
    name = "prune"
    Config = PruneConfig
    summary = "NViT global structural pruning (heads, QK/V dims, MLP, embedding) to a measured latency target"
    forbid_after = {"align": "align fits its map to the pruned model"}
    report_section = staticmethod(prune_section)

    def run(self, state, ctx):
        c, model, teacher = self.config, state.model, ctx.reference.model.eval()
        if not isinstance(model, VisionTransformer):
            raise UserError(f"the prune pass works on ViTs (VisionTransformer), not {type(model).__name__}",
                            "prune a ViT/DeiT/DINOv2/CLIP model; Swin's windowed stages are not supported")
        if state.record("align") is not None:
            raise UserError("the prune pass must run before align (align fits its map to the pruned model)",
                            "move passes.align below passes.prune in the recipe")
        t0, c0 = time.time(), time.process_time()
        target, profile = resolve_target(c.target, ctx.targets)
        lm = load(target, c.lut, c.roofline)
        align = alignment(profile, c.align)
        keep_out = remove.needs_restore(model, c.keep_output_width)
        cfg0 = copy.deepcopy(model.cfg)
        out_w = remove.output_width(model) or (cfg0.embed_dim if keep_out else None)
        pred = Predictor(lm, cfg0, out_w)
        pred0 = pred.model(cfg0)
        if not pred0 > 0:
            raise UserError(f"the latency model of {target} ({lm.source}) predicts {pred0:.3g} ms for this model: "
                            "its table does not cover these widths/tokens", "set passes.prune.roofline: true, "
                            f"or extend the table: compress profile --build-lut --target {target}")
        lim = Limits(align, c.min_heads, align, align, max(align, math.ceil(c.min_embed * cfg0.embed_dim / align) * align))
        ui.info(f"    latency model: {target} ({lm.source}), original predicted {pred0:.1f} ms, align {align}")
        self.distiller, self.teacher, self.kept = Distiller(cfg0), teacher, list(range(cfg0.embed_dim))
        # saliency (and the KD loss it reports) is estimated on images the least-squares refit never saw:
        # on its own fitting images the refit looks near-perfect, which would hide later steps' damage
        n_recon = c.reconstruct.images if c.reconstruct.enabled else 0
        batches = ctx.calibration_batches(c.saliency.images + n_recon, c.saliency.batch_size)
        cut = -(-c.saliency.images // c.saliency.batch_size)
        self.calib, self.recon = batches[:cut], (batches[cut:] or None) if n_recon else None
        self.t_calib = teacher_outputs(teacher, self.calib)
        orig = OrtTimer(model, c.measure.threads) if c.measure.enabled else None
        r = c.recovery
        from ...utils.fingerprint import model_fingerprint

        targets = TeacherTargets(teacher, ctx.data(r.split, r.images, seed=r.seed), model_fingerprint(teacher),
                                 ctx.recipe.data.batch_size, disk=r.cache_teacher)
        gen = torch.Generator().manual_seed(r.seed)
        between = round(r.steps * (1 - r.final_share) / (c.iterations - 1)) if c.iterations > 1 else 0
        log = []
        for i in range(1, c.iterations + 1):
            budget = pred0 * c.latency_target ** (i / c.iterations)
            entry = self._step(model, pred, lim, budget, keep_out, seed=r.seed + i)
            if i < c.iterations:
                entry["recovery"] = distill(model, targets, self.distiller, between, r, gen, f"recovery {i}")
            log.append(entry)
        rounds = []
        if orig is not None:
            rounds = self._measure_loop(model, orig, pred, lim, keep_out, log)
        final_steps = max(0, r.steps - between * (c.iterations - 1))
        final = distill(model, targets, self.distiller, final_steps, r, gen, "recovery (final)")
        final["loss_monitor"] = self._monitor(model)
        remove.check_widths(model)
        rec = {"target": target, "latency_source": lm.source, "align": align, "criterion": c.criterion,
               "original": widths(cfg0) | {"predicted_ms": pred0}, "pruned": widths(model.cfg)
               | {"predicted_ms": pred.model(model.cfg)}, "steps": log, "measure_rounds": rounds,
               "recovery": final, "output_width": remove.output_width(model)}
        rec["predicted_ratio"] = rec["pruned"]["predicted_ms"] / pred0
        if rounds:
            last = rounds[-1]
            rec["original"] |= {"measured_ms": last["original_ms"]} | orig.stats()
            rec["pruned"] |= {"measured_ms": last["pruned_ms"]} | last["stats"]
            rec["measured_ratio"] = last["ratio"]
            rec["prediction_error"] = rec["pruned"]["predicted_ms"] / last["pruned_ms"] - 1
            rec["target_met"] = last["ratio"] <= c.latency_target * (1 + c.measure.tolerance)
            orig.close()
        rec |= {"seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}
        return rec

    def _monitor(self, model) -> float:
        """Distillation loss on the saliency images (held out from the reconstruction's fitting set)."""
        with torch.inference_mode():
            return float(torch.cat([self.distiller.loss(model(x), t) for x, t in zip(self.calib, self.t_calib)]).mean())

    def _step(self, model, pred, lim, budget, keep_out, seed) -> dict:
        c = self.config
        before = model.cfg.embed_dim, pred.model(model.cfg)
        embed_output = not keep_out and not isinstance(model.norm, remove.WidthRestore)
        sal = saliency.compute(c.criterion, model, self.calib, self.t_calib, self.distiller, embed_output,
                               c.saliency.first_order, seed)
        loss_before = sal.loss if sal.loss is not None else self._monitor(model)
        plan, stats = Selector(model.cfg, sal, pred, lim, c.structures).run(budget)
        moments = compensate.collect(model, self.calib, remove.consumers(model, plan)) if c.compensate else None
        remove.apply_plan(model, plan, keep_out, moments)
        gone = set(plan.embed)  # current indices -> the teacher's channels the stream still carries
        self.kept = [ch for i, ch in enumerate(self.kept) if i not in gone]
        recon = reconstruct(model, self.teacher, self.recon, self.kept, c.reconstruct.damp) \
            if self.recon is not None and not plan.empty() else None
        entry = {"budget_ms": budget, "predicted_ms_before": before[1], "predicted_ms": pred.model(model.cfg),
                 "met": stats["met"], "removed": plan.counts(), "picks": stats["picks"],
                 "saliency_sum": stats["saliency_sum"],
                 "loss_before": loss_before, "loss_after": self._monitor(model), "widths": widths(model.cfg)}
        if recon is not None:
            entry["stream_error"] = recon["stream_error"]
        ui.info(f"    pruned to {entry['predicted_ms']:.1f} ms predicted (budget {budget:.1f}): "
                f"removed {entry['removed']}, KD loss {loss_before:.4f} -> {entry['loss_after']:.4f}")
        if not stats["met"]:
            ui.info("    budget not reachable within the minimum widths (min_heads, min_embed, alignment)")
        return entry

    def _measure_loop(self, model, orig, pred, lim, keep_out, log) -> list[dict]:
        c, rounds = self.config, []
        for r in range(c.measure.max_rounds + 1):
            timer = OrtTimer(model, c.measure.threads)
            m0, m1 = best_ms([orig, timer], c.measure.runs)
            ratio = m1 / m0
            rounds.append({"original_ms": m0, "pruned_ms": m1, "ratio": ratio, "predicted_ms": pred.model(model.cfg),
                           "stats": timer.stats()})
            timer.close()
            ui.info(f"    measured: {m1:.1f} ms vs original {m0:.1f} ms = {ratio:.3f} (target {c.latency_target})")
            if ratio <= c.latency_target * (1 + c.measure.tolerance) or r == c.measure.max_rounds:
                break
            budget = pred.model(model.cfg) * c.latency_target / ratio
            entry = self._step(model, pred, lim, budget, keep_out, seed=c.recovery.seed + 100 + r)
            entry["correction"] = True
            log.append(entry)
            if not any(entry["removed"].values()):
                break
        return rounds

    @classmethod
    def rebuild(cls, model, record):
        remove.rebuild(model, record)
