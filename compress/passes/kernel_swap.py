"""Swap every block's attention softmax and MLP activation for a chosen kernel / approximation.

``passes: {kernels: {softmax: triton, gelu: relu-lut}}``. ``softmax`` names the method (``exact``,
``online``, ``online-poly1..3``) or, as a shorthand for ``exact`` on that backend, ``triton`` / ``cuda``;
``gelu`` likewise (``erf``, ``tanh``, ``relu-lut``, ``triton``, ``cuda``). ``keep`` leaves the op alone.
On CPU every choice computes its PyTorch reference; exported graphs hold the same math in plain ONNX ops.
``int`` (both ops) computes on int16 codes in integer arithmetic (``compress.kernels.integer``): each
module's power-of-two input scale is calibrated here on ``check_images`` images (at least 8) and stored in
the record, and the exported graph holds the same integer ops, so every runtime computes the same codes.
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
from ..kernels.integer import OUT_BITS, IntGELU, IntSoftmax, exponent_for
from ..kernels.reference import ACT_FNS, gelu_f32
from ..models.vit import QuickGELU, Softmax
from ..pipeline.base import Pass, PassConfig, register_pass
from ..recipes.schema import Strict
from ..utils.hooks import forward_with_hooks

SoftmaxChoice = Literal["keep", "exact", "online", "online-poly1", "online-poly2", "online-poly3", "triton", "cuda",
                        "int"]
GeluChoice = Literal["keep", "erf", "tanh", "relu-lut", "triton", "cuda", "int"]
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


def int_exponents(model: nn.Module, cfg: KernelsConfig, images: torch.Tensor) -> dict[str, int]:
    """Per swapped module path, the input scale exponent k (2^-k) its int16 codes need on ``images``."""
    want = [("softmax", f"blocks.{i}.attn.softmax", b.attn.softmax) for i, b in enumerate(model.blocks)
            if cfg.softmax == "int"] + [("gelu", f"blocks.{i}.mlp.act", b.mlp.act) for i, b in enumerate(model.blocks)
                                        if cfg.gelu == "int"]
    amax: dict[str, float] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, a, p=p: amax.__setitem__(
        p, max(amax.get(p, 0.0), float(a[0].detach().abs().max())))) for _, p, m in want]
    forward_with_hooks(model, images, hooks)
    return {p: exponent_for(amax.get(p, 0.0), kind) for kind, p, _ in want}


def apply(model: nn.Module, cfg: KernelsConfig, exponents: dict[str, int] | None = None) -> dict:
    """Swap the ops of every block as ``cfg`` says; return what was done (the pass record's core).
    ``exponents``: the integer kernels' input scale exponents by module path (``int_exponents``)."""
    exponents = exponents or {}
    sm_method, sm_backend = _choice(cfg.softmax, cfg.backend, "exact", "softmax")
    act = model.cfg.act
    g_choice, g_backend = _choice(cfg.gelu, cfg.backend, EXACT_GELU.get(act, "erf"), "gelu")
    out: dict = {"softmax": sm_method, "softmax_backend": sm_backend, "gelu": g_choice, "gelu_backend": g_backend,
                 "act": act, "swapped": []}
    table = None
    if g_choice == "int":
        if act != "gelu":
            raise UserError(f"passes.kernels: gelu: int computes erf GELU; this model's activation is {act}",
                            "use gelu: relu-lut (its table is built from the model's own activation) or keep")
        out["gelu_exact"] = False
    elif g_choice != "keep":
        g_method, table, out["gelu_exact"] = gelu_plan(act, g_choice, cfg)
    def exp_of(path: str) -> int:
        if path not in exponents:
            raise UserError(f"passes.kernels: no calibrated input scale for the integer kernel at {path}",
                            "the pass calibrates them (int_exponents); rebuild from the pass's own record")
        return exponents[path]

    int_backend = cfg.backend
    for i, blk in enumerate(model.blocks):
        if sm_method == "int":
            p = f"blocks.{i}.attn.softmax"
            out["swapped"].append(_swap(blk.attn, "softmax", (Softmax, KernelSoftmax, IntSoftmax),
                                        lambda _, p=p: IntSoftmax(exp_of(p), int_backend), p))
        elif sm_method != "keep":
            out["swapped"].append(_swap(blk.attn, "softmax", (Softmax, KernelSoftmax, IntSoftmax),
                                        lambda _: KernelSoftmax(sm_method, sm_backend), f"blocks.{i}.attn.softmax"))
        if g_choice == "int":
            p = f"blocks.{i}.mlp.act"
            out["swapped"].append(_swap(blk.mlp, "act", (nn.GELU, KernelGELU, QuickGELU, IntGELU),
                                        lambda _, p=p: IntGELU(exp_of(p), int_backend), p))
        elif g_choice != "keep":
            out["swapped"].append(_swap(blk.mlp, "act", (nn.GELU, KernelGELU, QuickGELU, IntGELU),
                                        lambda _: KernelGELU(g_method, g_backend, table), f"blocks.{i}.mlp.act"))
    if exponents:
        out["int"] = {"exponents": dict(exponents), "softmax_out_scale": f"2^-{OUT_BITS}", "gelu_out_scale": "input's"}
    if table is not None:
        out["lut"] = {"act": table.act, "entries": table.entries, "x_max": table.x_max,
                      "max_abs_error": lut_error(table)}
    return out


def kernels_section(rec: dict, run_dir) -> str:
    lines = [f"- softmax: {rec['softmax']} ({rec['softmax_backend']} backend), "
             f"gelu: {rec['gelu']} ({rec['gelu_backend']} backend) on a {rec['act']} model; "
             f"{len(rec['swapped'])} modules swapped. On CPU every kernel computes its PyTorch reference; the "
             "exported graphs hold the same math in plain ONNX ops."]
    if "int" in rec:
        ks = sorted(set(rec["int"]["exponents"].values()))
        lines.append(f"- integer kernels on int16 codes, input scales 2^-k with k in {ks} (calibrated), softmax codes "
                     f"of scale 2^-{OUT_BITS}, GELU codes of the input's scale; the exported graph holds the same "
                     "integer ops")
    if "lut" in rec:
        t = rec["lut"]
        lines.append(f"- ReLU-minus-table: {t['entries']} intervals on [0, {t['x_max']}], "
                     f"max |error| vs {t['act']}: {t['max_abs_error']:.2e}")
    if "check" in rec:
        c = rec["check"]
        lines.append(f"- effect on {c['images']} calibration images: token cosine {c['token_cosine']:.6f} to the "
                     f"model before the swap, max |diff| {c['max_abs']:.3g}")
    return "\n".join(lines)


@register_pass
class KernelsPass(Pass):
    name = "kernels"
    Config = KernelsConfig
    summary = "swap attention softmax / MLP GELU for Triton or CUDA kernels and low-cost approximations"
    report_section = staticmethod(kernels_section)

    def run(self, state, ctx):
        from ..models.pooling import token_cosine

        model = state.model.eval()
        images, exponents = None, None
        integer = "int" in (self.config.softmax, self.config.gelu)
        count = max(self.config.check_images, 8) if integer else self.config.check_images
        if count:
            images = torch.cat(ctx.calibration_batches(count))[:count]
            with torch.inference_mode():
                before = model(images)
            if integer:
                exponents = int_exponents(model, self.config, images)
        record = apply(model, self.config, exponents)
        if images is not None:
            with torch.inference_mode():
                after = model(images)
            record["check"] = {"images": len(images), "token_cosine": token_cosine(before, after),
                               "max_abs": float((after - before).abs().max())}
        return record

    @classmethod
    def rebuild(cls, model, record):
        apply(model, KernelsConfig(**record["config"]), record.get("int", {}).get("exponents"))
