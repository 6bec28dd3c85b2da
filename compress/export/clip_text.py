"""A CLIP model's text tower as ONNX: token ids and attention mask [N, L] (no mask input for towers that read
none, as open_clip's) -> the text embedding before
normalisation [N, E] (the text transformer's pool, then the text projection), batch and length dynamic. Verified in
ONNX Runtime against the PyTorch tower on captions of several lengths (CLIP prompts), so a deployment scores
zero-shot with both towers from their artifacts."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .. import ui
from ..runtime import ort_session
from ..utils.io import atomic_path
from .verify import check_onnx, verify

CAPTIONS = ("a photo of a dog.", "a blurry photo of the big red car.", "an airplane.",
            "a black and white photo of a small cat sitting on a wooden table.", "ship", "a low contrast photo of a frog.")


class TextEncoder(nn.Module):
    """(input_ids, attention_mask) -> text embedding before normalisation, as ``CLIPModel.encode_text``."""

    def __init__(self, clip):
        super().__init__()
        self.text, self.proj = clip.text, clip.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.text(input_ids, attention_mask))


class _Ort:
    kind = "onnxruntime"

    def __init__(self, path: Path):
        self.path, self.session = path, ort_session(path, 1)
        self.names = [i.name for i in self.session.get_inputs()]  # open_clip's tower reads no attention mask

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": tok[:, 0].numpy().astype(np.int64), "attention_mask": tok[:, 1].numpy().astype(np.int64)}
        return torch.from_numpy(self.session.run(None, {k: feeds[k] for k in self.names})[0])


def export_text_tower(clip, dest: Path, opset: int = 17, max_abs: float = 1e-3, min_cosine: float = 0.9999,
                      captions=CAPTIONS):
    """Write ``dest`` (atomically) and verify it; returns the ``Verification``."""
    enc = TextEncoder(clip).eval()
    tok = clip.tokenize(list(captions))
    ids, mask = tok["input_ids"].long(), tok.get("attention_mask", torch.ones_like(tok["input_ids"])).long()
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
            "text_embeddings": {0: "batch"}}
    with atomic_path(dest) as tmp:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(enc, (ids[:2], mask[:2]), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input_ids", "attention_mask"], output_names=["text_embeddings"],
                              dynamic_axes=axes, do_constant_folding=True)
        proto = onnx.load(str(tmp))
        proto.producer_name, proto.doc_string = "vitforge", "CLIP text tower: (input_ids, attention_mask) [N,L] -> [N,E]"
        onnx.save(proto, str(tmp))
        check_onnx(tmp)
        both = torch.stack([ids, mask], 1)  # all captions, padded to the longest (not the export's length)
        v = verify(dest, _Ort(tmp), lambda t: enc(t[:, 0], t[:, 1]), both, max_abs, min_cosine,
                   against="the PyTorch text tower")
    ui.info(f"  verified {dest.name} [onnxruntime] vs the PyTorch text tower on {len(captions)} captions: "
            f"max|diff| {v.max_abs:.3g} (limit {max_abs:g}), cosine {v.cosine:.6f} (min {min_cosine:g}): ok")
    return v


__all__ = ["CAPTIONS", "TextEncoder", "export_text_tower"]
