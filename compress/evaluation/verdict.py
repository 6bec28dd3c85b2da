"""One verdict per artifact: a drop-in for the fp32 encoder, or a head must be re-trained, with the numbers."""
from __future__ import annotations

DROP_IN = "drop-in"
RETRAIN = "re-train your head (capacity kept, fidelity lost)"
LOST = "not a drop-in (fidelity and capacity lost)"
UNJUDGED = "not judged"


def verdict(row: dict, t) -> dict:
    """``t``: the recipe's ``evaluation.drop_in`` thresholds. Every measured fidelity figure is checked."""
    checks = []  # (text, ok)
    sal = row.get("saliency") or {}
    if "iou_top10_mean" in sal:
        checks.append((f"saliency top-10% IoU {sal['iou_top10_mean']:.3f} (>= {t.saliency_iou:g}), "
                       f"Pearson r {sal['pearson_mean']:.4f}", sal["iou_top10_mean"] >= t.saliency_iou))
    od = row.get("off_domain") or {}
    if "delta_top1" in od:
        checks.append((f"off-domain fp32-head Δ {od['delta_top1']:+.2f} pt (|Δ| <= {t.off_domain_delta:g})",
                       abs(od["delta_top1"]) <= t.off_domain_delta))
        checks.append((f"agreement {od['agreement']:.1f}% (>= {t.off_domain_agreement:g}%)",
                       od["agreement"] >= t.off_domain_agreement))
    if not checks:
        return {"verdict": UNJUDGED, "text": f"{UNJUDGED}: no fidelity measure ran (no saliency decoder for this model "
                                             "and no off-domain task)"}
    failed = [c for c, ok in checks if not ok]
    if not failed:
        return {"verdict": DROP_IN, "text": f"{DROP_IN}: " + "; ".join(c for c, _ in checks)}
    capacity = ""
    if "delta_top1_refit" in od:
        kept = od["delta_top1_refit"] >= -t.refit_delta
        capacity = f"refitted head Δ {od['delta_top1_refit']:+.2f} pt (>= -{t.refit_delta:g})"
        label = RETRAIN if kept else LOST
    else:
        label = "not a drop-in (fidelity lost)"
    return {"verdict": label, "failed": failed,
            "text": f"{label}: missed " + "; ".join(failed) + (f"; {capacity}" if capacity else "")}


__all__ = ["DROP_IN", "LOST", "RETRAIN", "UNJUDGED", "verdict"]
