"""Quantizers, calibration, reparameterization and GPTQ: each checked against a number it must meet."""
from __future__ import annotations

import copy

import pytest
import torch

from compress.models import build
from compress.passes.quantize import ptq
from compress.passes.quantize.calibrate import channel_ranges, fit_activation, fit_log, fit_weight
from compress.passes.quantize.config import QuantizeConfig
from compress.passes.quantize.gptq import gptq, output_error
from compress.passes.quantize.modules import QuantLinear, plan_of, quant_state, quantized_modules, wrap
from compress.passes.quantize.quantizers import LogQuantizer, UniformQuantizer, weight_shape
from conftest import tiny_config

pytestmark = pytest.mark.timeout(120)


def test_uniform_quantizer_grid_and_error_bound():
    x = torch.linspace(-3, 5, 1001)
    for sym in (True, False):
        q = UniformQuantizer(4, symmetric=sym)
        q.set_range(x.min(), x.max())
        y = q(x)
        levels = torch.unique(y)
        assert len(levels) <= 16
        inside = (x >= y.min()) & (x <= y.max())
        assert (y - x)[inside].abs().max() <= q.scale / 2 + 1e-6  # round to nearest within the range
        assert torch.equal(q(y), y)  # idempotent: grid points stay put
    q = UniformQuantizer(4, symmetric=True)
    q.set_range(torch.tensor(-3.0), torch.tensor(5.0))
    assert q.zero_point == 0 and torch.isclose(q.scale, torch.tensor(5.0 / 7))


def test_group_and_channel_scales_follow_their_rows():
    torch.manual_seed(0)
    w = torch.randn(8, 64) * torch.logspace(-2, 1, 8)[:, None]  # rows 1000x apart
    shape, group = weight_shape(w, "group", 16)
    assert shape == [8, 4, 1] and group == 16
    for gran in ("channel", "group"):
        shape, group = weight_shape(w, gran, 16)
        q = UniformQuantizer(4, True, shape, group)
        fit_weight(q, w, "minmax")
        rel = ((q(w) - w).pow(2).sum(1) / w.pow(2).sum(1)).max()
        assert rel < 0.03  # every row keeps ~4-bit fidelity (Gaussian RTN: ~0.02) despite the 1000x spread
    qt = UniformQuantizer(4, True, [])
    fit_weight(qt, w, "minmax")
    assert ((qt(w) - w).pow(2).sum(1) / w.pow(2).sum(1))[0] > 0.5  # one scale for all: small rows vanish


def test_mse_calibration_beats_minmax_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.randn(200_000)
    x[:20] *= 16  # a few outliers, as after DINOv2's GELUs
    errs = {}
    for m in ("minmax", "percentile", "mse"):
        errs[m] = fit_activation(UniformQuantizer(4, True), x, m, percentile=99.9)
    assert errs["mse"] < 0.6 * errs["minmax"]
    assert errs["mse"] <= errs["percentile"] * 1.01


def test_sulq_beats_log2_and_uniform_on_attention_probabilities():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(64, 197) * 3, -1)
    u = UniformQuantizer(4, symmetric=False)
    e_u = fit_activation(u, p, "mse")
    e_log2 = fit_log(LogQuantizer(4, "log2"), p)
    e_sulq = fit_log(s := LogQuantizer(4, "sulq"), p)
    assert e_sulq < e_log2 and e_sulq < e_u
    assert s(p).min() >= -float(s.eta) and s(p).max() <= 1 + 1e-6  # the lowest level is 2^lo - eta


def test_reparameterization_is_exact_and_flattens_channels(tiny_model):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():  # give post-LN channels a 50x spread
        for blk in tiny_model.blocks:
            blk.norm1.weight.mul_(torch.logspace(0, 1.7, 32)[torch.randperm(32)])
    m = copy.deepcopy(tiny_model)
    cfg = QuantizeConfig(attention={"quantize": True})
    stats = ptq.reparameterize_model(m, x, cfg)
    with torch.no_grad():
        assert torch.allclose(m(x), tiny_model(x), atol=1e-4, rtol=1e-4)
    spread = [s["spread_before"] for s in stats["post_layernorm"]]
    assert max(spread) > 5 and max(s["spread_after"] for s in stats["post_layernorm"]) < 1.5
    # after reparameterization one per-tensor grid fits the LayerNorm output
    out = {}
    h = m.blocks[0].norm1.register_forward_hook(lambda _m, _i, o: out.setdefault("y", o))
    with torch.no_grad():
        m(x)
    h.remove()
    lo, hi = channel_ranges(out["y"], "minmax")
    assert (hi - lo).max() / (hi - lo).min() < 3


def test_gptq_beats_rounding_to_nearest():
    torch.manual_seed(0)
    mix = torch.randn(48, 48)
    x = torch.randn(4096, 48) @ mix  # correlated inputs: where error feedback pays
    h = x.T @ x / len(x)
    w = torch.randn(32, 48)
    q = UniformQuantizer(3, True, [32, 1])
    fit_weight(q, w, "mse")
    rtn, opt = q(w), gptq(w, h.double(), q)
    assert torch.equal(q(opt), opt)  # on the grid: exports as integers
    assert output_error(w, opt, h.double()) < 0.7 * output_error(w, rtn, h.double())


def test_wrap_plan_roundtrip_and_state_dict(tiny_model):
    x = torch.randn(4, 3, 32, 32)
    cfg = QuantizeConfig(weights={"bits": 4}, activations={"bits": 6}, attention={"quantize": True})
    m = copy.deepcopy(tiny_model)
    ptq.quantize(m, cfg, x)
    plan = plan_of(m)
    assert len(plan) == 2 * (6 + 2) + 1  # 6 linears + 2 matmuls per block, the patch embedding
    assert plan["blocks.0.attn.av_matmul"]["a_quant"]["kind"] == "log"
    fresh = copy.deepcopy(tiny_model)
    wrap(fresh, plan)
    fresh.load_state_dict(m.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), m.eval()(x))
    lin = m.blocks[1].mlp.fc1
    assert isinstance(lin, QuantLinear) and torch.equal(lin.weight_quant(lin.weight), lin.weight)
    with quant_state(m, inputs=False), torch.no_grad():
        y_w = m(x)
    with torch.no_grad():
        assert not torch.equal(y_w, m(x))  # activation quantizers really act
    assert all(hasattr(q, "quant_enabled") for mod in quantized_modules(m).values() for q in mod.children())


def test_w8a8_tiny_model_stays_close_to_float(tiny_model):
    torch.manual_seed(1)
    x = torch.randn(16, 3, 32, 32)
    m = copy.deepcopy(tiny_model)
    cfg = QuantizeConfig()
    ptq.reparameterize_model(m, x, cfg)
    out = ptq.quantize(m, cfg, x)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(m(x).flatten(), tiny_model(x).flatten(), dim=0)
    assert cos > 0.999
    assert max(v for v in out["layer_error"].values() if v is not None) < 1e-3


def test_random_tiny_model_build():  # the fixture shape the other tests rely on
    m = build(tiny_config())
    assert len(ptq.block_linears(m)) == 12
