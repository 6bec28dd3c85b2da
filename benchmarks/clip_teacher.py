"""Build the offline LiT CLIP teacher (compress.distill.clip_teacher) and score it zero-shot on CIFAR-10 test.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/clip_teacher.py [--train-images 2000] [--steps 100] \
        [--test 2000] [--rebuild] [--results benchmarks/results/clip_teacher.json]

The image tower (embedded DINOv2 ViT-S/14) is frozen: its features of the train and test images are computed
once and cached; the text tower (MiniLM-L6) and both projections train on captions from the non-held-out
templates. Zero-shot top-1 uses only the held-out templates (text the teacher never saw), with class names
and synonyms, and with class names alone; the training templates' score is given beside it. The build
(feature extraction + training, process CPU time and wall time) is timed; a cached build is reused unless
``--rebuild``, and its recorded timings are reported.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compress.distill import clip_teacher as ct
from compress.evaluation import zeroshot
from compress.models.clip_prompts import HELD_OUT, TRAIN_TEMPLATES
from compress.utils.io import write_json


def time_tower(vit, data: str, count: int, seed: int) -> float:
    """Process CPU seconds per image of the frozen image tower (batch 32, 1 thread, preprocessing included)."""
    from compress.data import load_subset

    ds = load_subset(data, "test", count, seed + 1, vit.cfg)
    c0 = time.process_time()
    with torch.inference_mode():
        for s in range(0, len(ds), 32):
            vit(torch.stack([ds[i][0] for i in range(s, min(len(ds), s + 32))]))
    return (time.process_time() - c0) / max(1, len(ds))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--train-images", type=int, default=ct.TeacherConfig.train_images)
    ap.add_argument("--steps", type=int, default=ct.TeacherConfig.steps)
    ap.add_argument("--batch-size", type=int, default=ct.TeacherConfig.batch_size)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr-text", type=float, default=ct.TeacherConfig.lr_text)
    ap.add_argument("--lr-proj", type=float, default=ct.TeacherConfig.lr_proj)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--time-images", type=int, default=16,
                    help="images run through the image tower afresh to measure its CPU cost per image")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "clip_teacher.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = ct.TeacherConfig(data=args.data, train_images=args.train_images, steps=args.steps,
                           batch_size=args.batch_size, seed=args.seed, lr_text=args.lr_text, lr_proj=args.lr_proj)
    vit = ct._image_tower()
    model, rec = ct.build(cfg, image_tower=vit, rebuild=args.rebuild)
    t0, c0 = time.time(), time.process_time()
    feats, labels, classes = ct.image_features(vit, args.data, "test", args.test, args.seed)
    test_feat = {"seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}
    with torch.inference_mode():
        emb = model.visual_projection(feats)
    scores = {"held_out": zeroshot.evaluate_model(model, None, labels, classes, HELD_OUT, True, image_emb=emb),
              "train_templates": zeroshot.evaluate_model(model, None, labels, classes, TRAIN_TEMPLATES, True,
                                                         image_emb=emb)}
    per_image = time_tower(vit, args.data, args.time_images, args.seed)
    untrained = ct.new_teacher(vit.cfg, vit.state_dict(), cfg.embed_dim, cfg.seed).eval()
    with torch.inference_mode():
        scores["untrained_held_out"] = zeroshot.evaluate_model(
            untrained, None, labels, classes, HELD_OUT, True, image_emb=untrained.visual_projection(feats))
    out = {"command": "OMP_NUM_THREADS=1 nice -n 5 python benchmarks/clip_teacher.py "
                      + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": "2 shared CPU cores, 1 thread, other jobs running",
           "teacher": {k: v for k, v in rec.items() if k != "losses"},
           "loss_curve_every_10": rec.get("losses", [])[::10],
           "test_images": len(labels), "test_feature_time": test_feat,
           "image_tower_cpu_s_per_image": per_image,
           "build_cpu_minutes_from_scratch": (per_image * rec["images"] + rec["train_cpu_seconds"]) / 60,
           "zero_shot_top1": {"held_out_templates": scores["held_out"]["top1"],
                              "held_out_names_only": scores["held_out"]["top1_names_only"],
                              "train_templates": scores["train_templates"]["top1"],
                              "untrained_projections_held_out": scores["untrained_held_out"]["top1"]},
           "scores": scores}
    write_json(args.results, out)
    print(json.dumps(out["zero_shot_top1"], indent=1))
    print(f"build from scratch: {out['build_cpu_minutes_from_scratch']:.1f} CPU min (image tower "
          f"{per_image:.3f} CPU-s/image, training {rec['train_cpu_seconds'] / 60:.1f} CPU min), cached={rec.get('cached')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
