"""The ``distill`` pass's report section: one line per stage."""
from __future__ import annotations


def section(rec: dict, run_dir) -> str:
    lines = [f"- teacher: {rec.get('teacher')}; image tower {rec.get('params_original', 0):,} weights"]
    for s in rec.get("stages", []):
        t, inh = s.get("train", {}), s.get("inheritance", {})
        loss = f", loss {t['loss_start']:.4g} -> {t['loss_end']:.4g}" if t.get("loss_start") is not None else ""
        lines.append(f"- stage {s['stage']}: target {s['target']}, {s['params']:,} weights ({s['ratio']:.3f}), "
                     f"inheritance {inh.get('mode')}, {t.get('steps', 0)} steps on {t.get('world', 1)} process(es){loss}")
    if rec.get("student_clip"):
        lines.append(f"- the student CLIP (both towers): `{rec['student_clip']}`")
    return "\n".join(lines)
