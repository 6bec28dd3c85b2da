"""Quantization benchmark: our quantized artifacts beside the peers, measured in the same run.

Peers are built here from the fp32 ONNX of the same model with the same calibration images:
ONNX Runtime static INT8 (MinMax, Q/DQ, MatMul only, and all ops), ONNX Runtime dynamic INT8,
ONNX Runtime INT4 weight-only MatMulNBits (block 32, its default asymmetric RTN) and NNCF INT8
(transformer mode). Ours come from finished ``compress --recipe`` run folders (``--runs``): their
evaluated artifacts are re-scored here (or their evaluation.json reused when it used the same protocol)
and every artifact is timed here, one thread, batch 1, so all latencies share conditions.

    python benchmarks/quant_bench.py --runs runs/w8a8-vit runs/int4-vit runs/w6a6-vit runs/w4a4-vit \\
        runs/w3a3-vit runs/w4a16-vit --out benchmarks/results/quant.json

Prints a markdown table (top-1, delta vs fp32, agreement, feature cosine, size, p50 latency) and writes JSON.
Wrap final runs in ``flock /tmp/vitforge-bench.lock`` so two benchmarks never overlap.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from compress.data import load_subset  # noqa: E402
from compress.evaluation.evaluate import Evaluator  # noqa: E402
from compress.evaluation.timing import measure  # noqa: E402
from compress.export.onnx_export import export_onnx  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.recipes.schema import DataConfig, EvaluationConfig  # noqa: E402
from compress.runtime import OrtRunner, TorchRunner  # noqa: E402
from compress.utils.io import write_json  # noqa: E402

PEERS = ("ort-static-int8-matmul", "ort-static-int8-all", "ort-dynamic-int8", "ort-int4-matmulnbits-b32", "nncf-int8")


class _Reader:
    """ONNX Runtime calibration data reader over our calibration images."""

    def __init__(self, images: torch.Tensor, batch: int = 8):
        self.batches = iter([{"images": images[i:i + batch].numpy()} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self.batches, None)


def build_peer(name: str, fp32: Path, out: Path, calib: torch.Tensor) -> Path:
    from onnxruntime import quantization as q

    dest = out / f"{name}.onnx"
    if dest.is_file():
        return dest
    if name.startswith("ort-static"):
        pre = out / "fp32-preprocessed.onnx"
        if not pre.is_file():
            q.quant_pre_process(str(fp32), str(pre), skip_optimization=False)
        ops = ["MatMul"] if name.endswith("matmul") else None
        q.quantize_static(str(pre), str(dest), _Reader(calib), quant_format=q.QuantFormat.QDQ,
                          op_types_to_quantize=ops, calibrate_method=q.CalibrationMethod.MinMax)
    elif name == "ort-dynamic-int8":
        q.quantize_dynamic(str(fp32), str(dest), weight_type=q.QuantType.QInt8)
    elif name == "ort-int4-matmulnbits-b32":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        qz = MatMulNBitsQuantizer(onnx.load(str(fp32)), block_size=32, is_symmetric=False)
        qz.process()
        qz.model.save_model_to_file(str(dest), use_external_data_format=False)
    elif name == "nncf-int8":
        import nncf

        ds = nncf.Dataset([calib[i:i + 1].numpy() for i in range(len(calib))], lambda x: {"images": x})
        model = nncf.quantize(onnx.load(str(fp32)), ds, model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(calib))
        onnx.save(model, str(dest))
    else:
        raise ValueError(name)
    return dest


def latency(runner, cfg, runs: int) -> dict:
    x = torch.randn(1, 3, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    return measure(lambda: runner(x), warmup=5, runs=runs)


def cached_score(ev: Evaluator, runner, name: str, path: Path, cache: Path | None) -> dict:
    """Scores of an artifact, kept in ``cache`` keyed by the file's size and mtime and the protocol, so a
    rerun (e.g. the final, flock-ed latency pass) re-scores only what changed."""
    if cache is None:
        return ev.score(runner, name)
    st = path.stat()
    key = f"{st.st_size}-{int(st.st_mtime)}-{ev.cfg.test}-{ev.cfg.probe_train}"
    f = cache / f"scores-{name.replace('/', '_').replace(':', '_')}.json"
    if f.is_file() and json.loads(f.read_text()).get("key") == key:
        return json.loads(f.read_text())["scores"]
    scores = ev.score(runner, name)
    write_json(f, {"key": key, "scores": scores})
    return scores


def row_for(name: str, path: Path, ev: Evaluator, cfg, runs: int, precision: str, source: str,
            reuse: dict | None = None, cache: Path | None = None) -> dict:
    runner = OrtRunner(path)
    scores = reuse if reuse is not None else cached_score(ev, runner, name, path, cache)
    return {"name": name, "precision": precision, "source": source, "size_mb": path.stat().st_size / 2**20,
            "images": scores.get("images", ev.cfg.test) if scores.get("top1") is not None else None,
            **{k: scores[k] for k in ("top1", "delta_top1", "agreement", "feature_cosine")},
            "latency": latency(runner, cfg, runs)}


def ours(run: Path, ev: Evaluator, cfg, runs: int, test: int, cache: Path | None = None,
         rescore: bool = False) -> list[dict]:
    """Rows for a run's ONNX Runtime artifacts; ``rescore``: score here at the bench's test count (row names
    get ``@<count>``) instead of reusing the run's own evaluation, to compare runs on the same images."""
    export = json.loads((run / "export.json").read_text())
    evaluation = json.loads((run / "evaluation.json").read_text()) if (run / "evaluation.json").is_file() else {}
    evaluation = {} if rescore else evaluation
    # the run's own scores are reused (any test count, recorded per row); artifacts it did not score are scored here
    done = {r["name"]: r | {"images": evaluation["test_images"]} for r in evaluation.get("rows", []) if "top1" in r}
    rows = []
    for a in export["artifacts"]:
        if not a["name"].startswith("quantized-") or a["runtime"] != "onnxruntime":
            continue
        name = f"{run.name}:{a['name'][len('quantized-'):]}" + (f"@{test}" if rescore else "")
        # an artifact the recipe does not score (same numbers as a scored one, e.g. MatMulNBits beside Q/DQ):
        # size and latency only
        skip = None if a.get("evaluate", True) else dict.fromkeys(("top1", "delta_top1", "agreement", "feature_cosine"))
        rows.append(row_for(name, run / a["path"], ev, cfg, runs, a["precision"], "exported artifact, ONNX Runtime",
                            done.get(a["name"]) or skip, cache))
    return rows


def table(rows: list[dict]) -> str:
    out = ["| mode | precision (what runs) | test images | top-1 % | Δ top-1 | agreement % | feat. cosine | size MB "
           "| p50 ms wall | p50 ms CPU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency"]
        f = lambda k, fmt: "–" if r.get(k) is None else format(r[k], fmt)  # noqa: E731
        out.append(f"| {r['name']} | {r['precision']} | {r.get('images') or '–'} | {f('top1', '.2f')} | "
                   f"{f('delta_top1', '+.2f')} | {f('agreement', '.1f')} | {f('feature_cosine', '.5f')} | "
                   f"{r['size_mb']:.2f} | {lat['p50_ms']:.1f} | {lat['cpu_p50_ms']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="*", default=[], help="finished compress run folders with quantized artifacts")
    ap.add_argument("--unscored", nargs="*", default=[], choices=PEERS, help="peers only built, sized and timed")
    ap.add_argument("--rescore", nargs="*", default=[], help="run folders re-scored here at --test images")
    ap.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--probe-train", type=int, default=2000)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--work", default="runs/quant-bench")
    ap.add_argument("--out", default="benchmarks/results/quant.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lm = load_model("dinov2-s14-focus")
    ref, cfg = lm.model.eval(), lm.cfg
    data = DataConfig(path="cifar10")
    # run_dir=work keeps the trained probe (it depends only on the fp32 model and --probe-train)
    ev = Evaluator(ref, data, EvaluationConfig(test=args.test, probe_train=args.probe_train), work)
    ev.prepare()
    fp32 = work / "fp32.onnx"
    if not fp32.is_file():
        export_onnx(ref, fp32)
    cal = load_subset("cifar10", "train", args.calibration, 0, cfg)
    calib = torch.stack([cal[i][0] for i in range(len(cal))])
    rows = [{"name": "fp32 (PyTorch reference)", "precision": "fp32", "source": "PyTorch", "top1": ev.reference_top1,
             "delta_top1": 0.0, "agreement": 100.0, "feature_cosine": 1.0,
             "size_mb": sum(p.numel() for p in ref.parameters()) * 4 / 2**20,
             "latency": latency(TorchRunner(ref), cfg, args.latency_runs)}]
    rows.append(row_for("fp32 ONNX", fp32, ev, cfg, args.latency_runs, "fp32", "ONNX Runtime",
                        {"top1": ev.reference_top1, "delta_top1": 0.0, "agreement": 100.0, "feature_cosine": 1.0}))
    for p in args.peers:
        t = time.time()
        path = build_peer(p, fp32, work, calib)
        print(f"{p}: built in {time.time() - t:.0f}s", file=sys.stderr, flush=True)
        unscored = dict.fromkeys(("top1", "delta_top1", "agreement", "feature_cosine")) if p in args.unscored else None
        rows.append(row_for(p, path, ev, cfg, args.latency_runs, "peer", "peer artifact, ONNX Runtime", unscored, work))
    for run in args.runs:
        rows += ours(Path(run), ev, cfg, args.latency_runs, args.test, work)
    for run in args.rescore:
        rows += ours(Path(run), ev, cfg, args.latency_runs, args.test, work, rescore=True)
    md = table(rows)
    print(md)
    write_json(args.out, {"protocol": {"test": args.test, "probe_train": args.probe_train, "calibration": args.calibration,
                                       "threads": 1, "batch": 1, "latency_runs": args.latency_runs},
                          "command": " ".join(["python", "benchmarks/quant_bench.py"] + (argv or sys.argv[1:])),
                          "rows": rows, "table": md, "np": np.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
