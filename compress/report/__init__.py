"""report.json, report.md and PNG plots for a run. A pass's section comes from its descriptor's ``report_section``."""
from __future__ import annotations

from pathlib import Path

from ..registry import PASSES
from ..utils.io import write_json, write_text
from . import plots


def _f(v, fmt="{:.2f}", none="–"):
    return none if v is None else fmt.format(v)


def results_table(rows: list[dict]) -> str:
    refit = any("top1_refit" in r for r in rows)  # own-probe columns only when the run scored them
    head = ("| artifact | runtime | precision | top-1 % | Δ top-1 | "
            + ("own-probe top-1 % | own-probe Δ | " if refit else "")
            + "agreement % | feat. cosine | size MB | params M | GFLOPs | CPU p50 ms | wall p50 ms | wall p90 ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lat = r.get("latency") or {}
        own = [_f(r.get("top1_refit")), _f(r.get("delta_top1_refit"), "{:+.2f}")] if refit else []
        lines.append("| " + " | ".join([
            r["name"], r.get("runtime", ""), r.get("precision", ""), _f(r.get("top1")),
            _f(r.get("delta_top1"), "{:+.2f}"), *own, _f(r.get("agreement"), "{:.1f}"),
            _f(r.get("feature_cosine"), "{:.5f}"), _f(r.get("size_mb"), "{:.1f}"),
            _f(r["params"] / 1e6 if r.get("params") else None, "{:.2f}"), _f(r.get("gflops"), "{:.2f}"),
            _f(lat.get("cpu_p50_ms"), "{:.1f}"), _f(lat.get("p50_ms"), "{:.1f}"),
            _f(lat.get("p90_ms"), "{:.1f}")]) + " |")
    return "\n".join(lines)


def fidelity_section(ev: dict) -> list[str]:
    """Saliency through the model's own decoder, the off-domain probe, a verdict per artifact, the image sets."""
    sal, od, t = ev.get("saliency") or {}, ev.get("off_domain") or {}, ev.get("drop_in") or {}
    if not (sal or od):
        return []
    md = ["## Fidelity", ""]
    md.append(f"Saliency: {sal['decoder']} on {sal['images']} test images; r = per-image Pearson correlation with the "
              "fp32 map (mean and 5th percentile), IoU of the top-10% pixels." if "images" in sal
              else f"Saliency: {sal.get('skipped', 'not measured')}.")
    md.append(f"Off-domain: {od['dataset']} ({od['train_images']} train / {od['test_images']} test images that no "
              f"pass saw); fp32 head = a linear head fitted on the fp32 features (top-1 {od['reference_top1']:.2f}%), "
              "applied unchanged (fidelity); refit = a head fitted the same way on the variant's own features of the "
              "same train images (capacity)." if "dataset" in od else f"Off-domain: {od.get('skipped', 'not measured')}.")
    if t:
        md.append(f"Drop-in when every measured figure meets: saliency top-10% IoU >= {t['saliency_iou']:g}, off-domain "
                  f"fp32-head |Δ top-1| <= {t['off_domain_delta']:g} pt and agreement >= {t['off_domain_agreement']:g}%;"
                  f" otherwise \"re-train your head\" when the refitted head loses at most {t['refit_delta']:g} pt "
                  "(evaluation.drop_in).")
    rows = [r for r in ev["rows"] if r.get("saliency") or r.get("off_domain")]
    if rows:
        head = ("| artifact | saliency r | r p5 | MAE | IoU top-10% | IoU p5 | off-domain top-1 % | Δ | agreement % | "
                "refit top-1 % | refit Δ |")
        md += ["", head, "|" + "---|" * (head.count("|") - 1)]
        for r in rows:
            s, o = r.get("saliency") or {}, r.get("off_domain") or {}
            md.append("| " + " | ".join([
                r["name"], _f(s.get("pearson_mean"), "{:.4f}"), _f(s.get("pearson_p5"), "{:.4f}"),
                _f(s.get("mae_mean"), "{:.4f}"), _f(s.get("iou_top10_mean"), "{:.3f}"), _f(s.get("iou_top10_p5"), "{:.3f}"),
                _f(o.get("top1")), _f(o.get("delta_top1"), "{:+.2f}"), _f(o.get("agreement"), "{:.1f}"),
                _f(o.get("top1_refit")), _f(o.get("delta_top1_refit"), "{:+.2f}")]) + " |")
    verdicts = [f"- **{r['name']}**: {r['verdict']['text']}" for r in ev["rows"] if r.get("verdict")]
    md += ["", "Verdicts:", "", *verdicts] if verdicts else []
    if sal.get("plot"):
        md += ["", f"![saliency maps]({sal['plot']})"]
    return md + [""] + data_sets_section(ev)


def data_sets_section(ev: dict) -> list[str]:
    sets = ev.get("data_sets") or []
    if not sets:
        return []
    md = ["### Image sets", "", "Every image set drawn, by dataset split (indices and their sha256 in evaluation.json); "
          "evaluation sets are drawn from images no pass drew, and the run fails if an image that is scored was "
          "fitted or tuned on.", ""]
    md += [f"- {s['role']}: {s['count']} {s['split']} images of `{s['dataset']}`, sha256 {s['sha256'][:12]}" for s in sets]
    for o in ev.get("overlaps") or []:
        md.append(f"- note: {o['a']} and {o['b']} share {o['images']} {o['split']} images (both fitted on, "
                  "none scored)")
    if ev.get("unrecorded_passes"):
        md.append(f"- note: the checkpoints of {', '.join(ev['unrecorded_passes'])} predate image-set recording: "
                  "their images could not be excluded (rerun with --force to record them)")
    return md + [""]


def _default_section(rec: dict, run_dir: Path) -> str:
    items = {k: v for k, v in rec.items() if k not in ("name", "type") and not isinstance(v, (list, dict))}
    cfg = ", ".join(f"{k}={v}" for k, v in (rec.get("config") or {}).items())
    return "\n".join([f"- config: {cfg or '(defaults)'}"] + [f"- {k}: {v}" for k, v in items.items()])


def verified(a: dict) -> str:
    """What the artifact's verification compared, in which runtime, and the bounds it was held to."""
    v = a.get("verification") or {}
    if not v:
        return "not verified"
    agree = (f", agreement {100 * v['agreement']:.0f}%" + (f" (min {100 * v['min_agreement']:.0f}%)"
                                                          if v.get("min_agreement") is not None else "")
             if v.get("agreement") is not None else "")
    relaxed = (f" (relaxed from {v['requested_max_abs']:g} / {v['requested_min_cosine']:g} by the noise floor)"
               if v.get("floor_noise") is not None else "")
    text = (f"verified in {_RUNTIME.get(v['runtime'], v['runtime'])} against "
            f"{v.get('reference') or 'the PyTorch model'}: max|diff| {v['max_abs']:.3g} (limit "
            f"{v['max_abs_limit']:.3g}), cosine {v['cosine']:.6f} (min {v['min_cosine']:g}){relaxed}{agree} "
            f"on {v['images']} images")
    if a.get("runtime") == "tensorrt":
        text += "; no TensorRT engine was built or run"
    return text


_RUNTIME = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "executorch": "ExecuTorch", "pytorch": "PyTorch"}


def write_report(run_dir: Path, summary: dict) -> None:
    run_dir = Path(run_dir)
    md = [f"# vitforge report: {summary['recipe']}", "", f"Model: `{summary['model']}`", ""]
    if (summary.get("weights") or {}).get("random"):
        md += [f"**Random weights**: {summary['weights']['note']}.", ""]
    if summary.get("data"):
        d = summary["data"]
        md += [f"Data: {d['dataset']}" + (f" (instead of {d['requested']})" if d["dataset"] != d["requested"] else "")
               + (f" from `{d['path']}`" if d.get("path") else "") + f" ({d['source']})"
               + (f"; {d['note']}" if d.get("note") else "") + ".", ""]
    ev = summary.get("evaluation")
    if ev:
        how = (f"linear probe trained once on {ev['probe_train_images']} fp32 feature vectors, "
               if ev["method"] == "probe" else "the model's own head, ")
        md += ["## Results", "",
               f"Top-1 on {ev['test_images']} test images ({how}reused unchanged for every variant); "
               f"agreement = share of test images whose prediction equals the fp32 model's; latency at batch "
               f"{ev['batch']}, {ev['threads']} thread(s), after warm-up."
               + (" Own-probe top-1: a probe fitted the same way on each variant's own features of the same train "
                  "images (the linear-probe score of the changed encoder)." if ev.get("probe_refit") else ""),
               "", results_table(ev["rows"]), ""]
        md += fidelity_section(ev)
        fid = ev.get("fidelity") or {}
        if fid:
            md += [f"Token cosine to fp32 on {fid['images']} images: {fid['token_cosine']:.5f}.", ""]
            if fid.get("block_sqnr_db"):
                plots.block_sqnr(run_dir, fid["block_sqnr_db"])
                md += ["![per-block SQNR](plots/block_sqnr.png)", ""]
        if any(r.get("latency") for r in ev["rows"]):
            plots.latency_accuracy(run_dir, ev["rows"])
            md += ["![latency and accuracy](plots/latency_accuracy.png)", ""]
    md += ["## Passes", ""]
    passes = PASSES.loaded() if summary["passes"] else {}
    for rec in summary["passes"] or []:
        md.append(f"### {rec['name']} ({rec['type']})")
        fn = getattr(passes.get(rec["type"]), "report_section", None) or _default_section
        md += [fn(rec, run_dir), ""]
        if rec.get("resources"):
            u = rec["resources"]
            md += [f"Resources: {u['cpu_s']:.1f} s CPU, {u['wall_s']:.1f} s wall, peak resident memory "
                   f"{u['peak_rss_mb']:.0f} MB ({'during this pass' if u['peak_scope'] == 'stage' else 'whole process'}).", ""]
    if not summary["passes"]:
        md += ["(none: the model as loaded)", ""]
    md += ["## Artifacts", ""]
    for a in summary["artifacts"]:
        md.append(f"- `{a['path']}` ({a['format']}, {a['runtime']}, computes {a['precision']}) {verified(a)}"
                  + "".join(f"\n  - {n}" for n in a.get("notes", [])))
    write_text(run_dir / "report.md", "\n".join(md) + "\n")
    write_json(run_dir / "report.json", summary)
