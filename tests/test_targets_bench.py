"""benchmarks/targets_bench.py's verdict logic, on the rows it published: CPU time only, wall-time
speed-ups only between rows measured under alike load, and no accuracy verdict for random weights."""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("targets_bench", REPO / "benchmarks" / "targets_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def published():
    return {m["model"]: m for m in json.loads((REPO / "benchmarks" / "results" / "targets.json").read_text())["models"]}


def test_random_weights_get_no_accuracy_verdict(bench, published):
    deit = copy.deepcopy(published["timm:deit_small_patch16_224"]["rows"])
    bench.speedups(deit)
    v = bench.verdict(deit, random_weights=True)
    assert v["met"] is None and "random weights" in v["not_judged"]
    assert v["candidates"] and all(c["meets_target"] is None for c in v["candidates"])
    md = bench.markdown({"model": "timm:deit_small_patch16_224", "tokens": 197, "reference_top1": None, "rows": deit,
                         "estimates": {"roofline_fp32_ms": 1.0, "measured_ort_fp32_cpu_ms": 1.0,
                                       "measured_ort_fp32_ms": 1.0, "measured_over_roofline_fp32": 1.0},
                         "verdict": v, "weights": "random init (timm, seed 0)"})
    assert "MET" not in md and "not judged (random weights)" in md


def test_wall_speedups_only_between_rows_under_alike_load(bench, published):
    deit = copy.deepcopy(published["timm:deit_small_patch16_224"]["rows"])
    bench.speedups(deit)
    rows = {r["name"]: r for r in deit}
    # ORT fp32 waited 31x its CPU time, ORT dynamic INT8 6x: their wall ratio (10.8x) is load, not speed
    dyn = rows["ORT dynamic INT8"]
    assert dyn["speedup_vs_ort_fp32"] is None
    assert dyn["cpu_speedup_vs_ort_fp32"] == pytest.approx(109.872174 / 48.992415, rel=1e-6)
    assert rows["ORT fp32"]["speedup_vs_ort_fp32"] == 1.0  # a row against itself
    quiet = lambda wall, cpu: {"latency": {"p50_ms": wall, "cpu_p50_ms": cpu}}  # noqa: E731
    assert bench.wall_comparable(quiet(110, 100), quiet(55, 50)) and not bench.wall_comparable(quiet(300, 100), quiet(55, 50))


def test_pretrained_verdict_is_judged_on_cpu_time(bench):
    lat = lambda cpu, wall=None: {"p50_ms": wall or cpu, "cpu_p50_ms": cpu}  # noqa: E731
    rows = [{"name": "ORT fp32", "who": "ref", "runtime": "onnxruntime", "precision": "fp32", "top1": 80.0,
             "latency": lat(100)},
            {"name": "ours int8", "who": "ours", "runtime": "onnxruntime", "precision": "int8", "top1": 79.5,
             "agreement": 97.0, "latency": lat(40, 400)},  # fast in CPU time, slow on the wall (load)
            {"name": "peer int8", "who": "peer", "runtime": "onnxruntime", "precision": "int8", "top1": 79.0,
             "agreement": 98.0, "latency": lat(45, 45)}]
    bench.speedups(rows)
    v = bench.verdict(rows)
    (c,) = v["candidates"]
    assert c["cpu_speedup_vs_ort_fp32"] == 2.5 and c["beats_it_cpu"] and c["meets_target"] is True and v["met"] is True
    rows[1]["top1"] = 78.5  # 1.5 pt lower: not met
    assert bench.verdict(rows)["met"] is False


def test_published_file_follows_the_current_rules(bench, published):
    """The committed targets.json itself (not only the code): no verdict for random weights, and every stored
    speed-up equals what --rescore derives from the stored latencies."""
    for name, model in published.items():
        again = bench.rescore(copy.deepcopy(model))
        assert again["verdict"] == model["verdict"], f"{name}: stale verdict (run targets_bench.py --rescore)"
        for old, new in zip(model["rows"], again["rows"]):
            for k in ("cpu_speedup_vs_ort_fp32", "speedup_vs_ort_fp32", "cpu_speedup_same_runtime", "speedup_same_runtime"):
                assert old.get(k) == new.get(k), f"{name} / {old['name']}: {k} stale (run targets_bench.py --rescore)"
    assert published["timm:deit_small_patch16_224"]["verdict"]["met"] is None
