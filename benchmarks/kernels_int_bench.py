"""W8A8 with integer softmax + GELU vs W8A8 with float ops (recipes/kernels-int8-int.yaml vs w8a8-vit.yaml).

Embedded DINOv2 ViT-S/14, CIFAR-10 linear probe (the spine's Evaluator), both artifacts the quantize pass's
Q/DQ ONNX scored in ONNX Runtime::

    OMP_NUM_THREADS=1 python benchmarks/kernels_int_bench.py --out runs/kernels-int          # 2,000 test images
    OMP_NUM_THREADS=1 python benchmarks/kernels_int_bench.py --out /tmp/ki --smoke          # a few images

One calibration (fold + quantize, W8A8 defaults, 64 images) serves both: the float-ops artifact is exported,
then the kernels pass swaps in the integer ops (calibrating their power-of-two scales) and the second is.
Reported: top-1 of each, agreement with the fp32 model, the integer kernels' code equality between ONNX
Runtime and the PyTorch reference (kernel level: ORT's output codes vs the reference on ORT's input codes,
must be 100%; model level: vs the codes the PyTorch model computes itself), and batch-1 1-thread ORT CPU
latency of both graphs (interleaved rounds under the benchmark lock). Targets (issue 23): top-1 within 0.5
point of the float-ops W8A8, agreement >= 95%, 100% code equality, integer graph at most 10% slower.
Writes ``<out>/results.json`` (and ``--publish``, default benchmarks/results/kernels_int.json; not in --smoke).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def latency(paths: dict[str, Path], rounds: int, size: int) -> dict:
    import fcntl

    from compress.evaluation.timing import measure
    from compress.runtime import OrtRunner

    runners = {k: OrtRunner(p) for k, p in paths.items()}
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {k: [] for k in runners}
    with open("/tmp/vitforge-bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for _ in range(rounds):
            for k, r in runners.items():
                times[k].append(measure(lambda: r(x), warmup=1, runs=3)["p50_ms"])
    return {k: float(torch.tensor(v).median()) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "kernels-int")
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--probe-train", type=int, default=2000)
    ap.add_argument("--calibration", type=int, default=64, help="calibration images (w8a8-vit.yaml: 64)")
    ap.add_argument("--latency-rounds", type=int, default=7)
    ap.add_argument("--smoke", action="store_true", help="10 test / 10 probe / 4 calibration images, 1 latency round")
    ap.add_argument("--publish", type=Path, default=REPO / "benchmarks" / "results" / "kernels_int.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.test, args.probe_train, args.calibration, args.latency_rounds = 10, 10, 4, 1
    torch.set_num_threads(1)
    from kernels_accuracy import features, int8_onnx, score

    from compress.kernels.integer import verify_codes
    from compress.passes.kernel_swap import KernelsConfig, KernelsPass
    from compress.pipeline.base import available_passes
    from compress.pipeline.context import RunContext
    from compress.pipeline.checkpoint import load_any
    from compress.recipes.schema import DataConfig, EvaluationConfig, Recipe
    from compress.runtime import OrtRunner
    from compress.utils.io import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    reference = load_any("dinov2-s14-focus")
    recipe = Recipe(name="kernels-int", data=DataConfig(path=args.data, calibration={"count": args.calibration}),
                    evaluation=EvaluationConfig(test=args.test, probe_train=args.probe_train))
    from compress.evaluation.evaluate import Evaluator

    ev = Evaluator(reference.model, recipe.data, recipe.evaluation, args.out)
    ctx = RunContext(recipe, args.out, reference)
    passes = available_passes()
    state = reference.clone()
    for name in ("fold", "quantize"):  # w8a8-vit.yaml's passes, defaults
        p = passes[name]
        state.history.append({"name": name, "type": name, "config": p.Config().model_dump(),
                              **(p(p.Config()).run(state, ctx) or {})})
    paths = {"w8a8-float-ops": int8_onnx(state, ev, args.out / "w8a8-float-ops.qdq.onnx", ctx)}
    int_state = copy.deepcopy(state)
    kcfg = KernelsConfig(softmax="int", gelu="int")
    krec = KernelsPass(kcfg).run(int_state, ctx)
    paths["w8a8-int-ops"] = int8_onnx(int_state, ev, args.out / "w8a8-int-ops.qdq.onnx", ctx)
    codes = verify_codes(paths["w8a8-int-ops"], int_state.model, ev.fidelity_images()[: (2 if args.smoke else 8)])
    ev.prepare()
    rows = {}
    for name, path in paths.items():
        f, pred = features(ev, OrtRunner(path), name)
        rows[name] = score(ev, name, f, pred)
    lat = latency(paths, args.latency_rounds, reference.cfg.img_size)
    fl, it = rows["w8a8-float-ops"], rows["w8a8-int-ops"]
    res = {"command": " ".join(sys.argv), "smoke": args.smoke, "test_images": args.test,
           "probe_train_images": args.probe_train, "calibration_images": args.calibration,
           "reference_top1": ev.reference_top1, "variants": list(rows.values()),
           "int_exponents": krec["int"]["exponents"], "code_equality": codes,
           "ort_latency_p50_ms": lat, "latency_ratio_int_vs_float": lat["w8a8-int-ops"] / lat["w8a8-float-ops"],
           "targets": {"top1_within_0.5": abs(it["top1"] - fl["top1"]) <= 0.5, "agreement_fp32_ge_95": it["agreement"] >= 95,
                       "codes_100pct": codes["kernel_codes_equal"],
                       "latency_le_1.10": lat["w8a8-int-ops"] <= 1.10 * lat["w8a8-float-ops"]},
           "seconds": time.time() - t0}
    write_json(args.out / "results.json", res)
    if not args.smoke:
        write_json(args.publish, res)
    print("| variant | top-1 | agreement with fp32 | ORT p50 ms (1 thread) |\n|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['top1']:.2f} | {r['agreement']:.2f} | {lat[k]:.1f} |")
    print(f"\ninteger kernel codes: {codes['codes']} compared, {codes['kernel_mismatches']} differ; model-level "
          f"equal {100 * codes['model_output_codes_equal']:.4f}%. targets: {res['targets']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
