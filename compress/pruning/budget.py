"""Latency of a pruned structure: predicted from the target's latency model, measured in ONNX Runtime."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

from ..errors import UserError


def load(target: str, lut: str | None, roofline: bool = False):
    from ..targets.latency_models import load_latency_model, roofline_model

    try:
        return roofline_model(target) if roofline else load_latency_model(target, lut)
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read the latency model of target {target!r} ({e})",
                        f"rebuild it: compress profile --build-lut --target {target}") from None


def resolve_target(name: str | None, ctx_targets: list[dict], owner: str = "prune") -> tuple[str, dict]:
    """The device profile whose latency model a pruning pass budgets against: the pass's own ``target``, else the
    recipe's first target, else the local machine's profile."""
    from ..targets import list_profiles, load_profile

    if name:
        return name, load_profile(name)
    if ctx_targets:
        return ctx_targets[0]["name"], ctx_targets[0]
    local = [p for p in list_profiles() if load_profile(p).get("local")]
    if not local:
        raise UserError(f"the {owner} pass needs a target for its latency model", f"set passes.{owner}.target")
    return local[0], load_profile(local[0])


def alignment(profile: dict, override: int | None) -> int:
    """Width multiple the pruned structures keep (the profile's fp32 GEMM alignment unless overridden)."""
    if override:
        return override
    a = profile.get("alignment", 8)
    return int(a.get("fp32", 8) if isinstance(a, dict) else a)


class Predictor:
    """Block-wise latency (ms, batch 1) of any widths, cached; the pruned encoder's output lift
    (``WidthRestore``: one D' -> D linear over all tokens) costed as half an MLP of width D."""

    def __init__(self, lm, cfg, output_width: int | None):
        self.lm, self.cfg, self.T, self.out = lm, cfg, cfg.num_tokens, output_width
        self._cache: dict[tuple, float] = {}

    def block(self, D: int, h: int, qk: int, v: int, m: int) -> float:
        key = (D, h, qk, v, m)
        if key not in self._cache:
            self._cache[key] = float(self.lm.block_ms(D, h, qk, v, m, self.T))
        return self._cache[key]

    def stem(self, D: int) -> float:
        key = ("stem", D)
        if key not in self._cache:
            self._cache[key] = float(self.lm.model_ms(dataclasses.replace(self.cfg, embed_dim=D, blocks=[])))
        return self._cache[key]

    def lift(self, D: int) -> float:
        if not self.out or D >= self.out:
            return 0.0
        return 0.5 * self.block(D, 0, 0, 0, self.out)

    def total(self, D: int, blocks) -> float:
        return self.stem(D) + self.lift(D) + sum(self.block(D, *b) for b in blocks)

    def model(self, cfg) -> float:
        return self.total(cfg.embed_dim, [(b.num_heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in cfg.blocks])


class OrtTimer:
    """A model exported to ONNX (float, batch 1) and an ONNX Runtime session on it."""

    def __init__(self, model, threads: int = 1, opset: int = 17):
        from ..export.onnx_export import export_onnx
        from ..models.float_view import float_view
        from ..runtime import ort_session

        self._dir = tempfile.TemporaryDirectory(prefix="vitforge-prune-")
        self.path = Path(self._dir.name) / "model.onnx"
        with float_view(model) as m:
            export_onnx(m, self.path, opset, dynamic_batch=False)
        cfg = model.cfg
        self.session = ort_session(self.path, threads)
        x = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
        self.feed = {self.session.get_inputs()[0].name: x.numpy()}

    def stats(self) -> dict:
        from ..utils.graph_stats import graph_stats

        s = graph_stats(self.path)
        return {"params": s["params"], "gflops": round(s["gflops"], 4)}

    def run(self) -> None:
        self.session.run(None, self.feed)

    def close(self) -> None:
        self._dir.cleanup()


def best_ms(timers: list[OrtTimer], runs: int = 10, rounds: int = 3) -> list[float]:
    """Best-of latency of each timer, the timers interleaved over ``rounds`` so drift on a shared
    machine hits all alike (other work only ever adds time, so the minimum is the stable statistic)."""
    from ..targets.lut import best_ms as _best

    best = [float("inf")] * len(timers)
    per = max(1, runs // rounds)
    for r in range(rounds):
        for i, t in enumerate(timers):
            best[i] = min(best[i], _best(t.run, warmup=2 if r == 0 else 1, runs=per))
    return best
