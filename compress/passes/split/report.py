"""The split pass's report section: partition, per-part size against its budget, device plan."""
from __future__ import annotations

from pathlib import Path


def section(rec: dict, run_dir: Path) -> str:
    o = rec["original"]
    sim = rec.get("within_similarity")
    md = [(f"- {len(rec['parts'])} parts of {rec['classes']} classes, partition **{rec['partition_rule']}**"
           + (f" (within-part similarity {sim:.3f})" if sim is not None else "")
           + ("; probe protocol (headless encoder)" if rec["probe_protocol"] else "")),
          (f"- original {o['params'] / 1e6:.3f} M parameters, {o['predicted_ms']:.2f} ms predicted ({rec['target']}, "
           f"{rec['latency_source']}); part budget {rec['part_budget_params'] / 1e6:.3f} M parameters"),
          (f"- bundle `{rec['bundle']}` (build {rec['build_id']}); every part ONNX verified against its PyTorch "
           f"sub-model; score it served: `compress eval {rec['bundle']} --data ...`"),
          f"- fusion head trained on {rec['fusion']['images']} held-out training images",
          "", "| part | classes | params (M) | within budget | predicted ms | embed | ONNX max abs diff |",
          "|---|---|---|---|---|---|---|"]
    for p, v in zip(rec["parts"], rec["verification"]):
        md.append(f"| {p['index']} | {','.join(map(str, p['classes']))} | {p['params'] / 1e6:.3f} | "
                  f"{'yes' if p['params_ok'] else 'NO'} | {p['predicted_ms']:.2f} | {p['widths']['embed_dim']} | "
                  f"{v['max_abs']:.2g} |")
    ms = rec.get("measured")
    if ms:
        md += ["", f"Measured in ONNX Runtime (batch 1, 1 thread, best of {ms['runs']}, process CPU time, interleaved): "
                   f"unsplit {ms['unsplit_ms']:.2f} ms; parts " + ", ".join(f"{x:.2f}" for x in ms["parts_ms"])
               + f" ms; the largest part is **{ms['largest_ratio']:.3f}x** the unsplit model."]
    plan = rec.get("plan")
    if plan:
        md += ["", f"Device plan ({plan['method']}), predicted makespan {plan['makespan_ms']:.2f} ms:", "",
               "| device | parts | predicted ms |", "|---|---|---|"]
        for dv in plan["devices"]:
            ps = [str(x["part"]) for x in plan["parts"] if x["device"] == dv["device"]]
            md.append(f"| {dv['device']} | {','.join(ps) or '-'} | {dv['predicted_ms']:.2f} |")
    return "\n".join(md)
