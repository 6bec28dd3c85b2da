"""``compress inspect``: the model as the toolkit sees it, with the activation statistics that matter."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .utils.hooks import forward_with_hooks


def structure(model) -> dict:
    cfg = model.cfg
    blocks = [{"block": i, "dim": blk.norm1.normalized_shape[0], "heads": b.num_heads, "qk_dim": b.qk_dim,
               "v_dim": b.v_dim, "mlp_dim": b.mlp_dim,
               "params": sum(p.numel() for p in blk.parameters())} for i, (b, blk) in enumerate(zip(cfg.blocks, model.blocks))]
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("blocks.", "head.", "norm.")))
    return {"name": cfg.name, "family": getattr(cfg, "family", "vit"), "embed_dim": cfg.embed_dim, "depth": cfg.depth,
            "patch_size": cfg.patch_size,
            "img_size": cfg.img_size, "tokens": cfg.num_tokens, "act": cfg.act, "layer_scale": cfg.layer_scale,
            "output": "tokens" if cfg.global_pool == "none" else f"{cfg.global_pool}-pooled -> head[{cfg.num_classes}]",
            "params": total, "params_embedding": emb, "blocks": blocks,
            "randomly_initialized": bool(cfg.extra.get("randomly_initialized"))}


def graph_flops(model) -> dict:
    from .utils.graph_stats import graph_stats
    from .export.onnx_export import export_onnx
    from .models.float_view import float_view

    with tempfile.TemporaryDirectory() as d, float_view(model) as m:
        path = Path(d) / "model.onnx"
        export_onnx(m, path, dynamic_batch=False)
        s = graph_stats(path)
    return {"gflops": s["gflops"], "graph_params": s["params"], "onnx_nodes": s["nodes"]}


def activation_stats(model, images: torch.Tensor) -> list[dict]:
    """Per block: post-LayerNorm channel ranges, post-softmax and post-GELU distributions."""
    acts: dict[str, torch.Tensor] = {}
    hooks = []
    for i, blk in enumerate(model.blocks):
        for tag, mod in (("norm1", blk.norm1), ("norm2", blk.norm2), ("softmax", blk.attn.softmax), ("act", blk.mlp.act)):
            hooks.append(mod.register_forward_hook(lambda _m, _i, o, k=f"{i}.{tag}": acts.__setitem__(k, o.detach())))
    forward_with_hooks(model, images, hooks)
    out = []
    for i in range(model.cfg.depth):
        row = {"block": i}
        for tag in ("norm1", "norm2"):
            x = acts[f"{i}.{tag}"].flatten(0, -2)
            rng = x.amax(0) - x.amin(0)
            row[tag] = {"min": x.min().item(), "max": x.max().item(), "channel_range_median": rng.median().item(),
                        "channel_range_max": rng.max().item(),
                        "outlier_ratio": (rng.max() / rng.median().clamp_min(1e-12)).item(),
                        "outlier_channels": int((rng > 8 * rng.median()).sum())}
        s = acts[f"{i}.softmax"].flatten()
        row["softmax"] = {"max": s.max().item(), "median": s.median().item(),
                          "below_1e-3": (s < 1e-3).float().mean().item(),
                          "p99": torch.quantile(s[torch.randperm(s.numel())[:1_000_000]], 0.99).item()}
        g = acts[f"{i}.act"].flatten()
        gs = g[torch.randperm(g.numel())[:1_000_000]]
        row["gelu"] = {"min": g.min().item(), "max": g.max().item(), "negative": (g < 0).float().mean().item(),
                       "p1": torch.quantile(gs, 0.01).item(), "p99": torch.quantile(gs, 0.99).item(),
                       "p99_9": torch.quantile(gs, 0.999).item()}
        out.append(row)
    return out


def format_text(info: dict) -> str:
    family = {"vit": "ViT", "swin": "Swin"}.get(info.get("family", "vit"), info.get("family"))
    L = [f"{info['name']}: {family}, embed {info['embed_dim']}, depth {info['depth']}, patch {info['patch_size']}, "
         f"{info['img_size']}px -> {info['tokens']} tokens, output {info['output']}",
         f"parameters {info['params'] / 1e6:.2f} M (embedding {info['params_embedding'] / 1e6:.2f} M), "
         f"{info.get('gflops', float('nan')):.2f} GFLOPs per image (counted on the ONNX graph)"]
    if info.get("randomly_initialized"):
        L.append("note: randomly initialized weights (no --weights given)")
    L += ["", "block  dim  heads  qk_dim  v_dim  mlp_dim  params"]
    L += [f"{b['block']:>5}  {b['dim']:>4}  {b['heads']:>5}  {b['qk_dim']:>6}  {b['v_dim']:>5}  {b['mlp_dim']:>7}  "
          f"{b['params'] / 1e6:.2f}M"
          for b in info["blocks"]]
    if info.get("activations"):
        L += ["", f"activation statistics on {info['images']} images from {info['data']}:",
              "block | post-LN1 range [min,max] outlier x | post-LN2 outlier x | softmax <1e-3, max | GELU min, p99.9, max"]
        for a in info["activations"]:
            n1, n2, s, g = a["norm1"], a["norm2"], a["softmax"], a["gelu"]
            L.append(f"{a['block']:>5} | [{n1['min']:7.1f},{n1['max']:7.1f}] {n1['outlier_ratio']:6.1f}x "
                     f"({n1['outlier_channels']} ch) | "
                     f"{n2['outlier_ratio']:6.1f}x ({n2['outlier_channels']} ch) | "
                     f"{s['below_1e-3'] * 100:5.1f}%, {s['max']:.3f} | "
                     f"{g['min']:.3f}, {g['p99_9']:.2f}, {g['max']:.1f}")
    return "\n".join(L)
