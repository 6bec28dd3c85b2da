"""The prune pass's report section: where the parameters went (NViT's redistribution figure) and
latency predicted by the target's table against measured."""
from __future__ import annotations

from pathlib import Path

from ...report import plots

KINDS = (("heads", "heads", lambda b: b[0]), ("QK width (heads x dim)", "qk", lambda b: b[0] * b[1]),
         ("V width (heads x dim)", "v", lambda b: b[0] * b[2]), ("MLP width", "mlp", lambda b: b[3]))


def widths_plot(run_dir: Path, rec: dict, name: str = "prune_widths.png") -> Path:
    plt = plots._figure()
    before, after = rec["original"]["blocks"], rec["pruned"]["blocks"]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    x = list(range(len(before)))
    for ax, (title, _, f) in zip(axes, KINDS):
        ax.bar(x, [f(b) for b in before], color="#d0d7e5", label="original")
        ax.bar(x, [f(b) for b in after], color="#4c72b0", label="pruned")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("block")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Remaining structure per block ({rec['criterion']}); embedding width "
                 f"{rec['original']['embed_dim']} -> {rec['pruned']['embed_dim']}", fontsize=10)
    fig.tight_layout()
    return plots.save(fig, run_dir, name)


def _ms(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def section(rec: dict, run_dir: Path) -> str:
    o, p = rec["original"], rec["pruned"]
    md = [f"- criterion **{rec['criterion']}**, latency model {rec['target']} ({rec['latency_source']}), "
          f"widths aligned to {rec['align']}; latency target {rec['config']['latency_target']} of the measured original"]
    if rec.get("measured_ratio") is not None:
        md.append(f"- ONNX Runtime, batch 1, {rec['config']['measure']['threads']} thread(s), best of "
                  f"{rec['config']['measure']['runs']}: original {_ms(o.get('measured_ms'))} ms, pruned "
                  f"{_ms(p.get('measured_ms'))} ms = **{rec['measured_ratio']:.3f}** of the original "
                  f"({'met' if rec.get('target_met') else 'NOT met'})")
        md.append(f"- predicted by the latency model: original {_ms(o['predicted_ms'])} ms, pruned "
                  f"{_ms(p['predicted_ms'])} ms ({rec['prediction_error']:+.1%} vs measured; "
                  f"original {o['predicted_ms'] / o['measured_ms'] - 1:+.1%})")
        md.append(f"- from the exported graphs: parameters {o['params'] / 1e6:.2f} M -> {p['params'] / 1e6:.2f} M, "
                  f"GFLOPs {o['gflops']:.2f} -> {p['gflops']:.2f}")
    if rec.get("output_width"):
        md.append(f"- embedding width {o['embed_dim']} -> {p['embed_dim']}; the output is lifted back to "
                  f"{rec['output_width']} features by a linear before the final norm (trained in recovery)")
    rv = rec.get("recovery") or {}
    if rv.get("steps"):
        md.append(f"- final recovery: {rv['steps']} steps ({rv['images']} images), KD loss {rv['loss_start']:.4f} -> "
                  f"{rv['loss_end']:.4f}, {rv['seconds'] / 60:.1f} min ({rv['cpu_seconds'] / 60:.1f} CPU min)")
    md.append(f"- pass time {rec['seconds'] / 60:.1f} min ({rec['cpu_seconds'] / 60:.1f} CPU min)")
    md += ["", "| step | budget ms | predicted ms | heads | QK | V | MLP | embed | KD loss before -> after | "
               "recovery steps | KD loss after recovery |", "|" + "---|" * 11]
    for i, s in enumerate(rec["steps"]):
        r, rv_ = s["removed"], s.get("recovery") or {}
        md.append(f"| {i + 1}{' (measured miss)' if s.get('correction') else ''} | {s['budget_ms']:.1f} | "
                  f"{s['predicted_ms']:.1f} | -{r['heads']} | -{r['qk']} | -{r['v']} | -{r['mlp']} | -{r['embed']} | "
                  f"{s['loss_before']:.4f} -> {s['loss_after']:.4f} | {rv_.get('steps', 0)} | "
                  + (f"{rv_['loss_end']:.4f} |" if rv_.get("steps") else "– |"))
    md += ["", "| block | heads | QK dim | V dim | MLP |", "|---|---|---|---|---|"]
    for i, (a, b) in enumerate(zip(o["blocks"], p["blocks"])):
        md.append(f"| {i} | " + " | ".join(f"{x} -> {y}" if x != y else f"{x}" for x, y in zip(a, b)) + " |")
    widths_plot(run_dir, rec)
    md += ["", "![remaining structure per block](plots/prune_widths.png)"]
    return "\n".join(md)
