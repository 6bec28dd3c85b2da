"""The CLI's commands; each returns a JSON-able result (printed with --json)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from . import ui
from .errors import UserError
from .pipeline.plan import load_recipe


def _print(text: str) -> None:
    if not ui.is_quiet():
        print(text, flush=True)


def summary_table(rows: list[dict]) -> str:
    cols = [("artifact", lambda r: r["name"]), ("runtime", lambda r: r.get("runtime", "")),
            ("precision", lambda r: r.get("precision", "")),
            ("top-1", lambda r: f"{r['top1']:.2f}" if r.get("top1") is not None else "-"),
            ("Δtop-1", lambda r: f"{r['delta_top1']:+.2f}" if r.get("delta_top1") is not None else "-"),
            ("own-probe", lambda r: f"{r['top1_refit']:.2f}" if r.get("top1_refit") is not None else "-"),
            ("agree%", lambda r: f"{r['agreement']:.1f}" if r.get("agreement") is not None else "-"),
            ("cosine", lambda r: f"{r['feature_cosine']:.5f}" if r.get("feature_cosine") is not None else "-"),
            ("MB", lambda r: f"{r['size_mb']:.1f}" if r.get("size_mb") else "-"),
            ("GFLOPs", lambda r: f"{r['gflops']:.2f}" if r.get("gflops") else "-"),
            ("p50 ms", lambda r: f"{r['latency']['p50_ms']:.1f}" if r.get("latency") else "-"),
            ("p90 ms", lambda r: f"{r['latency']['p90_ms']:.1f}" if r.get("latency") else "-"),
            ("CPU p50", lambda r: f"{r['latency']['cpu_p50_ms']:.1f}" if r.get("latency", {}).get("cpu_p50_ms") else "-")]
    if not any(r.get("top1_refit") is not None for r in rows):
        cols = [c for c in cols if c[0] != "own-probe"]
    cells = [[c[0] for c in cols]] + [[f(r) for _, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    fmt = lambda row: "  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


def run(args, argv) -> dict:
    from .pipeline.run import RunOptions, run_recipe

    lr = load_recipe(args.recipe, args.set, model=args.model, data=args.data, weights=args.weights)
    out = Path(args.out) if args.out else Path("runs") / run_folder_name(lr.recipe.name, lr.origins)
    args.run_dir = out  # where an internal error's log goes (cli.main)
    summary = run_recipe(lr, RunOptions(out, resume=args.resume, force=args.force, argv=argv))
    ev = summary.get("evaluation")
    if ev:
        _print(f"\n{lr.recipe.name} on {lr.recipe.model}: top-1 by {ev['method']} on {ev['test_images']} test images")
        _print(summary_table(ev["rows"]))
    _print(f"\nrun folder: {out}  (report.md, manifest.json, artifacts/)")
    return summary


def run_folder_name(name: str, origins: dict) -> str:
    """A recipe's ``name:`` as the default run folder: one plain folder name, never a path."""
    if not _SAFE_NAME.fullmatch(name) or name.strip(".") == "":
        from .recipes import _where

        raise UserError(f"{_where(origins, ('name',))}: recipe name {name!r} cannot be a run folder name",
                        "use letters, digits, '.', '_' and '-' (no '/' or '..'), or pass --out")
    return name


_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def out_dir(path: str | Path) -> Path:
    """``--out`` for a command that writes a folder of files: created here, or one line saying why not."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder", "choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror}", "choose a folder you can write to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to --out {out}: permission denied", "choose a folder you can write to")
    return out


def inspect(args) -> dict:
    from .data import load_subset
    from .inspection import activation_stats, format_text, graph_flops, structure
    from .pipeline.checkpoint import load_any

    state = load_any(args.model, args.weights)
    info = structure(state.model) | graph_flops(state.model)
    if args.images > 0:
        import torch

        ds = load_subset(args.data, "test", args.images, 0, state.cfg)
        images = torch.stack([ds[i][0] for i in ui.progress(range(len(ds)), desc="loading images")])
        info |= {"images": len(ds), "data": args.data, "activations": activation_stats(state.model, images)}
    _print(format_text(info))
    return info


def _reference_and_recipe(args):
    from .pipeline.checkpoint import load_any

    lr = load_recipe(args.recipe, args.set, model=None, data=args.data)
    ref_name = getattr(args, "reference", None) or lr.recipe.model
    return lr, load_any(ref_name, lr.recipe.weights)


def evaluate(args) -> dict:
    from .evaluation.evaluate import Evaluator
    from .utils.graph_stats import graph_stats
    from .evaluation.report_eval import latency_of
    from .pipeline.checkpoint import load_any
    from .runtime import RUNNERS, TorchRunner
    from .targets import deploy as _  # noqa: F401  registers the executorch and openvino runners

    lr, reference = _reference_and_recipe(args)
    target = args.target or args.model or lr.recipe.model
    ecfg = lr.recipe.evaluation
    ev = Evaluator(reference.model, lr.recipe.data, ecfg)
    path = Path(target)
    row = {"name": path.name if path.exists() else target}
    if path.is_file() or path.suffix in (".onnx", ".pte", ".xml"):
        runtime = {".onnx": "onnxruntime", ".ort": "onnxruntime", ".pte": "executorch", ".xml": "openvino"}.get(path.suffix)
        if runtime is None or runtime not in RUNNERS:
            raise UserError(f"cannot evaluate {path}: no runtime for {path.suffix!r} files here",
                            f"supported: {', '.join(sorted(RUNNERS))}")
        if not path.is_file():
            raise UserError(f"artifact {path} does not exist", "check the path")
        runner = RUNNERS[runtime](path, ecfg.latency.threads)
        row |= {"runtime": runtime} | (graph_stats(path) if path.suffix == ".onnx" else {})
        cfg = reference.cfg
    else:
        state = load_any(target, args.weights)
        runner, cfg = TorchRunner(state.model), state.cfg
        row |= {"runtime": "pytorch", "params": sum(p.numel() for p in state.model.parameters())}
    row |= ev.score(runner, row["name"])
    if ecfg.latency.enabled:
        row["latency"] = latency_of(runner, cfg, ecfg.latency)
    ref_row = {"name": "fp32 reference", "runtime": "pytorch", "top1": ev.reference_top1, "delta_top1": 0.0,
               "agreement": 100.0, "feature_cosine": 1.0} | ({"top1_refit": ev.reference_top1} if ev.refits else {})
    _print(summary_table([ref_row, row]))
    return {"reference": ref_row, "result": row}


def export(args) -> dict:
    """The pipeline's export stage (``compress.pipeline.export_stage``) on a model or checkpoint, into ``--out``."""
    from .pipeline.checkpoint import load_any
    from .pipeline.context import RunContext
    from .pipeline.export_stage import export_stage, target_profiles
    from .utils.io import write_json

    out = out_dir(args.out)
    lr, reference = _reference_and_recipe(args)
    target = args.target or args.model or lr.recipe.model
    state = load_any(target, args.weights)
    result = export_stage(state, RunContext(lr.recipe, out, reference, target_profiles(lr.recipe)))
    write_json(out / "export.json", result)
    for a in result["artifacts"]:
        v = a.get("verification") or {}
        _print(f"{a['path']}: {a['precision']} for {a['runtime']}"
               + (f", max|diff| {v['max_abs']:.3g}, cosine {v['cosine']:.6f}" if v else ""))
    return result


def list_all(args) -> dict:
    """``compress list``: models, passes, targets and recipes."""
    from .models import SUPPORTED
    from .pipeline.base import available_passes
    from .targets import list_profiles

    from .recipes.shipped import shipped_dir, shipped_recipes

    local = {p.stem: p for p in sorted(Path("recipes").glob("*.yaml"))} if Path("recipes").is_dir() else {}
    recipes = [{"name": k, "path": str(v), "source": "shipped"} for k, v in shipped_recipes().items()
               if not (k in local and local[k].resolve() == v.resolve())]
    recipes += [{"name": k, "path": str(v), "source": "./recipes"} for k, v in local.items()]
    info = {"models": SUPPORTED, "passes": {k: v.summary for k, v in sorted(available_passes().items())},
            "targets": list_profiles(), "recipes": recipes}
    _print(f"models: {SUPPORTED}\n\npasses:")
    for k, v in info["passes"].items():
        _print(f"  {k:<12} {v}")
    _print(f"\ntargets: {', '.join(info['targets'])}\n\nrecipes (--recipe NAME or a path; shipped: {shipped_dir()}):")
    for r in recipes:
        _print(f"  {r['name']:<16} {r['source']:<10} {r['path']}")
    return info


def profile(args) -> dict:
    from .targets.deploy.commands import profile as run_profile

    return run_profile(args)


def build(args) -> dict:
    from .targets.deploy.commands import build as run_build

    return run_build(args)
