"""The lean quantize pass computes what the plain one does: staged block calibration, GPTQ of several
weights against one factorisation, the symmetric Gram product, chunked extremes and selections, and the
symmetric weight-range search give the same values as the straightforward computations."""
from __future__ import annotations

import copy

import pytest
import torch

from compress.models import build
from compress.passes.quantize import calibrate, ptq
from compress.passes.quantize.config import QuantizeConfig
from compress.passes.quantize.gptq import factor, gptq_many, hessian_update
from compress.passes.quantize.quantizers import UniformQuantizer, weight_shape
from conftest import tiny_config


@pytest.mark.parametrize("attention", [False, True])
def test_staged_calibration_equals_the_block_by_block_captures(monkeypatch, attention):
    torch.manual_seed(0)
    base = build(tiny_config(embed_dim=64, depth=2, num_heads=2)).eval()
    x = torch.randn(20, 3, 32, 32)
    cfg = QuantizeConfig.model_validate({"weights": {"bits": 4, "granularity": "group", "group_size": 32},
                                         "attention": {"quantize": attention}})
    results = []
    for staged in (True, False):
        if not staged:
            monkeypatch.setattr(ptq, "_canonical", lambda blk: False)
        m = copy.deepcopy(base)
        ptq.reparameterize_model(m, x, cfg)
        bits = {n: 3 + j % 2 for j, n in enumerate(ptq.block_linears(m))}
        rec = ptq.quantize(m, cfg, x, bits)
        results.append((m.state_dict(), m(x), rec["layer_error"]))
    (sd1, y1, e1), (sd2, y2, e2) = results
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert torch.equal(y1, y2) and e1 == e2


def _reference_gptq(w, h, q, damp=0.01, block=128):
    """GPTQ one weight at a time, column-major, as the pass did before (the reference)."""
    c, k = w.shape
    W, H = w.double().clone(), h.double().clone()
    S = q.scale.double().reshape(c, k // q.group, 1).expand(c, k // q.group, q.group).reshape(c, k)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True)
    W, H, S = W[:, perm], H[perm][:, perm], S[:, perm]
    H += torch.eye(k, dtype=H.dtype) * damp * torch.diag(H).mean()
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1, Hinv1, Err1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2], torch.zeros(c, i2 - i1, dtype=W.dtype)
        for i in range(i2 - i1):
            col, s = W1[:, i], S[:, i1 + i]
            qc = torch.clamp(torch.round(col / s), q.qmin, q.qmax) * s
            Q[:, i1 + i] = qc
            err = (col - qc) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    out = torch.empty_like(Q)
    out[:, perm] = Q
    return out.float()


def test_gptq_of_several_weights_and_widths_matches_one_at_a_time():
    torch.manual_seed(0)
    k = 192
    ws = [torch.randn(48, k) * 0.05, torch.randn(64, k) * 0.05, torch.randn(48, k) * 0.05]
    x = torch.randn(1024, k) * torch.rand(k) * 3
    x[:, 5] = 0  # a dead input channel
    h = hessian_update(None, x) / len(x)
    qs = []
    for w, bits in zip(ws, (3, 4, 8)):
        shape, group = weight_shape(w, "group", 32)
        q = UniformQuantizer(bits, True, shape, group)
        calibrate.fit_weight(q, w)
        qs.append(q)
    got = gptq_many(ws, factor(h), qs)
    for w, q, g in zip(ws, qs, got):
        ref = _reference_gptq(w, h, q)
        assert torch.equal(g, ref)
        assert torch.equal(q.fake(g), g)  # on the grid


def test_symmetric_gram_product_equals_the_full_one():
    torch.manual_seed(1)
    x = torch.randn(3, 100, 300)
    h = hessian_update(None, x)
    flat = x.reshape(-1, 300)
    assert torch.equal(h, h.T)
    torch.testing.assert_close(h, (flat.T.double() @ flat.double()), rtol=1e-5, atol=1e-3)
    h2 = hessian_update(hessian_update(None, x[:1]), x[1:])
    torch.testing.assert_close(h2, h, rtol=1e-5, atol=1e-3)


def test_chunked_extremes_and_selection_equal_topk_and_kthvalue():
    torch.manual_seed(2)
    flat = torch.randn(3 * (1 << 22) + 17) ** 3
    assert torch.equal(calibrate._extreme(flat, 256, True), flat.topk(256).values)
    assert torch.equal(calibrate._extreme(flat, 256, False), flat.topk(256, largest=False).values)
    rows = torch.randn(7, 5001)
    rows[:, :300] = 0.25  # ties
    for k in (1, 3, 200, 2500, 4800, 4999, 5001):
        assert torch.equal(calibrate._kth(rows, k), rows.kthvalue(k, 1).values), k


@pytest.mark.parametrize("gran,bits", [("group", 3), ("group", 4), ("channel", 8), ("tensor", 4)])
def test_symmetric_weight_search_equals_set_range_and_fake(gran, bits):
    torch.manual_seed(3)
    w = torch.randn(96, 128) * 0.05
    w[0, :32] = 0  # an all-zero group
    shape, group = weight_shape(w, gran, 32)
    fast = UniformQuantizer(bits, True, shape, group)
    calibrate.fit_weight(fast, w)
    # the search spelled out with the quantizer's own set_range and fake
    ref = UniformQuantizer(bits, True, shape, group)
    v = w.reshape(1, -1) if ref.per_tensor else (w.reshape(96, -1, 32) if group else w)
    lo, hi = v.amin(-1, keepdim=True), v.amax(-1, keepdim=True)
    best_err, best = torch.full(lo.shape, float("inf")), torch.ones(lo.shape)
    for a in torch.linspace(0.3, 1.0, 36).tolist():
        ref.set_range((lo * a).reshape(shape), (hi * a).reshape(shape))
        err = (ref.fake(v.reshape(w.shape)).reshape(v.shape) - v).pow(2).sum(-1, keepdim=True)
        best = torch.where(err < best_err, torch.full_like(best, a), best)
        best_err = torch.minimum(err, best_err)
    ref.set_range((lo * best).reshape(shape), (hi * best).reshape(shape))
    assert torch.equal(fast.scale, ref.scale)


def _reference_post_ln(model, images, cfg, max_rows):
    """Post-LN folding from one whole-model forward, every norm's rows held to the end (the reference)."""
    from compress.passes.quantize.reparam import reparameterize

    n = len(model.blocks)
    norms = [(b.norm1, [b.attn.q, b.attn.k, b.attn.v]) for b in model.blocks] + [(b.norm2, [b.mlp.fc1])
                                                                                  for b in model.blocks]
    per_batch = max(1, max_rows // max(1, len(images) // ptq.CHUNK + 1))
    g, rows = torch.Generator().manual_seed(0), {}

    def keep(i):
        def hook(_m, _i, out):
            flat = out.reshape(-1, out.shape[-1])
            rows.setdefault(i, []).append(flat[torch.randperm(flat.shape[0], generator=g)[:per_batch]].clone())
        return hook

    hooks = [m.register_forward_hook(keep(i)) for i, (m, _) in enumerate(norms)]
    with torch.no_grad():
        for x in images.split(ptq.CHUNK):
            model(x)
    for h in hooks:
        h.remove()
    for i, (norm, consumers) in enumerate(norms):
        lo, hi = calibrate.channel_ranges(torch.cat(rows[i]), cfg.reparam.clip, cfg.reparam.percentile)
        reparameterize(norm, consumers, lo, hi, cfg.reparam.migration)
    assert len(rows) == 2 * n


def test_streamed_post_ln_folding_equals_the_whole_model_forward():
    torch.manual_seed(4)
    base = build(tiny_config(embed_dim=64, depth=3, num_heads=2)).eval()
    x = torch.randn(37, 3, 32, 32)
    cfg = QuantizeConfig()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    _reference_post_ln(a, x, cfg, max_rows=300)
    ptq.reparameterize_post_ln(b, x, cfg, max_rows=300)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
