"""TinyCLIP weight inheritance on a canonical ViT image tower: which layers, heads, MLP units and embedding channels
of the teacher the student keeps, then their physical removal (``remove``).

- manual: layers by index or by importance (the distillation loss when the layer alone is skipped), then widths
  (heads, MLP units, embedding channels) by the Hessian saliency of ``saliency`` and the global greedy of
  ``select`` with a *parameter* budget instead of a latency one (``ParamCount``);
- automatic: the kept units are read off trained hard-concrete masks (``masks.HardConcreteMasks``): per group the
  expected number kept (CoFi's deterministic masks), then the least probable units go until the target is met.

``keep`` dicts name what stays in the teacher's indices (``layers``, ``embed``: lists; ``heads``, ``mlp``: a list
per block), so ``masks.binary(teacher, keep)`` is the teacher's masked computation the inherited model equals.
"""
from __future__ import annotations

import copy

import torch

from ..models.heads import WidthRestore
from . import masks as M
from . import remove, saliency
from .remove import Plan
from .select import Limits, Selector


def block_params(cfg, D, h, qk, v, m):
    """Weights of one block of embedding width D, h heads of widths qk / v, m MLP units (numbers or tensors)."""
    n = 4 * D + (2 * D if cfg.layer_scale else 0)  # norm1, norm2 (+ LayerScale gammas)
    n = n + D * h * (2 * qk + v) + (h * (2 * qk + v) if cfg.qkv_bias else 0)  # q, k, v
    n = n + h * v * D + (D if cfg.proj_bias else 0)  # proj
    return n + 2 * D * m + m + D  # fc1, fc2


def stem_params(cfg, D, out_width=None, head_out=0):
    """Patch embedding, prefix tokens, position embedding, norms and head at embedding width D."""
    n = D * (cfg.in_chans * cfg.patch_size**2 + 1) + D * (int(cfg.class_token) + cfg.num_reg_tokens)
    n = n + D * cfg.num_pos_tokens + (2 * D if cfg.norm_pre else 0)
    n = n + (D * out_width + 3 * out_width if out_width else 2 * D)  # final norm (or the WidthRestore lift + norm)
    src = out_width or D
    return n + (src * head_out + (head_out if cfg.head_bias else 0) if head_out else 0)


def tower_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


class ParamCount:
    """``compress.pruning.budget.Predictor``'s interface in parameters: the selection greedy then removes the least
    saliency per parameter saved until a parameter budget is met."""

    def __init__(self, model):
        self.cfg, self.out = model.cfg, remove.output_width(model)
        self.head = model.head.out_features if isinstance(model.head, torch.nn.Linear) else 0
        # an encoder keeps its output width: removing any embedding channel adds the WidthRestore lift
        self.restore = model.cfg.embed_dim if self.out is None and remove.needs_restore(model, None) else None

    def out_at(self, D) -> int | None:
        """The output width the tower lifts to at embedding width ``D`` (None: no lift)."""
        return self.out or (self.restore if self.restore and float(D) < self.restore else None)

    def block(self, D, h, qk, v, m) -> float:
        return float(block_params(self.cfg, D, h, qk, v, m)) if h and m else float(4 * D)

    def total(self, D, blocks) -> float:
        return float(stem_params(self.cfg, D, self.out_at(D), self.head)) + sum(self.block(D, *b) for b in blocks)

    def model(self, cfg) -> float:
        return self.total(cfg.embed_dim, [(b.num_heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in cfg.blocks])


def expected_params(model, probs: dict):
    """The tower's expected parameter count under masks whose units are kept with probabilities ``probs``."""
    cfg, pc = model.cfg, ParamCount(model)
    D = probs["embed"].sum() if "embed" in probs else cfg.embed_dim
    total = stem_params(cfg, D, pc.out_at(D), pc.head)
    for i, b in enumerate(cfg.blocks):
        h = probs["heads"][i].sum() if "heads" in probs else b.num_heads
        m = probs["mlp"][i].sum() if "mlp" in probs else b.mlp_dim
        total = total + block_params(cfg, D, h, b.qk_dim, b.v_dim, m)
    return total


# -- layers ----------------------------------------------------------------------------------------------------
def layer_importance(model, batches, teacher_out, distiller) -> list[float]:
    """Distillation loss of the tower with each layer alone skipped (the inherited layers: the largest)."""
    out = []
    with torch.inference_mode():
        for i in range(model.cfg.depth):
            z = torch.ones(model.cfg.depth)
            z[i] = 0
            with M.attached(model, {"layers": z}):
                out.append(float(torch.cat([distiller.loss(model(x), t) for x, t in zip(batches, teacher_out)]).mean()))
    return out


def drop_layers(model, keep: list[int]) -> None:
    """Remove every block not in ``keep`` (in place; ``model.cfg`` follows)."""
    keep = sorted(keep)
    model.blocks = torch.nn.ModuleList(model.blocks[i] for i in keep)
    model.cfg.blocks = [model.cfg.blocks[i] for i in keep]


# -- widths ----------------------------------------------------------------------------------------------------
def saliency_plan(model, batches, teacher_out, distiller, target: float, limits: Limits, structures,
                  first_order: bool = True, seed: int = 0) -> tuple[Plan, dict]:
    """Hessian saliency of every head, MLP unit and embedding channel, then the global greedy to ``target`` weights."""
    embed_output = not remove.needs_restore(model, None) and not isinstance(model.norm, WidthRestore)
    sal = saliency.compute("hessian", model, batches, teacher_out, distiller, embed_output, first_order, seed)
    return Selector(model.cfg, sal, ParamCount(model), limits, structures).run(target)


def keep_of(cfg, plan: Plan, layers: list[int] | None = None) -> dict:
    """The ``keep`` dict (teacher indices) of dropping all layers but ``layers`` and then removing ``plan``."""
    layers = list(range(cfg.depth)) if layers is None else sorted(layers)
    keep = {"layers": layers, "heads": [[] for _ in cfg.blocks], "mlp": [[] for _ in cfg.blocks],
            "embed": [c for c in range(cfg.embed_dim) if c not in set(plan.embed)]}
    for i, b in enumerate(cfg.blocks):
        keep["heads"][i] = list(range(b.num_heads))
        keep["mlp"][i] = list(range(b.mlp_dim))
    for j, i in enumerate(layers):
        keep["heads"][i] = [h for h in range(cfg.blocks[i].num_heads) if h not in set(plan.heads.get(j, []))]
        keep["mlp"][i] = [u for u in range(cfg.blocks[i].mlp_dim) if u not in set(plan.mlp.get(j, []))]
    return keep


def masks_keep(model, hc: M.HardConcreteMasks, target: float, limits: Limits) -> dict:
    """Kept units from trained masks: per group the expected count kept (most probable first), then the least
    probable remaining units are dropped until the tower has at most ``target`` weights."""
    cfg, probs, pc = model.cfg, {k: v for k, v in hc.keep_prob().items()}, ParamCount(model)
    keep = {"heads": [list(range(b.num_heads)) for b in cfg.blocks], "mlp": [list(range(b.mlp_dim)) for b in cfg.blocks],
            "embed": list(range(cfg.embed_dim))}
    lows = {"heads": limits.min_heads, "mlp": limits.min_mlp, "embed": limits.min_embed}
    units = []  # (keep probability, kind, block, index)
    for kind, p in probs.items():
        per = [(None, p)] if kind == "embed" else list(enumerate(p))
        for b, pb in per:
            pb = pb.detach()
            order = torch.argsort(pb, descending=True).tolist()
            n = max(lows[kind], min(len(order), round(float(pb.sum()))))
            kept = sorted(order[:n])
            if b is None:
                keep[kind] = kept
            else:
                keep[kind][b] = kept
            units += [(float(pb[i]), kind, b, i) for i in kept]

    def count() -> float:
        return pc.total(len(keep["embed"]), [(len(keep["heads"][i]), b.qk_dim, b.v_dim, len(keep["mlp"][i]))
                                             for i, b in enumerate(cfg.blocks)])

    for _, kind, b, i in sorted(units, key=lambda u: u[0]):
        if count() <= target:
            break
        group = keep[kind] if b is None else keep[kind][b]
        if len(group) > lows[kind]:
            group.remove(i)
    return keep


# -- removal ---------------------------------------------------------------------------------------------------
def inherit(teacher, keep: dict):
    """A copy of ``teacher`` with only the ``keep`` structures, physically removed (weights inherited unchanged)."""
    model = copy.deepcopy(teacher).eval()
    cfg = teacher.cfg
    layers = sorted(keep.get("layers", range(cfg.depth)))
    plan = Plan(embed=[c for c in range(cfg.embed_dim) if c not in set(keep.get("embed", range(cfg.embed_dim)))])
    for j, i in enumerate(layers):
        b = cfg.blocks[i]
        if "heads" in keep and len(keep["heads"][i]) < b.num_heads:
            plan.heads[j] = [h for h in range(b.num_heads) if h not in set(keep["heads"][i])]
        if "mlp" in keep and len(keep["mlp"][i]) < b.mlp_dim:
            plan.mlp[j] = [u for u in range(b.mlp_dim) if u not in set(keep["mlp"][i])]
    if len(layers) < cfg.depth:
        drop_layers(model, layers)
    remove.apply_plan(model, plan, keep_output_width=remove.needs_restore(model, None))
    remove.check_widths(model)
    return model


__all__ = ["ParamCount", "block_params", "drop_layers", "expected_params", "inherit", "keep_of", "layer_importance",
           "masks_keep", "saliency_plan", "stem_params", "tower_params"]
