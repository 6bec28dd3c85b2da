"""README's and docs' result tables are generated from benchmarks/results/*.json (benchmarks/tables.py)."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import recipes_bench
import tables


def _copy(tmp_path: Path) -> Path:
    for rel in tables.FILES:
        if (ROOT / rel).is_file():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / rel, tmp_path / rel)
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    shutil.copytree(ROOT / "targets" / "luts", tmp_path / "targets" / "luts")
    return tmp_path


def _blocks(text: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in tables.BLOCK.finditer(text)}


def test_files_match_the_result_files(capsys):
    rc = tables.main(["--check"])
    assert rc == 0, capsys.readouterr().err
    names = [n for rel in tables.FILES if (ROOT / rel).is_file() for n in _blocks((ROOT / rel).read_text())]
    assert len(names) == len(set(names)), "a table is placed twice"
    assert set(names) == set(tables.TABLES), f"tables defined but placed nowhere: {set(tables.TABLES) - set(names)}"


def test_a_changed_number_changes_the_table_and_check_fails(tmp_path, capsys):
    root = _copy(tmp_path)
    qa = root / "benchmarks" / "results" / "quant_all.json"
    d = json.loads(qa.read_text())
    row = next(r for r in d["rows"] if r["name"] == "w8a8-vit:qdq")
    assert f"| {row['top1']:.2f} |" in _blocks((root / "README.md").read_text())["readme-measured"]
    row["top1"] = 12.34
    qa.write_text(json.dumps(d))
    assert tables.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "README.md: table 'readme-measured'" in err and "quant-all" in err
    assert tables.main(["--root", str(root)]) == 0  # rewrite ...
    assert "| 12.34 |" in _blocks((root / "README.md").read_text())["readme-measured"]
    assert tables.main(["--check", "--root", str(root)]) == 0  # ... and then it matches


def test_every_latency_column_says_cpu_or_wall_and_every_row_its_source():
    for name in tables.TABLES:
        body, head = tables.render(name, ROOT / "benchmarks" / "results"), ""
        for line in body.splitlines():
            if line.startswith("| ") and not line.startswith("|---"):
                head = line
                break
        for cell in head.strip("|").split("|"):
            if re.search(r"\bms\b|latency|speed-up", cell):
                assert re.search(r"CPU|wall|GPU|estimate", cell), f"{name}: column {cell.strip()!r}"
        assert "Not measured yet" in body or re.search(r"`(benchmarks/results|targets/luts)/[\w.-]+\.json`", body), f"{name} names no result file"
    rows = [ln for ln in tables.render("readme-measured", ROOT / "benchmarks" / "results").splitlines()
            if ln.startswith("| ") and not ln.startswith("| what")]
    for ln in rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert (ROOT / "benchmarks" / "results" / cells[-1]).is_file(), ln
        assert cells[-2].startswith("`"), f"no command: {ln}"


def test_readme_quotes_no_unsourced_latency():
    text = (ROOT / "README.md").read_text()
    for stale in ("137.7", "186.7", "178.4", "143.3", "129.2", "164.4"):
        assert stale not in text
    outside = tables.BLOCK.sub("", text)
    assert not re.search(r"\d+(\.\d+)?\s?ms\b", outside), re.findall(r".{30}\d+(?:\.\d+)?\s?ms\b", outside)


def test_random_weights_get_speed_and_size_only():
    body = tables.render("targets-deit", ROOT / "benchmarks" / "results")
    assert "random weights: speed/size only" in body
    head = next(ln for ln in body.splitlines() if ln.startswith("| artifact"))
    assert "top-1" not in head and "wall" not in head


def _fake_run(run: Path, random: bool) -> None:
    """A finished run folder with the files recipes_bench reads (shapes as compress/pipeline/run.py writes them)."""
    (run / "passes" / "01-quantize").mkdir(parents=True)
    lat = lambda cpu: {"p50_ms": cpu * 1.1, "cpu_p50_ms": cpu, "runs": 30}
    ev = {"test_images": 2000, "probe_train_images": 2000, "reference_top1": 66.8, "threads": 1, "batch": 1, "rows": [
        {"name": "fp32 (PyTorch reference)", "runtime": "pytorch", "top1": 66.8, "latency": lat(150.0)},
        {"name": "baseline-fp32", "runtime": "onnxruntime", "precision": "fp32", "top1": 66.8, "delta_top1": 0.0,
         "agreement": 100.0, "size_mb": 82.6, "latency": lat(120.0)},
        {"name": "float-graph", "runtime": "onnxruntime", "size_mb": 82.6},
        {"name": "quantized-qdq", "runtime": "onnxruntime", "precision": "w8a8 int8-gemm", "top1": 61.23,
         "delta_top1": -5.57, "agreement": 91.5, "size_mb": 21.4, "latency": lat(48.0),
         "saliency": {"pearson_mean": 0.97, "iou_top10_mean": 0.91},
         "off_domain": {"top1": 80.0, "delta_top1": -0.5, "agreement": 95.0, "delta_top1_refit": -0.2},
         "verdict": {"verdict": "drop-in", "text": "drop-in: ..."}}]}
    from compress.recipes import read_recipe

    man = {"command": ["compress", "--recipe", "recipes/w8a8-vit.yaml", "--out", str(run)],
           "recipe_file": "recipes/w8a8-vit.yaml", "recipe": read_recipe(ROOT / "recipes/w8a8-vit.yaml").raw,
           "model": "dinov2-s14-focus", "data": {"dataset": "cifar10"},
           "passes": [{"name": "quantize", "type": "quantize", "cpu_seconds": 300.0}], "timings_s": {"total": 900.0}}
    (run / "manifest.json").write_text(json.dumps(man))
    (run / "evaluation.json").write_text(json.dumps(ev))
    (run / "report.json").write_text(json.dumps({"weights": {"random": random}}))
    (run / "passes" / "01-quantize" / "config.json").write_text(json.dumps({"seconds": 320.0}))


@pytest.mark.parametrize("random", [False, True])
def test_recipes_bench_feeds_the_readme_row(tmp_path, random):
    root = _copy(tmp_path / "repo")
    run, log = tmp_path / "run", tmp_path / "run.time"
    _fake_run(run, random)
    log.write_text("\tUser time (seconds): 800.5\n\tSystem time (seconds): 20.0\n"
                   "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03\n"
                   "\tMaximum resident set size (kbytes): 2097152\n\tExit status: 0\n")
    out = root / "benchmarks" / "results" / "recipes.json"
    assert recipes_bench.main([str(run), "--time-log", str(log), "--out", str(out)]) == 0
    e = json.loads(out.read_text())["recipes"]["w8a8-vit"]
    assert e["as_shipped"] and e["random_weights"] == random
    assert e["time_log"]["peak_rss_mb"] == 2048.0 and e["time_log"]["cpu_s"] == 820.5 and e["time_log"]["wall_s"] == 3723
    q = next(a for a in e["artifacts"] if a["name"] == "quantized-qdq")
    assert q["cpu_speedup_vs_fp32_onnx"] == pytest.approx(2.5) and q["saliency_iou_top10"] == 0.91
    assert [a["name"] for a in e["artifacts"]] == ["fp32 (PyTorch reference)", "baseline-fp32", "quantized-qdq"]
    assert e["passes"] == [{"name": "quantize", "type": "quantize", "wall_s": 320.0, "cpu_s": 300.0}]
    body = tables.render("readme-measured", root / "benchmarks" / "results")
    row = next(ln for ln in body.splitlines() if "(`w8a8-vit`)" in ln)
    assert "recipes.json" in row and "48.0 (p50 of 30, in the run)" in row and "2.50x" in row
    assert ("| 61.23 |" in row) != random and ("random weights: speed/size only" in row) == random
    # a run with overrides is recorded but never stands for the shipped recipe
    man = json.loads((run / "manifest.json").read_text())
    man["command"] += ["--set", "evaluation.test=20"]
    (run / "manifest.json").write_text(json.dumps(man))
    assert recipes_bench.main([str(run), "--out", str(out)]) == 0
    assert not json.loads(out.read_text())["recipes"]["w8a8-vit"]["as_shipped"]
    body = tables.render("readme-measured", root / "benchmarks" / "results")
    row = next(ln for ln in body.splitlines() if "(`w8a8-vit`)" in ln)
    assert "quant_all.json" in row and "recipes.json" not in row


def test_recipes_bench_flags_a_changed_recipe(tmp_path):
    run = tmp_path / "run"
    _fake_run(run, False)
    man = json.loads((run / "manifest.json").read_text())
    man["command"] += ["--set", "evaluation.test=20"]
    (run / "manifest.json").write_text(json.dumps(man))
    assert recipes_bench.shipped_check(man) == (False, "run with --set")
    man["command"] = man["command"][:-2]
    man["recipe"]["evaluation"] = {"test": 20}
    assert recipes_bench.shipped_check(man) == (False, "recipes/w8a8-vit.yaml has changed since the run")


def test_relevance_tables_render_a_result_file(tmp_path):
    """The relevance tables say 'not measured' without their file and show its figures with it."""
    res = tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    assert "Not measured yet" in tables.render("relevance-profile", res)
    ops = tables.RELEVANCE_OPS
    scores = {f"blocks.{b}.{op}": (b + 1) * (i + 1) / 42.0 / 2 for b in range(2) for i, op in enumerate(ops)}
    scores["patch_embed.proj"] = 0.0
    (res / "relevance.json").write_text(json.dumps({
        "command": "python benchmarks/relevance_profile.py --images 2", "profile": {
            "scores": scores, "block_in": [0.1, 0.5], "block_out": [0.5, 1.0], "pixels": 0.04, "rule": "attnlrp",
            "images": 2, "seconds": 3.0, "block_error": [0.5, 0.1], "balance_error": [1e-7, 2e-7]},
        "damage": {"layers": {n: {} for n in scores}, "summary": {"w3": {"spearman_relevance_x_error": 0.9,
                                                                          "spearman_error_only": 0.45}}},
        "allocation": {"relevance": {"avg_bits": 3.994, "rel_mse": 0.124, "cosine": 0.9365}, "seconds": 5.0}}))
    body = tables.render("relevance-profile", res)
    assert f"| 1 | {100 * scores['blocks.1.attn.q']:.2f} |" in body and "max 0.50, median 0.50" in body
    assert "| 3 bits | 0.90 | 0.45 |" in tables.render("relevance-damage", res)
    assert "| relevance | 3.994 | 0.124 | 0.9365 |" in tables.render("relevance-allocation", res)


def test_int4_time_target_comes_from_a_recipe_run(tmp_path):
    root = _copy(tmp_path)
    res = root / "benchmarks" / "results"
    assert "no run of the recipe collected" in tables.render("quant-targets", res)
    (res / "recipes.json").write_text(json.dumps({"recipes": {"int4-vit": {
        "as_shipped": True, "passes": [{"name": "quantize", "type": "quantize", "cpu_s": 1200.0, "wall_s": 1500.0}]}}}))
    row = next(ln for ln in tables.render("quant-targets", res).splitlines() if "under 15 min" in ln)
    assert "quantize pass 20.0 CPU min (25.0 wall)" in row and row.endswith("| **no** |")
