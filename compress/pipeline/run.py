"""The resumable runner: passes in order, one atomic checkpoint each, then export, evaluation, report.

Run folder::

    recipe.yaml            the recipe as run (extends and --set resolved)
    passes/01-<name>/      model.safetensors + config.json (config, history, chain hash), per pass
    artifacts/             exported, verified artifacts
    export.json            artifact list with verification and sha256 (written after the artifacts)
    evaluation.json        scores; report.md, report.json, plots/*.png; manifest.json last

Each stage carries a chain hash (model fingerprint + every pass config up to it). A rerun
reuses every stage whose hash matches, so a run killed at any point resumes where it
stopped and ends with the same artifacts.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .. import ui
from ..data.catalog import resolve as resolve_data
from ..errors import UserError
from ..evaluation.leakage import pack_draws
from ..utils.io import sha256_file, sha256_json, write_json, write_text
from ..utils.resources import measure, process_peak_mb
from .checkpoint import load_any, load_checkpoint
from .context import RunContext
from .export_stage import export_stage, target_profiles
from .plan import LoadedRecipe
from .state import ModelState

RUN_FILE = "run.json"
LOCK_FILE = ".lock"  # flock-ed for the whole run; holds the pid while held


@dataclass
class RunOptions:
    out: Path
    resume: bool = False  # insist on continuing an earlier run
    force: bool = False  # discard an earlier run in the same folder
    argv: list[str] | None = None


def seed_everything(seed: int) -> None:
    seed %= 2**32  # recipe seeds are < 2**32; a pass's seed + i may not be
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ours(out: Path) -> list[Path]:
    """What the folder holds besides the lock file."""
    return [p for p in out.iterdir() if p.name != LOCK_FILE]


def _precheck(out: Path, opts: RunOptions) -> None:
    """Refusals that need no model and must leave no trace: not even the folder or its lock file."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder", "choose a folder for the run")
    holder = _holder(out)
    if holder:  # before any look at the contents: a run in progress writes them
        raise UserError(f"run folder {out} is in use by another compress run (pid {holder})",
                        "wait for it to finish, or choose another --out")
    prev = (out / RUN_FILE).is_file()
    if opts.resume and not prev:
        raise UserError(f"nothing to resume in {out}", "drop --resume to start a new run")
    if out.is_dir() and not prev and not opts.force and _ours(out):
        raise UserError(f"output folder {out} is not empty and holds no vitforge run",
                        "choose another --out (nothing there was touched)")


def _holder(out: Path) -> str | None:
    """The pid holding the folder's lock, if a run holds it (the lock file is only read, never created)."""
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(out: Path):
    """Hold an exclusive lock on the run folder for the whole run; a second run into it exits 2."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot create run folder {out}: {e.strerror}",
                        "choose an --out you can write to (not under a file)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"run folder {out} is in use by another compress run (pid {holder})",
                            "wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an idle folder's lock file is empty: a refused run leaves every byte as it was
    finally:
        os.close(fd)


def _chains(start: str, recipe, passes) -> list[str]:
    """The chain hash of each pass: the model, the data its calibration reads, every pass config up to it."""
    chain, out = sha256_json({"start": start, "data": recipe.data.model_dump()}), []
    for name, p in passes:
        chain = sha256_json({"prev": chain, "name": name, "type": p.name, "config": p.config.model_dump()})
        out.append(chain)
    return out


def _prepare_dir(out: Path, start_hash: str, chains: dict[str, str], opts: RunOptions) -> None:
    """Check the folder against this recipe (``chains``: checkpoint folder -> chain hash) before writing anything."""
    prev = _read_json(out / RUN_FILE)
    if opts.force:
        for sub in ("passes", "artifacts", "plots", "work"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for f in ("export.json", "evaluation.json", "report.md", "report.json", "manifest.json", "probe.safetensors",
                  RUN_FILE, "recipe.yaml"):
            (out / f).unlink(missing_ok=True)
        return
    if prev is None:
        if _ours(out):
            raise UserError(f"output folder {out} is not empty and holds no vitforge run",
                            "choose another --out (nothing there was touched)")
        if opts.resume:
            raise UserError(f"nothing to resume in {out}", "drop --resume to start a new run")
        return
    if prev.get("start") != start_hash:
        raise UserError(f"{out} holds a run of another model or seed", "use --force to start over, or another --out")
    done = sorted(p.name for p in (out / "passes").iterdir() if not p.name.startswith(".")) \
        if (out / "passes").is_dir() else []
    for d in done:
        meta = _read_json(out / "passes" / d / "config.json") or {}
        if chains.get(d) is None or meta.get("chain") != chains[d]:
            raise UserError(f"{out / 'passes' / d} was made by a different recipe (its pass, or an earlier one, "
                            "is not in this recipe as it is run)",
                            "use --force to redo the run, or another --out (nothing was touched)")


def run_recipe(lr: LoadedRecipe, opts: RunOptions) -> dict:
    out = Path(opts.out)
    _precheck(out, opts)
    with locked(out):
        return _run(lr, opts, out)


def _run(lr: LoadedRecipe, opts: RunOptions, out: Path) -> dict:
    recipe = lr.recipe
    t_start = time.time()
    timings: dict[str, float] = {}
    resources: dict[str, dict] = {}  # per stage: CPU s, wall s, peak RSS (compress.utils.resources)
    seed_everything(recipe.seed)
    t = time.time()
    reference = load_any(recipe.model, recipe.weights)
    timings["load_model"] = time.time() - t
    data = _data_source(recipe.data.path)
    from ..utils.fingerprint import model_fingerprint

    start = sha256_json({"model": recipe.model, "weights": recipe.weights, "fp": model_fingerprint(reference.model),
                         "seed": recipe.seed})
    folders = [f"{i + 1:02d}-{name}" for i, (name, _) in enumerate(lr.passes)]
    chains = _chains(start, recipe, lr.passes)
    _prepare_dir(out, start, dict(zip(folders, chains)), opts)
    write_json(out / RUN_FILE, {"start": start})
    write_text(out / "recipe.yaml", yaml.safe_dump(lr.raw, sort_keys=False))
    targets = target_profiles(recipe)
    ctx = RunContext(recipe, out, reference, targets)
    state, chain, resumed = reference.clone(), start, 0
    for i, ((name, p), chain, folder) in enumerate(zip(lr.passes, chains, folders)):
        ckpt = out / "passes" / folder
        meta = _read_json(ckpt / "config.json")
        if meta and meta.get("chain") == chain:
            state, _ = load_checkpoint(ckpt)
            timings[f"pass:{name}"] = meta.get("seconds", 0.0)
            resumed += 1
            ui.info(f"[{i + 1}/{len(lr.passes)}] {name}: finished earlier, reusing {ckpt}")
            continue
        if ckpt.exists():  # _prepare_dir checked every folder; a guard, never reached
            raise UserError(f"{ckpt} was made by a different recipe", "use --force to redo the run, or another --out")
        ui.info(f"[{i + 1}/{len(lr.passes)}] {name} ({p.name}): {p.summary}")
        seed_everything(recipe.seed + i + 1)
        ctx.draws = []
        with measure() as used:
            record = p.run(state, ctx) or {}
        dt = used["wall_s"]
        state.history.append({"name": name, "type": p.name, "config": p.config.model_dump(),
                              "config_version": p.Config.VERSION, **record, "resources": used})
        state.save(ckpt, {"chain": chain, "seconds": dt, "pass": name, "data_draws": pack_draws(ctx.draws)})
        timings[f"pass:{name}"] = dt
        resources[f"pass:{name}"] = used
        ui.info(f"    done in {dt:.1f}s wall, {used['cpu_s']:.1f}s CPU, peak RSS {used['peak_rss_mb']:.0f} MB -> {ckpt}")
    if resumed:
        ui.info(f"resumed: {resumed} finished pass(es) reused")
    # each stage's key covers the recipe sections it reads: a changed export or evaluation setting redoes it
    export_key = sha256_json([chain, recipe.model_dump(include={"export", "targets", "targets_check"})])
    export = _stage(out / "export.json", export_key, lambda: export_stage(state, ctx), timings, "export", verify_files=out,
                    resources=resources)
    evaluation = None
    if recipe.evaluation.enabled:
        eval_key = sha256_json([export_key, export["artifacts"], recipe.model_dump(include={"evaluation", "data"})])
        evaluation = _stage(out / "evaluation.json", eval_key,
                            lambda: _evaluate(reference, state, ctx, export), timings, "evaluation",
                            resources=resources)
    from ..models import weights_note
    from ..report import write_report

    summary = {"recipe": recipe.name, "model": recipe.model, "data": data, "run_dir": str(out), "passes": state.history,
               "artifacts": export["artifacts"], "evaluation": evaluation, "weights": weights_note(reference.cfg)}
    write_report(out, summary)
    timings["total"] = time.time() - t_start
    _write_manifest(out, lr, state, export, timings, opts, resources)
    return summary


def _data_source(spec: str) -> dict:
    """Where the recipe's data comes from (said once on stderr, recorded in the report and manifest); a
    missing dataset fails later, in the stage that needs images."""
    try:
        return resolve_data(spec).to_dict()
    except UserError as e:
        return {"requested": spec, "dataset": spec, "path": None, "source": "missing", "note": str(e)}


def _stage(path: Path, chain: str, fn, timings: dict, name: str, verify_files: Path | None = None,
           resources: dict | None = None) -> dict:
    done = _read_json(path)
    if done and done.get("chain") == chain and (verify_files is None or _files_intact(verify_files, done)):
        timings[name] = done.get("seconds", 0.0)
        if resources is not None and done.get("resources"):
            resources[name] = done["resources"]
        ui.info(f"{name}: finished earlier, reusing {path.name}")
        return done
    with measure() as used:
        result = fn()
    result |= {"chain": chain, "seconds": used["wall_s"], "resources": used}
    write_json(path, result)
    timings[name] = result["seconds"]
    if resources is not None:
        resources[name] = used
    return result


def _files_intact(root: Path, done: dict) -> bool:
    return all((root / a["path"]).exists() and (a.get("sha256") is None or sha256_file(root / a["path"]) == a["sha256"])
               for a in done.get("artifacts", []) if not Path(root / a["path"]).is_dir())


def _evaluate(reference: ModelState, state: ModelState, ctx: RunContext, export: dict) -> dict:
    from ..evaluation.report_eval import evaluate_run

    return evaluate_run(reference, state, ctx, export["artifacts"])


def _versions() -> dict:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("vitforge", "torch", "onnx", "onnxruntime", "timm", "numpy", "executorch", "openvino", "nncf",
                "torch-pruning", "triton", "lxt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _write_manifest(out: Path, lr: LoadedRecipe, state: ModelState, export: dict, timings: dict, opts: RunOptions,
                    resources: dict | None = None):
    ckpts = []
    for d in sorted((out / "passes").glob("*")) if (out / "passes").exists() else []:
        if (d / "model.safetensors").is_file():
            ckpts.append({"path": str(d.relative_to(out)), "sha256": sha256_file(d / "model.safetensors")})
    files = [{"path": a["path"], "sha256": a["sha256"], "bytes": (out / a["path"]).stat().st_size}
             for a in export["artifacts"] if a.get("sha256")]
    for f in ("report.md", "report.json", "evaluation.json", "probe.safetensors", "recipe.yaml"):
        if (out / f).is_file():
            files.append({"path": f, "sha256": sha256_file(out / f), "bytes": (out / f).stat().st_size})
    for f in sorted((out / "plots").glob("*.png")) if (out / "plots").exists() else []:
        files.append({"path": str(f.relative_to(out)), "sha256": sha256_file(f), "bytes": f.stat().st_size})
    write_json(out / "manifest.json", {
        "tool": "vitforge", "command": opts.argv, "recipe_file": str(lr.path) if lr.path else None,
        "recipe": lr.raw, "model": lr.recipe.model, "data": _data_source(lr.recipe.data.path),
        "versions": _versions(), "passes": state.history,
        "checkpoints": ckpts, "artifacts": export["artifacts"], "files": files,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "resources": {"stages": resources or {}, "process_cpu_s": round(time.process_time(), 3),
                      "process_peak_rss_mb": process_peak_mb()},
    })
