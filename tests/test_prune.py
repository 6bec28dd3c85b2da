"""Pruning: physical removal equals masking, the Hessian saliency predicts the loss change, latency-aware
global selection, checkpoints and ONNX of pruned models (tiny models, a few seconds each)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch_pruning as tp

from compress.models import build
from compress.models.vit import BlockConfig, ViTConfig
from compress.pruning import gates, saliency
from compress.distill import Distiller
from compress.pruning.budget import Predictor
from compress.models.heads import WidthRestore
from compress.pruning.remove import Plan, apply_plan, check_widths, consumers, dependency_graph
from compress.pruning.select import Limits, Selector
from compress.pipeline.checkpoint import load_checkpoint

from conftest import tiny_config

pytestmark = pytest.mark.timeout(120)


def _model(classes: int = 0, **kw):
    torch.manual_seed(0)
    cfg = tiny_config(embed_dim=64, depth=3, num_heads=4, **kw)
    if classes:
        cfg.num_classes, cfg.global_pool = classes, "token"
    m = build(cfg).eval()
    with torch.no_grad():  # trained-like scales: branches matter, LayerScale is not the identity
        for blk in m.blocks:
            blk.ls1.gamma.uniform_(0.5, 1.5)
            blk.ls2.gamma.uniform_(0.5, 1.5)
        for p in m.parameters():
            if p.ndim == 2:
                p.mul_(3)
    return m


def _images(n=8, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _calib(m, seeds=(1,), n=8):
    """Calibration batches and the model's own outputs on them (the teacher = the unpruned model)."""
    xs = [_images(n, s) for s in seeds]
    with torch.no_grad():
        return xs, [m(x) for x in xs]


PLAN = Plan(heads={0: [1]}, qk={0: {0: [1, 2], 2: [0, 5], 3: [3, 4]}, 1: {h: [h, 7] for h in range(4)}},
            v={2: {h: list(range(8)) for h in range(4)}}, mlp={1: list(range(0, 256, 3))})


def test_physical_removal_equals_zeroed_gates_and_rebuilds_from_config():
    m, x = _model(), _images(4)
    g = gates.Gates(m, 4, embed_output=False)
    with torch.no_grad():
        g.v[0][:, 1] = 0
        for b in (0, 1):
            for h, ds in PLAN.qk[b].items():
                g.qk[b][:, h, ds] = 0
        g.v[2][:, :, :8] = 0
        g.mlp[1][:, PLAN.mlp[1]] = 0
        with g.attached():
            masked = m(x)
        p = copy.deepcopy(m)
        apply_plan(p, PLAN)
        pruned = p(x)
    assert (masked - pruned).abs().max() < 1e-5  # removal == masking, incl. the folded softmax scale
    assert (m(x) - pruned).abs().max() > 0.1  # and something was removed
    assert [(b.num_heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in p.cfg.blocks] == \
        [(3, 14, 16, 256), (4, 14, 16, 170), (4, 16, 8, 256)]
    assert sum(t.numel() for t in p.parameters()) < sum(t.numel() for t in m.parameters())
    rebuilt = build(copy.deepcopy(p.cfg))
    rebuilt.load_state_dict(p.state_dict(), strict=True)
    assert torch.equal(rebuilt(x), p(x))


def _sliced_reference(m, keep: list[int], classes: bool):
    """Independent slicing of every embedding-width tensor, against which the DG removal is checked."""
    cfg = copy.deepcopy(m.cfg)
    cfg.embed_dim = len(keep)
    ref = build(cfg)
    if not classes:
        ref.norm = WidthRestore(len(keep), m.cfg.embed_dim, cfg.norm_eps)
    sd, k = {}, torch.tensor(keep)
    for name, t in m.state_dict().items():
        if name in ("cls_token", "pos_embed"):
            t = t[..., k]
        elif name.startswith("patch_embed") or name.endswith(("norm1.weight", "norm1.bias", "norm2.weight",
                                                              "norm2.bias", "gamma", "proj.weight", "proj.bias",
                                                              "fc2.weight", "fc2.bias")):
            t = t[k]
        elif name.endswith(("q.weight", "k.weight", "v.weight", "fc1.weight")) or name == "head.weight":
            t = t[:, k]
        elif name.startswith("norm.") and classes:
            t = t[k]
        elif name.startswith("norm."):
            sd["norm.norm." + name[5:]] = t
            continue
        sd[name] = t
    if not classes:
        sd["norm.proj.weight"] = torch.eye(m.cfg.embed_dim)[:, k]
        sd["norm.proj.bias"] = torch.zeros(m.cfg.embed_dim)
    ref.load_state_dict(sd, strict=True)
    return ref.eval()


@pytest.mark.parametrize("classes", [0, 10])
def test_embedding_width_removed_everywhere(classes):
    m, x = _model(classes), _images(4)
    drop = list(range(0, 64, 4))
    keep = [i for i in range(64) if i not in drop]
    ref = _sliced_reference(m, keep, bool(classes))
    p = copy.deepcopy(m)
    apply_plan(p, Plan(embed=drop), keep_output_width=not classes)
    check_widths(p)
    assert p.cfg.embed_dim == 48 and isinstance(p.norm, WidthRestore) == (not classes)
    with torch.no_grad():
        out = p(x)
        assert out.shape == (4, 17, 64) if not classes else out.shape == (4, 10)
        assert (out - ref(x)).abs().max() < 1e-5


def test_saved_checkpoint_of_pruned_encoder_reloads(tmp_path):
    from compress.pipeline.state import ModelState

    m, x = _model(), _images(2)
    apply_plan(m, PLAN)
    apply_plan(m, Plan(embed=list(range(8))))
    state = ModelState(m, "tiny", [{"name": "prune", "type": "prune", "output_width": 64}])
    state.save(tmp_path / "ckpt")
    back, _ = load_checkpoint(tmp_path / "ckpt")
    assert back.cfg.embed_dim == 56 and isinstance(back.model.norm, WidthRestore)
    with torch.no_grad():
        assert torch.equal(back.model(x), m(x))


def test_pruned_model_exports_verified_onnx_with_counts_from_the_graph(tmp_path):
    from compress.utils.graph_stats import graph_stats
    from compress.export.onnx_export import export_onnx
    from compress.export.verify import verify
    from compress.runtime import OrtRunner

    m = _model()
    export_onnx(m, tmp_path / "orig.onnx")
    apply_plan(m, PLAN)
    apply_plan(m, Plan(embed=list(range(0, 64, 2))))
    export_onnx(m, tmp_path / "pruned.onnx")
    v = verify(tmp_path / "pruned.onnx", OrtRunner(tmp_path / "pruned.onnx"), m, _images(4), 1e-4, 0.99999)
    assert v.passed and v.max_abs < 1e-4
    before, after = graph_stats(tmp_path / "orig.onnx"), graph_stats(tmp_path / "pruned.onnx")
    assert after["params"] == sum(p.numel() for p in m.parameters())
    assert after["gflops"] < 0.7 * before["gflops"]


def _actual_loss(m, xs, ts, d, zero):
    tot = 0.0
    for x, t in zip(xs, ts):
        g = gates.Gates(m, len(x), False)
        with torch.no_grad():
            zero(g)
            with g.attached():
                tot += float(d.loss(m(x), t).sum())
    return tot / sum(len(x) for x in xs)


def test_hessian_saliency_predicts_the_loss_change_of_removing_a_group():
    from scipy.stats import spearmanr

    m = _model()
    xs, ts = _calib(m, range(4), 16)
    d = Distiller(m.cfg)
    s = saliency.compute("hessian", m, xs, ts, d, embed_output=False)
    pred, act = [], []

    def add(kind, b, mask, zero):
        pred.append(s.group(kind, b, mask))
        act.append(_actual_loss(m, xs, ts, d, zero))

    for b in range(3):
        for h in range(4):
            add("v", b, torch.arange(4)[:, None].expand(4, 16) == h, lambda g, b=b, h=h: g.v[b][:, h].zero_())
        for c in range(0, 256, 64):
            add("mlp", b, (torch.arange(256) >= c) & (torch.arange(256) < c + 64),
                lambda g, b=b, c=c: g.mlp[b][:, c:c + 64].zero_())
        add("qk", b, torch.arange(16).expand(4, 16) < 4, lambda g, b=b: g.qk[b][:, :, :4].zero_())
    for c in range(0, 64, 16):
        add("embed", -1, (torch.arange(64) >= c) & (torch.arange(64) < c + 16), lambda g, c=c: g.embed[:, c:c + 16].zero_())
    pred, act = np.array(pred), np.array(act)
    assert spearmanr(pred, act).correlation > 0.9  # one scale across heads, MLP, QK and embedding groups
    assert 0.5 < np.median(pred / act) < 2.0


def test_magnitude_and_taylor_are_torch_pruning_importances_on_the_right_groups():
    m = _model()
    xs, ts = _calib(m)
    s = saliency.compute("magnitude", m, xs, ts, Distiller(m.cfg), embed_output=False)
    a = m.blocks[1].attn  # QK group = q rows and k rows only (the DG alone would couple v and proj too)
    want = (a.q.weight.pow(2).sum(1) + a.k.weight.pow(2).sum(1)) / 2
    assert torch.allclose(s.units[("qk", 1)].flatten(), want / want.mean(), rtol=1e-5)
    fc1 = m.blocks[2].mlp.fc1
    dg_group = dependency_graph(m).get_pruning_group(
        fc1, tp.prune_linear_out_channels, list(range(fc1.out_features)))
    assert torch.allclose(s.units[("mlp", 2)], tp.importance.GroupMagnitudeImportance(p=2)(dg_group))
    t = saliency.compute("taylor", m, xs, ts, Distiller(m.cfg), embed_output=False)
    assert all(v.shape == s.units[k].shape and torch.isfinite(v).all() and v.sum() > 0 for k, v in t.units.items())


class _Latency:
    """Linear latency: attention costs ``wa`` per head-dim, the MLP ``wm`` per unit, per embedding channel."""

    source = "test"

    def __init__(self, wa=1.0, wm=1.0):
        self.wa, self.wm = wa, wm

    def block_ms(self, D, h, qk, v, m, T, precision="fp32"):
        return D * (self.wa * h * (qk + v) + self.wm * m) * 1e-4

    def model_ms(self, cfg, precision="fp32"):
        return 0.01 * cfg.embed_dim + sum(self.block_ms(cfg.embed_dim, b.num_heads, b.qk_dim, b.v_dim, b.mlp_dim, 0)
                                          for b in cfg.blocks)


def _flat_saliency(cfg, mlp_scale=(1.0, 1.0, 1.0)):
    s = saliency.Saliency("magnitude")
    for b, bc in enumerate(cfg.blocks):
        s.units[("mlp", b)] = torch.full((bc.mlp_dim,), mlp_scale[b])
        s.units[("qk", b)] = torch.ones(bc.num_heads, bc.qk_dim)
        s.units[("v", b)] = torch.ones(bc.num_heads, bc.v_dim)
    s.units[("embed", -1)] = torch.full((cfg.embed_dim,), 100.0)
    return s


def test_selection_follows_latency_and_saliency_globally():
    cfg = ViTConfig(embed_dim=64, blocks=[BlockConfig(4, 16, 16, 256) for _ in range(3)])
    lim = Limits(align=8, min_head_dim=8, min_mlp=8, min_embed=32)

    def run(lat, sal):
        pred = Predictor(lat, cfg, None)
        plan, stats = Selector(cfg, sal, pred, lim).run(0.7 * pred.model(cfg))
        assert stats["met"]
        return plan.counts()

    # equal saliency per unit: the structure that saves more latency per unit goes first
    mlp_costly = run(_Latency(wa=0.1, wm=4.0), _flat_saliency(cfg))
    attn_costly = run(_Latency(wa=8.0, wm=0.1), _flat_saliency(cfg))
    assert mlp_costly["mlp"] > 0 and mlp_costly["qk"] + mlp_costly["v"] == 0
    assert attn_costly["qk"] + attn_costly["v"] > 0 and attn_costly["mlp"] == 0
    # global: the block whose units matter least gives up the most
    p = Predictor(_Latency(), cfg, None)
    plan, _ = Selector(cfg, _flat_saliency(cfg, (0.2, 1.0, 5.0)), p, lim).run(0.8 * p.model(cfg))
    cut = [len(plan.mlp.get(b, [])) for b in range(3)]
    assert cut[0] > cut[1] > cut[2]


def test_selection_on_real_saliency_meets_budget_with_aligned_equal_head_widths():
    m = _model()
    xs, ts = _calib(m)
    s = saliency.compute("hessian", m, xs, ts, Distiller(m.cfg), embed_output=False)
    pred = Predictor(_Latency(), m.cfg, m.cfg.embed_dim)
    budget = 0.5 * pred.model(m.cfg)
    plan, stats = Selector(m.cfg, s, pred, Limits(8, 1, 8, 8, 32)).run(budget)
    assert stats["met"] and stats["predicted_ms"] <= budget
    apply_plan(m, plan)
    assert pred.model(m.cfg) == pytest.approx(stats["predicted_ms"])
    for b in m.cfg.blocks:
        assert b.num_heads >= 1 and b.qk_dim % 8 == 0 and b.v_dim % 8 == 0 and b.mlp_dim % 8 == 0
    assert m.cfg.embed_dim % 8 == 0
    assert len({b.mlp_dim for b in m.cfg.blocks}) > 1  # redistributed, not uniform


def test_least_squares_compensation_reduces_the_error_of_removal():
    from compress.pruning import compensate

    m = _model()
    xs, held = [_images(16, s) for s in range(3)], [_images(16, 9)]
    with torch.no_grad():
        ts = [m(x) for x in held]
    d = Distiller(m.cfg)
    plan = Plan(heads={0: [2]}, v={1: {h: list(range(6)) for h in range(4)}},
                mlp={b: list(range(0, 256, 2)) for b in range(3)})
    plain, comp = copy.deepcopy(m), copy.deepcopy(m)
    apply_plan(plain, plan)
    moments = compensate.collect(comp, xs, consumers(comp, plan))
    apply_plan(comp, plan, moments=moments)
    with torch.no_grad():
        loss_plain = float(d.loss(plain(held[0]), ts[0]).mean())
        loss_comp = float(d.loss(comp(held[0]), ts[0]).mean())
    assert loss_comp < 0.7 * loss_plain  # on images the refit never saw
    # the refit is the least-squares solution: no other fc2 on the kept units fits its calibration output better
    fc2 = m.blocks[0].mlp.fc2
    H = compensate.collect(m, xs, {"f": fc2})["f"]
    keep = list(range(1, 256, 2))
    w, b = compensate.refit(fc2, H, keep, damp=0.0)
    W = torch.cat([fc2.weight, fc2.bias[:, None]], 1).detach().double()
    full = torch.cat([w, b[:, None]], 1).double()
    idx = torch.tensor(keep + [256])

    def err(Wk):  # E||W x - Wk x_K||^2 from the moments
        return float(torch.trace(W @ H @ W.T) - 2 * torch.trace(Wk @ H[idx] @ W.T) + torch.trace(Wk @ H[idx][:, idx] @ Wk.T))

    assert err(full) < err(W[:, idx]) and err(full) <= err(full + 1e-3 * torch.randn_like(full))


def test_blockwise_reconstruction_towards_the_teacher_beats_compensation_on_held_out_images():
    from compress.pruning import compensate
    from compress.passes.prune.refit import reconstruct

    m = _model()
    xs, held = [_images(16, s) for s in range(4)], _images(16, 9)
    with torch.no_grad():
        t_held = m(held)
    d = Distiller(m.cfg)
    plan = Plan(heads={0: [2]}, v={1: {h: list(range(6)) for h in range(4)}},
                mlp={b: list(range(0, 256, 2)) for b in range(3)}, embed=list(range(0, 64, 8)))
    comp = copy.deepcopy(m)
    apply_plan(comp, plan, moments=compensate.collect(comp, xs, consumers(comp, plan)))
    rec = copy.deepcopy(comp)
    kept = [c for c in range(64) if c not in plan.embed]
    out = reconstruct(rec, m, xs, kept)
    with torch.no_grad():
        loss_comp = float(d.loss(comp(held), t_held).mean())
        loss_rec = float(d.loss(rec(held), t_held).mean())
    assert len(out["stream_error"]) == 3 and all(0 <= e < 1 for e in out["stream_error"])
    assert isinstance(rec.norm, WidthRestore) and rec(held).shape == t_held.shape
    assert loss_rec < 0.8 * loss_comp  # fitted to the teacher's stream, on images the fit never saw
