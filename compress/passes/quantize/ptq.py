"""Post-training quantization of the canonical ViT, block by block on calibration images.

1. ``reparameterize_post_ln``: clipped per-channel ranges of every LayerNorm output fold into the
   LayerNorm affine and its consumers (exact in float), so per-tensor activation quantizers suffice.
2. ``build_plan`` + ``modules.wrap``: quantized twins of the weighted ops (and, when asked, of the
   attention matmuls) with their quantizers, all switched off.
3. ``Calibrator.run``: the patch embedding, then each block in order on the *quantized* model's
   activations: per group of ops, capture inputs, fit the input quantizer, then round the weights
   (GPTQ on the Gram matrix of the quantized inputs, or nearest) and switch both on. Optionally each
   block is then reconstructed against the float model's block output.

Lean by construction (issue 22): activations of all images are held for one block at a time; without
reconstruction a canonical block's group inputs are computed stage by stage from the previous stage's
(``Calibrator._staged``: one forward per block, the same values as re-running the block per group), and
every statistic that needs all tokens (post-LN ranges, Hessians) is reduced as soon as its block has run.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import torch
import torch.nn as nn

from ... import ui
from ...models.vit import Attention, Block, Mlp
from .calibrate import channel_ranges, fit_activation, fit_log, fit_weight, output_objective, token_sample
from .config import QuantizeConfig
from .asymmetric import asymmetric_targets
from .gptq import factor, gptq_many, hessian_update, output_error
from .modules import QuantConv2d, QuantLinear, QuantMatMul, wrap
from .quantizers import LogQuantizer, weight_shape
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
    """``fn`` over ``xs`` a chunk at a time, the results written into one tensor (no list to concatenate)."""
    if not isinstance(xs, torch.Tensor):
        return torch.cat([fn(x) for x in xs])
    out, at = None, 0
    for x in _chunks(xs):
        y = fn(x)
        if out is None:
            out = torch.empty((len(xs),) + y.shape[1:], dtype=y.dtype)
        out[at:at + len(y)] = y
        at += len(y)
    return out


# -- 1. reparameterization ------------------------------------------------------------------------
def _output_map(model) -> list[tuple]:
    """The final LayerNorm and the align pass's linear map reading it, if there is one."""
    from ...models.heads import OutputMap

    if not isinstance(model.norm, OutputMap):
        return []
    ln = getattr(model.norm.norm, "norm", model.norm.norm)  # inside an embed-pruned encoder's WidthRestore
    return [(ln, [model.norm.map])] if isinstance(ln, nn.LayerNorm) and ln.weight is not None else []


@torch.no_grad()
def _blockwise(model, images: torch.Tensor, after_block: Callable[[int], None], final_norm: bool = False) -> None:
    """The model's forward up to its final norm, one block at a time over all images (the same chunks and
    ops as ``_run(model, images)``): hooks see the same values, and ``after_block(i)`` may reduce and free
    what block i's hooks kept before the next block runs."""
    x = _run(model.embed, images)
    for i, blk in enumerate(model.blocks):
        x = _run(blk, x)
        after_block(i)
    if final_norm:  # what VisionTransformer.forward gives its final norm: the tokens, or the pooled feature
        _run(model.norm, model.pool(x) if model.cfg.fc_norm else x)


@torch.no_grad()
def reparameterize_post_ln(model, images: torch.Tensor, cfg: QuantizeConfig, max_rows: int = 32768,
                           amax_of: tuple[str, ...] = ()) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Fold clipped per-channel ranges of norm1 / norm2 outputs into the norms and q/k/v, fc1 (and of the
    final norm into the align pass's output map). The rows behind each range are reduced as soon as their
    block has run, so one block's rows are held at a time. Also returns the per-channel max |y| of the
    modules ``amax_of``, measured in the same forward (before the folding)."""
    pc = cfg.reparam
    rows: dict[int, list[torch.Tensor]] = {}
    ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    n = len(model.blocks)
    norms = [(blk.norm1, [blk.attn.q, blk.attn.k, blk.attn.v]) for blk in model.blocks]
    norms += [(blk.norm2, [blk.mlp.fc1]) for blk in model.blocks]
    norms += _output_map(model)
    per_batch = max(1, max_rows // max(1, len(images) // CHUNK + 1))
    g = torch.Generator().manual_seed(0)
    amax: dict[str, torch.Tensor] = {}
    # the rows kept of each chunk, drawn in the order a whole-model forward meets the norms (chunk by chunk,
    # then norm by norm), so streaming block by block keeps the same rows
    final = len(norms) > 2 * n
    order = [j for b in range(n) for j in (b, n + b)] + ([2 * n] if final else [])
    draws: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}
    for c, xc in enumerate(_chunks(images)):
        for j in order:
            count = len(xc) * (1 if j == 2 * n and model.cfg.fc_norm else model.cfg.num_tokens)
            draws[j, c] = (count, torch.randperm(count, generator=g)[:per_batch])
    seen = [0] * len(norms)

    def keep(i):
        def hook(_m, _i, out):
            flat = out.reshape(-1, out.shape[-1])
            count, idx = draws.pop((i, seen[i]), (None, None))
            if count != flat.shape[0]:  # not the token count foreseen: a fresh draw (still reproducible)
                idx = torch.randperm(flat.shape[0], generator=g)[:per_batch]
            seen[i] += 1
            rows.setdefault(i, []).append(flat[idx].clone())
        return hook

    def peak(name):
        def hook(_m, _i, out):
            a = out.detach().reshape(-1, out.shape[-1]).abs().amax(0)
            amax[name] = torch.maximum(amax[name], a) if name in amax else a
        return hook

    def reduce(i):
        ranges[i] = channel_ranges(torch.cat(rows.pop(i)), pc.clip, pc.percentile)

    hooks = [m.register_forward_hook(keep(i)) for i, (m, _) in enumerate(norms)]
    hooks += [model.get_submodule(p).register_forward_hook(peak(p)) for p in amax_of]
    try:
        _blockwise(model, images, lambda b: (reduce(b), reduce(n + b)), final_norm=final)
    finally:
        for h in hooks:
            h.remove()
    if final:
        reduce(2 * n)
    stats = [reparameterize(norm, consumers, *ranges[i], pc.migration) for i, (norm, consumers) in enumerate(norms)]
    return stats, amax


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
        _blockwise(model, images, lambda b: None)
    finally:
        for h in hooks:
            h.remove()
    return amax, {p: (total[p] / rows[p]).float() for p in total}


@torch.no_grad()
def balance_attention(model, images: torch.Tensor, cfg: QuantizeConfig, amax: dict | None = None) -> list[dict]:
    """Exact rescalings inside attention: v against proj (always: it flattens proj's input); when the
    attention matmuls are quantized, k is centred (softmax ignores it) and q balanced against k.
    ``amax``: v's per-channel max |y|, already measured (then no forward runs here)."""
    n = len(model.blocks)
    stats = [{"block": i} for i in range(n)]
    if cfg.attention.quantize:
        _, mean = _output_stats(model, images, [f"blocks.{i}.attn.k" for i in range(n)])
        for i, blk in enumerate(model.blocks):
            stats[i]["k_centre"] = centre_k(blk.attn, mean[f"blocks.{i}.attn.k"])
    if amax is None:
        amax, _ = _output_stats(model, images, [f"blocks.{i}.attn.{x}" for i in range(n) for x in "qkv"])
    for i, blk in enumerate(model.blocks):
        a = lambda x: amax[f"blocks.{i}.attn.{x}"]  # noqa: E731
        stats[i]["v_proj"] = balance_v_proj(blk.attn, a("v"), cfg.reparam.migration)
        if cfg.attention.quantize:
            stats[i]["qk"] = balance_qk(blk.attn, a("q"), a("k"))
    return stats


def reparameterize_model(model, images: torch.Tensor, cfg: QuantizeConfig) -> dict:
    """All exact rescalings the config asks for (none for weight-only quantization)."""
    out, amax = {}, None
    if cfg.activations.bits and cfg.reparam.post_layernorm:
        # v's output is the same function after the post-LN folding (exact in real arithmetic), so when only v
        # is balanced its range comes from this forward instead of a second one
        fused = cfg.reparam.attention and not cfg.attention.quantize
        paths = tuple(f"blocks.{i}.attn.v" for i in range(len(model.blocks))) if fused else ()
        out["post_layernorm"], amax = reparameterize_post_ln(model, images, cfg, amax_of=paths)
        amax = amax or None
    if cfg.activations.bits and cfg.reparam.attention:
        out["attention"] = balance_attention(model, images, cfg, amax)
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


def _canonical(blk: nn.Module) -> bool:
    """A block whose forward is exactly ``Block.forward`` over ``Attention`` and ``Mlp`` (what ``_staged``
    recomputes piece by piece)."""
    return type(blk) is Block and type(blk.attn) is Attention and type(blk.mlp) is Mlp


@torch.no_grad()
def float_stages(blk: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """The float block's group inputs in ``Calibrator._staged``'s order (norm1 output, attention output before
    proj, norm2 output, GELU output), then the block's output; each computed when asked for."""
    n1 = _run(blk.norm1, x)
    yield n1
    parts: list[torch.Tensor] = []
    hook = blk.attn.proj.register_forward_pre_hook(lambda _m, args: parts.append(args[0].detach()))
    try:
        _run(blk.attn, n1)
    finally:
        hook.remove()
    del n1
    z = torch.cat(parts)
    yield z
    h = x + _run(lambda c: blk.ls1(blk.attn.proj(c)), z)
    del z
    u = _run(blk.norm2, h)
    yield u
    a = _run(lambda c: blk.mlp.act(blk.mlp.fc1(c)), u)
    del u
    yield a
    yield h + _run(lambda c: blk.ls2(blk.mlp.fc2(c)), a)


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
        # the float model's activations: the reconstruction's target, and the asymmetric calibration's
        w = self.cfg.weights
        wanted = self.reconstruct is not None or w.asymmetric or w.bias_correction
        x_fp = _run(self.reference.embed, self.images) if self.reference is not None and wanted else None
        for i, blk in ui.progress(enumerate(model.blocks), total=len(model.blocks), desc="calibrating blocks",
                                  unit="block"):
            if self.reconstruct is None and _canonical(blk):
                ref = self.reference.blocks[i] if x_fp is not None else None
                x_q, x_fp = self._staged(f"blocks.{i}", blk, x_q, ref, x_fp)
                ui.info(f"    block {i}: calibrated ({time.time() - t0:.0f}s)")
                continue
            for group in _groups(self.cfg.attention.quantize):
                self._calibrate_group(f"blocks.{i}", blk, group, x_q)
            if x_fp is not None:
                y_fp = _run(self.reference.blocks[i], x_fp)
                if self.reconstruct is not None:
                    with torch.enable_grad():
                        self.reconstruct(i, blk, x_q, y_fp)
                x_fp = y_fp
            x_q = _run(blk, x_q)
            ui.info(f"    block {i}: calibrated ({time.time() - t0:.0f}s)")
        return {"layer_error": self.layer_error, "activation_error": self.act_error, "seconds": time.time() - t0}

    def _staged(self, prefix: str, blk: Block, x: torch.Tensor, ref: Block | None = None,
                x_fp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Calibrate a canonical block with one forward in all: each group's input is computed once from the
        previous stage's (the same ops on the same chunks as ``Block.forward``, so the same values), instead
        of re-running the block from its input for every group. ``ref``/``x_fp``: the float block and its input,
        staged alongside for the asymmetric calibration. Returns both blocks' outputs."""
        att = self.cfg.attention.quantize
        stages_fp = float_stages(ref, x_fp) if ref is not None else None
        fp = (lambda name: next(stages_fp)) if stages_fp is not None else (lambda name: None)
        self._calibrate_group(prefix, blk, ("attn.q", "attn.k", "attn.v"), x, given=_run(blk.norm1, x),
                              given_fp=fp("norm1"))
        for group in _groups(att)[1:-3]:  # the attention matmuls, when quantized
            self._calibrate_group(prefix, blk, group, x)
        z = self._capture(blk, {"attn.proj": blk.attn.proj}, x)["attn.proj"][0]  # runs the attention
        self._calibrate_group(prefix, blk, ("attn.proj",), x, given=z, given_fp=fp("attention"))
        h = torch.cat([xc + blk.ls1(blk.attn.proj(zc)) for xc, zc in zip(_chunks(x), _chunks(z))])
        del z
        u = _run(blk.norm2, h)
        self._calibrate_group(prefix, blk, ("mlp.fc1",), x, given=u, given_fp=fp("norm2"))
        a = _run(lambda uc: blk.mlp.act(blk.mlp.fc1(uc)), u)
        del u
        self._calibrate_group(prefix, blk, ("mlp.fc2",), x, given=a, given_fp=fp("gelu"))
        y = torch.cat([hc + blk.ls2(blk.mlp.fc2(ac)) for hc, ac in zip(_chunks(h), _chunks(a))])
        return y, (fp("output") if stages_fp is not None else None)

    def _capture(self, blk: nn.Module, mods: dict[str, nn.Module], x: torch.Tensor) -> dict[str, list]:
        """Inputs of ``mods`` while the block runs on ``x``; the forward stops once all are seen. Each input
        is written into one preallocated tensor (no per-chunk copies to concatenate)."""
        got: dict[str, list] = {}
        last, n, at = list(mods)[-1], len(x), [0]

        def hook(name):
            def fn(_m, args):
                if name not in got:
                    got[name] = [torch.empty((n,) + a.shape[1:], dtype=a.dtype) for a in args]
                for buf, a in zip(got[name], args):
                    buf[at[0]:at[0] + len(a)].copy_(a.detach())
                if name == last:
                    raise _Stop
            return fn

        hooks = [m.register_forward_pre_hook(hook(name)) for name, m in mods.items()]
        try:
            with torch.no_grad():
                for xc in _chunks(x):
                    try:
                        blk(xc)
                    except _Stop:
                        pass
                    at[0] += len(xc)
        finally:
            for h in hooks:
                h.remove()
        return got

    def _calibrate_group(self, prefix: str, blk: nn.Module, group: tuple[str, ...], x: torch.Tensor,
                         given: torch.Tensor | None = None, given_fp: torch.Tensor | None = None) -> None:
        """``given_fp``: the float model's input to the same group (asymmetric calibration / bias correction)."""
        mods = {n: blk.get_submodule(n) for n in group}
        mods = {n: m for n, m in mods.items() if isinstance(m, (QuantLinear, QuantMatMul))}
        if not mods:
            return
        first_name = next(iter(mods))
        if given is not None:  # the group's input, computed by the caller
            inputs = {first_name: [given]}
        else:  # linears of one group read one tensor: capturing the first is enough
            inputs = self._capture(blk, mods if isinstance(mods[first_name], QuantMatMul) else
                                   {first_name: mods[first_name]}, x)
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
        xin = inputs[first_name][0]
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
        h = None
        for xc in _chunks(xin, 4):  # the Gram matrix of the quantized input, a chunk at a time
            h = hessian_update(h, xc if aq is None else aq(xc))
        h = h / max(1, xin[..., 0].numel())
        wcfg, shift = self.cfg.weights, None
        if given_fp is not None and (wcfg.asymmetric or wcfg.bias_correction):
            shift = asymmetric_targets(list(mods.values()), xin, given_fp, aq, h, wcfg)
        errs = quantize_weights(list(mods.values()), h, self.cfg)
        if shift is not None:
            shift.correct_bias(list(mods.values()))
        for n, m in mods.items():
            self.layer_error[f"{prefix}.{n}"] = errs[id(m)]


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


def quantize_weights(mods: list[QuantLinear], h: torch.Tensor | None, cfg: QuantizeConfig) -> dict[int, float | None]:
    """Fit each weight quantizer's scales, round the weights (GPTQ, all of them against one factorisation of
    their shared input Hessian, or nearest), store them on the grid; returns id(module) -> output error."""
    errs: dict[int, float | None] = {id(m): None for m in mods}
    lins = [m for m in mods if m.weight_quant is not None]
    ws = [m.weight.detach() for m in lins]
    for m, w in zip(lins, ws):
        fit_weight(m.weight_quant, w, cfg.weights.calibration)
    qs = [m.weight_quant for m in lins]
    if cfg.weights.rounding == "gptq" and h is not None and lins:
        wqs = gptq_many(ws, factor(h, cfg.weights.damp), qs)
    else:
        wqs = [q.fake(w) for w, q in zip(ws, qs)]
    for m, w, wq in zip(lins, ws, wqs):
        errs[id(m)] = output_error(w, wq, h) if h is not None else None
        m.weight.data.copy_(wq)
        m.weight_quant.quant_enabled = True
    return errs


def quantize(model, cfg: QuantizeConfig, images: torch.Tensor, bits: dict[str, int] | None = None,
             reference=None, reconstruct: Callable | None = None) -> dict:
    """Wrap and calibrate ``model`` in place (post-LN reparameterization must already be applied)."""
    plan = build_plan(model, cfg, bits or {})
    wrap(model, plan)
    return Calibrator(model, cfg, images, reference, reconstruct).run() | {"plan": plan}
