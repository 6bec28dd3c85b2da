"""The distillation loop: AdamW on the KD loss towards cached teacher targets (warm-up, cosine decay)."""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .. import ui
from .losses import Distiller
from .teacher import TeacherTargets


def bf16_ok(enabled: bool) -> bool:
    return enabled and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def distill(student, targets: TeacherTargets, distiller: Distiller, steps: int, cfg, gen: torch.Generator,
            desc: str = "recovery") -> dict:
    """``steps`` AdamW steps of KD (warm-up then cosine decay); returns loss and timing figures."""
    if steps <= 0:
        return {"steps": 0}
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, round(steps * cfg.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    bf16 = bf16_ok(cfg.bf16)
    order: list[int] = []
    losses = []
    t0, c0 = time.time(), time.process_time()
    student.train()
    for _ in ui.progress(range(steps), total=steps, desc=desc, unit="step"):
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(targets), generator=gen).tolist()
        idxs, order = order[:cfg.batch_size], order[cfg.batch_size:]
        x, t = targets.batch(idxs)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = student(x)
        loss = distiller.loss(y, t).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
    student.eval()
    k = max(1, min(10, steps // 5))
    return {"steps": steps, "images": steps * cfg.batch_size, "loss_start": float(np.mean(losses[:k])),
            "loss_end": float(np.mean(losses[-k:])), "bf16": bf16, "seconds": time.time() - t0,
            "cpu_seconds": time.process_time() - c0}
