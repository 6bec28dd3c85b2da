"""The CLI's stand-alone commands on small models: inspect, eval, export, list, --json."""
from __future__ import annotations

import json

import pytest

from compress.cli import main


def test_inspect_reports_structure_flops_and_activation_stats(image_folder, capsys):
    assert main(["inspect", "timm:vit_tiny_patch16_224", "--data", str(image_folder), "--images", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["depth"] == 12 and info["embed_dim"] == 192 and info["blocks"][0]["heads"] == 3
    assert info["gflops"] == pytest.approx(2.5, rel=0.06)  # ViT-Ti/16: ~1.26 GMACs
    assert info["params"] == info["graph_params"]
    a = info["activations"][5]
    assert a["norm1"]["outlier_ratio"] >= 1 and 0 < a["softmax"]["max"] <= 1 and a["gelu"]["min"] >= -0.171
    assert info["randomly_initialized"]


def test_inspect_text_on_the_embedded_model(capsys):
    assert main(["inspect", "--images", "0"]) == 0
    out = capsys.readouterr().out
    assert "dinov2-s14-focus" in out and "257 tokens" in out and "21.6" in out


def test_export_then_eval_the_artifact(tmp_path, image_folder, capsys):
    from conftest import tiny_config
    from compress.models import build
    from compress.pipeline.state import ModelState

    ckpt = tmp_path / "ckpt"
    ModelState(build(tiny_config()), "tiny").save(ckpt)
    r = tmp_path / "r.yaml"
    r.write_text(f"model: {ckpt}\ndata: {{path: {image_folder}}}\n"
                 "evaluation: {probe_train: 12, test: 12, latency: {runs: 2, warmup: 1}}\n")
    assert main(["export", str(ckpt), "--recipe", str(r), "--out", str(tmp_path / "exp"), "--json"]) == 0
    exp = json.loads(capsys.readouterr().out)
    assert exp["artifacts"][0]["verification"]["passed"]
    onnx_path = tmp_path / "exp" / exp["artifacts"][0]["path"]
    assert main(["eval", str(onnx_path), "--recipe", str(r), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["result"]["agreement"] == 100.0 and res["result"]["feature_cosine"] > 0.99999
    assert res["result"]["latency"]["p50_ms"] > 0 and res["result"]["gflops"] > 0
    assert main(["eval", str(tmp_path / "missing.onnx"), "--recipe", str(r)]) == 2


def test_list(capsys):
    assert main(["list", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "fold" in info["passes"] and "x86-avx512" in info["targets"]
