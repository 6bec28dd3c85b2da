"""Block-wise reconstruction (BRECQ / I&S-ViT style), a fixed number of steps per block.

After a block is calibrated, its weights and biases (and, optionally, its per-tensor activation scales,
LSQ-style in log space) are tuned with Adam so that the quantized block, fed the quantized model's
activations, reproduces the float block's output on the float model's activations (MSE). Rounding is
straight-through, so the weights move across grid points; at the end they are put back on the grid.
The block is kept only if the reconstruction error over all calibration images went down.
Every block gets ``iters`` steps whatever the machine's load, so a recipe's artifact is reproducible;
each block's steps (and, for information only, its seconds) are recorded.
"""
from __future__ import annotations

import math
import time

import torch

from ... import ui
from .config import ReconstructionConfig
from .modules import QuantConv2d, QuantLinear, QuantMatMul
from .quantizers import UniformQuantizer


def _act_quantizers(blk) -> list[UniformQuantizer]:
    out = []
    for m in blk.modules():
        if isinstance(m, (QuantLinear, QuantConv2d)):
            qs = [m.input_quant]
        elif isinstance(m, QuantMatMul):
            qs = [m.a_quant, m.b_quant]
        else:
            continue
        out += [q for q in qs if isinstance(q, UniformQuantizer) and q.per_tensor and q.quant_enabled]
    return list({id(q): q for q in out}.values())


@torch.no_grad()
def block_error(blk, x: torch.Tensor, y: torch.Tensor, chunk: int = 8) -> float:
    num = sum((blk(a) - b).pow(2).sum().item() for a, b in zip(x.split(chunk), y.split(chunk)))
    return num / y.pow(2).sum().clamp_min(1e-30).item()


class BlockReconstructor:
    def __init__(self, cfg: ReconstructionConfig, blocks: int):
        self.cfg, self.blocks = cfg, blocks
        self.log: list[dict] = []

    def __call__(self, i: int, blk, x: torch.Tensor, y: torch.Tensor) -> None:
        self.log.append(self.reconstruct(i, blk, x, y))

    def reconstruct(self, i: int, blk, x: torch.Tensor, y: torch.Tensor) -> dict:
        cfg = self.cfg
        lins = [m for m in blk.modules() if isinstance(m, QuantLinear) and m.weight_quant is not None]
        saved = {k: v.clone() for k, v in blk.state_dict().items()}
        before = block_error(blk, x, y)
        acts = _act_quantizers(blk) if cfg.scales else []
        for q in acts:
            q.learned = q.scale.detach().log().clone().requires_grad_(True)
        params = [p for m in lins for p in (m.weight, m.bias) if p is not None]
        flags = [(p, p.requires_grad) for p in blk.parameters()]
        for p in blk.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        groups = [{"params": params, "lr": cfg.lr}]
        if acts:
            groups.append({"params": [q.learned for q in acts], "lr": 1e-3})
        opt = torch.optim.Adam(groups)
        g = torch.Generator().manual_seed(i)
        t0, steps, planned = time.time(), 0, cfg.iters
        try:
            while steps < planned:  # never cut short by the clock: the step count alone decides the result
                idx = torch.randint(0, len(x), (cfg.batch,), generator=g)
                for q in acts:
                    q.scale_override = q.learned.exp()
                loss = (blk(x[idx]) - y[idx]).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                lr_scale = 0.5 * (1 + math.cos(math.pi * steps / planned))
                for grp, base in zip(opt.param_groups, (cfg.lr, 1e-3)):
                    grp["lr"] = base * lr_scale
                opt.step()
                steps += 1
        finally:
            for p, f in flags:
                p.requires_grad_(f)
            with torch.no_grad():
                for q in acts:
                    q.scale.copy_(q.learned.detach().exp())
                    del q.learned
                    q.scale_override = None
                for m in lins:
                    m.weight.copy_(m.weight_quant.fake(m.weight))
        after = block_error(blk, x, y)
        kept = after < before
        if not kept:
            blk.load_state_dict(saved)
        ui.info(f"    block {i}: reconstruction {steps} steps, error {before:.4g} -> {after:.4g}"
                + ("" if kept else " (worse: reverted)"))
        return {"block": i, "steps": steps, "seconds": time.time() - t0, "error_before": before,
                "error_after": after, "kept": kept}
