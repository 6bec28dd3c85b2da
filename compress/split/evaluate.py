"""Scoring a split deployment as served: ``compress eval split.json --data D``.

* accuracy: every test image goes through the real path (K part server processes on loopback, or the given
  endpoints; scatter, gather, fuse in the client) and is scored against its label;
* the in-memory ensemble (each part's ONNX and the fusion head run in this process, no RPC) is computed on the
  same images: the served logits must equal it (max abs difference and argmax agreement are reported);
* latency, batch 1, wall clock (the parts run in other processes, so this process's CPU time would miss
  them), interleaved image by image:
  - end to end: ``SplitClient.infer`` (preprocessed image -> scatter -> slowest part -> fuse);
  - slowest part: the largest server-side inference time the parts report for that call;
  - RPC overhead: the same call on an *empty-model* deployment (each part returns a slice of its input,
    same request and reply sizes, the same fusion head), served by K other processes;
  - the unsplit model (``--reference model.onnx``, e.g. the run's ``artifacts/baseline-fp32.onnx``): ONNX
    Runtime in this process, 1 thread.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from torch import nn

from .. import ui
from ..errors import UserError
from . import manifest as mf


class _Empty(nn.Module):
    """The empty model: an image in, ``n`` of its values out (no compute to speak of)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return x.flatten(1)[:, :self.n] * 1.0


def _images(m, data: str, split: str, count: int | None, seed: int):
    from ..data import Preprocess, balanced_indices
    from ..data.sources import open_source

    pres = {p.preprocess for p in m.parts}
    if len(pres) != 1:
        raise UserError("the parts of this deployment take differently preprocessed images",
                        "score it with compress infer on image files")
    p = pres.pop()
    src = open_source(data, split)
    names = list(getattr(src, "classes", []) or [])
    if m.class_names is not None and names and names != list(m.class_names):
        raise UserError(f"the data's classes ({', '.join(names[:4])}, ...) are not the deployment's "
                        f"({', '.join(m.class_names[:4])}, ...)", "score it on the data it was split for")
    idx = balanced_indices(src.labels, count, seed)
    if int(src.labels[idx].max()) >= m.num_classes:
        raise UserError(f"the data has labels beyond the deployment's {m.num_classes} classes",
                        "score it on the data it was split for")
    prep = Preprocess(p.size, tuple(p.mean), tuple(p.std), p.interpolation, p.crop_pct, p.resize)
    x = np.stack([prep(src.image(int(j))).numpy() for j in idx]).astype(np.float32)
    return x, np.asarray(src.labels[idx])


def in_memory(manifest: str | Path, x: np.ndarray) -> np.ndarray:
    """The ensemble without RPC: each part's ONNX, then the fusion head, in this process."""
    from ..runtime import ort_session
    from .fusion import assemble

    m, folder = mf.load(manifest)
    outs = []
    for i in m.fusion.order:
        p = m.part(i)
        s = ort_session(mf.verified(folder, p.artifact, p.sha256, f"part {i}"), 1)
        outs.append(s.run(None, {s.get_inputs()[0].name: x})[0])
    f = ort_session(mf.verified(folder, m.fusion.onnx, m.fusion.onnx_sha256, "fusion head"), 1)
    feats = assemble(outs, [m.part(i).output_dim for i in m.fusion.order], len(x))
    return f.run(None, {f.get_inputs()[0].name: feats})[0]


def empty_bundle(manifest: str | Path, out: Path) -> Path:
    """The empty-model twin of a deployment: same parts' classes, sizes and fusion head, no model."""
    from .bundle import write_bundle
    from .fusion import load_fusion

    m, folder = mf.load(manifest)
    head = load_fusion(mf.verified(folder, m.fusion.weights, m.fusion.weights_sha256, "fusion weights"))
    parts = [(_Empty(m.part(i).output_dim), m.part(i).classes) for i in range(len(m.parts))]
    return write_bundle(out, parts, head, m.parts[0].preprocess.model_dump(), f"{m.build_id}-empty", "empty-model",
                        order=list(m.fusion.order), runtime=m.runtime.model_dump(), class_names=m.class_names)


def _p50(v: list[float]) -> float | None:
    return round(statistics.median(v), 4) if v else None


def evaluate_served(manifest: str | Path, data: str, split: str = "test", count: int | None = 200, seed: int = 0,
                    runs: int = 20, endpoints: list[str] | None = None, reference: str | Path | None = None) -> dict:
    from .client import SplitClient
    from .local import LocalParts

    m, _ = mf.load(manifest)
    x, y = _images(m, data, split, count, seed)
    ui.info(f"split eval: {len(y)} {split} images, {len(m.parts)} parts")
    with tempfile.TemporaryDirectory(prefix="vitforge-empty-") as tmp, \
            (LocalParts(manifest) if endpoints is None else _Given(endpoints)) as lp, \
            LocalParts(empty_bundle(manifest, Path(tmp))) as le, \
            SplitClient(manifest, lp.endpoints) as client, SplitClient(Path(tmp) / "split.json", le.endpoints) as empty:
        served, degraded = [], 0
        for at in ui.progress(range(0, len(x), m.runtime.max_batch), desc="served", unit="batch"):
            r = client.infer(x[at:at + m.runtime.max_batch])
            served.append(r.logits)
            degraded += int(r.degraded)
        served = np.concatenate(served)
        ref_runner = None
        if reference is not None:
            from ..runtime import OrtRunner

            ref_runner = OrtRunner(reference, 1)
        e2e, slow, rpc, ref = [], [], [], []
        n = min(runs, len(x))
        for i in ui.progress(range(n), desc="latency", unit="image"):
            xi = x[i:i + 1]
            r = client.infer(xi)
            e2e.append(r.wall_ms)
            slow.append(max(v for v in r.part_ms.values() if v is not None) if r.part_ms else float("nan"))
            rpc.append(empty.infer(xi).wall_ms)
            if ref_runner is not None:
                t = time.perf_counter()
                ref_runner(xi)
                ref.append((time.perf_counter() - t) * 1e3)
    mem = np.concatenate([in_memory(manifest, x[at:at + 64]) for at in range(0, len(x), 64)])
    top1 = float((served.argmax(1) == y).mean())
    out = {"manifest": str(manifest), "build_id": m.build_id, "images": len(y), "split": split,
           "top1": round(100 * top1, 2), "degraded_calls": degraded,
           "ensemble_max_abs_diff": float(np.abs(served - mem).max()),
           "ensemble_argmax_agreement": float((served.argmax(1) == mem.argmax(1)).mean()),
           "latency": {"runs": n, "clock": "wall (parts run in other processes), batch 1, interleaved",
                       "end_to_end_ms_p50": _p50(e2e), "slowest_part_ms_p50": _p50(slow),
                       "empty_model_rpc_ms_p50": _p50(rpc), "unsplit_reference_ms_p50": _p50(ref),
                       "reference": str(reference) if reference else None}}
    L = out["latency"]
    ui.info(f"split eval: top-1 {out['top1']:.2f} on {len(y)} images ({degraded} degraded calls); served vs in-memory "
            f"ensemble max|diff| {out['ensemble_max_abs_diff']:.2g}; end to end {L['end_to_end_ms_p50']} ms, slowest "
            f"part {L['slowest_part_ms_p50']} ms, empty-model RPC {L['empty_model_rpc_ms_p50']} ms"
            + (f", unsplit {L['unsplit_reference_ms_p50']} ms" if ref else ""))
    return out


class _Given:
    """Endpoints of parts already served elsewhere (nothing to start or stop)."""

    def __init__(self, endpoints: list[str]):
        self.endpoints = list(endpoints)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def is_manifest(path: str | None) -> bool:
    """Whether ``compress eval``'s target is a split deployment's manifest."""
    return bool(path) and str(path).endswith(".json") and Path(path).is_file()


__all__ = ["empty_bundle", "evaluate_served", "in_memory", "is_manifest"]
