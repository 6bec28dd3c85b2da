"""PNG plots (matplotlib, Agg backend), written atomically."""
from __future__ import annotations

from pathlib import Path

from ..utils.io import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, run_dir: Path, name: str) -> Path:
    plt = _figure()
    dest = Path(run_dir) / "plots" / name
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return dest


def block_sqnr(run_dir: Path, sqnr: list[float]) -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(len(sqnr)), sqnr, marker="o")
    ax.set_xlabel("block")
    ax.set_ylabel("SQNR vs fp32 (dB)")
    ax.set_title("Per-block output fidelity")
    ax.grid(alpha=0.3)
    return save(fig, run_dir, "block_sqnr.png")


def latency_accuracy(run_dir: Path, rows: list[dict]) -> Path:
    plt = _figure()
    rows = [r for r in rows if r.get("latency")]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rows)))
    names = [f"{r['name']} [{r['runtime']}]" for r in rows]
    vals = [r["latency"]["p50_ms"] for r in rows]
    bars = ax.barh(names, vals, color="#4c72b0")
    for b, r in zip(bars, rows):
        t = r.get("top1")
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {b.get_width():.1f} ms" +
                (f", top-1 {t:.1f}%" if t is not None else ""), va="center", fontsize=8)
    ax.set_xlabel("p50 latency (ms)")
    ax.invert_yaxis()
    ax.set_xlim(0, max(vals) * 1.5)
    return save(fig, run_dir, "latency_accuracy.png")
