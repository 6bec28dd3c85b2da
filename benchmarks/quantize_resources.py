"""Resources of one recipe's quantize pass, run exactly as ``compress --recipe`` runs it, and nothing after it.

The passes before ``quantize`` (e.g. fold) and the quantize pass itself run as the pipeline runs them (same
seeds, same calibration draw); export and evaluation are skipped. Written to ``--json``: the pass's CPU /
wall / peak RSS and its per-phase meters (``compress.utils.resources``), the quantized model's fingerprint,
and (``--outputs``) the quantized model's outputs on held-out test images, so two versions of the pass can
be compared for fidelity (per-image cosine of the encoder outputs against the fp32 model and, with
``--compare`` an earlier outputs file, against the earlier version's quantized model).

    OMP_NUM_THREADS=1 /usr/bin/time -v python benchmarks/quantize_resources.py --recipe recipes/int4-vit.yaml \\
        --json /tmp/q.json --outputs /tmp/q-outputs.pt [--compare /tmp/q-before.pt] [--profile /tmp/q.prof]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from compress.pipeline.checkpoint import load_any  # noqa: E402
from compress.pipeline.context import RunContext  # noqa: E402
from compress.pipeline.plan import load_recipe  # noqa: E402
from compress.pipeline.run import seed_everything  # noqa: E402
from compress.utils.fingerprint import model_fingerprint  # noqa: E402
from compress.utils.resources import measure, process_peak_mb  # noqa: E402


@torch.no_grad()
def heldout_outputs(model, ctx: RunContext, count: int) -> torch.Tensor:
    ds = ctx.data("test", count, seed=12345, role="heldout")
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    model.eval()
    return torch.cat([model(x) for x in images.split(8)])


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Per-image cosine of two sets of encoder outputs, their largest difference, and whether they are equal."""
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    return {"images": len(a), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "max_abs_diff": float((a - b).abs().max()), "identical": bool(torch.equal(a, b))}


class PeakTrace:
    """Samples resident memory every few ms; keeps the main thread's innermost project frames at the peak."""

    def __init__(self, every: float = 0.02):
        import threading

        self.every, self.peak_mb, self.where = every, 0.0, []
        self.main = threading.main_thread().ident
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import traceback

        while not self.stop.wait(self.every):
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            if rss > self.peak_mb:
                frame = sys._current_frames().get(self.main)
                stack = traceback.extract_stack(frame) if frame else []
                self.peak_mb = rss
                self.where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack
                              if "/compress/" in f.filename][-6:]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="recipes/int4-vit.yaml")
    ap.add_argument("--json", required=True, help="where to write the measurement")
    ap.add_argument("--outputs", help="save the quantized model's held-out outputs here (.pt)")
    ap.add_argument("--compare", help="outputs file of an earlier version of the pass to compare against")
    ap.add_argument("--heldout", type=int, default=32)
    ap.add_argument("--profile", help="cProfile the quantize pass into this file")
    ap.add_argument("--trace-peak", action="store_true", help="sample RSS; record where the pass peaks")
    args = ap.parse_args()

    lr = load_recipe(args.recipe)
    recipe = lr.recipe
    seed_everything(recipe.seed)
    reference = load_any(recipe.model, recipe.weights)
    ctx = RunContext(recipe, Path(tempfile.mkdtemp(prefix="quantize-resources-")), reference, [])
    state = reference.clone()
    record = None
    for i, (_name, p) in enumerate(lr.passes):
        seed_everything(recipe.seed + i + 1)
        ctx.draws = []
        if p.name != "quantize":
            p.run(state, ctx)
            continue
        prof = None
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        tracer = PeakTrace() if args.trace_peak else contextlib.nullcontext()
        with tracer, measure() as used:
            record = p.run(state, ctx) or {}
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        break
    if record is None:
        sys.exit(f"{args.recipe} has no quantize pass")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"command": " ".join(["python"] + sys.argv), "commit": commit, "recipe": recipe.name, "model": recipe.model,
           "calibration_images": record.get("calibration_images"),
           "pass": {"resources": used, "cpu_seconds": record.get("cpu_seconds")},
           "phases": record.get("phases", {}), "process_peak_rss_mb": process_peak_mb(),
           "bits": record.get("bits"), "fingerprint": model_fingerprint(state.model),
           "profiled": bool(args.profile), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.trace_peak:
        out["peak_trace"] = {"rss_mb": round(tracer.peak_mb, 1), "where": tracer.where}
    if args.outputs or args.compare:
        y = {"quantized": heldout_outputs(state.model, ctx, args.heldout),
             "fp32": heldout_outputs(reference.model, ctx, args.heldout)}
        out["fidelity_fp32"] = compare(y["quantized"], y["fp32"])
        if args.outputs:
            torch.save(y, args.outputs)
        if args.compare:
            old = torch.load(args.compare)
            out["fidelity_vs"] = {"file": args.compare, "new_vs_old": compare(y["quantized"], old["quantized"]),
                                  "old_vs_fp32": compare(old["quantized"], old["fp32"])}
    shutil.rmtree(ctx.run_dir, ignore_errors=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out.get(k) for k in ("pass", "phases", "fingerprint", "peak_trace", "fidelity_fp32",
                                              "fidelity_vs")}, indent=1))


if __name__ == "__main__":
    main()
