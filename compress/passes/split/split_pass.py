"""The ``split`` pass (ED-ViT): K class-wise sub-models, each pruned to its budget, fused by an MLP.

    passes:
      split: {parts: 4, partition: similarity, budget: {params: 1.3}}

1. partition: the C classes into K balanced parts from the teacher's class similarity on calibration images
   (``compress.split.partition``; ``random``: a seeded random partition, the comparison);
2. per part (seeded, independent of the other parts): class-restricted Hessian saliency (``class_saliency``),
   latency-aware selection and physical removal (``compress.pruning``) to the part's budget, distillation from
   the unsplit model on the part's images between and after removal rounds (``compress.distill``), then more
   removal rounds while its parameters exceed ``budget.params`` x original / K;
3. the fusion head on the parts' outputs on held-out training images (``compress.split.fusion``);
4. device assignment when the recipe lists several targets (``compress.split.assign``);
5. the deployment bundle in ``artifacts/split/`` (one ONNX per part, the head, ``split.json`` with sha256s),
   each ONNX verified against its PyTorch sub-model.

The model state the pipeline carries on is the unsplit model, unchanged: split must be the last pass.
"""
from __future__ import annotations

import copy
import math
import shutil
import time

import numpy as np
import torch

from ... import ui
from ...data import Subset, balanced_indices
from ...distill import Distiller, TeacherTargets, distill
from ...errors import UserError, VerificationError
from ...models.pooling import pooled
from ...models.vit import VisionTransformer
from ...pipeline.base import Pass, register_pass
from ...pruning import compensate, remove
from ...pruning.budget import Predictor, alignment, load, resolve_target
from ...pruning.select import Limits, Selector
from ...split import partition as part_rule
from ...split.fusion import assemble, train_fusion
from ...split.saliency import ClassRestricted, class_batches, class_saliency
from ...split.submodel import PartModel, fit_probe, params, rows
from ...utils.io import sha256_file, sha256_json
from .config import SplitConfig
from .export import export_split
from .report import section as split_section

BUNDLE = "artifacts/split"


def _outputs(module, images: torch.Tensor, bs: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([module(x).float() for x in images.split(bs)])


def _stack(ds) -> tuple[torch.Tensor, np.ndarray]:
    return torch.stack([ds[i][0] for i in range(len(ds))]), np.asarray(ds.labels)


def _sub(ds, pos) -> Subset:
    return Subset(ds.source, np.asarray(ds.indices)[np.asarray(pos, dtype=np.int64)], ds.preprocess)


class _PartTimer:
    """A part's ONNX in ONNX Runtime (1 thread) on one fixed image: ``run`` for ``best_ms``."""

    def __init__(self, path, size: int):
        from ...runtime import ort_session

        self.session = ort_session(path, 1)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).numpy()
        self.feed = {self.session.get_inputs()[0].name: x}

    def run(self) -> None:
        self.session.run(None, self.feed)


@register_pass
class SplitPass(Pass):
    name = "split"
    Config = SplitConfig
    summary = "ED-ViT: class-wise sub-models pruned per part, fused by an MLP, deployed as a bundle"
    forbid_after = {"split": "one split per recipe (it writes one deployment bundle)"}
    exporter = staticmethod(export_split)  # the bundle is built beside the (unsplit) float graph
    last = "split deploys the parts it carved; a later pass would change the unsplit model, not the parts"
    report_section = staticmethod(split_section)

    def run(self, state, ctx):
        c = self.config
        model0, teacher = state.model, ctx.reference.model.eval()
        if not isinstance(model0, VisionTransformer):
            raise UserError(f"the split pass works on ViTs (VisionTransformer), not {type(model0).__name__}",
                            "split a ViT/DeiT/DINOv2/CLIP image model")
        t0, c0 = time.time(), time.process_time()
        cfg0 = copy.deepcopy(model0.cfg)
        calib = ctx.calibration(c.saliency.images)
        C = len(calib.source.classes)
        if c.parts > C:
            raise UserError(f"passes.split.parts is {c.parts} but the data has {C} classes",
                            f"use 2..{C} parts")
        headless = cfg0.num_classes == 0 or cfg0.global_pool == "none"
        if not headless and cfg0.num_classes != C:
            raise UserError(f"the model's head has {cfg0.num_classes} classes, the data {C}",
                            "split a headless encoder (probe protocol) or a classifier of the data's classes")
        x_cal, y_cal = _stack(calib)
        bs = c.saliency.batch_size
        t_cal = _outputs(teacher, x_cal, bs)
        nprefix = cfg0.num_prefix_tokens

        # 1. the partition
        if c.partition == "similarity":
            sim = part_rule.similarity_from_features(pooled(t_cal, nprefix).numpy(), y_cal, C)
            classes = part_rule.partition_classes(sim, c.parts)
        else:
            sim = None
            classes = part_rule.random_partition(C, c.parts, c.seed)
        ui.info(f"    partition ({c.partition}): " + " | ".join(",".join(map(str, p)) for p in classes))

        # training images: fusion images held out (class-balanced) from the recovery / probe pool
        need = max(c.recovery.images, c.probe.images if headless else 0) + c.fusion.images
        train = ctx.data("train", need, seed=c.seed, role="split")
        n_fus = min(c.fusion.images, len(train) // 2)
        fus_pos = balanced_indices(np.asarray(train.labels), n_fus, c.seed + 7)
        pool_pos = np.setdiff1d(np.arange(len(train)), fus_pos)
        pool, fus = _sub(train, pool_pos), _sub(train, fus_pos)

        # the probe protocol: one linear probe on the teacher's pooled features (headless encoders)
        probe, x_probe, y_probe = None, None, None
        if headless:
            pp = _sub(pool, balanced_indices(np.asarray(pool.labels), c.probe.images, c.seed + 11))
            x_probe, y_probe = _stack(pp)
            probe = fit_probe(pooled(_outputs(teacher, x_probe, bs), nprefix), y_probe, C, c.probe.epochs,
                              c.probe.lr, seed=c.seed)
        orig_params = params(model0) + (params(probe) if probe is not None else 0)
        part_budget = c.budget.params * orig_params / c.parts

        target, profile = resolve_target(c.target, ctx.targets, "split")
        lm = load(target, None, c.roofline)
        align = alignment(profile, c.align)
        lim = Limits(align, c.min_heads, align, align, max(align, math.ceil(c.min_embed * cfg0.embed_dim / align) * align))
        from ...utils.fingerprint import model_fingerprint

        fp = model_fingerprint(teacher)
        parts, recs = [], []
        for k, cls in enumerate(classes):
            ui.info(f"    part {k}: classes {cls}")
            module, rec = self._part(k, cls, model0, teacher, probe, x_cal, y_cal, pool, x_probe, y_probe, C,
                                     lm, lim, part_budget, fp)
            parts.append(module)
            recs.append(rec)

        # 3. the fusion head on held-out training images
        x_fus, y_fus = _stack(fus)
        outs = [_outputs(m, x_fus, bs).numpy() for m in parts]
        head = train_fusion(outs, y_fus, C, c.fusion.hidden, c.fusion.epochs, c.fusion.lr,
                            part_dropout=c.fusion.part_dropout, seed=c.seed)
        with torch.inference_mode():
            fused = head(torch.from_numpy(assemble(outs, [o.shape[1] for o in outs], len(y_fus)))).argmax(1).numpy()
        fusion_rec = {"images": len(y_fus), "hidden": c.fusion.hidden, "train_top1": float((fused == y_fus).mean()),
                      "note": "top-1 on the fusion head's own training images (not an accuracy claim)"}

        # 4. device assignment
        plan = self._assign(ctx, parts, recs)

        # 5. the bundle, verified
        rec = {"classes": C, "class_names": list(calib.source.classes), "partition": classes,
               "partition_rule": c.partition, "within_similarity": part_rule.within_similarity(sim, classes)
               if sim is not None else None, "probe_protocol": headless, "target": target,
               "latency_source": lm.source, "align": align, "original": {"params": orig_params,
               "predicted_ms": Predictor(lm, cfg0, None).model(cfg0)}, "part_budget_params": part_budget,
               "parts": recs, "fusion": fusion_rec, "plan": plan.to_dict() if plan is not None else None}
        rec |= self._bundle(ctx, parts, classes, head, cfg0, plan, x_cal[:c.deploy.verify_images], rec)
        if c.deploy.measure_runs:
            rec["measured"] = self._measure(model0, ctx.run_dir / BUNDLE, len(parts), cfg0.img_size)
        rec |= {"seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}
        return rec

    # -- per part ---------------------------------------------------------------------------------------------
    def _part(self, k, cls, model0, teacher, probe, x_cal, y_cal, pool, x_probe, y_probe, C, lm, lim, budget_p, fp):
        c, r = self.config, self.config.recovery
        seed = c.seed + 1000 * k
        sub = copy.deepcopy(model0).eval()
        cfg0 = copy.deepcopy(sub.cfg)
        keep_out = remove.needs_restore(sub, None)
        pred = Predictor(lm, cfg0, remove.output_width(sub) or (cfg0.embed_dim if keep_out else None))
        pred0 = pred.model(cfg0)
        head_p = (lambda m: params(m) + len(cls) * (probe.in_features + 1)) if probe is not None else params
        frac = c.budget.latency or min(1.0, c.budget.params / c.parts)
        # recovery on the part's images: feature KD for encoders, KL on the part's logits for classifiers
        keep = np.flatnonzero(np.isin(np.asarray(pool.labels), cls))
        ds = _sub(pool, keep[: r.images])
        dist = Distiller(cfg0) if probe is not None else ClassRestricted(cls)
        targets = TeacherTargets(teacher, ds, fp, r.batch_size, disk=r.cache_teacher)
        gen = torch.Generator().manual_seed(seed)
        between = r.steps // (c.budget.iterations + 1)
        batches = class_batches(x_cal, y_cal, cls, c.saliency.batch_size)
        steps, recov = [], []

        def prune_to(budget_ms, i):
            embed_output = not keep_out and not isinstance(sub.norm, remove.WidthRestore)
            sal = class_saliency(sub, teacher, cls, x_cal, y_cal, probe, c.saliency.batch_size, embed_output,
                                 seed=seed + i)
            plan, _ = Selector(sub.cfg, sal, pred, lim, c.structures).run(budget_ms)
            moments = compensate.collect(sub, batches, remove.consumers(sub, plan)) if c.compensate else None
            remove.apply_plan(sub, plan, keep_out, moments)
            steps.append({"budget_ms": budget_ms, "predicted_ms": pred.model(sub.cfg), "removed": plan.counts(),
                          "params": head_p(sub)})
            return not plan.empty()

        for i in range(1, c.budget.iterations + 1):
            prune_to(pred0 * frac ** (i / c.budget.iterations), i)
            if i < c.budget.iterations:
                recov.append(distill(sub, targets, dist, between, r, gen, f"part {k} recovery {i}"))
        for j in range(c.budget.extra_rounds):
            if head_p(sub) <= budget_p:
                break
            if not prune_to(pred.model(sub.cfg) * 0.97 * budget_p / head_p(sub), 100 + j):
                break
        final = distill(sub, targets, dist, r.steps - between * (c.budget.iterations - 1), r, gen,
                        f"part {k} recovery (final)")
        remove.check_widths(sub)
        head = None
        if probe is not None:
            full = fit_probe(pooled(_outputs(sub, x_probe, c.saliency.batch_size), cfg0.num_prefix_tokens), y_probe,
                             C, c.probe.epochs, c.probe.lr, seed=seed) if c.probe.refit else probe
            head = rows(full, cls)
        module = PartModel(sub, cls, head, cfg0.num_prefix_tokens).eval()
        n = params(module)
        ui.info(f"    part {k}: {n / 1e6:.3f} M parameters (budget {budget_p / 1e6:.3f} M), "
                f"{pred.model(sub.cfg):.2f} ms predicted (original {pred0:.2f})")
        return module, {"index": k, "classes": cls, "params": n, "params_ok": n <= budget_p,
                        "predicted_ms": pred.model(sub.cfg), "original_predicted_ms": pred0,
                        "widths": {"embed_dim": sub.cfg.embed_dim, "blocks": [[b.num_heads, b.qk_dim, b.v_dim, b.mlp_dim]
                                                                              for b in sub.cfg.blocks]},
                        "output_width": remove.output_width(sub), "images": len(ds), "steps": steps,
                        "recovery": recov + [final]}

    def _assign(self, ctx, parts, recs):
        if len(ctx.targets) < 2:
            return None
        from ...split.assign import make_device, plan_parts

        names, devices = [], []
        for i, t in enumerate(ctx.targets):
            name = t["name"] if [x["name"] for x in ctx.targets].count(t["name"]) == 1 else f"{t['name']}-{i}"
            names.append(name)
            devices.append(make_device(name, t["name"]))
        plan = plan_parts([m.encoder.cfg for m in parts], [r["params"] for r in recs], devices,
                          method=self.config.deploy.assign)
        ui.info(f"    assignment ({plan.method}): predicted makespan {plan.makespan_ms:.2f} ms")
        return plan

    def _bundle(self, ctx, parts, classes, head, cfg0, plan, images, rec) -> dict:
        from ...export.verify import verify
        from ...runtime import OrtRunner
        from ...split.bundle import write_bundle
        from ...split.evaluate import in_memory

        c, d = self.config, self.config.deploy
        out = ctx.run_dir / BUNDLE
        shutil.rmtree(out, ignore_errors=True)
        pre = {"size": cfg0.img_size, "mean": list(cfg0.mean), "std": list(cfg0.std),
               "interpolation": cfg0.interpolation, "crop_pct": cfg0.crop_pct, "resize": cfg0.resize}
        from ...utils.fingerprint import model_fingerprint

        # the build: config, partition and every part's and the head's weights (no timings: reruns match)
        build = "split-" + sha256_json({"config": c.model_dump(), "partition": classes,
                                        "weights": [model_fingerprint(m) for m in [*parts, head]]})[:16]
        path = write_bundle(out, list(zip(parts, classes)), head, pre, build, str(ctx.recipe.model),
                            plan=plan, class_names=rec["class_names"],
                            degraded={"policy": d.degraded, "min_parts": min(d.min_parts, c.parts)},
                            runtime={"deadline_ms": d.deadline_ms, "retries": d.retries, "max_batch": d.max_batch})
        checks, outs = [], []
        try:
            for i, m in enumerate(parts):
                v = verify(out / f"part{i}.onnx", OrtRunner(out / f"part{i}.onnx"), m, images, d.verify_max_abs, 0.9999)
                checks.append(v.to_dict())
                outs.append(_outputs(m, images, len(images)).numpy())
            feats = torch.from_numpy(assemble(outs, [o.shape[1] for o in outs], len(images)))
            v = verify(out / "fusion.onnx", OrtRunner(out / "fusion.onnx"), head, feats, d.verify_max_abs, 0.9999)
            # the whole ensemble: part ONNX files + fusion ONNX in one process vs the PyTorch parts + head
            with torch.inference_mode():
                want = head(feats).numpy()
            got = in_memory(path, images.numpy())
            ens = {"images": len(images), "max_abs": float(np.abs(got - want).max()),
                   "argmax_agreement": float((got.argmax(1) == want.argmax(1)).mean()), "limit": d.verify_max_abs}
            if ens["max_abs"] > d.verify_max_abs or ens["argmax_agreement"] < 1:
                raise VerificationError(f"the ONNX ensemble differs from the PyTorch ensemble: max|diff| "
                                        f"{ens['max_abs']:.3g} (limit {d.verify_max_abs:g}), argmax agreement "
                                        f"{ens['argmax_agreement']:.2f}")
        except VerificationError:
            shutil.rmtree(out, ignore_errors=True)  # nothing unverified is left
            raise
        ui.info(f"    bundle {path.relative_to(ctx.run_dir)}: {len(parts)} parts verified in ONNX Runtime "
                f"(max|diff| {max(x['max_abs'] for x in checks):.2g}, limit {d.verify_max_abs:g})")
        return {"bundle": str(path.relative_to(ctx.run_dir)), "build_id": build,
                "manifest_sha256": sha256_file(path), "verification": checks, "fusion_verification": v.to_dict(),
                "ensemble_verification": ens}

    def _measure(self, model0, folder, K: int, size: int) -> dict:
        """Each part's ONNX against the unsplit model's, ONNX Runtime, batch 1, 1 thread, best-of process CPU
        time, interleaved (``compress.pruning.budget.best_ms``)."""
        from ...pruning.budget import OrtTimer, best_ms

        orig = OrtTimer(model0, 1)
        timers = [orig] + [_PartTimer(folder / f"part{i}.onnx", size) for i in range(K)]
        ms = best_ms(timers, self.config.deploy.measure_runs)
        orig.close()
        ui.info(f"    measured (ONNX Runtime, 1 thread, CPU time): unsplit {ms[0]:.2f} ms, parts "
                + ", ".join(f"{m:.2f}" for m in ms[1:]) + f" ms; largest part {max(ms[1:]) / ms[0]:.3f}x")
        return {"unsplit_ms": ms[0], "parts_ms": ms[1:], "largest_ratio": max(ms[1:]) / ms[0],
                "runs": self.config.deploy.measure_runs, "clock": "process CPU time, best of, 1 thread"}

