"""Asymmetric calibration (GPTAQ) and bias correction: the least-squares target, the mean shift, the float stages."""
from __future__ import annotations

import copy
import types

import torch

from compress.models import build
from compress.passes.quantize import ptq
from compress.passes.quantize.asymmetric import asymmetric_targets
from compress.passes.quantize.config import QuantizeConfig
from conftest import tiny_config


def _data(k=48, n=3000, noise=0.3):
    torch.manual_seed(0)
    x_fp = torch.randn(6, n // 6, k) * torch.linspace(0.2, 3, k)
    x_q = x_fp + noise * torch.randn_like(x_fp) + 0.1  # the quantized model's input: noisy and shifted
    return x_q, x_fp


def test_target_is_the_least_squares_optimum_of_the_asymmetric_objective():
    x_q, x_fp = _data()
    lin = torch.nn.Linear(x_q.shape[-1], 20)
    w = lin.weight.detach().clone()
    Xq, Xf = x_q.reshape(-1, x_q.shape[-1]), x_fp.reshape(-1, x_fp.shape[-1])
    h = (Xq.T @ Xq).double() / len(Xq)
    asymmetric_targets([lin], x_q, x_fp, None, h, types.SimpleNamespace(asymmetric=True, bias_correction=False,
                                                                         damp=1e-9))
    best = torch.linalg.lstsq(Xq.double(), (Xf @ w.T).double()).solution.T
    assert torch.allclose(lin.weight.double(), best, atol=1e-4)

    def loss(v):
        return ((Xq @ v.T - Xf @ w.T) ** 2).mean().item()

    assert loss(lin.weight.detach()) < 0.9 * loss(w)  # the copied upstream error is partly undone


def test_bias_correction_removes_the_mean_output_error():
    x_q, x_fp = _data()
    lin = torch.nn.Linear(x_q.shape[-1], 20)
    w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    Xq, Xf = x_q.reshape(-1, x_q.shape[-1]), x_fp.reshape(-1, x_fp.shape[-1])
    h = (Xq.T @ Xq).double() / len(Xq)
    t = asymmetric_targets([lin], x_q, x_fp, None, h, types.SimpleNamespace(asymmetric=False, bias_correction=True,
                                                                            damp=0.01))
    assert torch.equal(lin.weight, w)  # bias correction alone leaves the weight to GPTQ
    with torch.no_grad():
        lin.weight.copy_(torch.round(w * 8) / 8)  # a rounding, as GPTQ's
    before = (lin(Xq) - (Xf @ w.T + b)).mean(0).abs().max().item()
    t.correct_bias([lin])
    after = (lin(Xq) - (Xf @ w.T + b)).mean(0).abs().max().item()
    assert before > 1e-2 and after < 1e-4


def test_float_stages_are_the_blocks_own_values():
    torch.manual_seed(0)
    blk = build(tiny_config(embed_dim=32, depth=1)).blocks[0].eval()
    x = torch.randn(10, 17, 32)
    n1, z, u, a, y = list(ptq.float_stages(blk, x))
    with torch.no_grad():
        assert torch.allclose(n1, blk.norm1(x)) and torch.allclose(y, blk(x), atol=1e-6)
        h = x + blk.ls1(blk.attn.proj(z))
        assert torch.allclose(blk.attn.proj(z), blk.attn(blk.norm1(x)), atol=1e-6)
        assert torch.allclose(u, blk.norm2(h)) and torch.allclose(a, blk.mlp.act(blk.mlp.fc1(u)))


def test_the_pass_uses_the_float_model_only_when_asked():
    torch.manual_seed(0)
    base = build(tiny_config(embed_dim=64, depth=2, num_heads=2)).eval()
    x = torch.randn(16, 3, 32, 32)
    outs = []
    for asym, with_ref in ((False, False), (False, True), (True, True)):
        cfg = QuantizeConfig.model_validate({"weights": {"bits": 4, "asymmetric": asym, "bias_correction": asym}})
        m = copy.deepcopy(base)
        ptq.reparameterize_model(m, x, cfg)
        ptq.quantize(m, cfg, x, reference=copy.deepcopy(m).eval() if with_ref else None)
        with torch.no_grad():
            outs.append(m(x))
    assert torch.equal(outs[0], outs[1])  # off: the float model changes nothing
    assert not torch.equal(outs[0], outs[2])
