"""PyTorch -> ONNX, deterministic, written atomically.

Images [N,3,H,W] map to the model's output: final-LayerNorm tokens [N,T,D] for encoders
(``global_pool: none``), logits/embeddings [N,C] otherwise. Node names follow module paths
(``/blocks.3/attn/q/MatMul``), which graph passes (Q/DQ insertion) rely on.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import torch

from ..utils.io import atomic_path


def output_name(model) -> str:
    return "tokens" if model.cfg.global_pool == "none" else "logits"


def export_onnx(model: torch.nn.Module, dest: str | Path, opset: int = 17, dynamic_batch: bool = True) -> onnx.ModelProto:
    """Export ``model`` (eval mode, float) to ``dest``; return the loaded ModelProto."""
    cfg = model.cfg
    x = torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size)
    out = output_name(model)
    axes = {"images": {0: "batch"}, out: {0: "batch"}} if dynamic_batch else None
    model = model.eval()
    with atomic_path(dest) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=[out], dynamic_axes=axes, do_constant_folding=True)
        proto = onnx.load(str(tmp))
        proto.producer_name, proto.producer_version = "vitforge", _version()
        proto.doc_string = f"{cfg.name}: images [N,3,{cfg.img_size},{cfg.img_size}] -> {out}"
        onnx.save(proto, str(tmp))
    return proto


def _version() -> str:
    from .. import __version__

    return __version__
