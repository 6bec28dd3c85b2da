"""Split planning without processes: class partition, device assignment (against brute force), the fusion head
(determinism, safetensors and ONNX round trips, the degraded input) and manifest validation."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from compress.errors import UserError
from compress.split import assign as asg
from compress.split import manifest as mf
from compress.split.fusion import (
    FusionHead,
    assemble,
    export_onnx,
    load_fusion,
    save_fusion,
    train_fusion,
)
from compress.split.partition import (
    part_sizes,
    partition_classes,
    random_partition,
    similarity_from_confusion,
    similarity_from_features,
    within_similarity,
)


# -- partition ------------------------------------------------------------------------------------------------
def _block_similarity(groups: list[list[int]], C: int, rng) -> np.ndarray:
    """High similarity inside the hidden groups, low across, plus noise (symmetric)."""
    s = rng.uniform(0.0, 0.2, (C, C))
    for g in groups:
        s[np.ix_(g, g)] += 0.7
    return (s + s.T) / 2


@pytest.mark.parametrize("C, K", [(10, 2), (12, 3), (12, 4), (20, 5)])
def test_partition_recovers_hidden_groups_of_similar_classes(C, K):
    rng = np.random.default_rng(C * 31 + K)
    perm = rng.permutation(C).tolist()
    groups = [sorted(perm[k::K]) for k in range(K)]
    parts = partition_classes(_block_similarity(groups, C, rng), K)
    assert sorted(map(sorted, parts)) == sorted(groups)
    # the random comparison is far worse on the same objective
    s = _block_similarity(groups, C, np.random.default_rng(0))
    assert within_similarity(s, parts) > within_similarity(s, random_partition(C, K, seed=1)) + 0.5


@pytest.mark.parametrize("C, K", [(10, 3), (7, 7), (100, 8), (11, 4), (5, 1)])
def test_partition_is_balanced_complete_and_deterministic(C, K):
    sim = np.random.default_rng(C + K).uniform(-1, 1, (C, C))
    a, b = partition_classes(sim, K), partition_classes(sim.copy(), K)
    assert a == b
    sizes = sorted(len(p) for p in a)
    assert sizes[-1] - sizes[0] <= 1 and sorted(c for p in a for c in p) == list(range(C))
    assert sorted(len(p) for p in a) == sorted(part_sizes(C, K))
    r = random_partition(C, K, seed=7)
    assert r == random_partition(C, K, seed=7) and sorted(c for p in r for c in p) == list(range(C))
    assert sorted(len(p) for p in r) == sorted(part_sizes(C, K))
    if C >= 10 and K < C:
        assert random_partition(C, K, seed=8) != r


def test_partition_refinement_is_a_local_optimum():
    """No single swap between two parts raises the within-part similarity of the result."""
    rng = np.random.default_rng(3)
    sim = rng.uniform(0, 1, (12, 12))
    sim = (sim + sim.T) / 2
    parts = partition_classes(sim, 3)
    base = within_similarity(sim, parts)
    for i, j in itertools.combinations(range(3), 2):
        for a in parts[i]:
            for b in parts[j]:
                q = [list(p) for p in parts]
                q[i][q[i].index(a)], q[j][q[j].index(b)] = b, a
                assert within_similarity(sim, q) <= base + 1e-9


def test_similarity_sources():
    # class means: classes 0 and 2 point the same way, 1 elsewhere
    f = np.array([[1, 0], [1.1, 0.1], [0, 1], [0.1, 1], [0.9, 0], [1, 0.05]], float)
    y = np.array([0, 0, 1, 1, 2, 2])
    s = similarity_from_features(f, y, 3)
    assert s[0, 2] > 0.99 and s[0, 1] < 0.2 and np.allclose(s, s.T)
    # confusion: 0 is mistaken for 1 half the time
    s = similarity_from_confusion(np.array([1, 0, 1, 2]), np.array([0, 0, 1, 2]), 3)
    assert s[0, 1] == pytest.approx(0.25) and s[0, 2] == 0 and np.allclose(s, s.T)
    with pytest.raises(UserError, match="no calibration image of class 2"):
        similarity_from_features(f[:4], y[:4], 3)
    with pytest.raises(UserError, match="cannot split 3 classes into 4 parts"):
        partition_classes(np.eye(3), 4)


# -- assignment -----------------------------------------------------------------------------------------------
def _brute(lat, mem, cap):
    K, M = len(lat), len(cap)
    best = None
    for m in itertools.product(range(M), repeat=K):
        if any(sum(mem[i][d] for i in range(K) if m[i] == d) > cap[d] for d in range(M)):
            continue
        span = max(sum(lat[i][d] for i in range(K) if m[i] == d) for d in range(M))
        best = span if best is None else min(best, span)
    return best


def _makespan(lat, m, M):
    return max(sum(lat[i][d] for i in range(len(lat)) if m[i] == d) for d in range(M))


def _fits(mem, cap, m):
    return all(sum(mem[i][d] for i in range(len(mem)) if m[i] == d) <= cap[d] for d in range(len(cap)))


def test_exact_equals_brute_force_on_random_cases():
    rng = np.random.default_rng(0)
    checked = infeasible = 0
    for _ in range(150):
        K, M = int(rng.integers(1, 7)), int(rng.integers(1, 5))
        lat = rng.uniform(1, 50, (K, M)).round(2).tolist()  # unrelated devices
        mem = np.repeat(rng.uniform(1, 10, (K, 1)), M, 1).tolist()
        cap = rng.uniform(5, 25, M).tolist()
        want = _brute(lat, mem, cap)
        got = asg.exact(lat, mem, cap)
        if want is None:
            assert got is None
            with pytest.raises(UserError, match="no placement of"):
                asg.assign(lat, mem, cap)
            infeasible += 1
            continue
        assert got is not None and _fits(mem, cap, got[0])
        assert got[1] == pytest.approx(want) and _makespan(lat, got[0], M) == pytest.approx(want)
        checked += 1
    assert checked > 80 and infeasible > 5


@pytest.mark.parametrize("uniform", [False, True])
def test_greedy_within_lpt_bound_of_brute_force(uniform):
    """No memory limits. Identical devices: LPT <= (4/3 - 1/(3M)) OPT (Graham); uniform speeds: <= 2M/(M+1) OPT."""
    rng = np.random.default_rng(1 + uniform)
    worst = 1.0
    for _ in range(200):
        K, M = int(rng.integers(2, 8)), int(rng.integers(2, 4))
        work = rng.uniform(1, 20, K)
        speed = rng.uniform(1, 4, M) if uniform else np.ones(M)
        lat = (work[:, None] / speed[None, :]).tolist()
        mem, cap = [[0.0] * M for _ in range(K)], [1.0] * M
        opt = _brute(lat, mem, cap)
        m, span = asg.greedy(lat, mem, cap)
        bound = 2 * M / (M + 1) if uniform else 4 / 3 - 1 / (3 * M)
        assert span == pytest.approx(_makespan(lat, m, M)) and span <= bound * opt + 1e-9
        assert asg.assign(lat, mem, cap).makespan_ms == pytest.approx(opt)
        worst = max(worst, span / opt)
    assert worst > 1.0  # greedy is not optimal on every case: the check above has teeth


def test_greedy_respects_memory_and_says_when_it_misses():
    """Memory makes placement bin packing: LPT puts parts 1 and 2 together and part 3 (7 units) fits nowhere,
    while {0, 2} / {1, 3} fits (makespan 18); exact finds it, greedy says so instead of overfilling a device."""
    lat = [[10, 10], [9, 9], [8, 8], [1, 1]]
    mem = [[7, 7], [3, 3], [3, 3], [7, 7]]
    cap = [10, 10]
    assert asg.greedy(lat, mem, cap) is None
    m, span = asg.exact(lat, mem, cap)
    assert _fits(mem, cap, m) and span == pytest.approx(_brute(lat, mem, cap)) == pytest.approx(18)
    with pytest.raises(UserError, match="greedy placement found no fit of 4 parts on 2 devices"):
        asg.assign(lat, mem, cap, method="greedy")
    plan = asg.assign(lat, mem, cap)
    assert plan.method == "exact" and plan.device_bytes == [10, 10] and sorted(plan.device_ms) == [10, 18]


def test_plan_from_target_profiles():
    """Latency from compress.targets' latency models, memory from the profiles; a faster device takes more work."""
    from compress.models.vit import ViTConfig

    big = ViTConfig.uniform(384, 12, 6, patch_size=14, global_pool="none")
    small = ViTConfig.uniform(192, 12, 3, patch_size=14, global_pool="none")
    devs = [asg.make_device("x86", "x86-avx512"), asg.make_device("pi", "raspberry-pi-5")]
    plan = asg.plan_parts([big, small, small], [22_000_000, 5_500_000, 5_500_000], devs)
    lat, mem, _ = asg.part_costs([big, small, small], [22_000_000, 5_500_000, 5_500_000], devs)
    opt = _brute(lat, mem, [d.memory_bytes for d in devs])
    assert plan.method == "exact" and plan.makespan_ms == pytest.approx(opt)
    from compress.targets.latency_models import load_latency_model

    for d, dev in enumerate(devs):  # the targets' own latency models, not a copy of them
        assert lat[1][d] == pytest.approx(load_latency_model(dev.target).model_ms(small))
        assert mem[0][d] > 22_000_000 * 4 and dev.memory_bytes == 8 * 2**30 * (3 if d == 0 else 1)
    assert lat[0][0] > 3 * lat[1][0]  # the ViT-S part costs more than a ViT-Ti part
    d = plan.to_dict()
    assert [p["device"] for p in d["parts"]] == [devs[k].name for k in plan.device_of]
    assert {x["latency_source"] for x in d["devices"]} <= {"lut", "roofline"}
    tiny = [asg.Device("tiny", "raspberry-pi-5", 1000)]
    with pytest.raises(UserError, match="no placement of 3 parts on 1 devices fits"):
        asg.plan_parts([big, small, small], [22_000_000, 5_500_000, 5_500_000], tiny)


# -- fusion head ----------------------------------------------------------------------------------------------
def _outputs(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, 80)
    onehot = np.eye(6)[y] * 3
    outs = [onehot[:, :3] + rng.normal(0, 0.3, (80, 3)), onehot[:, 3:] + rng.normal(0, 0.3, (80, 3))]
    return [o.astype(np.float32) for o in outs], y


def test_fusion_head_is_deterministic_and_learns():
    outs, y = _outputs()
    a = train_fusion(outs, y, 6, hidden=16, epochs=150, seed=4)
    b = train_fusion(outs, y, 6, hidden=16, epochs=150, seed=4)
    c = train_fusion(outs, y, 6, hidden=16, epochs=150, seed=5)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    x = torch.from_numpy(assemble(outs, [3, 3], 80))
    with torch.no_grad():
        acc = (a(x).argmax(1).numpy() == y).mean()
    assert acc > 0.9  # separable synthetic outputs (not a model-accuracy claim)


def test_fusion_head_round_trips_safetensors_and_onnx(tmp_path):
    from compress.runtime import ort_session

    outs, y = _outputs(1)
    head = train_fusion(outs, y, 6, hidden=16, epochs=20, part_dropout=0.5, seed=0)
    save_fusion(head, tmp_path / "f.safetensors")
    back = load_fusion(tmp_path / "f.safetensors")
    export_onnx(head, tmp_path / "f.onnx")
    x = assemble([outs[0], None], [3, 3], 80)  # part 1 missing: zeros and mask 0
    assert (x[:, 3:6] == 0).all() and (x[:, 6] == 1).all() and (x[:, 7] == 0).all()
    with torch.no_grad():
        ref = head(torch.from_numpy(x)).numpy()
        assert np.array_equal(back(torch.from_numpy(x)).numpy(), ref)
    got = ort_session(tmp_path / "f.onnx").run(None, {"x": x})[0]
    assert np.abs(got - ref).max() < 1e-5
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(UserError, match="is not a vitforge fusion head"):
        load_fusion(tmp_path / "bad.safetensors")
    assert isinstance(back, FusionHead) and back.dims == [3, 3]


# -- manifest -------------------------------------------------------------------------------------------------
def _manifest(**over) -> dict:
    pre = {"size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}
    d = {"format": "vitforge-split/1", "build_id": "b1", "model": "m", "num_classes": 4,
         "parts": [{"index": i, "classes": [2 * i, 2 * i + 1], "artifact": f"p{i}.onnx", "sha256": "a" * 64,
                    "device": f"d{i}", "output_dim": 2, "preprocess": pre} for i in range(2)],
         "fusion": {"weights": "f.safetensors", "weights_sha256": "b" * 64, "onnx": "f.onnx", "onnx_sha256": "c" * 64,
                    "order": [1, 0]}}
    d.update(over)
    return d


@pytest.mark.parametrize("change, needle", [
    ({"format": "other"}, "format must be"),
    ({"num_classes": 5}, "cover 0..4"),
    ({"parts": []}, "parts"),
    ({"fusion": {**_manifest()["fusion"], "order": [0, 0]}}, "fusion.order"),
    ({"fusion": {**_manifest()["fusion"], "weights_sha256": "XYZ"}}, "fusion.weights_sha256"),
    ({"degraded": {"policy": "fuse_available", "min_parts": 3}}, "min_parts 3 exceeds"),
    ({"runtime": {"deadline_ms": 1e309}}, "runtime.deadline_ms"),
    ({"class_names": ["a"]}, "class_names"),
])
def test_manifest_validation_is_strict(change, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.").replace("(", r"\(")) as e:
        mf.parse(json.dumps(_manifest(**change)) if "1e309" not in str(change) else
                 json.dumps(_manifest()).replace('"model"', '"runtime": {"deadline_ms": 1e309}, "model"'))
    assert "\n" not in str(e.value)


def test_manifest_parts_and_files(tmp_path):
    m = mf.parse(json.dumps(_manifest(degraded={"policy": "fuse_available"})))
    assert m.degraded.policy == "fuse_available" and m.runtime.retries == 1 and m.part(1).classes == [2, 3]
    with pytest.raises(UserError, match="no part 2"):
        m.part(2)
    bad = _manifest()
    bad["parts"][1]["classes"] = [1, 2, 3]
    with pytest.raises(UserError, match="cover 0..3"):
        mf.parse(json.dumps(bad))
    (tmp_path / "x.onnx").write_bytes(b"abc")
    for rel in ("/etc/passwd", "../x.onnx", "a/../../x", "", "~x"):
        with pytest.raises(UserError):
            mf.confined(tmp_path / "sub", rel, "artifact")
    with pytest.raises(UserError, match="does not match the manifest's sha256"):
        mf.verified(tmp_path, "x.onnx", "0" * 64, "artifact")
    import hashlib

    assert mf.verified(tmp_path, "x.onnx", hashlib.sha256(b"abc").hexdigest(), "artifact") == tmp_path / "x.onnx"
    with pytest.raises(UserError, match="is a folder, not a file"):
        mf.load(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        mf.load(tmp_path / "none.json")
    big = tmp_path / "big.json"
    big.write_text(" " * (mf.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(UserError, match="larger than"):
        mf.load(big)
    (tmp_path / "deep.json").write_text("[" * 200_000)
    with pytest.raises(UserError, match="nested too deeply"):
        mf.load(tmp_path / "deep.json")
    ok = _manifest()
    ok["parts"][0]["endpoint"] = "tcp://10.0.0.2:5555"
    assert mf.parse(json.dumps(ok)).parts[0].endpoint == "tcp://10.0.0.2:5555"
    ok["parts"][0]["endpoint"] = "ipc:///tmp/x"
    with pytest.raises(UserError, match=r"parts\.0\.endpoint"):
        mf.parse(json.dumps(ok))
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(UserError, match="must be a JSON object"):
        mf.load(tmp_path / "list.json")


# -- class-restricted saliency --------------------------------------------------------------------------------
def test_class_restricted_sampled_is_the_subset_fisher():
    """E[g g^T] of ``sampled``'s per-sample gradients equals the Hessian of the restricted KL at the teacher, and
    every logit outside the subset has zero gradient and zero curvature."""
    from compress.split.saliency import ClassRestricted

    torch.manual_seed(0)
    t = torch.randn(1, 6)
    d = ClassRestricted([0, 2, 5])
    n = 40000
    y = t.repeat(n, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(d.sampled(y, t.repeat(n, 1), torch.Generator().manual_seed(1)), y)
    mc = g.T @ g / n
    hess = torch.autograd.functional.hessian(lambda z: d.loss(z, t).sum(), t.clone())[0, :, 0, :]
    assert (g[:, [1, 3, 4]] == 0).all() and (hess[[1, 3, 4]] == 0).all()
    assert torch.allclose(mc, hess, atol=0.01), (mc, hess)
    assert float(d.loss(t, t)) == 0.0


def test_class_saliency_reads_only_the_subset():
    """Hessian saliency (the shared compute, reused unchanged) of a randomly initialised tiny ViT for classes
    {0, 2, 4}: unchanged when the head's rows of other classes or the images of other classes change; different
    for the complementary subset."""
    import copy

    from compress.models import build
    from compress.models.vit import ViTConfig
    from compress.split.saliency import class_saliency

    torch.manual_seed(0)
    model = build(ViTConfig.uniform(32, 2, 2, img_size=16, patch_size=8, global_pool="none", layer_scale=False)).eval()
    teacher = copy.deepcopy(model)
    head = torch.nn.Linear(64, 6)
    x = torch.randn(24, 3, 16, 16)
    y = np.arange(24) % 6

    def sal(h, imgs, classes):
        s = class_saliency(model, teacher, classes, imgs, y, head=h, batch_size=8, seed=3)
        return {k: v.clone() for k, v in s.samples.items()}

    a = sal(head, x, [0, 2, 4])
    h2 = copy.deepcopy(head)
    with torch.no_grad():
        h2.weight[[1, 3, 5]] = torch.randn(3, 64)
    x2 = x.clone()
    x2[np.isin(y, [1, 3, 5])] = torch.randn(12, 3, 16, 16)
    b = sal(h2, x2, [0, 2, 4])
    c = sal(head, x, [1, 3, 5])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.shape[0] == 12 for v in a.values())  # the subset's 12 images only
    assert any(not torch.allclose(a[k], c[k]) for k in a)
