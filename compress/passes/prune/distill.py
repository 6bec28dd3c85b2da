"""Knowledge distillation from the unpruned fp32 model: the loss the saliency estimates and recovery
minimises. No labels are used.

Encoders (tokens or pooled features out): relative squared error of the output tokens plus that of
the pooled vector a probe reads ([class token, mean patch token]). Classifiers: KL divergence of the
logits. ``sampled`` gives a scalar whose per-sample gradients g_n satisfy E[g_n g_n^T] = the
Gauss-Newton matrix of the per-sample loss (the true Fisher: directions drawn from the model's own
predictive distribution), which stays informative where the loss and its gradient are zero (the
unpruned student equals its teacher).
"""
from __future__ import annotations

import hashlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ... import ui
from ...evaluation.probe import pooled
from ...utils.io import cache_dir


class Distiller:
    def __init__(self, cfg):
        self.logits = cfg.num_classes > 0 and cfg.global_pool != "none"
        self.num_prefix = cfg.num_prefix_tokens

    def loss(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss [B]."""
        y, t = y.float(), t.float()
        if self.logits:
            return F.kl_div(F.log_softmax(y, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
        out = _rel_sq(y, t)
        if y.ndim == 3:
            out = out + _rel_sq(pooled(y, self.num_prefix), pooled(t, self.num_prefix))
        return out

    def sampled(self, y: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """sum_n <y_n, v_n> with v_n drawn so that E[v_n v_n^T] is the loss Hessian w.r.t. y_n."""
        y, t = y.float(), t.float()
        if self.logits:  # categorical: v = p - onehot(c), c ~ p
            p = F.softmax(y, -1).detach()
            c = torch.multinomial(p, 1, generator=gen)
            return (y * (p - F.one_hot(c[:, 0], p.shape[-1]).to(p))).sum()
        out = (y * _gauss(t, gen)).sum()
        if y.ndim == 3:  # the pooled term: its own independent draw
            out = out + (pooled(y, self.num_prefix) * _gauss(pooled(t, self.num_prefix), gen)).sum()
        return out


def _rel_sq(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, y.ndim))
    return (y - t).pow(2).sum(dims) / t.pow(2).sum(dims).clamp_min(1e-12)


def _gauss(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """N(0, 2/||t_n||^2 I): the Hessian of ||y - t||^2 / ||t||^2."""
    scale = (2.0 / t.pow(2).sum(tuple(range(1, t.ndim)), keepdim=True).clamp_min(1e-12)).sqrt()
    return torch.randn(t.shape, generator=gen) * scale


def teacher_outputs(teacher, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [teacher(x).float() for x in batches]


class TeacherTargets:
    """Images of a data subset with the teacher's outputs, computed once (fp16, in memory) and cached
    on disk per chunk (keyed by teacher weights, data and preprocessing) for later runs."""

    CHUNK = 128

    def __init__(self, teacher, ds, fingerprint: str, batch_size: int, disk: bool = True):
        self.teacher, self.ds, self.bs = teacher.eval(), ds, batch_size
        key = f"{fingerprint}|{getattr(ds.source, 'root', '')}|{ds.preprocess}|{np.asarray(ds.indices).tobytes().hex()}"
        self.dir = cache_dir("prune-teacher", hashlib.sha256(key.encode()).hexdigest()[:20]) if disk else None
        self.chunks: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ds)

    def _chunk(self, k: int) -> torch.Tensor:
        if k in self.chunks:
            return self.chunks[k]
        path = self.dir / f"{k:05d}.safetensors" if self.dir else None
        if path is not None and path.is_file():
            from ...errors import UserError
            from ...models.checkpoint import load_state_dict

            try:
                self.chunks[k] = load_state_dict(path)["t"]
                return self.chunks[k]
            except (UserError, KeyError):
                pass
        idx = range(k * self.CHUNK, min((k + 1) * self.CHUNK, len(self.ds)))
        outs = []
        for s in range(0, len(idx), self.bs):
            x = torch.stack([self.ds[i][0] for i in idx[s:s + self.bs]])
            with torch.inference_mode():
                outs.append(self.teacher(x).to(torch.float16))
        self.chunks[k] = torch.cat(outs)
        if path is not None:
            from safetensors.torch import save_file

            from ...utils.io import atomic_path

            with atomic_path(path) as tmp:
                save_file({"t": self.chunks[k].contiguous()}, str(tmp))
        return self.chunks[k]

    def batch(self, idxs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([self.ds[i][0] for i in idxs])
        t = torch.stack([self._chunk(i // self.CHUNK)[i % self.CHUNK] for i in idxs]).float()
        return x, t


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
