"""The runner: checkpoints per pass, resume after kill -9, identical final artifacts, honest report files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compress.pipeline.state import ModelState
from compress.pipeline.checkpoint import load_checkpoint

pytestmark = pytest.mark.timeout(300)

RECIPE = """
name: tiny-run
model: timm:vit_tiny_patch16_224
seed: 3
data: {{path: {data}, calibration: {{count: 8}}, batch_size: 4}}
passes:
  fold: {{}}
evaluation: {{probe_train: 12, test: 12, fidelity_images: 4, latency: {{runs: 2, warmup: 1}}}}
export: {{verify: {{images: 2}}}}
"""


def _cmd(recipe: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "compress", "--recipe", str(recipe), "--out", str(out), "--quiet", *extra]


def _env(tmp_path):
    return os.environ | {"VITFORGE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def _artifact_hashes(out: Path) -> dict:
    return {a["path"]: a["sha256"] for a in json.loads((out / "export.json").read_text())["artifacts"]}


KILL_PASSES = """passes:
  fold: {}
  quantize: {weights: {bits: 8}, activations: {bits: 8}}
"""


@pytest.mark.slow  # three runs of a W8A8 recipe: 2-5 min
def test_kill_9_then_resume_gives_identical_artifacts(tmp_path, image_folder):
    """kill -9 lands inside a pass (triggered by the pass's own progress line, not by a sleep): the
    finished pass is kept intact, the killed one left no checkpoint, and --resume gives the clean run's files."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=image_folder).replace("passes:\n  fold: {}\n", KILL_PASSES)
                      .replace("verify: {images: 2}", "verify: {images: 2, quantized_min_cosine: 0.99}"))
    env = _env(tmp_path)
    clean = tmp_path / "clean"
    subprocess.run(_cmd(recipe, clean), env=env, check=True, timeout=240)
    want = _artifact_hashes(clean)
    assert len(want) == 3  # baseline-fp32.onnx, model.onnx and the quantized Q/DQ graph

    out = tmp_path / "killed"
    p = subprocess.Popen(_cmd(recipe, out)[:-1], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stderr:
        seen.append(line)
        if line.startswith("[2/2] quantize"):
            time.sleep(0.5)  # well inside the quantize pass (calibrating 12 blocks takes seconds)
            p.send_signal(signal.SIGKILL)
            break
    p.wait()
    assert p.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    assert not any("done in" in x for x in seen[seen.index(next(x for x in seen if x.startswith("[2/2]"))):])
    assert not (out / "passes" / "02-quantize").exists()  # the killed pass left nothing behind ...
    load_checkpoint(out / "passes" / "01-fold")  # ... and the finished one is intact
    r = subprocess.run(_cmd(recipe, out, "--resume"), env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _artifact_hashes(out) == want
    manifest = json.loads((out / "manifest.json").read_text())
    for f in manifest["files"]:
        from compress.utils.io import sha256_file

        assert sha256_file(out / f["path"]) == f["sha256"]


@pytest.mark.slow  # several runs: 2-4 min
def test_rerun_resumes_and_changed_recipe_is_refused(tmp_path, image_folder):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=image_folder))
    env, out = _env(tmp_path), tmp_path / "run"
    subprocess.run(_cmd(recipe, out), env=env, check=True, timeout=240)
    mtime = (out / "passes" / "01-fold" / "model.safetensors").stat().st_mtime_ns
    r = subprocess.run(_cmd(recipe, out)[:-1], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "finished earlier, reusing" in r.stderr
    assert (out / "passes" / "01-fold" / "model.safetensors").stat().st_mtime_ns == mtime  # not redone
    # a changed evaluation setting redoes the evaluation (not the passes, not the export), never reuses stale scores
    r = subprocess.run(_cmd(recipe, out)[:-1] + ["--set", "evaluation.test=10"], env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0 and "export: finished earlier" in r.stderr and "evaluation: finished" not in r.stderr
    assert json.loads((out / "evaluation.json").read_text())["test_images"] == 10
    recipe.write_text(RECIPE.format(data=image_folder).replace("fold: {}", "fold: {layer_scale: false}"))
    r = subprocess.run(_cmd(recipe, out), env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 2 and "was made by a different recipe" in r.stderr
    assert (out / "passes" / "01-fold" / "model.safetensors").stat().st_mtime_ns == mtime  # nothing lost
    r = subprocess.run(_cmd(recipe, tmp_path / "fresh", "--resume"), env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "nothing to resume" in r.stderr


def test_run_outputs_report_manifest_and_fold_is_exact(tmp_path, image_folder, tiny_model):
    from compress.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=image_folder))
    out = tmp_path / "run"
    assert main(["--recipe", str(recipe), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["evaluation"]["rows"]}
    # fold is exact: the folded model agrees with fp32 on every image
    assert rows["onnx-fp32"]["agreement"] == 100.0 and rows["onnx-fp32"]["feature_cosine"] > 0.99999
    assert rows["onnx-fp32"]["gflops"] == pytest.approx(rows["baseline-fp32"]["gflops"], rel=1e-3)
    assert rows["onnx-fp32"]["latency"]["p50_ms"] > 0
    assert (out / "plots" / "latency_accuracy.png").stat().st_size > 1000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["torch"].startswith("2.13.0") and "onnxruntime" in manifest["versions"]
    assert {a["name"] for a in manifest["artifacts"]} == {"baseline-fp32", "onnx-fp32"}
    for a in manifest["artifacts"]:
        assert a["verification"]["passed"] and a["verification"]["max_abs"] < 1e-3
    assert "| onnx-fp32 | onnxruntime | fp32 |" in (out / "report.md").read_text()
    # every pass and stage records its CPU time, wall time and peak resident memory
    used = manifest["passes"][0]["resources"]
    assert used["cpu_s"] >= 0 and used["wall_s"] >= 0 and 50 < used["peak_rss_mb"] < 64_000, used
    assert set(manifest["resources"]["stages"]) >= {"pass:fold", "export", "evaluation"}
    assert manifest["resources"]["process_peak_rss_mb"] >= used["peak_rss_mb"]
    assert "peak resident memory" in (out / "report.md").read_text()
    # latency is stated in process CPU time first, wall time beside it
    assert "| CPU p50 ms | wall p50 ms | wall p90 ms |" in (out / "report.md").read_text()
    # the fold pass on its own: exact to float rounding
    from compress.passes.fold import FoldConfig, FoldPass

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = tiny_model(x)
        state = ModelState(tiny_model, "tiny")
        FoldPass(FoldConfig()).run(state, None)
        assert not state.cfg.layer_scale
        assert (state.model(x) - want).abs().max() < 1e-5
