"""TinyCLIP's distillation loop on cached teacher outputs, resumable and data-parallel.

The student is a module ``forward(images, step) -> (image embeddings, expected parameter ratio or None)``; its
text side is the teacher's (cached text embeddings), so only the image side trains. Loss over the *global* batch
(weights from the recipe): affinity mimicking, feature (squared distance of the normalised embeddings), logit (KL
of the zero-shot class distributions) and the label-aware contrastive loss. With masks, CoFi's Lagrangian
l1 (r - t) + l2 (r - t)^2 pulls the expected parameter ratio r to the target t (t falls linearly from the start to
the stage's target over ``target_warmup`` of the steps). l1, l2 rise by plain gradient ascent (SGD; Adam's momentum
overshoots the target), l2 starting at ``penalty``: on small models a fixed quadratic pull (``lambda_lr`` 0) alone
settles at the target within a few hundred steps.

Data parallel (torchrun, DistributedDataParallel, gloo on CPU / NCCL on GPUs): every rank draws the same global
batch and runs its contiguous shard; the embeddings are all-gathered (no grad) with the rank's own slice put back
with its graph, so each rank computes the full-batch loss; ``world x loss`` backpropagated and DDP's gradient mean
give exactly the full-batch gradient (open_clip's gather scheme).

Resume: batch order and mask noise are functions of (seed, step), the lr of the step; a checkpoint (model,
optimizers, losses) is written atomically every ``save_every`` steps, so a killed run continues at its last one
and ends with the same weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import ui
from .affinity import affinity_loss, contrastive_loss, similarities

LOSSES = ("affinity", "feature", "logit", "contrastive")
PER_SAMPLE = ("image", "text", "labels")  # cached per training sample; class_text and scale are shared


@dataclass
class LoopConfig:
    steps: int = 100
    batch_size: int = 32  # global batch
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup: float = 0.05
    clip: float = 1.0
    seed: int = 0
    losses: dict = field(default_factory=lambda: {"affinity": 1.0})
    save_every: int = 50
    mask_lr: float = 0.05  # log-alpha of the masks
    lambda_lr: float = 0.05  # the Lagrange multipliers (ascent)
    target: float | None = None  # parameter ratio the masks are driven to
    start_ratio: float = 1.0
    target_warmup: float = 0.5
    penalty: float = 0.0  # initial l2 (a fixed quadratic pull when lambda_lr is 0)


def batch_indices(n: int, batch: int, seed: int, step: int) -> list[int]:
    """The global batch of ``step``: consecutive slices of seeded per-epoch permutations."""
    out, pos = [], step * batch
    while len(out) < batch:
        epoch, off = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = perm[off:off + batch - len(out)].tolist()
        out += take
        pos += len(take)
    return out


def lr_factor(cfg: LoopConfig, step: int) -> float:
    warm = max(1, round(cfg.steps * cfg.warmup))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))


def target_at(cfg: LoopConfig, step: int) -> float:
    span = max(1, round(cfg.steps * cfg.target_warmup))
    return cfg.start_ratio + (cfg.target - cfg.start_ratio) * min(1.0, (step + 1) / span)


def distill_loss(emb: torch.Tensor, t: dict, weights: dict) -> torch.Tensor:
    """The weighted loss of student image embeddings ``emb`` against the teacher's cached outputs ``t``."""
    scale, total = t["scale"], emb.new_zeros(())
    for name, w in weights.items():
        if not w:
            continue
        if name == "affinity":
            v = affinity_loss(emb, t["text"], t["image"], t["text"], scale)
        elif name == "feature":
            v = (F.normalize(emb.float(), dim=-1) - F.normalize(t["image"], dim=-1)).pow(2).sum(-1).mean()
        elif name == "logit":
            s, te = scale * similarities(emb, t["class_text"]), scale * similarities(t["image"], t["class_text"])
            v = F.kl_div(F.log_softmax(s, -1), F.log_softmax(te, -1), log_target=True, reduction="batchmean")
        elif name == "contrastive":
            v = contrastive_loss(emb, t["text"], scale, t["labels"], t["labels"])
        else:
            raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")
        total = total + w * v
    return total


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def _gather(local: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    if world == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.detach().contiguous())
    parts[rank] = local
    return torch.cat(parts)


def train(student, cache: dict, images_fn, cfg: LoopConfig, ckpt: Path | None = None, desc: str = "distill",
          stop_at: int | None = None) -> dict:
    """``cfg.steps`` steps; returns the loss curve and timings. ``stop_at``: return after that step (a simulated
    kill: its checkpoint is written when the step is a save point)."""
    rank, world = _world()
    if cfg.batch_size % world:
        raise ValueError(f"the global batch {cfg.batch_size} must divide over {world} processes")
    masks = [p for n, p in student.named_parameters() if p.requires_grad and n.startswith("masks.")]
    ids = {id(p) for p in masks}
    weights = [p for p in student.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base": cfg.lr}]
    if masks:
        groups.append({"params": masks, "lr": cfg.mask_lr, "weight_decay": 0.0, "base": cfg.mask_lr})
    opt = torch.optim.AdamW(groups)
    lam = torch.tensor([0.0, cfg.penalty], requires_grad=True)
    lam_opt = torch.optim.SGD([lam], lr=cfg.lambda_lr, maximize=True)  # plain ascent: Adam's momentum overshoots
    start, losses, ratios = 0, [], []
    if ckpt is not None and Path(ckpt).is_file():
        st = torch.load(ckpt, weights_only=True)
        student.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        lam_opt.load_state_dict(st["lam_opt"])
        with torch.no_grad():
            lam.copy_(st["lam"])
        start, losses, ratios = int(st["step"]), list(st["losses"]), list(st["ratios"])
    model = student
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(student)
    n = len(cache["labels"])
    t0, c0 = time.time(), time.process_time()
    bar = ui.bar(total=cfg.steps, initial=start, desc=desc, unit="step") if rank == 0 else None
    student.train()
    for step in range(start, cfg.steps):
        f = lr_factor(cfg, step)
        for g in opt.param_groups:
            g["lr"] = g["base"] * f
        idx = batch_indices(n, cfg.batch_size, cfg.seed, step)
        k = cfg.batch_size // world
        local = idx[rank * k:(rank + 1) * k]
        emb, ratio = model(images_fn(local), step)
        full = _gather(emb.float(), rank, world)
        loss = distill_loss(full, {k: v[idx] if k in PER_SAMPLE else v for k, v in cache.items()}, cfg.losses)
        obj = loss * world
        if ratio is not None and cfg.target is not None:
            gap = ratio - target_at(cfg, step)
            obj = obj + lam[0] * gap + lam[1] * gap * gap
            ratios.append(float(ratio.detach()))
        opt.zero_grad(set_to_none=True)
        lam_opt.zero_grad(set_to_none=True)
        obj.backward()
        torch.nn.utils.clip_grad_norm_(weights, cfg.clip)
        opt.step()
        if ratio is not None and cfg.target is not None:
            lam_opt.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            rate = cfg.batch_size * (step + 1 - start) / max(1e-9, time.time() - t0)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", img_s=f"{rate:.1f}", refresh=False)
        done = step + 1
        if ckpt is not None and (done % max(1, cfg.save_every) == 0 or done == cfg.steps):
            if rank == 0:
                _save(ckpt, {"step": done, "model": student.state_dict(), "opt": opt.state_dict(),
                             "lam": lam.detach().clone(), "lam_opt": lam_opt.state_dict(), "losses": losses,
                             "ratios": ratios})
            if world > 1:
                dist.barrier()
        if stop_at is not None and done >= stop_at:
            break
    if bar is not None:
        bar.close()
    student.eval()
    k = max(1, min(10, len(losses) // 5))
    return {"steps": cfg.steps, "resumed_at": start, "world": world, "global_batch": cfg.batch_size,
            "loss_start": sum(losses[:k]) / k if losses else None, "loss_end": sum(losses[-k:]) / k if losses else None,
            "losses": [round(x, 6) for x in losses], "ratio_end": ratios[-1] if ratios else None,
            "config": asdict(cfg), "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}


def _save(path: Path, obj: dict) -> None:
    from ..utils.io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


__all__ = ["LOSSES", "LoopConfig", "batch_indices", "distill_loss", "lr_factor", "target_at", "train"]
