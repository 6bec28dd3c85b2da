"""What the softmax / GELU approximations cost: on real activations, and on the CIFAR-10 linear probe.

Embedded DINOv2 ViT-S/14 (``dinov2-s14-focus``), the spine's Evaluator (probe trained once on fp32 features,
2,000 train / 2,000 test images)::

    OMP_NUM_THREADS=1 python benchmarks/kernels_accuracy.py --out runs/kernels-accuracy \
        [--variants gelu-tanh,gelu-lut,softmax-poly2,poly2+lut,int8,int8+poly2+lut] [--test 2000]

1. Errors of every method on the pre-softmax logits and pre-GELU activations the model produces on a few
   real CIFAR-10 test images (``compress.kernels.measure``).
2. Each variant: the kernels pass applied to the fp32 model (``+``-joined choices), exported to ONNX and
   scored in ONNX Runtime (what ships; the export is verified against PyTorch first). ``int8`` variants
   run the quantize pass (W8A8 defaults) after the kernels pass, exported as the pass's Q/DQ ONNX (verified
   against the fake-quant model) and scored in ONNX Runtime, and are also compared to ``int8`` with the exact
   ops (its predictions are kept in ``<out>/int8-pred.pt`` for later invocations). ``int8>...`` variants
   swap the approximations into the already calibrated INT8 model instead (same scales: their own effect).
   Targets: agreement >= 99% with the exact model and |top-1 change| <= 0.3 pt.
   Writes ``<out>/results.json`` and prints markdown tables.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT = "gelu-tanh,gelu-lut,softmax-poly2,poly2+lut,int8,int8+poly2+lut"
CHOICES = {"gelu-tanh": {"gelu": "tanh"}, "gelu-lut": {"gelu": "relu-lut"}, "lut": {"gelu": "relu-lut"},
           "softmax-poly1": {"softmax": "online-poly1"}, "softmax-poly2": {"softmax": "online-poly2"},
           "poly2": {"softmax": "online-poly2"}, "softmax-poly3": {"softmax": "online-poly3"},
           "poly3": {"softmax": "online-poly3"}, "softmax-online": {"softmax": "online"},
           # finer ReLU-minus tables (the default is 64 intervals on [0, 6])
           "lut128": {"gelu": "relu-lut", "lut": {"entries": 128, "x_max": 8.0}},
           "lut256": {"gelu": "relu-lut", "lut": {"entries": 256, "x_max": 8.0}}}


def real_input_errors(model, images) -> dict:
    from compress.kernels import GeluTable
    from compress.kernels.measure import capture_inputs, gelu_errors, softmax_errors

    logits, acts = capture_inputs(model, images)
    out = {"images": len(images), "softmax": {m: softmax_errors(logits, m) for m in
                                              ("online", "online-poly1", "online-poly2", "online-poly3")},
           "gelu": {"tanh": gelu_errors(acts, "tanh")}}
    for entries, x_max in ((16, 4.0), (32, 4.0), (64, 6.0), (128, 8.0)):
        t = GeluTable("gelu", entries, x_max)
        out["gelu"][f"relu-lut {entries}@{x_max}"] = gelu_errors(acts, "relu-lut", t)
    return out


def parse_variant(name: str) -> tuple[bool, dict]:
    parts = name.replace(">", "+").split("+")
    int8 = parts[0] == "int8"
    cfg: dict = {}
    for p in parts[int8:]:
        if p not in CHOICES:
            raise SystemExit(f"unknown variant part {p!r} in {name!r}; choose from int8, {', '.join(CHOICES)}")
        cfg |= CHOICES[p]
    return int8, cfg


def quantize(state, ctx) -> None:
    from compress.pipeline.base import available_passes

    passes = available_passes()
    if "quantize" not in passes:
        raise RuntimeError("the quantize pass is not available in this checkout")
    qp = passes["quantize"]
    rec = qp(qp.Config()).run(state, ctx) or {}
    state.history.append({"name": "quantize", "type": "quantize", "config": qp.Config().model_dump(), **rec})


def int8_onnx(state, ev, path: Path, ctx):
    """The quantize pass's Q/DQ graph of ``state`` (what ships), verified against the fake-quant PyTorch model."""
    from compress.export.onnx_export import export_onnx
    from compress.export.verify import verify
    from compress.passes.quantize.export_qdq import build_qdq
    from compress.models.float_view import float_view
    from compress.runtime import OrtRunner, TorchRunner
    from compress.utils.io import atomic_path
    import onnx

    flt = path.with_suffix(".float.onnx")
    with float_view(state.model) as model:  # opset 18: Reduce* take axes as an input, valid after the bump to 21
        export_onnx(model, flt, opset=18)
    proto, _ = build_qdq(flt, state.model.eval(), "onnxruntime")
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    flt.unlink()
    lim = ctx.recipe.export.verify
    v = verify(path, OrtRunner(path), TorchRunner(state.model), ev.fidelity_images()[:4],
               lim.quantized_max_abs, lim.quantized_min_cosine)
    print(f"  {path.name}: verified {v.line()}", file=sys.stderr, flush=True)
    return path


def same_int8(state, ev, out: Path, ctx) -> None:
    """Check that this calibration reproduced the ``int8`` variant's graph (every initializer equal), so that its
    saved predictions are the exact-ops baseline of the model the approximations are swapped into."""
    import onnx
    from onnx import numpy_helper

    probe = int8_onnx(state, ev, out / "int8-check.qdq.onnx", ctx)
    a, b = (onnx.load(str(p)).graph for p in (probe, out / "int8.qdq.onnx"))
    probe.unlink()
    inits = lambda g: {t.name: numpy_helper.to_array(t) for t in g.initializer}  # noqa: E731
    ia, ib = inits(a), inits(b)
    same = (len(a.node) == len(b.node) and ia.keys() == ib.keys()
            and all(ia[k].shape == ib[k].shape and (ia[k] == ib[k]).all() for k in ia))
    if not same:
        raise RuntimeError("this INT8 calibration differs from the int8 variant's: rerun the int8 variant")


def features(ev, runner, name: str):
    from compress.evaluation.evaluate import extract

    f = extract(runner, ev._test, ev.data.batch_size, ev.vit.num_prefix_tokens, f"evaluating {name}")
    return f, ev._predict(f.pooled)


def score(ev, name, f, pred, base_pred=None) -> dict:
    ref_pred = ev._predict(ev.ref_test.pooled)
    cos = torch.nn.functional.cosine_similarity(f.pooled.double(), ev.ref_test.pooled.double(), dim=1)
    top1 = float((pred == f.labels).double().mean()) * 100
    row = {"variant": name, "top1": top1, "delta_top1": top1 - ev.reference_top1,
           "agreement": float((pred == ref_pred).double().mean()) * 100, "feature_cosine": float(cos.mean())}
    if base_pred is not None:
        row["agreement_vs_int8_exact"] = float((pred == base_pred).double().mean()) * 100
    return row


def int8_baseline(out: Path, cache: dict, wait_s: float) -> None:
    """The exact-ops INT8 model's predictions, from ``<out>/int8-pred.pt`` (written by the ``int8`` variant of this
    or of a concurrent invocation, which is waited for up to ``wait_s``)."""
    path, t0 = out / "int8-pred.pt", time.time()
    while not path.is_file() and time.time() - t0 < wait_s:
        time.sleep(20)
    if "int8_pred" not in cache and path.is_file():
        base = torch.load(path, weights_only=True)
        cache["int8_pred"], cache["int8_top1"] = base["pred"], base["top1"]


def jitter_floor(ev, out: Path, cache: dict, noise: float = 1e-6) -> dict:
    """How often the exact-ops INT8 model disagrees with itself when its input moves by ``noise`` (about a float
    ulp of a normalized image): the floor under which no change to the model, however exact, can agree."""
    from compress.runtime import OrtRunner

    run, gen = OrtRunner(out / "int8.qdq.onnx"), torch.Generator().manual_seed(0)
    ev.prepare()
    f, pred = features(ev, lambda x: run(x + noise * torch.randn(x.shape, generator=gen)), "int8~jitter")
    int8_baseline(out, cache, 0)
    row = score(ev, "int8~jitter", f, pred, cache.get("int8_pred"))
    return row | {"runtime": f"onnxruntime, input + {noise:g} noise", "role": "floor",
                  "top1_change": row["top1"] - cache.get("int8_top1", float("nan"))}


def run_variant(name, ev, reference, ctx, out: Path, cache: dict, wait_s: float = 0) -> dict:
    """Score one variant; ``cache`` keeps the exact-ops INT8 model's predictions and top-1 for int8+ rows.
    Models are built (and INT8 ones calibrated) before the fp32 reference features are needed."""
    from compress.export.onnx_export import export_onnx
    from compress.export.verify import verify
    from compress.passes.kernel_swap import KernelsConfig, apply
    from compress.runtime import OrtRunner

    if name == "int8~jitter":  # the measurement's floor: the exact-ops INT8 graph on inputs moved by 1e-6
        return jitter_floor(ev, out, cache)
    int8, cfg = parse_variant(name)
    after = int8 and ">" in name  # int8>...: swap into the calibrated INT8 model (its scales unchanged)
    state = reference.clone()
    t0 = time.time()
    rec = apply(state.model, KernelsConfig(**cfg)) if cfg and not after else None
    if int8:
        if after and "int8_state" in cache:  # calibrated (and checked) once per invocation
            state = cache["int8_state"].clone()
        else:
            quantize(state, ctx)
            if after:
                same_int8(state, ev, out, ctx)
            if after or not cfg:  # the exact-ops INT8 model: int8> variants of this invocation swap into it
                cache["int8_state"] = state.clone()
        if after:
            rec = apply(state.model, KernelsConfig(**cfg))
        path = int8_onnx(state, ev, out / f"{name}.qdq.onnx", ctx)
        ev.prepare()
        f, pred = features(ev, OrtRunner(path), name)
        if not cfg:  # the baseline of the int8+ rows, kept for later invocations
            torch.save({"pred": pred, "top1": float((pred == f.labels).double().mean()) * 100}, out / "int8-pred.pt")
        int8_baseline(out, cache, wait_s if cfg else 0)
        row = score(ev, name, f, pred, cache.get("int8_pred")) | {"runtime": "onnxruntime (Q/DQ int8)"}
    else:
        path = out / f"{name}.onnx"
        export_onnx(state.model, path)
        v = verify(path, OrtRunner(path), state.model, ev.fidelity_images()[:4], 1e-3, 0.9999)
        ev.prepare()
        f, pred = features(ev, OrtRunner(path), name)
        row = score(ev, name, f, pred) | {"runtime": "onnxruntime", "export_max_abs": v.max_abs}
    row["seconds"] = time.time() - t0
    if rec and "lut" in rec:
        row["lut_max_abs_error"] = rec["lut"]["max_abs_error"]
    if cfg and int8 and "int8_pred" not in cache:
        raise RuntimeError(f"no exact-ops INT8 baseline ({out / 'int8-pred.pt'}): run the int8 variant")
    if cfg:  # vs the same model with the exact ops: fp32, or INT8 for int8+ variants
        base_top1 = cache["int8_top1"] if int8 else ev.reference_top1
        agree = row["agreement_vs_int8_exact"] if int8 else row["agreement"]
        row["top1_change"] = row["top1"] - base_top1
        row["meets_target"] = agree >= 99.0 and abs(round(row["top1_change"], 6)) <= 0.3  # (0.1-point steps)
    return row


def restated_target(rows: list[dict], margin: float = 0.5, top1: float = 0.3) -> None:
    """Issue 23's INT8 target: an approximation swapped into the INT8 model agrees with the exact-ops INT8 model at
    least as often as that model agrees with itself on inputs moved by 1e-6 (the ``int8~jitter`` floor, same
    images, same invocation) minus ``margin`` points, and moves top-1 by at most ``top1`` points."""
    floor = next((r for r in rows if r.get("role") == "floor" and "agreement_vs_int8_exact" in r), None)
    if floor is None:
        return
    need = floor["agreement_vs_int8_exact"] - margin
    for r in rows:
        if r.get("role") != "floor" and "agreement_vs_int8_exact" in r and "top1_change" in r:
            r["restated_target"] = {"jitter_floor_agreement": floor["agreement_vs_int8_exact"], "min_agreement": need,
                                    "max_abs_top1_change": top1,
                                    "met": r["agreement_vs_int8_exact"] >= need - 1e-9
                                    and abs(round(r["top1_change"], 6)) <= top1}


def markdown(errors: dict, rows: list[dict]) -> str:
    lines = [f"Errors on the inputs the model produces ({errors['images']} CIFAR-10 test images, all 12 blocks)", "",
             "| op | method | max abs | other |", "|---|---|---|---|"]
    for m, e in errors["softmax"].items():
        lines.append(f"| softmax | {m} | {e['max_abs']:.2e} | max rel (p>1e-3) {e['max_rel_p>1e-3']:.2e}, "
                     f"max KL {e['max_kl']:.2e} |")
    for m, e in errors["gelu"].items():
        lines.append(f"| gelu | {m} | {e['max_abs']:.2e} | mean abs {e['mean_abs']:.2e}, inputs in "
                     f"[{e['range'][0]:.1f}, {e['range'][1]:.1f}] |")
    lines += ["", "| variant | runtime | top-1 % | Δ vs fp32 | Δ vs exact ops | agreement vs fp32 % | "
              "agreement vs exact ops % | feat. cosine | target met |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | not run: {r['error']} |" + " |" * 7)
            continue
        exact_agree = r.get("agreement_vs_int8_exact", r["agreement"] if "top1_change" in r else None)
        change = r.get("top1_change")
        lines.append(f"| {r['variant']} | {r['runtime']} | {r['top1']:.2f} | {r['delta_top1']:+.2f} | "
                     f"{'' if change is None else f'{change:+.2f}'} | {r['agreement']:.2f} | "
                     f"{'' if exact_agree is None else f'{exact_agree:.2f}'} | {r['feature_cosine']:.5f} | "
                     f"{ {True: 'yes', False: 'NO'}.get(r.get('meets_target'), r.get('role', 'baseline'))} |")
    return "\n".join(lines)


def onnx_latency(out: Path, reference, runs: int) -> dict:
    """ORT batch-1, 1-thread p50 of every exported variant beside the exact fp32 graph, interleaved, under the
    benchmark lock (the approximations target accelerators; on a CPU they cost time, measured here)."""
    import fcntl

    from compress.evaluation.timing import measure
    from compress.export.onnx_export import export_onnx
    from compress.runtime import OrtRunner

    base = out / "exact.onnx"
    if not base.is_file():
        export_onnx(reference.model, base)
    paths = [base] + sorted(p for p in out.glob("*.onnx") if p != base)
    runners = {p.stem: OrtRunner(p) for p in paths}
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {k: [] for k in runners}
    with open("/tmp/vitforge-bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for _ in range(runs):  # interleaved rounds: drifting machine load hits every variant alike
            for k, r in runners.items():
                times[k].append(measure(lambda: r(x), warmup=1, runs=3)["p50_ms"])
    p50 = {k: float(torch.tensor(v).median()) for k, v in times.items()}
    return {k: {"p50_ms": v, "vs_exact": v / p50["exact"]} for k, v in p50.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "kernels-accuracy")
    ap.add_argument("--variants", default=DEFAULT)
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--probe-train", type=int, default=2000)
    ap.add_argument("--error-images", type=int, default=4)
    ap.add_argument("--publish", type=Path, default=REPO / "benchmarks" / "results" / "kernels.json",
                    help="also write the results here (the project's measured numbers)")
    ap.add_argument("--int8-baseline-wait", type=float, default=0, metavar="SECONDS",
                    help="int8+ variants without int8: wait up to SECONDS for <out>/int8-pred.pt from a concurrent "
                         "invocation that runs int8 (default: run int8 here)")
    ap.add_argument("--latency", type=int, default=0, metavar="ROUNDS",
                    help="only time the ONNX files already exported in --out (ROUNDS interleaved rounds)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from compress.evaluation.evaluate import Evaluator
    from compress.pipeline.context import RunContext
    from compress.pipeline.checkpoint import load_any
    from compress.recipes.schema import DataConfig, EvaluationConfig, Recipe
    from compress.utils.io import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    reference = load_any("dinov2-s14-focus")
    if args.latency:
        lat = onnx_latency(args.out, reference, args.latency)
        path = args.out / "results.json"
        res = json.loads(path.read_text()) if path.is_file() else {}
        write_json(path, res | {"onnx_latency": lat, "latency_command": " ".join(sys.argv)})
        write_json(args.publish, json.loads(path.read_text()))
        print("| graph | ORT p50 ms (batch 1, 1 thread) | vs exact |\n|---|---|---|")
        print("\n".join(f"| {k} | {v['p50_ms']:.1f} | {v['vs_exact']:.2f}x |" for k, v in lat.items()))
        return 0
    recipe = Recipe(name="kernels-accuracy", data=DataConfig(path=args.data),
                    evaluation=EvaluationConfig(test=args.test, probe_train=args.probe_train))
    ev = Evaluator(reference.model, recipe.data, recipe.evaluation, args.out)  # prepared when first needed
    errors = real_input_errors(reference.model, ev.fidelity_images()[: args.error_images])
    ctx = RunContext(recipe, args.out, reference)
    rows, cache = [], {}
    names = args.variants.split(",")
    if any(n.startswith(("int8+", "int8>")) for n in names) and "int8" not in names and not args.int8_baseline_wait:
        names.insert(0, "int8")  # the exact-ops INT8 model the int8+ variants are compared to
    names.sort(key=lambda n: n != "int8")
    path = args.out / "results.json"
    for name in names:
        try:
            rows.append(run_variant(name, ev, reference, ctx, args.out, cache, args.int8_baseline_wait))
        except RuntimeError as e:
            rows.append({"variant": name, "error": str(e)})
        print(markdown(errors, rows).split("\n\n")[-1].splitlines()[-1], file=sys.stderr, flush=True)
        earlier = json.loads(path.read_text()) if path.is_file() else {}  # (other invocations may have written)
        kept = [r for r in earlier.get("variants", []) if r["variant"] not in names]
        restated_target(kept + rows)
        write_json(path, earlier | {"reference_top1": ev.reference_top1, "test_images": args.test,
                                    "probe_train_images": args.probe_train, "errors": errors, "variants": kept + rows,
                                    "commands": sorted(set(earlier.get("commands", [])) | {" ".join(sys.argv)})})
    rows = kept + rows
    write_json(args.publish, json.loads(path.read_text()))
    print(f"fp32 reference top-1 {ev.reference_top1:.2f}% on {args.test} test images\n")
    print(markdown(errors, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
