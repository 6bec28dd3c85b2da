"""Build a target's latency lookup table: the two halves of one canonical ViT block, measured.

    compress profile --build-lut --target x86-avx512 [--grid small|default] [--out targets/luts/x86-avx512.json]

Each grid point is one pre-norm half block exported from ``compress.models.vit.Block`` (so the
graph matches what the model exporter writes), run by ONNX Runtime at batch 1 with the target's
thread count: the least process CPU time of ``runs`` runs after warm-up (on a shared machine CPU time
and the minimum are the stable statistics: other work only ever adds wall time). The table then predicts whole models;
``validate`` measures a few against it and the result is stored in the table.
"""
from __future__ import annotations

import io
import itertools
import time

import torch
from torch import nn

from .. import ui
from ..models.vit import Block, BlockConfig, ViTConfig
from ..runtime import ort_session

GRIDS = {
    "default": {"embed_dim": [192, 384, 576, 768], "num_heads": [1, 2, 3, 4, 6, 8, 12], "head_dim": [16, 32, 48, 64],
                "mlp_dim": [192, 384, 768, 1152, 1536, 2304, 3072], "tokens": [197, 257]},
    "small": {"embed_dim": [32, 64], "num_heads": [1, 2], "head_dim": [8, 16], "mlp_dim": [32, 128], "tokens": [17]},
}


class Half(nn.Module):
    """norm1 + attention + residual, or norm2 + MLP + residual, of one block."""

    def __init__(self, block: Block, part: str):
        super().__init__()
        self.block, self.part = block, part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        if self.part == "attn":
            return x + b.ls1(b.attn(b.norm1(x)))
        return x + b.ls2(b.mlp(b.norm2(x)))


def _onnx_bytes(module: nn.Module, x: torch.Tensor, opset: int = 17) -> bytes:
    import contextlib
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], do_constant_folding=True)
    return buf.getvalue()


def best_ms(fn, warmup: int = 3, runs: int = 15) -> float:
    """Least process CPU time of ``runs`` calls, in ms: at one thread it is the compute time, and it does
    not grow while other processes hold the core (wall time here doubled under load, CPU time did not)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(runs):
        t0 = time.process_time()
        fn()
        best = min(best, (time.process_time() - t0) * 1e3)
    return best


def time_half(part: str, D: int, h: int, dh: int, mlp: int, T: int, threads: int = 1, warmup: int = 3,
              runs: int = 15) -> float:
    """Best-of-``runs`` ms of one half block in ONNX Runtime."""
    cfg = ViTConfig(embed_dim=D, blocks=[])
    torch.manual_seed(0)
    blk = Block(D, BlockConfig(max(h, 1), max(dh, 1), max(dh, 1), max(mlp, 1)), cfg)
    x = torch.randn(1, T, D)
    sess = ort_session(_onnx_bytes(Half(blk, part), x), threads)
    feed = {"x": x.numpy()}
    return best_ms(lambda: sess.run(None, feed), warmup, runs)


def build_lut(target: str, grid: str | dict = "default", threads: int | None = None, runs: int = 15,
              validate_models: list | None = None) -> dict:
    import onnxruntime

    from . import load_profile
    from .latency_models import LatencyModel

    prof = load_profile(target)
    threads = threads or int(prof.get("threads", 1))
    g = GRIDS[grid] if isinstance(grid, str) else grid
    roof = LatencyModel(target, prof)
    attn_axes = {k: g[k] for k in ("embed_dim", "num_heads", "head_dim", "tokens")}
    mlp_axes = {k: g[k] for k in ("embed_dim", "mlp_dim", "tokens")}
    attn = _nested(attn_axes)
    mlp = _nested(mlp_axes)
    points = [("attn", p) for p in itertools.product(*attn_axes.values())] + \
             [("mlp", p) for p in itertools.product(*mlp_axes.values())]
    t0, ratios = time.time(), []
    for part, p in ui.progress(points, desc=f"LUT {target}", unit="block"):
        if part == "attn":
            D, h, dh, T = p
            ms = time_half("attn", D, h, dh, 0, T, threads, runs=runs)
            _set(attn, attn_axes, p, ms)
            est = roof.roofline_block_ms(D, h, dh, dh, 0, T)
        else:
            D, m, T = p
            ms = time_half("mlp", D, 0, 0, m, T, threads, runs=runs)
            _set(mlp, mlp_axes, p, ms)
            est = roof.roofline_block_ms(D, 0, 0, 0, m, T)
        ratios.append(ms / est)
    ratios.sort()
    lut = {"target": target, "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
           "threads": threads, "batch": 1, "statistic": f"least process CPU time of {runs} runs after 3 warm-up",
           "precision_note": "fp32 measured; other precisions scale the fp32 table by the roofline ratio",
           "created": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - t0, 1),
           "command": f"compress profile --build-lut --target {target} --grid {grid if isinstance(grid, str) else 'custom'}",
           "precisions": {"fp32": {"attn": {"axes": attn_axes, "ms": attn}, "mlp": {"axes": mlp_axes, "ms": mlp},
                                   "efficiency": ratios[len(ratios) // 2]}}}
    if validate_models:
        lut["validation"] = validate(target, lut, validate_models, threads)
    return lut


def _nested(axes: dict) -> list:
    sizes = [len(v) for v in axes.values()]

    def make(i):
        return [0.0] * sizes[i] if i == len(sizes) - 1 else [make(i + 1) for _ in range(sizes[i])]

    return make(0)


def _set(table: list, axes: dict, point: tuple, value: float) -> None:
    idx = [list(v).index(x) for v, x in zip(axes.values(), point)]
    for i in idx[:-1]:
        table = table[i]
    table[idx[-1]] = value


def measure_model_ms(cfg: ViTConfig, threads: int = 1, runs: int = 10, warmup: int = 2) -> float:
    """Best-of-``runs`` ms of a randomly initialised model with ``cfg`` in ONNX Runtime, batch 1."""
    from ..models import build

    torch.manual_seed(0)
    model = build(cfg)
    x = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size)
    sess = ort_session(_onnx_bytes(model, x), threads)
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return best_ms(lambda: sess.run(None, feed), warmup, runs)


def validate(target: str, lut: dict, cfgs: list, threads: int = 1, runs: int = 10) -> list[dict]:
    """Predicted vs measured latency of whole models (ViTConfig each)."""
    from . import load_profile
    from .latency_models import LutLatencyModel

    lm = LutLatencyModel(target, load_profile(target), lut)
    rows = []
    for cfg in cfgs:
        pred = lm.model_ms(cfg)
        meas = measure_model_ms(cfg, threads, runs)
        rows.append({"model": cfg.name, "tokens": cfg.num_tokens, "embed_dim": cfg.embed_dim, "depth": cfg.depth,
                     "predicted_ms": round(pred, 2), "measured_ms": round(meas, 2),
                     "roofline_ms": round(lm.roofline_model_ms(cfg), 2), "error": round(pred / meas - 1, 4)})
        ui.info(f"  {cfg.name}: predicted {pred:.1f} ms, measured {meas:.1f} ms ({pred / meas - 1:+.1%})")
    return rows


def validation_configs() -> list[ViTConfig]:
    """ViT-S/14 (DINOv2, 257 tokens), DeiT-S/16 (197), a non-uniformly pruned ViT-S and a ViT-Ti."""
    s14 = ViTConfig.uniform(384, 12, 6, patch_size=14, global_pool="none", layer_scale=False, name="vit-s14-257tok")
    s16 = ViTConfig.uniform(384, 12, 6, patch_size=16, name="deit-s16-197tok", num_classes=1000)
    ti = ViTConfig.uniform(192, 12, 3, patch_size=16, name="vit-ti16-197tok")
    pruned = ViTConfig.uniform(384, 12, 6, patch_size=14, global_pool="none", name="vit-s14-pruned")
    for i, b in enumerate(pruned.blocks):  # heads, per-head widths and MLP widths vary by block
        b.num_heads, b.qk_dim, b.v_dim, b.mlp_dim = [6, 5, 4, 3][i % 4], [64, 48, 32, 64][i % 4], \
            [64, 64, 48, 40][i % 4], [1536, 1024, 768, 512, 1200, 900][i % 6]
    return [s14, s16, ti, pruned]
