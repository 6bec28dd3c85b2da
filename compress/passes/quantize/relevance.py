"""Layer-wise relevance propagation through the canonical ViT, for LRP-QViT mixed precision.

Relevance is computed as gradient x input with the rules of AttnLRP (Achtibat et al., ICML 2024)
planted as forward hooks on the canonical modules, so the model's own forward is explained:

* ``nn.Linear`` / patch ``nn.Conv2d``: epsilon rule (the bias absorbs its share; the output's gradient
  is scaled by y / (y + eps sign y), eps relative to the token's RMS so DINOv2's outlier channels
  and near-zero outputs are treated alike).
* ``mlp.act`` (GELU family): identity rule, R_in = R_out.
* ``nn.LayerNorm``: identity rule on the normalisation (std treated as constant, centring is linear).
* ``attn.qk_matmul`` / ``attn.av_matmul``: uniform rule, half of the relevance to each operand.
* ``attn.softmax``: ``attnlrp`` Taylor rule at the input, R_in = x (R_out - s sum R_out) (what
  gradient x input gives), or ``cp`` (AH rule of CP-LRP: attention weights are constants, so
  q and k receive no relevance).
* residual adds, LayerScale, pooling, reshapes: linear, hence exactly conservative under gradient x input.

lxt's efficient rules are these same few lines, but ``lxt.efficient`` does not import beside
transformers 5 and monkey-patches classes globally, so the rules live here as hooks.

The target seeds each image with total relevance 1: for an encoder, the pooled feature
f = [cls, mean patch] the linear probe reads, centred over the calibration images (R = f_c^2 / |f_c|^2,
the image-specific part a probe separates classes with); or the predicted-class logit of the model's
head or of a given probe head. A layer's contribution score is the relevance flowing through it
(sum of |R| at its output, averaged over images), normalised to sum to 1 over the quantizable layers.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch
import torch.nn as nn

from ... import ui
from ...errors import UserError
from ...models.pooling import pooled
from ...models.vit import MatMul, Softmax, VisionTransformer

RULES = ("attnlrp", "cp")
TARGETS = ("auto", "feature", "logit", "tokens")
Rule = Literal["attnlrp", "cp"]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the incoming gradient is multiplied by a constant tensor or scalar."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None


def _stabilize(y: torch.Tensor, eps: float) -> torch.Tensor:
    return y + eps * torch.where(y >= 0, 1.0, -1.0).to(y)


@dataclass
class _Tap:
    """Relevance totals at one tapped op (weighted layer, LayerNorm, softmax), summed over images."""

    out_signed: float = 0.0  # sum of R at the output
    out_abs: float = 0.0  # sum of |R| at the output (the contribution score before normalisation)
    in_signed: float = 0.0  # sum of R passed on to the input (= out minus the bias share and eps)


@dataclass
class RelevanceProfile:
    """Per-layer contribution scores plus the totals that let conservation be checked."""

    scores: dict[str, float]  # quantizable layer -> share of relevance, sums to 1
    layer_out: dict[str, float]  # signed relevance at each layer's output, mean per image
    layer_in: dict[str, float]  # signed relevance the layer passes to its input, mean per image
    block_in: list[float]  # signed relevance at each block's input, mean per image
    block_out: list[float]
    target: float  # relevance arriving at the model output, mean per image (1 unless the feature is centred)
    pixels: float  # relevance reaching the input image
    rule: str
    target_kind: str
    images: int
    seconds: float
    params: dict[str, int] = field(default_factory=dict)

    def block_error(self) -> list[float]:
        """|R_in - R_out| / |R_out| per block: the share its biases, eps and softmax absorb (raw conservation)."""
        return [abs(i - o) / max(abs(o), 1e-12) for i, o in zip(self.block_in, self.block_out)]

    def absorbed(self, block: int) -> float:
        """Relevance taken up inside a block by biases, eps and the softmax (out - in of its tapped ops)."""
        pre = f"blocks.{block}."
        return sum(self.layer_out[n] - self.layer_in[n] for n in self.layer_out if n.startswith(pre))

    def balance_error(self) -> list[float]:
        """Bias-inclusive conservation per block: |R_out - R_in - absorbed| / |R_out| (float rounding only)."""
        return [abs(o - i - self.absorbed(b)) / max(abs(o), 1e-12)
                for b, (i, o) in enumerate(zip(self.block_in, self.block_out))]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("scores", "layer_out", "layer_in", "block_in", "block_out",
                                               "target", "pixels", "rule", "target_kind", "images",
                                               "seconds", "params")} | {"block_error": self.block_error(),
                                                                      "balance_error": self.balance_error()}


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The weighted layers a quantizer acts on, by module path (``blocks.3.attn.q``, ``patch_embed.proj``)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


class _Hooks:
    def __init__(self, model: nn.Module, rule: str, eps: float):
        self.model, self.rule, self.eps = model, rule, eps
        self.weighted = quantizable_layers(model)
        self.taps: dict[str, _Tap] = {}
        self.blocks = list(getattr(model, "blocks", []))
        self.block_in = [0.0] * len(self.blocks)
        self.block_out = [0.0] * len(self.blocks)
        self.handles = []

    # -- rules ------------------------------------------------------------------------
    def _ratio(self, y: torch.Tensor) -> torch.Tensor:
        """Epsilon rule as a gradient scale y / (y + eps sign y), eps relative to the token's RMS."""
        y = y.detach()
        return y / _stabilize(y, self.eps * y.pow(2).mean(-1, keepdim=True).sqrt() + 1e-12)

    def _tapped(self, name: str, y: torch.Tensor, b: torch.Tensor | None, ratio: torch.Tensor) -> torch.Tensor:
        tap = self.taps.setdefault(name, _Tap())
        out = _ScaleGrad.apply(y, ratio)

        def record(g):
            r = (y * g).detach()
            tap.out_signed += r.sum().item()
            tap.out_abs += r.abs().sum().item()
            tap.in_signed += ((y - b if b is not None else y) * g * ratio).sum().item()

        out.register_hook(record)
        return out

    def _weighted(self, name: str):
        def hook(mod, inputs, y):
            b = mod.bias
            if b is not None and isinstance(mod, nn.Conv2d):
                b = b.view(-1, 1, 1)
            # channels-first conv: eps relative to the RMS over channels
            ratio = self._ratio(y.movedim(1, -1)).movedim(-1, 1) if y.ndim == 4 else self._ratio(y)
            return self._tapped(name, y, b, ratio)

        return hook

    def _layer_norm(self, name: str):
        def hook(mod, inputs, y):
            x = inputs[0]
            mean = x.mean(-1, keepdim=True)
            std = (x.var(-1, unbiased=False, keepdim=True) + mod.eps).sqrt().detach()
            out = (x - mean) / std
            if mod.weight is not None:
                out = out * mod.weight
            if mod.bias is None:
                return out
            out = out + mod.bias
            return self._tapped(name, out, mod.bias, self._ratio(out))

        return hook

    def _softmax(self, name: str):
        def hook(mod, inputs, y):
            if self.rule == "cp":
                return y.detach()
            x = inputs[0]
            tap = self.taps.setdefault(name, _Tap())
            # a hook never captures the tensor it is registered on (that cycle keeps every graph alive)
            yd, xd = y.detach(), x.detach()
            y.register_hook(lambda g: setattr(tap, "out_signed", tap.out_signed + (yd * g).sum().item()))
            x.register_hook(lambda g: setattr(tap, "in_signed", tap.in_signed + (xd * g).sum().item()))
            return y

        return hook

    @staticmethod
    def _identity(mod, inputs, y):
        x = inputs[0]
        nz = x.abs() > 1e-12
        ratio = torch.where(nz, y / torch.where(nz, x, torch.ones_like(x)), torch.full_like(x, 0.5))
        return x * ratio.detach()  # GELU family: y/x -> 1/2 at 0

    def _uniform(self, mod, inputs, y):
        return _ScaleGrad.apply(y, 0.5) if self.rule == "attnlrp" else y

    def _block(self, i: int):
        def pre(mod, inputs):
            x = inputs[0]
            xd = x.detach()
            x.register_hook(lambda g: self._add(self.block_in, i, xd, g))

        def post(mod, inputs, y):
            yd = y.detach()
            y.register_hook(lambda g: self._add(self.block_out, i, yd, g))

        return pre, post

    @staticmethod
    def _add(acc: list, i: int, t: torch.Tensor, g: torch.Tensor) -> None:
        acc[i] += (t * g).sum().item()

    # -- install / remove -------------------------------------------------------------
    def __enter__(self):
        hook = lambda m, fn: self.handles.append(m.register_forward_hook(fn))  # noqa: E731
        for name, mod in self.model.named_modules():
            if name in self.weighted:
                hook(mod, self._weighted(name))
            elif isinstance(mod, nn.LayerNorm):
                hook(mod, self._layer_norm(name))
            elif isinstance(mod, MatMul):
                hook(mod, self._uniform)
            elif isinstance(mod, Softmax):
                hook(mod, self._softmax(name))
            elif name.endswith("mlp.act"):
                hook(mod, self._identity)
        for i, blk in enumerate(self.blocks):
            pre, post = self._block(i)
            self.handles.append(blk.register_forward_pre_hook(pre))
            hook(blk, post)
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()


@contextmanager
def _frozen(model: nn.Module):
    """No parameter gradients (half the backward cost), eval mode; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model.eval()
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(training)


def _target_kind(model: nn.Module, target: str, head) -> str:
    if target not in TARGETS:
        raise UserError(f"unknown relevance target {target!r}", f"choose one of {', '.join(TARGETS)}")
    cfg = getattr(model, "cfg", None)
    classifier = cfg is not None and cfg.global_pool != "none" and cfg.num_classes > 0
    if target == "auto":
        return "logit" if (head is not None or classifier) else "feature"
    if target == "logit" and not (head is not None or classifier):
        raise UserError("relevance target 'logit' needs class logits, but the model is an encoder without a head",
                        "pass head=<probe logits callable> or use target='feature'")
    return target


def _output(model: nn.Module, x: torch.Tensor, kind: str, head) -> torch.Tensor:
    out = model(x)
    if out.ndim == 3:  # encoder tokens -> what the probe reads, or every token (a dense head reads them all)
        out = out.flatten(1) if kind == "tokens" else pooled(out, model.cfg.num_prefix_tokens)
    return head(out) if kind == "logit" and head is not None else out


def _seed(out: torch.Tensor, kind: str, center: torch.Tensor | None) -> torch.Tensor:
    """Gradient seed giving each image relevance 1 at the target.

    feature: R = f_c^2 / |f_c|^2 at the centred feature f_c = f - mean (the image-specific part the probe
    separates classes with; the mean acts as a bias). logit: the predicted class logit.
    """
    o = out.detach()
    if kind in ("feature", "tokens"):
        fc = o - center if center is not None else o
        return fc / (fc * fc).sum(1, keepdim=True).clamp_min(1e-30)
    pred = o.argmax(1, keepdim=True)
    return torch.zeros_like(o).scatter_(1, pred, 1.0 / _stabilize(o.gather(1, pred), 1e-12))


def relevance_profile(model: nn.Module, batches: Iterable[torch.Tensor], target: str = "auto", rule: Rule = "attnlrp",
                      *, head: Callable[[torch.Tensor], torch.Tensor] | None = None, eps: float = 0.1,
                      center: bool | torch.Tensor = True, chunk: int = 2,
                      max_images: int | None = None) -> RelevanceProfile:
    """Propagate relevance from the target through every layer of ``model`` over ``batches``.

    ``head``: optional callable pooled features -> logits (e.g. ``LinearProbe.logits``) for encoders.
    ``eps``: epsilon-rule stabiliser, relative to each token's RMS at that layer.
    ``center``: feature target explains f - mean(f) over the images (needs 2+ images; one extra forward),
    or f - ``center`` when given the mean pooled feature (no extra forward); False: f itself.
    ``chunk``: images per backward pass (bounds memory: ~0.3 GB of graph per 224-px ViT-S image, 17% more CPU
    at 1 than at 8). ``max_images``: use at most this many.
    """
    if rule not in RULES:
        raise UserError(f"unknown relevance rule {rule!r}", f"choose one of {', '.join(RULES)}")
    if not isinstance(model, VisionTransformer):
        raise UserError(f"relevance needs the canonical VisionTransformer, got {type(model).__name__}",
                        "load the model with compress.models.load_model")
    kind = _target_kind(model, target, head)
    t0 = time.perf_counter()
    parts = [torch.as_tensor(b[0] if isinstance(b, (tuple, list)) else b).float() for b in batches]
    images = torch.cat(parts)[:max_images] if parts else torch.empty(0)
    if not len(images):
        raise UserError("relevance needs at least one calibration image, got none",
                        "check data.calibration.count in the recipe")
    target_sum = pixel_sum = 0.0
    with _frozen(model):
        mean = center if isinstance(center, torch.Tensor) else None
        if kind in ("feature", "tokens") and center is True and len(images) > 1:
            with torch.no_grad():
                mean = torch.cat([_output(model, x, kind, head) for x in images.split(chunk)]).mean(0)
        with _Hooks(model, rule, eps) as hooks, torch.enable_grad():
            for x in ui.progress(images.split(chunk), total=-(-len(images) // chunk), desc="relevance (LRP)",
                                 unit="batch"):
                x = x.clone().requires_grad_(True)
                out = _output(model, x, kind, head)
                seed = _seed(out, kind, mean)
                target_sum += (out.detach() * seed).sum().item()
                out.backward(seed)
                pixel_sum += (x * x.grad).sum().item()
    taps = {n: hooks.taps.get(n, _Tap()) for n in hooks.weighted} | hooks.taps  # unused layers score 0
    total = sum(taps[n].out_abs for n in hooks.weighted)
    if not total > 0:
        raise UserError("relevance is zero at every layer (constant model output?)",
                        "check the model weights and the calibration images")
    per = 1.0 / len(images)
    return RelevanceProfile(
        scores={n: taps[n].out_abs / total for n in hooks.weighted},
        layer_out={n: t.out_signed * per for n, t in taps.items()},
        layer_in={n: t.in_signed * per for n, t in taps.items()},
        block_in=[v * per for v in hooks.block_in], block_out=[v * per for v in hooks.block_out],
        target=target_sum * per, pixels=pixel_sum * per, rule=rule, target_kind=kind, images=len(images),
        seconds=time.perf_counter() - t0,
        params={n: m.weight.numel() for n, m in hooks.weighted.items()})


def layer_relevance(model: nn.Module, batches: Iterable[torch.Tensor], target: str = "auto", rule: Rule = "attnlrp",
                    **kw) -> dict[str, float]:
    """LRP-QViT contribution score per quantizable layer (module path -> share, sums to 1)."""
    return relevance_profile(model, batches, target, rule, **kw).scores
