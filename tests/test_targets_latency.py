"""Target profiles, precision fallback, recipe target entries, and the latency models (roofline and LUT)."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(60)

REQUIRED = ("jetson-orin-nano", "jetson-agx-orin", "jetson-xavier-nx", "android-arm64", "raspberry-pi-5",
            "x86-avx512", "nvidia-gpu")


def test_every_profile_is_complete_and_cited():
    from compress.targets.deploy import TARGET_EXPORTERS
    from compress.targets import list_profiles, load_profile

    assert set(REQUIRED) <= set(list_profiles())
    for name in list_profiles():
        p = load_profile(name)
        assert p["name"] == name and p["runtimes"] and p["memory_gb"] > 0
        assert p["roofline"]["bandwidth_gbs"] > 0 and p["roofline"]["peak_gflops"]["fp32"] > 0
        for e in p["exporters"]:
            assert e in TARGET_EXPORTERS, f"{name}: exporter {e} is not registered"
        assert len(p["sources"]) >= 2 and all(s["figure"] and s["source"] for s in p["sources"])
    from compress.targets import BUILTIN_EXPORTERS  # the names recipes are checked against, without importing these

    assert set(BUILTIN_EXPORTERS) == set(TARGET_EXPORTERS)
    orin = load_profile("jetson-orin-nano")
    assert "int8" in orin["precisions"] and "int4" in orin["precisions"] and "fp8" not in orin["precisions"]
    assert orin["runtimes"]["tensorrt"]["version"].startswith("10.")
    assert load_profile("jetson-xavier-nx")["runtimes"]["tensorrt"]["version"].startswith("8.")


def test_nearest_precision_is_said():
    from compress.targets import load_profile, resolve_precision

    assert resolve_precision(load_profile("jetson-orin-nano"), "int8") == ("int8", None)
    got, note = resolve_precision(load_profile("jetson-orin-nano"), "fp8")
    assert got == "int8" and "does not run fp8" in note
    assert resolve_precision(load_profile("jetson-xavier-nx"), "w4a16")[0] == "int8"
    assert resolve_precision(load_profile("x86-avx512"), "fp16")[0] == "bf16"
    assert resolve_precision(load_profile("raspberry-pi-5"), "int4")[0] == "int8"


def test_recipe_target_entries_and_checks(tmp_path):
    from compress.errors import UserError
    from compress.pipeline.plan import load_recipe
    from compress.targets import load_profile

    r = tmp_path / "r.yaml"
    r.write_text("name: t\ntargets_check: {min_speedup: 1.5}\ntargets:\n  - x86-avx512\n"
                 "  - {name: jetson-orin-nano, precision: fp8, targets_check: {min_speedup: 2.0, on_fail: warn}}\n")
    lr = load_recipe(str(r), [])
    assert lr.recipe.targets[0] == "x86-avx512" and lr.recipe.targets_check.min_speedup == 1.5
    p = load_profile(lr.recipe.targets[1])
    assert p["requested_precision"] == "fp8" and p["targets_check"]["on_fail"] == "warn"
    r.write_text("targets: [{name: jetson-orin-nanoo}]\n")
    with pytest.raises(UserError, match="did you mean 'jetson-orin-nano'"):
        load_recipe(str(r), [])
    r.write_text("targets_check: {min_speedup: -1}\n")
    with pytest.raises(UserError):
        load_recipe(str(r), [])


def _vit_s(**kw):
    from compress.models.vit import ViTConfig

    return ViTConfig.uniform(384, 12, 6, patch_size=14, global_pool="none", **kw)


def test_roofline_model_follows_the_figures():
    from compress.targets.latency_models import load_latency_model, roofline_model

    orin = load_latency_model("jetson-orin-nano")
    assert orin.source == "roofline"
    cfg = _vit_s()
    fp16, int8, fp32 = (orin.model_ms(cfg, p) for p in ("fp16", "int8", "fp32"))
    assert int8 < fp16 < fp32  # more peak, fewer bytes
    # a compute-bound block scales with FLOPs: half the MLP width, about half the MLP time
    x86 = roofline_model("x86-avx512")
    full, half = x86.block_ms(384, 0, 0, 0, 1536, 257), x86.block_ms(384, 0, 0, 0, 768, 257)
    assert half / full == pytest.approx(0.5, rel=0.05)
    # the matmul FLOPs of ViT-S/14 (11.9 G at 257 tokens) over the fp32 peak bound the estimate from below
    gflop = 2 * 12 * 257 * (4 * 384 * 384 + 2 * 384 * 1536 + 2 * 257 * 384) / 1e9
    assert x86.model_ms(cfg) >= gflop / 118.4 * 1e3
    assert orin.model_ms(cfg, "int4") < fp16  # weight-only: fewer weight bytes, same fp16 compute


def test_lut_interpolation_is_exact_for_bilinear_costs():
    """A table of a cost bilinear in the widths (what matmul FLOPs are) is interpolated exactly between
    grid points, and extrapolated linearly outside."""
    from compress.targets import load_profile
    from compress.targets.latency_models import LutLatencyModel

    A = {"embed_dim": [64, 128], "num_heads": [1, 4], "head_dim": [16, 32], "tokens": [50, 100]}
    M = {"embed_dim": [64, 128], "mlp_dim": [128, 512], "tokens": [50, 100]}
    attn = lambda D, h, d, T: 1e-4 * D * h * d * T / 50 + 0.01  # noqa: E731
    mlp = lambda D, m, T: 2e-5 * D * m * T / 50 + 0.02  # noqa: E731
    grid = lambda f, axes: [[[[f(D, h, d, T) for T in axes["tokens"]] for d in axes["head_dim"]]  # noqa: E731
                             for h in axes["num_heads"]] for D in axes["embed_dim"]]
    mgrid = [[[mlp(D, m, T) for T in M["tokens"]] for m in M["mlp_dim"]] for D in M["embed_dim"]]
    lut = {"precisions": {"fp32": {"attn": {"axes": A, "ms": grid(attn, A)}, "mlp": {"axes": M, "ms": mgrid},
                                   "efficiency": 1.0}}}
    lm = LutLatencyModel("x86-avx512", load_profile("x86-avx512"), lut)
    D, h, qk, v, m, T = 96, 3, 24, 16, 300, 75
    want = 0.5 * (attn(D, h, qk, T) + attn(D, h, v, T)) + mlp(D, m, T)
    assert lm.block_ms(D, h, qk, v, m, T) == pytest.approx(want, rel=1e-9)
    assert lm.block_ms(160, 2, 32, 32, 640, 100) == pytest.approx(attn(160, 2, 32, 100) + mlp(160, 640, 100), rel=1e-9)
    assert lm.block_ms(96, 0, 0, 0, 300, 75) == pytest.approx(mlp(96, 300, 75))  # all heads pruned
    assert lm.block_ms(96, 3, 24, 24, 300, 75, "int8") < lm.block_ms(96, 3, 24, 24, 300, 75)


def test_stored_x86_lut_predicts_whole_models_within_15_percent():
    """The table shipped for this machine's class, and the whole-model check it was built with."""
    from compress.targets.latency_models import load_latency_model, lut_path

    lm = load_latency_model("x86-avx512")
    assert lm.source == "lut"
    lut = json.loads(lut_path("x86-avx512").read_text())
    assert {v["model"] for v in lut["validation"]} >= {"vit-s14-257tok", "deit-s16-197tok", "vit-s14-pruned"}
    from compress.targets.lut import validation_configs

    for v in lut["validation"]:
        # today's prediction against the whole-model time measured when the table was built (not the
        # file's own error field)
        cfg = next(c for c in validation_configs() if c.name == v["model"])
        pred = lm.model_ms(cfg)
        assert abs(pred / v["measured_ms"] - 1) <= 0.15, (v, pred)
        assert pred == pytest.approx(v["predicted_ms"], rel=1e-3)
    # pruning a block's MLP and heads makes it cheaper, monotonically
    full = lm.block_ms(384, 6, 64, 64, 1536, 257)
    assert lm.block_ms(384, 6, 64, 64, 768, 257) < full and lm.block_ms(384, 3, 64, 64, 1536, 257) < full
    assert lm.block_ms(384, 6, 32, 64, 1536, 257) < full


def test_build_lut_small_grid_measures_real_blocks(tmp_path):
    from compress.cli import main
    from compress.targets import load_profile
    from compress.targets.latency_models import LatencyModel, load_latency_model
    from compress.targets.lut import GRIDS

    out = tmp_path / "lut.json"
    assert main(["profile", "--build-lut", "--target", "x86-avx512", "--grid", "small", "--lut-out", str(out),
                 "--quiet"]) == 0
    lut = json.loads(out.read_text())
    t = lut["precisions"]["fp32"]
    assert lut["threads"] == 1
    # every point of the grid was measured (no timing comparisons: this machine is shared)
    A, M = t["attn"]["axes"], t["mlp"]["axes"]
    assert A == {k: GRIDS["small"][k] for k in ("embed_dim", "num_heads", "head_dim", "tokens")}
    assert M == {k: GRIDS["small"][k] for k in ("embed_dim", "mlp_dim", "tokens")}
    attn = {p: t["attn"]["ms"][i][j][k][n] for i, D in enumerate(A["embed_dim"]) for j, h in enumerate(A["num_heads"])
            for k, d in enumerate(A["head_dim"]) for n, T in enumerate(A["tokens"]) for p in [(D, h, d, T)]}
    mlp = {p: t["mlp"]["ms"][i][j][n] for i, D in enumerate(M["embed_dim"]) for j, m in enumerate(M["mlp_dim"])
           for n, T in enumerate(M["tokens"]) for p in [(D, m, T)]}
    assert len(attn) == 8 and len(mlp) == 4 and all(0 < v < 1e4 for v in [*attn.values(), *mlp.values()])
    # the stored efficiency is the median measured / roofline ratio of those points
    roof = LatencyModel("x86-avx512", load_profile("x86-avx512"))
    ratios = sorted([v / roof.roofline_block_ms(D, h, d, d, 0, T) for (D, h, d, T), v in attn.items()]
                    + [v / roof.roofline_block_ms(D, 0, 0, 0, m, T) for (D, m, T), v in mlp.items()])
    assert t["efficiency"] == pytest.approx(ratios[len(ratios) // 2], rel=1e-9)
    # and the latency model built from the file predicts a block at a grid point as its two measured halves
    lm = load_latency_model("x86-avx512", out)
    assert lm.source == "lut"
    assert lm.block_ms(64, 2, 16, 16, 128, 17) == pytest.approx(attn[64, 2, 16, 17] + mlp[64, 128, 17], rel=1e-9)


def test_build_lut_needs_a_target(capsys):
    from compress.cli import main

    assert main(["profile", "--build-lut"]) == 2
    assert "--build-lut needs --target" in capsys.readouterr().err


def test_precisions_without_a_table_are_labelled_roofline_scaled_estimates():
    """The stored x86 table holds fp32 only: its int8 / fp16 numbers are the fp32 table scaled by a roofline
    ratio, which the returned data and every description must say (never "measured")."""
    from compress.targets.latency_models import load_latency_model, roofline_model
    from compress.targets.lut import validation_configs

    lm = load_latency_model("x86-avx512")
    assert set(lm.tables) == {"fp32"}
    cfg = validation_configs()[0]
    fp32, int8 = lm.predict(cfg, "fp32"), lm.predict(cfg, "int8")
    assert fp32["source"] == "lut" and fp32["measured"] and fp32["ms"] == lm.model_ms(cfg)
    assert int8["source"] == "lut-fp32-roofline-scaled" and not int8["measured"]
    assert int8["ms"] == pytest.approx(lm.model_ms(cfg, "int8")) and int8["ms"] < fp32["ms"]
    assert lm.source_for("w8a8") == lm.source_for("fp16") == "lut-fp32-roofline-scaled"
    assert "measured LUT" in lm.describe("fp32")
    assert "int8 estimated" in lm.describe("int8") and "not measured in int8" in lm.describe("int8")
    roof = roofline_model("x86-avx512")
    assert roof.predict(cfg, "int8")["source"] == "roofline" and not roof.predict(cfg, "int8")["measured"]
