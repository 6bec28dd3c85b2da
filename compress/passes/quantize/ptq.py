"""Post-training quantization of the canonical ViT, block by block on calibration images.

1. ``reparameterize_post_ln``: clipped per-channel ranges of every LayerNorm output fold into the
   LayerNorm affine and its consumers (exact in float), so per-tensor activation quantizers suffice.
2. ``build_plan`` + ``modules.wrap``: quantized twins of the weighted ops (and, when asked, of the
   attention matmuls) with their quantizers, all switched off.
3. ``Calibrator.run``: the patch embedding, then each block in order on the *quantized* model's
   activations: per group of ops, capture inputs, fit the input quantizer, then round the weights
   (GPTQ on the Gram matrix of the quantized inputs, or nearest) and switch both on. Optionally each
   block is then reconstructed against the float model's block output.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn as nn

from ... import ui
from .calibrate import channel_ranges, fit_activation, fit_log, fit_weight, output_objective, token_sample
from .config import QuantizeConfig
from .gptq import gptq, hessian_update, output_error
from .modules import QuantConv2d, QuantLinear, QuantMatMul, wrap
from .quantizers import LogQuantizer, UniformQuantizer, weight_shape
from .reparam import balance_qk, balance_v_proj, centre_k, reparameterize

LINEARS = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2")
CHUNK = 8  # images per forward while calibrating


def block_linears(model) -> list[str]:
    return [f"blocks.{i}.{n}" for i in range(len(model.blocks)) for n in LINEARS]


def check_paths(model, cfg: QuantizeConfig) -> None:
    """``overrides`` and ``skip`` must name modules this model has (a typo would silently do nothing)."""
    import difflib

    from ...errors import UserError

    linears = block_linears(model)
    for key, paths, valid in (("overrides", cfg.overrides, linears), ("skip", cfg.skip, linears + ["patch_embed.proj"])):
        for path in paths:
            if path not in valid:
                close = difflib.get_close_matches(path, valid, n=1)
                raise UserError(f"quantize {key}: the model has no quantizable module {path!r}",
                                f"did you mean {close[0]!r}?" if close else
                                f"module paths look like blocks.0.attn.q (blocks 0..{len(model.blocks) - 1})")


def _groups(attention: bool) -> list[tuple[str, ...]]:
    g = [("attn.q", "attn.k", "attn.v")]
    if attention:
        g += [("attn.qk_matmul",), ("attn.av_matmul",)]
    return g + [("attn.proj",), ("mlp.fc1",), ("mlp.fc2",)]


def _chunks(x: torch.Tensor, n: int = CHUNK):
    return x.split(n) if isinstance(x, torch.Tensor) else x


@torch.no_grad()
def _run(fn: Callable, xs) -> torch.Tensor:
    return torch.cat([fn(x) for x in _chunks(xs)])


# -- 1. reparameterization ------------------------------------------------------------------------
def _output_map(model) -> list[tuple]:
    """The final LayerNorm and the align pass's linear map reading it, if there is one."""
    from ...models.heads import OutputMap

    if not isinstance(model.norm, OutputMap):
        return []
    ln = getattr(model.norm.norm, "norm", model.norm.norm)  # inside an embed-pruned encoder's WidthRestore
    return [(ln, [model.norm.map])] if isinstance(ln, nn.LayerNorm) and ln.weight is not None else []


@torch.no_grad()
def reparameterize_post_ln(model, images: torch.Tensor, cfg: QuantizeConfig, max_rows: int = 32768) -> list[dict]:
    """Fold clipped per-channel ranges of norm1 / norm2 outputs into the norms and q/k/v, fc1 (and of the
    final norm into the align pass's output map)."""
    pc = cfg.reparam
    rows: dict[int, list[torch.Tensor]] = {}
    norms = [(blk.norm1, [blk.attn.q, blk.attn.k, blk.attn.v]) for blk in model.blocks]
    norms += [(blk.norm2, [blk.mlp.fc1]) for blk in model.blocks]
    norms += _output_map(model)
    per_batch = max(1, max_rows // max(1, len(images) // CHUNK + 1))
    g = torch.Generator().manual_seed(0)

    def keep(i):
        def hook(_m, _i, out):
            flat = out.reshape(-1, out.shape[-1])
            idx = torch.randperm(flat.shape[0], generator=g)[:per_batch]
            rows.setdefault(i, []).append(flat[idx].clone())
        return hook

    hooks = [n.register_forward_hook(keep(i)) for i, (n, _) in enumerate(norms)]
    try:
        _run(model, images)
    finally:
        for h in hooks:
            h.remove()
    stats = []
    for i, (norm, consumers) in enumerate(norms):
        lo, hi = channel_ranges(torch.cat(rows[i]), pc.clip, pc.percentile)
        stats.append(reparameterize(norm, consumers, lo, hi, pc.migration))
    return stats


@torch.no_grad()
def _output_stats(model, images: torch.Tensor, paths: list[str]) -> tuple[dict, dict]:
    """Per-channel max |y| and mean y of each module's output over the images."""
    amax: dict[str, torch.Tensor] = {}
    total: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def keep(name):
        def hook(_m, _i, out):
            flat = out.detach().reshape(-1, out.shape[-1])
            a = flat.abs().amax(0)
            amax[name] = torch.maximum(amax[name], a) if name in amax else a
            total[name] = total.get(name, 0) + flat.double().sum(0)
            rows[name] = rows.get(name, 0) + flat.shape[0]
        return hook

    hooks = [model.get_submodule(p).register_forward_hook(keep(p)) for p in paths]
    try:
        _run(model, images)
    finally:
        for h in hooks:
            h.remove()
    return amax, {p: (total[p] / rows[p]).float() for p in total}


@torch.no_grad()
def balance_attention(model, images: torch.Tensor, cfg: QuantizeConfig) -> list[dict]:
    """Exact rescalings inside attention: v against proj (always: it flattens proj's input); when the
    attention matmuls are quantized, k is centred (softmax ignores it) and q balanced against k."""
    n = len(model.blocks)
    stats = [{"block": i} for i in range(n)]
    if cfg.attention.quantize:
        _, mean = _output_stats(model, images, [f"blocks.{i}.attn.k" for i in range(n)])
        for i, blk in enumerate(model.blocks):
            stats[i]["k_centre"] = centre_k(blk.attn, mean[f"blocks.{i}.attn.k"])
    amax, _ = _output_stats(model, images, [f"blocks.{i}.attn.{x}" for i in range(n) for x in "qkv"])
    for i, blk in enumerate(model.blocks):
        a = lambda x: amax[f"blocks.{i}.attn.{x}"]  # noqa: E731
        stats[i]["v_proj"] = balance_v_proj(blk.attn, a("v"), cfg.reparam.migration)
        if cfg.attention.quantize:
            stats[i]["qk"] = balance_qk(blk.attn, a("q"), a("k"))
    return stats


def reparameterize_model(model, images: torch.Tensor, cfg: QuantizeConfig) -> dict:
    """All exact rescalings the config asks for (none for weight-only quantization)."""
    out = {}
    if cfg.activations.bits and cfg.reparam.post_layernorm:
        out["post_layernorm"] = reparameterize_post_ln(model, images, cfg)
    if cfg.activations.bits and cfg.reparam.attention:
        out["attention"] = balance_attention(model, images, cfg)
    return out


# -- 2. the plan -------------------------------------------------------------------------------------
def _uniform(bits, symmetric, shape=(), group=None) -> dict:
    return {"kind": "uniform", "bits": int(bits), "symmetric": bool(symmetric), "shape": list(shape), "group": group}


def build_plan(model, cfg: QuantizeConfig, bits: dict[str, int]) -> dict[str, dict]:
    """Module path -> quantizer specs (``bits``: weight bits per block linear)."""
    w, a, att = cfg.weights, cfg.activations.bits, cfg.attention
    plan: dict[str, dict] = {}

    def wspec(mod: nn.Module, b: int) -> dict:
        gran = w.granularity
        k = mod.weight[0].numel()
        if gran == "group" and k % w.group_size:
            gran = "channel"  # e.g. a 588-wide patch embedding: per channel instead
        shape, group = weight_shape(mod.weight, gran, w.group_size)
        return _uniform(b, True, shape, group)

    centred = cfg.reparam.post_layernorm
    for i in range(len(model.blocks)):
        p = f"blocks.{i}"
        act = {"attn.q": centred, "attn.k": centred, "attn.v": centred, "attn.proj": True, "mlp.fc1": centred}
        gelu = cfg.gelu if cfg.gelu != "auto" else ("uniform" if (a or 16) >= 8 else "sulq")
        for name in LINEARS:
            path = f"{p}.{name}"
            if path in cfg.skip:
                continue
            mod = model.get_submodule(path)
            if not a:
                aspec = None
            elif name == "mlp.fc2":
                aspec = {"kind": "log", "bits": a, "mode": "sulq"} if gelu == "sulq" else _uniform(a, False)
            else:
                aspec = _uniform(a, act[name])
            plan[path] = {"weight_quant": wspec(mod, cfg.overrides.get(path, bits.get(path, w.bits))),
                          "input_quant": aspec}
        if att.quantize and a:
            ab = att.bits or a
            soft = (_uniform(ab, False) if att.softmax == "uniform" else
                    {"kind": "log", "bits": ab, "mode": att.softmax})
            plan[f"{p}.attn.qk_matmul"] = {"a_quant": _uniform(ab, True), "b_quant": _uniform(ab, True)}
            plan[f"{p}.attn.av_matmul"] = {"a_quant": soft, "b_quant": _uniform(ab, True)}
    pb = cfg.patch_embed_bits
    if pb and "patch_embed.proj" not in cfg.skip:
        conv = model.patch_embed.proj
        plan["patch_embed.proj"] = {"weight_quant": _uniform(pb, True, [conv.out_channels, 1, 1, 1]),
                                    "input_quant": _uniform(max(pb, a or 8), True) if a and cfg.patch_embed_input else None}
    return plan


def set_enabled(mod: nn.Module, on: bool) -> None:
    for q in mod.modules():
        if hasattr(q, "quant_enabled"):
            q.quant_enabled = on


class _Stop(Exception):
    """Raised by a capture hook: the rest of the block's forward is not needed."""


# -- 3. calibration ------------------------------------------------------------------------------
class Calibrator:
    """Calibrates a wrapped model block by block; ``reconstruct(i, block, x_q, y_fp)`` may refine each block."""

    def __init__(self, model, cfg: QuantizeConfig, images: torch.Tensor, reference=None,
                 reconstruct: Callable | None = None):
        self.model, self.cfg, self.images = model, cfg, images
        self.reference, self.reconstruct = reference, reconstruct
        self.layer_error: dict[str, float] = {}
        self.act_error: dict[str, float] = {}

    @torch.no_grad()
    def run(self) -> dict:
        model = self.model
        set_enabled(model, False)
        t0 = time.time()
        pe = model.patch_embed.proj
        if isinstance(pe, QuantConv2d):
            if pe.input_quant is not None:
                self.act_error["patch_embed.proj"] = fit_activation(pe.input_quant, self.images, "minmax")
            fit_weight(pe.weight_quant, pe.weight, self.cfg.weights.calibration)
            wq = pe.weight_quant.fake(pe.weight)
            self.layer_error["patch_embed.proj"] = float((wq - pe.weight).pow(2).sum() / pe.weight.pow(2).sum())
            pe.weight.copy_(wq)
            set_enabled(pe, True)
        x_q = _run(model.embed, self.images)
        x_fp = _run(self.reference.embed, self.images) if self.reference is not None else None
        for i, blk in ui.progress(enumerate(model.blocks), total=len(model.blocks), desc="calibrating blocks",
                                  unit="block"):
            for group in _groups(self.cfg.attention.quantize):
                self._calibrate_group(f"blocks.{i}", blk, group, x_q)
            if self.reconstruct is not None and x_fp is not None:
                y_fp = _run(self.reference.blocks[i], x_fp)
                with torch.enable_grad():
                    self.reconstruct(i, blk, x_q, y_fp)
                x_fp = y_fp
            elif x_fp is not None:
                x_fp = _run(self.reference.blocks[i], x_fp)
            x_q = _run(blk, x_q)
            ui.info(f"    block {i}: calibrated ({time.time() - t0:.0f}s)")
        return {"layer_error": self.layer_error, "activation_error": self.act_error, "seconds": time.time() - t0}

    def _capture(self, blk: nn.Module, mods: dict[str, nn.Module], x: torch.Tensor) -> dict[str, list]:
        """Inputs of ``mods`` while the block runs on ``x``; the forward stops once all are seen."""
        got: dict[str, list] = {n: [] for n in mods}
        last = list(mods)[-1]

        def hook(n):
            def fn(_m, args):
                got[n].append(tuple(a.detach() for a in args))
                if n == last:
                    raise _Stop
            return fn

        hooks = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
        try:
            with torch.no_grad():
                for xc in _chunks(x):
                    try:
                        blk(xc)
                    except _Stop:
                        pass
        finally:
            for h in hooks:
                h.remove()
        return {n: [torch.cat([a[j] for a in v]) for j in range(len(v[0]))] for n, v in got.items()}

    def _calibrate_group(self, prefix: str, blk: nn.Module, group: tuple[str, ...], x: torch.Tensor) -> None:
        mods = {n: blk.get_submodule(n) for n in group}
        mods = {n: m for n, m in mods.items() if isinstance(m, (QuantLinear, QuantMatMul))}
        if not mods:
            return
        inputs = self._capture(blk, mods, x)
        acfg = self.cfg.activations
        first = next(iter(mods.values()))
        if isinstance(first, QuantMatMul):
            for n, m in mods.items():
                a, b = inputs[n]
                for slot, t in (("a_quant", a), ("b_quant", b)):
                    self.act_error[f"{prefix}.{n}.{slot}"] = self._fit(getattr(m, slot), t, self._matmul_objective(
                        slot, a, b))
                set_enabled(m, True)
            return
        # linears of one group share their input (q, k, v read the same LayerNorm output)
        xin = inputs[group[0]][0] if group[0] in inputs else next(iter(inputs.values()))[0]
        aq = first.input_quant
        if aq is not None:
            obj = None
            if acfg.objective == "output":
                w = torch.cat([m.weight.detach() for m in mods.values()])
                obj = output_objective(token_sample(xin), lambda d, w=w: d @ w.T)
            self.act_error[f"{prefix}.{group[0]}"] = self._fit(aq, xin, obj)
            for m in mods.values():
                if m.input_quant is not None and m.input_quant is not aq:
                    m.input_quant.load_state_dict(aq.state_dict())
                    m.input_quant.quant_enabled = True
            aq.quant_enabled = True
            xin = _run(aq, xin)
        h = None
        for xc in _chunks(xin, 4):
            h = hessian_update(h, xc)
        h = h / max(1, xin[..., 0].numel())
        for n, m in mods.items():
            self.layer_error[f"{prefix}.{n}"] = quantize_weight(m, h, self.cfg)


    def _fit(self, q, x: torch.Tensor, objective=None) -> float:
        acfg = self.cfg.activations
        if isinstance(q, LogQuantizer):
            return fit_log(q, x, objective)
        return fit_activation(q, x, acfg.calibration, acfg.percentile, objective)

    def _matmul_objective(self, slot: str, a: torch.Tensor, b: torch.Tensor):
        """Error in a @ b of quantizing one operand, on the first two images (every head and token)."""
        if self.cfg.activations.objective != "output":
            return None
        a2, b2 = a[:2].float(), b[:2].float()
        if slot == "a_quant":
            return lambda fq: ((fq(a2) - a2) @ b2).pow(2).sum().item()
        return lambda fq: (a2 @ (fq(b2) - b2)).pow(2).sum().item()


def quantize_weight(lin: QuantLinear, h: torch.Tensor | None, cfg: QuantizeConfig) -> float | None:
    """Fit the weight quantizer's scales, round the weight (GPTQ or nearest), store it on the grid."""
    q: UniformQuantizer = lin.weight_quant
    if q is None:
        return None
    w = lin.weight.detach()
    fit_weight(q, w, cfg.weights.calibration)
    if cfg.weights.rounding == "gptq" and h is not None:
        wq = gptq(w, h, q, cfg.weights.damp)
    else:
        wq = q.fake(w)
    err = output_error(w, wq, h) if h is not None else None
    lin.weight.data.copy_(wq)
    q.quant_enabled = True
    return err


def quantize(model, cfg: QuantizeConfig, images: torch.Tensor, bits: dict[str, int] | None = None,
             reference=None, reconstruct: Callable | None = None) -> dict:
    """Wrap and calibrate ``model`` in place (post-LN reparameterization must already be applied)."""
    plan = build_plan(model, cfg, bits or {})
    wrap(model, plan)
    return Calibrator(model, cfg, images, reference, reconstruct).run() | {"plan": plan}
