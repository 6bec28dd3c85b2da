"""The ``distill`` pass (TinyCLIP, Wu et al. ICCV 2023): a CLIP image tower compressed in progressive stages, each
inheriting its weights from the previous stage's result and trained by affinity mimicking against the teacher.

    passes:
      distill: {stages: [{params: 0.75}, {params: 0.5}], losses: {affinity: 1.0}, inheritance: {mode: manual}}

1. teacher: the CLIP model entering the pass (its image tower is the pipeline's model, its text tower the recipe
   model's) or the cached LiT teacher (``teacher: lit``); its outputs on the training images are cached on disk
   (``compress.distill.clip_cache``) and the teacher leaves memory;
2. per stage (``work/distill-<key>/stage-NN/``): weight inheritance, manual (``compress.pruning.inherit``: layers,
   then widths by Hessian saliency) or automatic (hard-concrete masks trained to the stage's parameter target),
   physical removal, then distillation (``compress.distill.clip_loop``), in-process or under torchrun (``ddp``);
   every phase checkpoints, so a killed run resumes at its last finished stage and step;
3. the pipeline carries on with the student's image tower; the whole student CLIP (its text side is the teacher's)
   is saved as ``student-clip/`` in the pass folder.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from ... import ui
from ...distill import Distiller, clip_cache, teacher_outputs
from ...distill.views import Views, ViewSpec
from ...errors import UserError
from ...models import clip as clip_models
from ...models.vit import VisionTransformer
from ...pipeline.base import Pass, register_pass
from ...pruning import inherit, remove
from ...pruning.masks import HardConcreteMasks
from ...pruning.select import Limits
from ...utils.fingerprint import model_fingerprint
from ...utils.io import sha256_json, write_json
from .config import DistillConfig, LayerSpec
from .export import export_student_text
from .report import section as distill_section
from .student import load_tower, save_tower
from .worker import run_job


def load_clip(ref: str | None, weights: str | None = None) -> clip_models.CLIPModel:
    """The whole CLIP model (both towers) a recipe's ``model:`` names; a model without a text tower is a UserError."""
    ref = ref or ""
    if ref.startswith("open_clip:"):
        arch, _, w = ref[len("open_clip:"):].partition("@")
        return clip_models.from_open_clip(arch, w or weights)
    path = Path(ref)
    if clip_models.is_clip_dir(path):
        return clip_models.load_dir(path)
    try:
        if json.loads((path / "config.json").read_text()).get("model_type") == "clip":
            return clip_models.from_hf_dir(path)
    except (OSError, ValueError, AttributeError):
        pass
    raise UserError(f"the distill pass needs a CLIP teacher with a text tower; model {ref!r} has none",
                    "use open_clip:<arch>, a Hugging Face CLIPModel folder or a vitforge CLIP folder, "
                    "or set passes.distill.teacher: lit")


@register_pass
class DistillPass(Pass):
    name = "distill"
    Config = DistillConfig
    summary = "TinyCLIP: affinity mimicking, weight inheritance, progressive multi-stage compression of a CLIP tower"
    forbid_after = {"quantize": "distillation trains float weights"}
    report_section = staticmethod(distill_section)
    exporter = staticmethod(export_student_text)

    # -- the teacher and its cached outputs ------------------------------------------------------------------
    def _teacher(self, state, ctx) -> clip_models.CLIPModel:
        if not isinstance(state.model, VisionTransformer):
            raise UserError(f"the distill pass works on ViT image towers, not {type(state.model).__name__}",
                            "use a CLIP model's image tower")
        if self.config.teacher == "lit":
            from ...distill import clip_teacher

            teacher, _ = clip_teacher.build()
            width = remove.output_width(state.model) or state.model.cfg.embed_dim
            if teacher.visual_projection.in_features != 2 * width or state.model.cfg.num_classes:
                raise UserError("passes.distill.teacher: lit distils into the LiT teacher's own image tower family",
                                "use model: dinov2-s14-focus with teacher: lit")
            return teacher
        teacher = load_clip(ctx.recipe.model, ctx.recipe.weights)
        teacher.set_image_tower(copy.deepcopy(state.model))  # the teacher is the model entering the pass
        return teacher.eval()

    def run(self, state, ctx):
        c, t0, c0 = self.config, time.time(), time.process_time()
        teacher = self._teacher(state, ctx)
        tower = copy.deepcopy(state.model).eval()  # the student starts as the model entering the pass
        work = ctx.run_dir / "work" / f"distill-{sha256_json([model_fingerprint(tower), c.model_dump()])[:12]}"
        work.mkdir(parents=True, exist_ok=True)
        ds = ctx.data(c.split, c.images, seed=c.seed, cfg=tower.cfg, role="distill")
        aug = c.augment
        samples = Views(ds, ViewSpec(aug.views, tuple(aug.scale), aug.flip, c.seed))
        key = sha256_json([model_fingerprint(teacher), ctx.recipe.data.path, c.split, c.images, c.seed]
                          + ([aug.model_dump()] if aug.views > 1 else []))[:16]
        cache = work / "teacher" / f"{key}.safetensors"
        cache_rec = {"path": str(cache.relative_to(ctx.run_dir)), "built_now": not cache.is_file()}
        if cache_rec["built_now"]:
            c1 = time.process_time()
            clip_cache.build(teacher, samples.images, samples.labels, list(ds.source.classes), cache, c.seed,
                             ctx.recipe.data.batch_size)
            cache_rec["cpu_seconds"] = time.process_time() - c1
        proj = None
        if teacher.cfg.image_pool != "token":
            from safetensors.torch import save_file

            proj = work / "projection.safetensors"
            save_file({"weight": teacher.visual_projection.weight.detach().contiguous()}, str(proj))
        calib = t_calib = None
        if c.inheritance.mode == "manual":
            calib = ctx.calibration_batches(c.inheritance.saliency_images)
            t_calib = teacher_outputs(tower, calib)
        pool = teacher.cfg.image_pool
        teacher_dir = work / "teacher-clip"  # the text side of the student CLIP, read back at the end
        if not clip_models.is_clip_dir(teacher_dir):
            clip_models.save_dir(teacher, teacher_dir)
        del teacher  # the students train on the cached outputs, without the teacher in memory
        params0 = inherit.tower_params(tower)
        data = {"path": ctx.recipe.data.path, "split": c.split, "count": c.images, "seed": c.seed,
                "vit": tower.cfg.to_dict(), "views": aug.model_dump()}
        base = {"cache": str(cache), "proj": str(proj) if proj else None, "pool": pool,
                "params0": params0, "data": data, "backend": c.ddp.backend, "d0": tower.cfg.embed_dim}
        stages, current = [], tower
        for i, st in enumerate(c.stages):
            sd = work / f"stage-{i + 1:02d}"
            rec, current = self._stage(i, st, sd, current, params0, base, calib, t_calib)
            stages.append(rec)
            ui.info(f"    stage {i + 1}: {rec['params']:,} weights ({rec['ratio']:.3f} of the original), "
                    f"loss {rec['train'].get('loss_start')} -> {rec['train'].get('loss_end')}")
        state.model = current
        student_clip = clip_models.load_dir(teacher_dir)
        student_clip.set_image_tower(copy.deepcopy(current))  # a cls_mean tower keeps the teacher's projection
        if student_clip.cfg.image_pool != "token":
            student_clip.cfg.extra["output_width"] = remove.output_width(current)
        clip_dir = work / "student-clip"
        if not clip_models.is_clip_dir(clip_dir):
            clip_models.save_dir(student_clip, clip_dir, distill={"stages": [s["params"] for s in stages]})
        return {"teacher": c.teacher, "params_original": params0, "stages": stages, "work": str(work.relative_to(ctx.run_dir)),
                "student_clip": str(clip_dir.relative_to(ctx.run_dir)) if clip_dir.is_dir() else None,
                "output_width": remove.output_width(current), "teacher_cache": cache_rec, "seconds": time.time() - t0,
                "cpu_seconds": time.process_time() - c0}

    # -- one stage: inheritance, then distillation ---------------------------------------------------------------
    def _stage(self, i, st, sd: Path, parent, params0, base, calib, t_calib):
        c, inh = self.config, self.config.inheritance
        if (sd / "final" / "config.json").is_file():
            tower, meta = load_tower(sd / "final")
            ui.info(f"    stage {i + 1}: finished earlier, reusing {sd / 'final'}")
            return json.loads((sd / "stage.json").read_text()), tower
        target = st.params * params0
        align = inh.align
        lim = Limits(align, 1, align, align, max(align, math.ceil(inh.min_embed * base["d0"] / align) * align))
        sd.mkdir(parents=True, exist_ok=True)
        if not (sd / "inherited" / "config.json").is_file():
            save_tower(sd / "parent", parent)
            if inh.mode == "manual":
                keep, info = self._manual(i, parent, target, lim, calib, t_calib)
            else:
                keep, info = self._auto(i, st, sd, params0, target, lim, base)
                parent, _ = load_tower(sd / "masked")
            inherited = inherit.inherit(parent, keep)
            if inh.init == "random":
                _reinit(inherited, c.seed + i)
                info = info | {"init": "random"}
            save_tower(sd / "inherited", inherited, inheritance=info)
        steps = st.steps if st.steps is not None else c.steps
        job = base | {"init": str(sd / "inherited"), "ckpt": str(sd / "train.pt"), "out": str(sd / "final"),
                      "desc": f"stage {i + 1} distill", "loop": self._loop(steps, c.seed + i)}
        train = self._run(job, sd / "train.json") if steps else {"steps": 0}
        if not steps:
            shutil.copytree(sd / "inherited", sd / "final")
        tower, _ = load_tower(sd / "final")
        meta = json.loads((sd / "inherited" / "config.json").read_text())
        rec = {"stage": i + 1, "target": st.params, "params": inherit.tower_params(tower),
               "ratio": inherit.tower_params(tower) / params0, "widths": _widths(tower.cfg),
               "inheritance": meta.get("inheritance", {}), "train": {k: v for k, v in train.items() if k != "config"}}
        write_json(sd / "stage.json", rec)
        return rec, tower

    def _loop(self, steps: int, seed: int, **kw) -> dict:
        c = self.config
        return {"steps": steps, "batch_size": c.batch_size, "lr": c.lr, "weight_decay": c.weight_decay,
                "warmup": c.warmup, "clip": c.clip, "seed": seed, "losses": c.losses.model_dump(),
                "save_every": c.save_every} | kw

    def _manual(self, i, parent, target, lim, calib, t_calib) -> tuple[dict, dict]:
        inh = self.config.inheritance
        distiller = Distiller(SimpleNamespace(num_classes=0, global_pool="token", num_prefix_tokens=0)) \
            if parent.cfg.num_classes else Distiller(parent.cfg)
        layers, info = list(range(parent.cfg.depth)), {"mode": "manual"}
        if i == 0 and inh.layers is not None:
            if isinstance(inh.layers, LayerSpec):
                if inh.layers.keep > parent.cfg.depth:
                    raise UserError(f"passes.distill.inheritance.layers.keep {inh.layers.keep} exceeds the tower's "
                                    f"{parent.cfg.depth} layers", "keep fewer layers")
                imp = inherit.layer_importance(parent, calib, t_calib, distiller)
                layers = sorted(sorted(range(len(imp)), key=lambda j: -imp[j])[:inh.layers.keep])
                info["layer_importance"] = imp
            else:
                bad = [j for j in inh.layers if not 0 <= j < parent.cfg.depth]
                if bad or len(set(inh.layers)) != len(inh.layers):
                    raise UserError(f"passes.distill.inheritance.layers {inh.layers}: indices must be distinct, "
                                    f"0..{parent.cfg.depth - 1}", "fix the layer list")
                layers = sorted(inh.layers)
        reduced = inherit.inherit(parent, {"layers": layers})
        plan, stats = remove.Plan(), {"met": inherit.tower_params(reduced) <= target}
        if not stats["met"]:
            plan, stats = inherit.saliency_plan(reduced, calib, t_calib, distiller, target, lim, inh.widths)
        if not stats["met"]:
            ui.info(f"    stage {i + 1}: parameter target not reachable within the minimum widths")
        return inherit.keep_of(parent.cfg, plan, layers), info | {"layers": layers, "removed": plan.counts(),
                                                                 "target_met": bool(stats["met"])}

    def _auto(self, i, st, sd, params0, target, lim, base) -> tuple[dict, dict]:
        inh = self.config.inheritance
        parent_params = inherit.tower_params(load_tower(sd / "parent")[0])
        job = base | {"init": str(sd / "parent"), "ckpt": str(sd / "masks.pt"), "out": str(sd / "masked"),
                      "masks": list(inh.widths), "desc": f"stage {i + 1} masks",
                      "loop": self._loop(inh.mask_steps, self.config.seed + 1000 + i, mask_lr=inh.mask_lr,
                                         lambda_lr=inh.lambda_lr, penalty=inh.penalty, target=st.params,
                                         start_ratio=parent_params / params0,
                                         target_warmup=inh.target_warmup)}
        rec = self._run(job, sd / "masks.json")
        masked, _ = load_tower(sd / "masked")
        hc = HardConcreteMasks(masked.cfg, inh.widths)
        from ...models.checkpoint import load_state_dict

        hc.load_state_dict(load_state_dict(sd / "masked" / "masks.safetensors"))
        keep = inherit.masks_keep(masked, hc, target, lim)
        return keep, {"mode": "auto", "mask_ratio_end": rec.get("ratio_end"), "mask_loss_end": rec.get("loss_end")}

    def _run(self, job: dict, record: Path) -> dict:
        """A training phase: in-process, or under torchrun with ``ddp.procs`` processes."""
        if (Path(job["out"]) / "config.json").is_file() and record.is_file():
            return json.loads(record.read_text())
        job_file = record.with_suffix(".job.json")
        write_json(job_file, job)
        procs = self.config.ddp.procs
        if procs == 1:
            rec = run_job(job)
            write_json(record, rec)
            return rec
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc_per_node", str(procs), "-m", "compress.passes.distill.worker", str(job_file), str(record)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0 or not record.is_file():
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"torchrun ({procs} processes) failed with exit {p.returncode}: {tail[0][:200]}")
        return json.loads(record.read_text())

    @classmethod
    def rebuild(cls, model, record):
        remove.rebuild(model, record)


def _reinit(model, seed: int) -> None:
    """Every weight of ``model`` freshly initialised, its structure kept (the random-initialisation baseline)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(getattr(m, "gamma", None), torch.nn.Parameter):  # LayerScale
            torch.nn.init.constant_(m.gamma, 1e-5)
    model.reset_parameters()  # the ViT's own init: truncated normal linears, position embedding, tokens


def _widths(cfg) -> dict:
    return {"embed_dim": cfg.embed_dim, "depth": cfg.depth,
            "blocks": [[b.num_heads, b.mlp_dim] for b in cfg.blocks]}
