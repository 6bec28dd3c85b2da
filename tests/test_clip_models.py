"""CLIP models in the canonical view (compress.models.clip).

open_clip ViT-B-32, the TinyCLIP configs and the small Hugging Face CLIPModel are randomly initialised: these
are shape / equivalence tests, no accuracy claim. The MiniLM text tower has its real pretrained weights."""
from __future__ import annotations

import json

import pytest
import torch

from compress.models import clip

pytestmark = pytest.mark.timeout(600)

TEXTS = ["a photo of a cat.", "a blurry photo of the big dump truck.", "a diagram"]


def _tiny_clip(text: str = "open_clip", seed: int = 0) -> clip.CLIPModel:
    """A small CLIP: a 32-pixel canonical ViT tower, open_clip-style or MiniLM text tower (random init)."""
    from compress.models.vit import ViTConfig

    vc = ViTConfig.uniform(32, 2, 2, img_size=32, patch_size=8, norm_pre=True, act="quick_gelu",
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), name="tiny-clip")
    spec = {"kind": "open_clip", "width": 32,
            "config": {"embed_dim": 24, "quick_gelu": True,
                       "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}}
    torch.manual_seed(seed)
    return clip.CLIPModel(clip.CLIPConfig(vc, 24, spec, "token", 2.0, "tiny-clip")).eval()


def test_open_clip_vit_b32_matches_open_clip():
    import open_clip

    torch.manual_seed(0)
    ref = clip.open_clip_module("ViT-B-32")
    m = clip.from_open_clip("ViT-B-32", module=ref)
    x = torch.randn(2, 3, 224, 224)
    tok = open_clip.get_tokenizer("ViT-B-32")(TEXTS)
    with torch.inference_mode():
        torch.testing.assert_close(m.encode_image(x), ref.encode_image(x, normalize=True), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(m.encode_text(TEXTS), ref.encode_text(tok, normalize=True), atol=2e-5, rtol=1e-4)
        li, lt = m.logits(x, TEXTS)
        ri = ref(x, tok)[:2]  # (normalised image, text features)
        torch.testing.assert_close(li, ref.logit_scale.exp() * ri[0] @ ri[1].T, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(lt, li.T)
        # the image tower the passes get: the projection is its head, its output the unnormalised embedding
        torch.testing.assert_close(m.image_tower()(x), ref.encode_image(x), atol=2e-5, rtol=1e-4)
    assert m.cfg.embed_dim == 512 and m.cfg.vision.embed_dim == 768 and m.cfg.text["width"] == 512


@pytest.mark.parametrize("arch,vision_m,text_m", [("TinyCLIP-ViT-8M-16-Text-3M", 8, None),
                                                  ("TinyCLIP-ViT-39M-16-Text-19M", 39, 19)])
def test_tinyclip_configs(arch, vision_m, text_m):
    """Random weights, shapes and sizes only. Every open_clip parameter is carried over (counts equal), and the
    image tower (with its projection) has the size TinyCLIP's name gives, within 12%; so has the text transformer
    without its token table for Text-19M (Text-3M's config gives 2.4M: its name rounds differently)."""
    from compress.models import load_model

    torch.manual_seed(0)
    ref = clip.open_clip_module(arch)
    m = clip.from_open_clip(arch)
    assert m.cfg.extra["randomly_initialized"]
    # the canonical patch embedding carries a (zero) bias open_clip's conv has not
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in ref.parameters()) + m.cfg.vision.embed_dim
    n_img = sum(p.numel() for p in m.visual.parameters()) + m.visual_projection.weight.numel()
    n_txt = sum(p.numel() for n, p in m.text.named_parameters() if "token_embedding" not in n)
    assert abs(n_img / 1e6 - vision_m) / vision_m < 0.12, n_img
    if text_m:
        assert abs(n_txt / 1e6 - text_m) / text_m < 0.12, n_txt
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert m.encode_image(x).shape == (1, 512) and m.encode_text(TEXTS).shape == (3, 512)
    vit = load_model(f"open_clip:{arch}").model  # the recipe path: the image tower with its projection as head
    assert vit.cfg.num_classes == 512 and vit.cfg.patch_size == 16 and vit.cfg.act == "quick_gelu"
    assert sum(p.numel() for p in vit.parameters()) == n_img


def test_hf_clip_folder_matches_transformers(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "max_position_embeddings": 77},
                     vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                    "num_attention_heads": 4, "image_size": 64, "patch_size": 16},
                     projection_dim=32)
    torch.manual_seed(0)
    ref = CLIPModel(cfg).eval()
    ref.save_pretrained(tmp_path / "hf")
    m = clip.from_hf_dir(tmp_path / "hf")
    x = torch.randn(2, 3, 64, 64)
    tok = m.tokenize(TEXTS)
    with torch.inference_mode():
        def feats(out):  # transformers 5 returns a model output, earlier versions the tensor
            return out if torch.is_tensor(out) else out.pooler_output
        ri = feats(ref.get_image_features(pixel_values=x))
        rt = feats(ref.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]))
        torch.testing.assert_close(m.encode_image(x, normalize=False), ri, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m.encode_text(TEXTS, normalize=False), rt, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m.logit_scale.exp(), ref.logit_scale.exp())
        from compress.models import (
            load_model,  # the existing HF path hands the same image tower to the passes
        )

        torch.testing.assert_close(load_model(str(tmp_path / "hf")).model(x), ri, atol=1e-5, rtol=1e-4)
    from compress.errors import UserError

    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "hidden_size": 8}))
    with pytest.raises(UserError, match="not a Hugging Face CLIPModel"):
        clip.from_hf_dir(tmp_path / "v")


def test_minilm_text_tower_is_the_pretrained_sentence_encoder():
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    spec, state = clip.minilm_text()
    d = clip.minilm_dir()
    tower = clip.build_text(spec).eval()
    tower.load_state_dict({k[len("text."):]: v for k, v in state.items()})
    ref = BertModel(BertConfig.from_json_file(str(d / "config.json")), add_pooling_layer=False).eval()
    ref.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
    tok = tower.tokenize(TEXTS)
    assert tok["input_ids"][0, 0] == 101 and tok["attention_mask"][0].sum() < tok["attention_mask"][1].sum()
    with torch.inference_mode():
        got = tower(tok["input_ids"], tok["attention_mask"])
        h = ref(**tok).last_hidden_state
        m = tok["attention_mask"].unsqueeze(-1).float()
        torch.testing.assert_close(got, (h * m).sum(1) / m.sum(1), atol=1e-5, rtol=1e-5)
        # real sentence embeddings: a paraphrase is nearer than an unrelated caption
        e = torch.nn.functional.normalize(tower(**tower.tokenize(["a photo of a cat.", "a picture of a kitten.",
                                                                  "a red truck on the highway."])), dim=1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2


def test_clip_folder_roundtrip_and_image_tower_loader(tmp_path):
    from compress.errors import UserError
    from compress.models import load_model

    m = _tiny_clip()
    clip.save_dir(m, tmp_path / "c")
    assert clip.is_clip_dir(tmp_path / "c")
    back = clip.load_dir(tmp_path / "c")
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(back.encode_image(x), m.encode_image(x))
        torch.testing.assert_close(back.encode_text(TEXTS), m.encode_text(TEXTS))
        vit = load_model(str(tmp_path / "c")).model  # a recipe's `model:` naming the folder gets the image tower
        torch.testing.assert_close(vit(x), m.encode_image(x, normalize=False))
        with torch.no_grad():  # a changed tower goes back in: the inverse of image_tower()
            vit.head.weight.mul_(2.0)
        back.set_image_tower(vit)
        torch.testing.assert_close(back.encode_image(x, normalize=False), 2 * m.encode_image(x, normalize=False))
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["clip"]["text"]["kind"] = "gpt"
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="unknown text tower kind"):
        clip.load_dir(tmp_path / "c")
    with pytest.raises(UserError, match="open_clip has no model"):
        clip.from_open_clip("ViT-Nope-1")


def test_quantize_clip_image_tower_end_to_end(tmp_path, image_folder):
    """recipes/w8a8-vit.yaml on a small random CLIP's image tower (a vitforge CLIP folder), tiny counts."""
    from compress.cli import main

    clip.save_dir(_tiny_clip(), tmp_path / "clip")
    out = tmp_path / "run"
    rc = main(["--recipe", "recipes/w8a8-vit.yaml", "--model", str(tmp_path / "clip"), "--data", str(image_folder),
               "--out", str(out), "--quiet", "--set", "data.calibration.count=4", "--set", "evaluation.probe_train=12",
               "--set", "evaluation.test=12", "--set", "data.batch_size=4", "--set", "export.verify.images=2"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    blob = json.dumps(report)
    assert "quantize" in blob
    import onnx

    ops = {n.op_type for f in (out / "artifacts").rglob("*.onnx") for n in onnx.load(str(f)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # the CLIP image tower was really quantized
