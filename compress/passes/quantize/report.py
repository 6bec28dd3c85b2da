"""The quantize pass's report section: precision, calibration, per-layer bits and relevance (plot)."""
from __future__ import annotations

from pathlib import Path

from ...report import plots


def bits_plot(run_dir: Path, bits: dict[str, int], relevance: dict[str, float] | None,
              error: dict[str, float] | None = None) -> Path:
    plt = plots._figure()
    names = [n for n in bits if n.startswith("blocks.")]
    fig, ax = plt.subplots(figsize=(max(7, 0.13 * len(names)), 3.4))
    xs = range(len(names))
    ax.bar(xs, [bits[n] for n in names], color="#4c72b0", label="weight bits")
    ax.set_ylabel("weight bits")
    ax.set_ylim(0, 9)
    ax.set_xticks(list(xs)[::6], [n.split(".")[1] for n in names][::6])
    ax.set_xlabel("block (6 linears each: q, k, v, proj, fc1, fc2)")
    if relevance:
        ax2 = ax.twinx()
        ax2.plot(xs, [relevance.get(n, 0.0) for n in names], color="#dd8452", marker=".", label="LRP relevance")
        ax2.set_ylabel("relevance share")
        ax2.set_ylim(bottom=0)
        ax2.legend(loc="upper right", fontsize=8)
    ax.set_title("Weight bits per layer" + (" and LRP relevance" if relevance else ""))
    return plots.save(fig, run_dir, "quant_bits.png")


def quantize_section(rec: dict, run_dir: Path) -> str:
    cfg, p = rec.get("config", {}), rec.get("precision", {})
    w, a = cfg.get("weights", {}), cfg.get("activations", {})
    md = [f"- precision: **{p.get('label', '?')}** (mean weight bits {p.get('weight_bits_avg', 0):.3f} over the "
          f"block linears; activation bits {p.get('activation_bits') or 'float'}; attention matmuls "
          f"{'quantized' if p.get('attention_quantized') else 'float'})",
          f"- weights: {w.get('granularity')} scales ({w.get('calibration')} range), {w.get('rounding')} rounding; "
          f"activations: static per tensor, {a.get('calibration')} calibration on {rec.get('calibration_images')} images",
          f"- pass time: {rec.get('seconds', 0):.0f}s wall"
          + (f", {rec['cpu_seconds']:.0f}s process CPU" if "cpu_seconds" in rec else "")]
    rp = (rec.get("reparam") or {}).get("post_layernorm")
    if rp:
        worst = max(rp, key=lambda r: r["spread_before"])
        md.append(f"- post-LayerNorm reparameterization: {len(rp)} LayerNorms; worst channel spread "
                  f"{worst['spread_before']:.1f}x -> {worst['spread_after']:.2f}x (folded into LayerNorm + next linear)")
    mixed = rec.get("mixed")
    rel = (rec.get("relevance") or {}).get("scores")
    if mixed:
        md.append(f"- mixed precision: strategy **{mixed['strategy']}**, budget {mixed['budget']['kind']} = "
                  f"{mixed['budget']['value']:g}, reached {mixed['avg_bits']:.3f} mean bits, objective {mixed['objective']:.4g}")
    recon = rec.get("reconstruction")
    if recon:
        done = [r for r in recon if "steps" in r]
        kept = sum(r["kept"] for r in done)
        md.append(f"- block reconstruction: {len(done)} blocks tuned ({kept} kept), "
                  f"{sum(r['steps'] for r in done)} steps, {sum(r['seconds'] for r in done):.0f}s; steps per block: "
                  + ", ".join(f"{r['block']}: {r['steps'] if 'steps' in r else 'skipped'}" for r in recon))
    bits = rec.get("bits") or {}
    if bits:
        path = bits_plot(run_dir, bits, rel)
        md += ["", f"![weight bits per layer](plots/{path.name})", ""]
        err = rec.get("layer_error") or {}
        md += ["| layer | bits | relevance | output error |", "|---|---|---|---|"]
        for n, b in bits.items():
            e = err.get(n)
            md.append(f"| {n} | {b} | {rel[n]:.4f} |" if rel and n in rel else f"| {n} | {b} | – |")
            md[-1] += f" {e:.2e} |" if e is not None else " – |"
    return "\n".join(md)
