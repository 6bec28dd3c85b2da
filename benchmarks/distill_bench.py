"""TinyCLIP distillation benchmark (issue 20): students of the offline LiT teacher's image tower, scored zero-shot on
CIFAR-10 test (2,000 images no pass saw, the four held-out templates x class names and synonyms) against the
teacher on the same images.

    OMP_NUM_THREADS=1 python benchmarks/distill_bench.py --out runs/bench-distill \
        [--only inherit-affinity@0.5,random-affinity@0.5,inherit-feature@0.5,inherit-affinity@0.75+0.5] \
        [--set passes.distill.steps=150] [--test 2000]

A variant ``<init>-<loss>@<p1>[+<p2>...][/int8]`` runs ``recipes/tinyclip-distill.yaml`` (``/int8``:
``recipes/tinyclip-distill-int8.yaml``, the same student then W8A8) with the stages' parameter fractions ``p``,
``inheritance.init`` = ``init`` (inherit: the teacher's weights; random: the same sub-network freshly initialised)
and the single loss ``loss`` (affinity mimicking, or plain feature distillation of the image embeddings).
Evaluation is off (the pipeline's export and verification stay). Each shipped ONNX artifact of the image tower
is scored in ONNX Runtime (1 thread): its outputs through the student's visual projection, against the class
embeddings of the text tower (the teacher's MiniLM-L6, unchanged) run from its shipped ONNX artifact. The training
budget is the process CPU time of the distill pass (teacher-output cache, inheritance saliency and every stage's
training, each reported). Runs resume where they stopped. Writes ``<out>/results.json`` (and ``--results``) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compress.utils.io import write_json  # noqa: E402

DEFAULT = "inherit-affinity@0.5"
LOSSES = ("affinity", "feature")


def parse_variant(name: str) -> dict:
    from compress.errors import UserError

    head, _, quant = name.partition("/")
    spec, _, stages = head.partition("@")
    init, _, loss = spec.partition("-")
    try:
        fracs = [float(p) for p in stages.split("+")]
    except ValueError:
        fracs = []
    if init not in ("inherit", "random") or loss not in LOSSES or not fracs or quant not in ("", "int8"):
        raise UserError(f"variant {name!r} is not <inherit|random>-<{'|'.join(LOSSES)}>@<p1>[+<p2>...][/int8]",
                        "write e.g. inherit-affinity@0.75+0.5 or random-affinity@0.5/int8")
    return {"init": init, "loss": loss, "stages": fracs, "int8": bool(quant), "base": head}


def run_variant(name: str, out: Path, extra: list[str]) -> dict:
    from compress.pipeline.plan import load_recipe
    from compress.pipeline.run import RunOptions, run_recipe

    v = parse_variant(name)
    losses = {k: (1.0 if k == v["loss"] else 0) for k in LOSSES + ("logit", "contrastive")}
    sets = ["evaluation.enabled=false", f"passes.distill.inheritance.init={v['init']}",
            "passes.distill.stages=" + json.dumps([{"params": p} for p in v["stages"]]),
            "passes.distill.losses=" + json.dumps(losses)] + extra
    recipe = REPO / "recipes" / ("tinyclip-distill-int8.yaml" if v["int8"] else "tinyclip-distill.yaml")
    lr = load_recipe(recipe, sets)
    src, dest = out / v["base"].replace("@", "_"), out / name.replace("@", "_").replace("/", "_")
    if v["int8"] and (src / "passes" / "01-distill" / "config.json").is_file() and not dest.exists():
        # the same distill pass (same config, so the same chain hash): reuse its checkpoint and work folder
        shutil.copytree(src / "passes" / "01-distill", dest / "passes" / "01-distill")
        shutil.copytree(src / "work", dest / "work")
        shutil.copy(src / "run.json", dest / "run.json")
    t0 = time.time()
    summary = run_recipe(lr, RunOptions(out=dest, argv=sys.argv))
    rec = next(r for r in summary["passes"] if r["type"] == "distill")
    return {"variant": name, **v, "run_dir": str(dest), "seconds": time.time() - t0,
            "distill": {"cpu_seconds": rec["resources"]["cpu_s"], "wall_seconds": rec["resources"]["wall_s"],
                        "peak_rss_mb": rec["resources"]["peak_rss_mb"], "params_original": rec["params_original"],
                        "student_clip": rec["student_clip"], "teacher_cache": rec.get("teacher_cache"),
                        "stages": [{"target": s["target"], "params": s["params"], "ratio": s["ratio"],
                                    "widths": s["widths"], "train_cpu_seconds": s["train"].get("cpu_seconds"),
                                    "loss_start": s["train"].get("loss_start"), "loss_end": s["train"].get("loss_end"),
                                    "steps": s["train"].get("steps")} for s in rec["stages"]]},
            "text_tower": next(({k: a.get(k) for k in ("name", "path", "verification")} for a in summary["artifacts"]
                                if a.get("inputs") == "text"), None),
            "artifacts": [{k: a.get(k) for k in ("name", "path", "precision", "runtime", "format", "verification")}
                          for a in summary["artifacts"] if a.get("format") == "onnx"
                          and a.get("inputs", "images") == "images" and a.get("name") != "baseline-fp32"]}


def test_set(count: int, seed: int):
    """The teacher's frozen-tower features (cached) and labels of the CIFAR-10 test images, and the dataset."""
    from compress.data import load_subset
    from compress.distill import clip_teacher as ct

    vit = ct._image_tower()
    teacher, _ = ct.build(image_tower=vit)
    feats, labels, classes = ct.image_features(vit, "cifar10", "test", count, seed)
    return teacher, feats, labels, classes, load_subset("cifar10", "test", count, seed, vit.cfg)


def onnx_outputs(path: Path, ds, pool, batch: int = 32):
    import numpy as np
    import torch

    from compress import ui
    from compress.runtime import ort_session

    sess = ort_session(path, 1)
    name = sess.get_inputs()[0].name
    outs, bar = [], ui.bar(total=len(ds), desc=f"ONNX Runtime {path.name}", unit="img")
    for s in range(0, len(ds), batch):
        ids = range(s, min(len(ds), s + batch))
        x = torch.stack([ds[i][0] for i in ids]).numpy().astype(np.float32)
        outs.append(pool(torch.from_numpy(sess.run(None, {name: x})[0]).float()))
        bar.update(len(ids))
    bar.close()
    return torch.cat(outs).float()


def text_encoder(run: dict, student):
    """Captions -> text embeddings: the shipped text-tower ONNX in ONNX Runtime when the run has one, else PyTorch."""
    import torch

    from compress.runtime import ort_session

    if not run.get("text_tower"):
        return lambda ps: student.encode_text(list(ps)), "PyTorch"
    sess = ort_session(Path(run["run_dir"]) / run["text_tower"]["path"], 1)

    def enc(ps):
        tok = student.tokenize(list(ps))
        return torch.from_numpy(sess.run(None, {i.name: tok[i.name].long().numpy() for i in sess.get_inputs()})[0])

    return enc, "ONNX Runtime (" + run["text_tower"]["path"] + ")"


def score(run: dict, out: Path, teacher_scores: dict, labels, classes, ds, teacher_top1: float) -> None:
    import torch

    from compress.evaluation import zeroshot
    from compress.models import clip as clip_models
    from compress.models.clip_prompts import HELD_OUT

    student = clip_models.load_dir(Path(run["run_dir"]) / run["distill"]["student_clip"]).eval()
    enc, run["text_runtime"] = text_encoder(run, student)
    with torch.inference_mode():
        cls = {syn: zeroshot.class_embeddings(enc, classes, HELD_OUT, syn) for syn in (True, False)}
    for a in run["artifacts"]:
        if a.get("top1") is not None:
            continue
        t0 = time.process_time()
        feats = onnx_outputs(Path(run["run_dir"]) / a["path"], ds, student.pool)
        with torch.inference_mode():
            emb = student.visual_projection(feats)
        r = {"top1": zeroshot.zero_shot_top1(emb, labels, cls[True]),
             "top1_names_only": zeroshot.zero_shot_top1(emb, labels, cls[False])}
        a |= {"top1": r["top1"], "top1_names_only": r["top1_names_only"], "kept_of_teacher": r["top1"] / teacher_top1,
              "agreement_with_teacher": float((zeroshot.zero_shot_predict(emb, teacher_scores["class_emb"])
                                               == teacher_scores["pred"]).double().mean() * 100),
              "score_cpu_seconds": time.process_time() - t0}
        write_json(out / "results.json", _results)


_results: dict = {}


def table(res: dict) -> str:
    t = res["teacher"]
    lines = [f"teacher (LiT, {t['params']:,} image-tower weights): zero-shot top-1 {t['top1']:.2f} on {t['images']} "
             "CIFAR-10 test images (held-out templates)", "",
             "| variant | artifact | image-tower weights | zero-shot top-1 | kept of teacher | distill CPU min |",
             "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        d = r["distill"]
        for a in r["artifacts"]:
            top1 = "-" if a.get("top1") is None else f"{a['top1']:.2f}"
            kept = "-" if a.get("kept_of_teacher") is None else f"{100 * a['kept_of_teacher']:.1f}%"
            lines.append(f"| {r['variant']} | {a['name']} | {d['stages'][-1]['params']:,} "
                         f"({d['stages'][-1]['ratio']:.3f}) | {top1} | {kept} | {d['cpu_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    from compress.errors import UserError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-distill")
    ap.add_argument("--only", default=DEFAULT, help="comma-separated variants")
    ap.add_argument("--set", action="append", default=[], help="recipe override for every variant")
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=None, help="also copy the results here")
    ap.add_argument("--merge", nargs="*", default=[], metavar="OUT",
                    help="add the finished, scored runs of other --out folders (run there with the same --test and "
                         "--seed; nothing is re-run), then write the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        variants = [v.strip() for v in args.only.split(",") if v.strip()]
        for v in variants:
            parse_variant(v)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    merged = []
    for other in args.merge:
        try:
            o = json.loads((Path(other) / "results.json").read_text())
            o["teacher"], o["runs"], o["command"]  # noqa: B018  a results file of this benchmark
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: --merge {other}: no readable results.json of distill_bench.py there ({type(e).__name__}); "
                  "give a finished --out folder", file=sys.stderr)
            return 2
        merged.append((other, o))
    from compress.evaluation import zeroshot
    from compress.models.clip_prompts import HELD_OUT
    from compress.pruning.inherit import tower_params

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prev = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    teacher, feats, labels, classes, ds = test_set(args.test, args.seed)
    with torch.inference_mode():
        t_emb = teacher.visual_projection(feats)
    from compress.evaluation.zeroshot import class_embeddings

    with torch.inference_mode():
        class_emb = class_embeddings(lambda ps: teacher.encode_text(list(ps)), classes, HELD_OUT, True)
    t = zeroshot.evaluate_model(teacher, None, labels, classes, HELD_OUT, True, image_emb=t_emb)
    teacher_scores = {"class_emb": class_emb, "pred": zeroshot.zero_shot_predict(t_emb, class_emb)}
    _results.update({"command": "OMP_NUM_THREADS=1 python benchmarks/distill_bench.py "
                                + " ".join(sys.argv[1:] if argv is None else argv),
                     "machine": "2 shared CPU cores, 1 thread (process CPU time)",
                     "protocol": "zero-shot top-1 on CIFAR-10 test images no pass saw; the held-out templates x "
                                 "class names and synonyms; both towers run from their ONNX artifacts in ONNX Runtime "
                                 "(the text tower: the teacher's MiniLM-L6, unchanged)",
                     "teacher": {"top1": t["top1"], "top1_names_only": t["top1_names_only"], "images": len(labels),
                                 "params": tower_params(teacher.image_tower())},
                     "runs": [r for r in prev.get("runs", []) if r["variant"] not in variants],
                     "merged": [m for m in prev.get("merged", []) if m["from"] not in args.merge]})
    for other, o in merged:
        if o["teacher"] != _results["teacher"]:
            print(f"error: {other}/results.json scored another test set (teacher {o['teacher']})", file=sys.stderr)
            return 2
        _results["runs"] = [r for r in _results["runs"] if r["variant"] not in {x["variant"] for x in o["runs"]}]
        _results["runs"] += o["runs"]
        _results["merged"].append({"from": other, "command": o["command"]})
    variants = [v for v in variants if v not in {r["variant"] for r in _results["runs"]} or not args.merge]
    for v in variants:
        run = run_variant(v, out, args.set)
        _results["runs"].append(run)
        write_json(out / "results.json", _results)
        score(run, out, teacher_scores, labels, classes, ds, t["top1"])
    write_json(out / "results.json", _results)
    if args.results:
        write_json(Path(args.results), _results)
    print(table(_results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
