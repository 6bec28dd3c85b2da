"""The RepQ-ViT port (benchmarks/repq_vit_port.py): exact surgery and reparameterization, quantizer codes."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from compress.models import build
from compress.models.vit import ViTConfig

_spec = importlib.util.spec_from_file_location(
    "repq_vit_port", Path(__file__).resolve().parents[1] / "benchmarks" / "repq_vit_port.py")
repq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repq)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    cfg = ViTConfig.uniform(32, 2, 2, img_size=32, patch_size=8, layer_scale=True, global_pool="none")
    model = build(cfg)
    with torch.no_grad():  # non-trivial LayerNorm affines and LayerScale, as in DINOv2
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.2, 3.0)
                m.bias.normal_(0, 0.5)
        for blk in model.blocks:
            blk.ls1.gamma.uniform_(0.1, 1.0)
            blk.ls2.gamma.uniform_(0.1, 1.0)
    return model.eval()


def test_surgery_and_reparam_are_exact_in_float(tiny):
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = tiny(x)
        q = repq.quant_model(tiny, 4, 4)
        assert torch.allclose(q(x), ref, atol=1e-5)  # quantizers off: fused qkv etc. is the same model
        repq.set_quant_state(q, True, True)
        q(x)  # calibrate (per-channel qkv/fc1 input ranges)
        before = q.blocks[0].attn.qkv.input_quantizer.delta.clone()
        assert before.numel() == 32 and before.max() / before.min() > 1.5
        repq.scale_reparam(q)
        repq.set_quant_state(q, False, False)
        assert torch.allclose(q(x), ref, atol=1e-4)  # folded into LayerNorm + consumer: exact in float
        iq = q.blocks[0].attn.qkv.input_quantizer
        assert iq.delta.numel() == 1 and not iq.channel_wise
        assert torch.isclose(iq.delta, before.mean())


def test_reparam_aligns_channel_ranges(tiny):
    """After reparameterization the one per-tensor range of the new LN output, mapped back through the fold,
    is each channel's own calibrated range: y' = y / r - b, [lo', hi'] -> [(lo' + b) r, (hi' + b) r]."""
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        q = repq.quant_model(tiny, 4, 4)
        repq.set_quant_state(q, True, True)
        q(x)
        blk = q.blocks[1]
        iq = blk.attn.qkv.input_quantizer
        d0, z0 = iq.delta.reshape(-1).clone(), iq.zero_point.reshape(-1).clone()
        g0, b0 = blk.norm1.weight.clone(), blk.norm1.bias.clone()
        repq.scale_reparam(q)
        r = g0 / blk.norm1.weight
        b = b0 / r - blk.norm1.bias
        assert torch.allclose(r, d0 / d0.mean())
        lo, hi = -iq.zero_point * iq.delta, (15 - iq.zero_point) * iq.delta
        assert torch.allclose((lo + b) * r, -z0 * d0, atol=1e-5)
        assert torch.allclose((hi + b) * r, (15 - z0) * d0, atol=1e-5)


def test_log_sqrt2_codes():
    s = math.sqrt(2)
    x = torch.tensor([1.5, 1.0, 1 / s, 0.6, 0.5, 1 / (2 * s), 0.25, 2**-3.5, 2**-4, 1e-6, 0.0])
    want = torch.tensor([1.0, 1.0, 1 / s, 1 / s, 0.5, 1 / (2 * s), 0.25, 2**-3.5, 0.0, 0.0, 0.0])
    assert torch.allclose(repq.log_sqrt2_quantize(x, 1.0, 8), want, atol=1e-7)  # 3 bits: codes 0..7
    assert torch.allclose(repq.log_sqrt2_quantize(x * 0.5, 0.5, 8), want * 0.5, atol=1e-7)


def test_uniform_channel_wise_weights():
    torch.manual_seed(0)
    w = torch.randn(6, 50) * torch.tensor([0.01, 0.1, 1, 3, 10, 100])[:, None]
    uq = repq.UniformQuantizer(4, channel_wise=True)
    wq = uq(w)
    assert uq.delta.shape == (6, 1)
    for c in range(6):  # per channel: at most 16 levels, error within half a step inside the range
        assert len(torch.unique(wq[c])) <= 16
        assert (w[c] - wq[c]).abs().max() <= uq.delta[c, 0] * 0.5 + 1e-6
