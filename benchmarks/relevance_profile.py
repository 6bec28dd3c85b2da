"""LRP relevance profile of a real ViT (default: DINOv2 ViT-S/14, 32 CIFAR-10 calibration images).

    OMP_NUM_THREADS=1 python benchmarks/relevance_profile.py [--images 32] [--rule attnlrp] \
        [--allocate 4] [--damage 8] [--out runs/bench-relevance/relevance_profile.json]

Prints, as markdown: each quantizable layer's contribution score (share of relevance, %) per block,
the top layers, conservation (raw block-to-block and bias-inclusive balance) and the time LRP took.
``--allocate B``: weights allocated to B average bits by relevance, uniform and sensitivity (layer
errors of per-channel RTN on 8 calibration images), applied by RTN; feature damage on held-out
test images. ``--damage N``: every layer alone is rounded to 3 and 4 bits and the feature damage on
N images is measured; reports the Spearman rank correlation of relevance x layer error, and of
layer error alone, with that damage (slow: 146 forwards). Writes everything as JSON.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OPS = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2")
WIDTHS = (2, 3, 4, 6, 8)


def images(data: str, split: str, count: int, seed: int, cfg) -> torch.Tensor:
    from compress.data import load_subset

    ds = load_subset(data, split, count, seed, cfg)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def markdown(p) -> str:
    s = p.scores
    lines = ["| block | " + " | ".join(OPS) + " | block total |", "|---" * (len(OPS) + 2) + "|"]
    for b in range(len(p.block_in)):
        row = [s.get(f"blocks.{b}.{op}", 0.0) for op in OPS]
        lines.append(f"| {b} | " + " | ".join(f"{100 * v:.2f}" for v in row) + f" | {100 * sum(row):.2f} |")
    others = {n: v for n, v in s.items() if not n.startswith("blocks.")}
    lines.append("\nOther layers: " + ", ".join(f"`{n}` {100 * v:.2f}%" for n, v in others.items()))
    by_op = {op: sum(v for n, v in s.items() if n.endswith(op)) for op in OPS}
    lines.append("By op: " + ", ".join(f"{op} {100 * v:.1f}%" for op, v in by_op.items()))
    top = sorted(s.items(), key=lambda kv: -kv[1])[:10]
    lines.append("Top 10: " + ", ".join(f"`{n}` {100 * v:.2f}%" for n, v in top))
    err, bal = p.block_error(), p.balance_error()
    lines.append(f"\nConservation: raw block-to-block |R_in - R_out|/|R_out| max {max(err):.3f}, median "
                 f"{float(np.median(err)):.3f}; bias-inclusive balance max {max(bal):.1e}. Relevance at block "
                 f"outputs: {', '.join(f'{v:.3f}' for v in p.block_out)} (target 1 per image, pixels {p.pixels:.3f}).")
    lines.append(f"\nLRP: {p.images} images, rule {p.rule}, target {p.target_kind}: {p.seconds:.1f} s "
                 f"({p.seconds / p.images:.2f} s/image, CPU threads {torch.get_num_threads()}).")
    return "\n".join(lines)


def _rank(v: list[float]) -> np.ndarray:
    return np.argsort(np.argsort(np.asarray(v)))


def spearman(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(_rank(a), _rank(b))[0, 1])


def rtn(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel round-to-nearest: a plain stand-in for the real weight quantizer."""
    q = 2 ** (bits - 1) - 1
    s = w.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (w.ndim - 1)) / q
    return (w / s).round().clamp(-q - 1, q) * s


def layer_errors(model, x: torch.Tensor, widths) -> dict[str, dict[int, float]]:
    """Each layer's relative output error |(W_q - W) x|^2 / |W x|^2 at each width, on its calibration inputs."""
    from compress.passes.quantize.relevance import quantizable_layers

    layers, inputs = quantizable_layers(model), {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0])) for n, m in layers.items()]
    out = {}
    with torch.no_grad():
        model(x)
        for h in hooks:
            h.remove()
        for n, m in layers.items():
            w = m.weight.detach().clone()
            f = (lambda v: torch.nn.functional.linear(inputs[n], v)) if w.ndim == 2 else \
                (lambda v: torch.nn.functional.conv2d(inputs[n], v, stride=m.stride))
            ref = f(w)
            out[n] = {b: ((f(rtn(w, b)) - ref).pow(2).sum() / ref.pow(2).sum()).item() for b in widths}
    return out


def feature_damage(model, x: torch.Tensor, bits: dict[str, int] | None = None, ref=None) -> tuple[torch.Tensor, dict]:
    """Pooled features with the given widths applied by RTN (weights restored), and their damage vs ``ref``."""
    from compress.models.pooling import pooled
    from compress.passes.quantize.relevance import quantizable_layers

    layers = {n: m for n, m in quantizable_layers(model).items() if bits and n in bits}
    saved = {n: m.weight.detach().clone() for n, m in layers.items()}
    with torch.no_grad():
        for n, m in layers.items():
            m.weight.copy_(rtn(saved[n], bits[n]))
        f = pooled(model(x), model.cfg.num_prefix_tokens)
        for n, m in layers.items():
            m.weight.copy_(saved[n])
    if ref is None:
        return f, {}
    return f, {"rel_mse": ((f - ref).pow(2).sum(1) / ref.pow(2).sum(1)).mean().item(),
               "cosine": torch.nn.functional.cosine_similarity(f, ref, dim=1).mean().item()}


def damage_table(model, x: torch.Tensor, scores: dict[str, float]) -> dict:
    """Each layer alone at 3/4 bits: layer error and feature damage; rank correlation with relevance x error."""
    errors = layer_errors(model, x, (3, 4))
    ref, _ = feature_damage(model, x)
    rows = {n: {f"error{b}": e[b] for b in (3, 4)} for n, e in errors.items()}
    for n in rows:
        for b in (3, 4):
            rows[n][f"damage{b}"] = feature_damage(model, x, {n: b}, ref)[1]["rel_mse"]
    names, summary = list(rows), {}
    for b in (3, 4):
        e, d = [rows[n][f"error{b}"] for n in names], [rows[n][f"damage{b}"] for n in names]
        summary[f"w{b}"] = {"spearman_relevance_x_error": spearman([scores[n] * v for n, v in zip(names, e)], d),
                            "spearman_error_only": spearman(e, d)}
    return {"layers": rows, "summary": summary}


def allocation_check(model, calib: torch.Tensor, test: torch.Tensor, scores: dict[str, float], avg_bits: float) -> dict:
    """Allocate ``avg_bits`` by relevance / uniform / sensitivity (RTN errors), apply by RTN, score on ``test``."""
    from compress.passes.quantize.allocate import Budget, LayerChoice, allocate
    from compress.passes.quantize.relevance import quantizable_layers

    errors = layer_errors(model, calib, WIDTHS)
    layers = [LayerChoice(n, m.weight.numel(), list(WIDTHS), errors[n], scores[n])
              for n, m in quantizable_layers(model).items()]
    ref, _ = feature_damage(model, test)
    out = {}
    for strategy in ("relevance", "uniform", "sensitivity"):
        a = allocate(layers, Budget("avg_bits", avg_bits), strategy)
        out[strategy] = {"avg_bits": a.avg_bits, "bits": a.bits} | feature_damage(model, test, a.bits, ref)[1]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dinov2-s14-focus")
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rule", default="attnlrp", choices=("attnlrp", "cp"))
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--damage", type=int, default=0, help="per-layer damage check on this many images (0: skip)")
    ap.add_argument("--allocate", type=float, default=4.0,
                    help="average weight bits for the allocation check (0: skip)")
    ap.add_argument("--test-images", type=int, default=32, help="held-out test images for the allocation check")
    ap.add_argument("--out", default="runs/bench-relevance/relevance_profile.json")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from compress.passes.quantize.relevance import relevance_profile
    from compress.utils.io import write_json

    from compress.models import load_model

    t0 = time.perf_counter()
    lm = load_model(a.model)
    x = images(a.data, "train", a.images, a.seed, lm.cfg)
    print(f"loaded {a.model} and {len(x)} images in {time.perf_counter() - t0:.1f} s")
    p = relevance_profile(lm.model, [x], rule=a.rule, eps=a.eps)
    print(markdown(p))
    result = {"command": " ".join(["python", "benchmarks/relevance_profile.py", *(argv or sys.argv[1:])]),
              "model": a.model, "profile": p.to_dict()}
    if a.damage:
        t1 = time.perf_counter()
        result["damage"] = damage_table(lm.model, x[: a.damage], p.scores)
        result["damage"]["seconds"] = time.perf_counter() - t1
        print(f"\nDamage check on {a.damage} images ({result['damage']['seconds']:.0f} s): Spearman rank correlation "
              "with the per-layer feature damage when that layer alone is rounded (per-channel RTN):")
        print("| width | relevance x layer error | layer error alone |\n|---|---|---|")
        for k, v in result["damage"]["summary"].items():
            print(f"| {k} | {v['spearman_relevance_x_error']:.3f} | {v['spearman_error_only']:.3f} |")
    if a.allocate:
        t1 = time.perf_counter()
        test = images(a.data, "test", a.test_images, a.seed, lm.cfg)
        chk = allocation_check(lm.model, x[:8], test, p.scores, a.allocate)
        result["allocation"] = chk | {"seconds": time.perf_counter() - t1}
        print(f"\nAllocation check: weights at {a.allocate:g} average bits from {WIDTHS}, applied by per-channel RTN "
              f"(activations fp32), feature damage on {len(test)} held-out test images "
              f"({result['allocation']['seconds']:.0f} s):")
        print("| strategy | avg bits | feature rel. MSE | feature cosine |\n|---|---|---|---|")
        for k, v in chk.items():
            print(f"| {k} | {v['avg_bits']:.3f} | {v['rel_mse']:.4f} | {v['cosine']:.4f} |")
    write_json(Path(a.out), result)
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
