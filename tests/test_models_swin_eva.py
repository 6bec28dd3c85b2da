"""Swin and EVA importers reproduce timm; Swin checkpoints, ONNX export and inspect work end to end."""
from __future__ import annotations

import json

import pytest
import torch

from compress._compat import import_timm
from compress.errors import UserError
from compress.models import build, config_from_dict, load_model, timm_vit
from compress.models.swin import SwinConfig, SwinTransformer, shift_mask
from compress.models.vit import Attention, Mlp, Softmax
from compress.pipeline.checkpoint import is_checkpoint, load_checkpoint

pytestmark = pytest.mark.timeout(120)

SWIN = "swin_tiny_patch4_window7_224"
# small Swins: 64px/window 4 (shifted windows in stages 0-1, windows clamped to the grid later);
# 56px/window 3 (grid 14 -> 7 -> 4 -> 2: padded shifted windows and an odd-grid patch merge)
SWIN_SMALL = [dict(img_size=64, window_size=4, embed_dim=32, num_heads=(2, 2, 4, 4), depths=(2,) * 4, num_classes=10),
              dict(img_size=56, window_size=3, embed_dim=16, num_heads=(1, 2, 2, 2), depths=(2,) * 4, num_classes=0)]


def _perturb(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02)


def _timm_swin(**kw):
    m = import_timm().create_model(SWIN, pretrained=False, **kw).eval()
    _perturb(m)
    return m


def _reference_out(m, x, num_classes):
    return m(x) if num_classes else m.forward_features(x).flatten(1, 2)


@pytest.mark.parametrize("kw", SWIN_SMALL, ids=["64px-w4", "56px-w3-padded"])
def test_swin_conversion_matches_timm(kw):
    m = _timm_swin(**kw)
    cfg, sd = timm_vit.from_module(m, SWIN)
    ours = build(cfg, sd)
    assert isinstance(ours, SwinTransformer) and cfg.num_prefix_tokens == 0
    shifts = [blk.shift for blk in ours.blocks]
    assert sum(s > 0 for s in shifts) >= 2, shifts  # shifted-window blocks are exercised
    assert shifts == [tb.shift_size[0] for st in m.layers for tb in st.blocks]
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        want, got = _reference_out(m, x, cfg.num_classes), ours(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 2e-5
    # the shift mask is what makes shifted blocks exact: without it the output moves
    for blk in ours.blocks:
        blk.attn.attn_mask = None
    with torch.no_grad():
        assert (ours(x) - want).abs().max().item() > 1e-4


def test_swin_blocks_use_the_canonical_vocabulary():
    cfg = SwinConfig.uniform(16, (2, 2), (2, 4), window_size=4, img_size=32, patch_size=4, num_classes=3)
    model = build(cfg)
    assert len(model.blocks) == 4 and len(model.merges) == 1
    for blk in model.blocks:
        assert isinstance(blk.attn, Attention) and isinstance(blk.attn.softmax, Softmax) and isinstance(blk.mlp, Mlp)
        assert all(isinstance(getattr(blk.attn, n), torch.nn.Linear) for n in ("q", "k", "v", "proj"))
    assert [b.norm1.normalized_shape[0] for b in model.blocks] == [16, 16, 32, 32]
    # 8x8 grid, window 4, shift 2: 4 windows; the top-left window never crosses a seam, the others do
    mask = shift_mask(8, 4, 2)
    assert mask.shape == (4, 16, 16) and mask[0].abs().max() == 0 and (mask[1:] == -100).any()
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(UserError, match="unknown model family 'convnext'"):
        config_from_dict(cfg.to_dict() | {"family": "convnext"})


def _eva(**kw):
    from timm.models.eva import Eva

    import_timm()
    torch.manual_seed(0)
    m = Eva(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.5, **kw).eval()
    _perturb(m)  # q_bias / v_bias included; timm's k bias is a zero buffer
    return m


@pytest.mark.parametrize("kw", [
    dict(init_values=0.1, num_classes=10, global_pool="avg"),  # fused qkv, LayerScale, fc_norm
    dict(num_classes=7, global_pool="token", qkv_fused=False, num_reg_tokens=2),
    dict(num_classes=5, global_pool="token", no_embed_class=True, num_reg_tokens=1, init_values=0.5,
         attn_only_layer_scale=True, use_pre_transformer_norm=True),
    dict(num_classes=0, global_pool="avg", qkv_bias=False),
], ids=["avg-ls", "token-unfused-reg", "noembedcls-prenorm", "encoder"])
def test_eva_conversion_matches_timm(kw):
    m = _eva(**kw)
    cfg, sd = timm_vit.from_module(m, "eva")
    ours = build(cfg, sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = m(x) if cfg.num_classes else m.forward_features(x)
        got = ours(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 2e-5


def test_eva02_is_refused_with_what_is_supported():
    with pytest.raises(UserError, match=r"RoPE.*supported timm Eva variants: EVA-01"):
        load_model("timm:eva02_tiny_patch14_224")
    with pytest.raises(UserError, match=r"sub-LN in attention.*EVA-01"):
        timm_vit.from_module(_eva(num_classes=0, scale_attn_inner=True), "eva-subln")
    with pytest.raises(UserError, match="SwiGLU"):
        timm_vit.from_module(_eva(num_classes=0, swiglu_mlp=True), "eva-swiglu")


def test_swin_checkpoint_roundtrip(tmp_path):
    from compress.pipeline.state import ModelState

    m = _timm_swin(**SWIN_SMALL[0])
    cfg, sd = timm_vit.from_module(m, SWIN)
    state = ModelState(build(cfg, sd), f"timm:{SWIN}")
    state.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["vit"]["family"] == "swin" and is_checkpoint(tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded.model, SwinTransformer) and loaded.cfg == cfg
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), state.model(x))


def test_vit_checkpoint_without_family_still_loads(tmp_path, tiny_model):
    from compress.pipeline.state import ModelState

    ModelState(tiny_model, "tiny").save(tmp_path / "vit")
    assert "family" not in json.loads((tmp_path / "vit" / "config.json").read_text())["vit"]
    loaded, _ = load_checkpoint(tmp_path / "vit")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), tiny_model(x))


def test_swin_onnx_export_verifies(tmp_path):
    from compress.export.onnx_export import export_onnx
    from compress.export.verify import check_onnx, verify
    from compress.runtime import OrtRunner

    m = _timm_swin(**SWIN_SMALL[1])  # padded shifted windows, odd merge, token output
    cfg, sd = timm_vit.from_module(m, SWIN)
    model = build(cfg, sd)
    path = tmp_path / "swin.onnx"
    export_onnx(model, path)
    check_onnx(path)
    images = torch.randn(3, 3, cfg.img_size, cfg.img_size)  # batch 3: the dynamic batch axis is used
    v = verify(path, OrtRunner(path), model, images, max_abs=1e-4, min_cosine=0.99999)
    assert v.passed and v.max_abs < 1e-4 and v.images == 3


def test_pooled_uses_the_mean_token_without_prefix_tokens():
    from compress.models.pooling import pooled

    t = torch.randn(2, 5, 4)
    assert torch.equal(pooled(t, 0), t.mean(1))
    assert torch.equal(pooled(t, 1), torch.cat([t[:, 0], t[:, 1:].mean(1)], dim=1))


def test_inspect_cli_on_swin(capsys):
    from compress.cli import main

    assert main(["inspect", f"timm:{SWIN}", "--images", "0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "swin" and info["depth"] == 12 and info["tokens"] == 49
    assert [b["dim"] for b in info["blocks"]] == [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
    assert [b["heads"] for b in info["blocks"]] == [3] * 2 + [6] * 2 + [12] * 6 + [24] * 2
    assert 8.0 < info["gflops"] < 10.0  # Swin-T: 4.5 GMACs
