"""Swap every block's attention softmax and MLP activation for a chosen kernel / approximation.

``passes: {kernels: {softmax: triton, gelu: relu-lut}}``. ``softmax`` names the method (``exact``,
``online``, ``online-poly1..3``) or, as a shorthand for ``exact`` on that backend, ``triton`` / ``cuda``;
``gelu`` likewise (``erf``, ``tanh``, ``relu-lut``, ``triton``, ``cuda``). ``keep`` leaves the op alone.
On CPU every choice computes its PyTorch reference; exported graphs hold the same math in plain ONNX ops.
The swapped modules sit where the originals were (also inside a wrapper around them), so quantization
before or after this pass sees the same structure.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from ..errors import UserError
from ..kernels import GeluTable, KernelGELU, KernelSoftmax
from ..kernels.reference import ACT_FNS, gelu_f32
from ..models.vit import QuickGELU, Softmax
from ..pipeline.base import Pass, PassConfig, register_pass
from ..recipes.schema import Strict
from ..report import register_section

SoftmaxChoice = Literal["keep", "exact", "online", "online-poly1", "online-poly2", "online-poly3", "triton", "cuda"]
GeluChoice = Literal["keep", "erf", "tanh", "relu-lut", "triton", "cuda"]
EXACT_GELU = {"gelu": "erf", "gelu_tanh": "tanh"}  # the method that computes a model's own activation


class LutConfig(Strict):
    entries: int = Field(64, ge=2, le=4096, description="table intervals on [0, x_max]")
    x_max: float = Field(6.0, gt=0, le=64, description="beyond it the activation is taken as exactly ReLU")


class KernelsConfig(PassConfig):
    softmax: SoftmaxChoice = "keep"
    gelu: GeluChoice = "keep"
    backend: Literal["auto", "triton", "cuda", "reference"] = "auto"
    lut: LutConfig = LutConfig()
    check_images: int = Field(8, ge=0, le=256, description="calibration images to measure the swap on (0: skip)")


def _choice(choice: str, backend: str, exact: str, what: str) -> tuple[str, str]:
    if choice in ("triton", "cuda"):
        if backend not in ("auto", choice):
            raise UserError(f"passes.kernels: {what}: {choice} contradicts backend: {backend}",
                            f"drop one, or write {what}: {exact} with backend: {backend}")
        return exact, choice
    return choice, backend


def _swap(owner: nn.Module, leaf: str, accept: tuple[type, ...], make, path: str) -> str:
    """Replace ``owner.leaf`` (or the op inside a wrapper there) by ``make(old)``; return the replaced path."""
    mod = getattr(owner, leaf)
    for name, child in mod.named_modules():
        if type(child) in accept:
            holder, _, attr = name.rpartition(".")
            parent = (mod.get_submodule(holder) if holder else mod) if name else owner
            setattr(parent, attr if name else leaf, make(child))
            return f"{path}.{name}" if name else path
    raise UserError(f"{path} is a {type(mod).__name__} with no {accept[0].__name__} inside",
                    "the kernels pass swaps the model's own softmax / GELU; run it before passes that replace them")


def gelu_plan(act: str, choice: str, cfg: KernelsConfig) -> tuple[str, GeluTable | None, bool]:
    """(method, table, exact) for a model whose activation is ``act``."""
    if choice == "relu-lut":
        if act not in ACT_FNS:
            raise UserError(f"passes.kernels: no correction table for activation {act!r}", "use gelu: keep")
        return choice, GeluTable(act, cfg.lut.entries, cfg.lut.x_max), False
    if act not in EXACT_GELU:
        raise UserError(f"passes.kernels: gelu: {choice} would replace this model's {act} by another function",
                        "use gelu: relu-lut (its table is built from the model's own activation) or keep")
    return choice, None, EXACT_GELU[act] == choice


def lut_error(table: GeluTable) -> float:
    """Max |relu-lut - act| on a dense grid over [-x_max - 1, x_max + 1]."""
    x = torch.linspace(-table.x_max - 1, table.x_max + 1, 200_001, dtype=torch.float32)
    approx = gelu_f32(x, None, "relu-lut", table.values(), table.inv_step)
    return float((approx.double() - ACT_FNS[table.act](x.double())).abs().max())


def apply(model: nn.Module, cfg: KernelsConfig) -> dict:
    """Swap the ops of every block as ``cfg`` says; return what was done (the pass record's core)."""
    sm_method, sm_backend = _choice(cfg.softmax, cfg.backend, "exact", "softmax")
    act = model.cfg.act
    g_choice, g_backend = _choice(cfg.gelu, cfg.backend, EXACT_GELU.get(act, "erf"), "gelu")
    out: dict = {"softmax": sm_method, "softmax_backend": sm_backend, "gelu": g_choice, "gelu_backend": g_backend,
                 "act": act, "swapped": []}
    table = None
    if g_choice != "keep":
        g_method, table, out["gelu_exact"] = gelu_plan(act, g_choice, cfg)
    for i, blk in enumerate(model.blocks):
        if sm_method != "keep":
            out["swapped"].append(_swap(blk.attn, "softmax", (Softmax, KernelSoftmax),
                                        lambda _: KernelSoftmax(sm_method, sm_backend), f"blocks.{i}.attn.softmax"))
        if g_choice != "keep":
            out["swapped"].append(_swap(blk.mlp, "act", (nn.GELU, KernelGELU, QuickGELU),
                                        lambda _: KernelGELU(g_method, g_backend, table), f"blocks.{i}.mlp.act"))
    if table is not None:
        out["lut"] = {"act": table.act, "entries": table.entries, "x_max": table.x_max,
                      "max_abs_error": lut_error(table)}
    return out


@register_pass
class KernelsPass(Pass):
    name = "kernels"
    Config = KernelsConfig
    summary = "swap attention softmax / MLP GELU for Triton or CUDA kernels and low-cost approximations"

    def run(self, state, ctx):
        from ..models.pooling import token_cosine

        model = state.model.eval()
        images = None
        if self.config.check_images:
            images = torch.cat(ctx.calibration_batches(self.config.check_images))[: self.config.check_images]
            with torch.inference_mode():
                before = model(images)
        record = apply(model, self.config)
        if images is not None:
            with torch.inference_mode():
                after = model(images)
            record["check"] = {"images": len(images), "token_cosine": token_cosine(before, after),
                               "max_abs": float((after - before).abs().max())}
        return record

    @classmethod
    def rebuild(cls, model, record):
        apply(model, KernelsConfig(**record["config"]))


@register_section("kernels")
def _section(rec: dict, run_dir) -> str:
    lines = [f"- softmax: {rec['softmax']} ({rec['softmax_backend']} backend), "
             f"gelu: {rec['gelu']} ({rec['gelu_backend']} backend) on a {rec['act']} model; "
             f"{len(rec['swapped'])} modules swapped. On CPU every kernel computes its PyTorch reference; the "
             "exported graphs hold the same math in plain ONNX ops."]
    if "lut" in rec:
        t = rec["lut"]
        lines.append(f"- ReLU-minus-table: {t['entries']} intervals on [0, {t['x_max']}], "
                     f"max |error| vs {t['act']}: {t['max_abs_error']:.2e}")
    if "check" in rec:
        c = rec["check"]
        lines.append(f"- effect on {c['images']} calibration images: token cosine {c['token_cosine']:.6f} to the "
                     f"model before the swap, max |diff| {c['max_abs']:.3g}")
    return "\n".join(lines)
