"""RepQ-ViT (Li et al., ICCV 2023) ported to the embedded DINOv2 ViT-S/14, scored on our CIFAR-10 probe protocol.

What is ported (official code github.com/zkkli/RepQ-ViT, ``classification/``), as fake quantization:

* ``quant/quantizer.py`` ``UniformQuantizer``: asymmetric uniform; range = the (1-p, p) quantiles with p in
  {0.999, 0.9999, 0.99999}, whichever gives the lowest MSE on the calibration tensor; ``channel_wise``
  does that search per output channel (weights) or per last-axis channel (3-D activations).
* ``quant/quantizer.py`` ``LogSqrt2Quantizer``: post-softmax log-sqrt(2) quantizer (level k = delta * 2^(-k/2),
  codes >= 2^bits -> 0), delta = the same percentile/MSE search. (The paper's log-sqrt(2) -> log2
  reparameterization is an integer-deployment identity; in fake quantization it is this quantizer.)
* ``quant/quant_model.py`` ``quant_model``: every Conv2d, Linear and attention MatMul is quantized.
  Patch-embed conv: input 8 bit, weight W bit per channel. qkv and fc1: input A bit *per channel* (then
  reparameterized), weight W bit per channel. proj, fc2: input A bit per tensor, weight W bit per channel.
  q@k^T: both operands A bit per tensor; attn@v: attn log-sqrt(2) A bit, v uniform A bit per tensor.
  Full precision, as in RepQ-ViT: LayerNorms, softmax, GELU, residual adds, position embedding, cls token.
* ``test_quant.py``: one batch of 32 calibration images through the model with every quantizer on (each
  quantizer initialises on first use, so later layers calibrate on already-quantized inputs); then the scale
  reparameterization of norm1->qkv and norm2->fc1 (per-channel delta/zero point of the consumer's input
  quantizer folded into the LayerNorm affine and the consumer's weight/bias; the input quantizer becomes
  per tensor with delta = mean(delta_c), zero point = mean(zp_c), unrounded as in their code); then the
  qkv/fc1 weight quantizers are re-initialised on the reparameterized weights by a second calibration pass
  (all other quantizers keep their first-pass ranges, as in their code).

Adapted for this model:

* Our attention has separate q/k/v linears; they are fused into one qkv linear (concatenated rows, exact),
  so q, k and v share one input quantizer as in timm's qkv. Per-output-channel weight quantization makes the
  fusion exact for the weights too. The softmax scale is applied after q@k^T as in their ``attention_forward``.
* DINOv2's LayerScale (ls1/ls2, after proj and fc2) has no counterpart in their timm models; it stays a
  float per-channel multiply on the residual branch (folding it into proj/fc2 rows would not change a
  per-output-channel weight quantizer).
* No classification head is quantized: the model outputs tokens and our protocol's linear probe (trained once
  on fp32 features, ``runs/quant-bench/probe.safetensors``) stays in float. RepQ-ViT also quantizes the
  ImageNet head (A bit input, W bit weight), so on that count this port is slightly kinder than the original.
* Calibration: 32 CIFAR-10 train images (``load_subset(..., 32, seed 0)``, class-balanced, our preprocessing)
  instead of 32 random ImageNet train images.
* Channel-wise range search is vectorised over channels (the same per-channel quantiles and MSE choice as their
  per-channel loop); quantiles use torch.quantile with their numpy fallback for tensors over its size limit.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/repq_vit_port.py --bits w4a4 w3a3 --test 2000 \\
        --out benchmarks/results/repq_vit.json
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

PCTS = (0.999, 0.9999, 0.99999)  # RepQ-ViT's percentile candidates


# -- quantizers (quant/quantizer.py) --------------------------------------------------------------------
def _quantile_rows(rows: torch.Tensor, qs: list[float]) -> torch.Tensor:
    """Per-row quantiles [len(qs), R] of a [R, M] tensor, one sort for all qs (same values as one call per q);
    numpy fallback where torch.quantile refuses (input too large), as RepQ-ViT does."""
    try:
        return torch.quantile(rows, torch.tensor(qs, dtype=rows.dtype), dim=1)
    except RuntimeError:
        pct = np.asarray(qs) * 100
        return torch.from_numpy(np.percentile(rows.cpu().numpy(), pct, axis=1)).to(rows.device, torch.float32)


def uniform_range_search(rows: torch.Tensor, n_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (delta, zero point): RepQ-ViT's ``init_quantization_scale(channel_wise=False)`` on each row."""
    levels = 2**n_bits
    best = torch.full((rows.shape[0],), 1e10, dtype=rows.dtype)
    delta, zp = torch.zeros_like(best), torch.zeros_like(best)
    qs = _quantile_rows(rows, list(PCTS) + [1.0 - p for p in PCTS])
    for i in range(len(PCTS)):
        hi, lo = qs[i], qs[len(PCTS) + i]
        d = (hi - lo) / (levels - 1)
        z = (-lo / d).round()
        xq = (torch.clamp(torch.round(rows / d[:, None]) + z[:, None], 0, levels - 1) - z[:, None]) * d[:, None]
        score = (rows - xq).pow(2).mean(1)
        better = score < best
        best, delta, zp = torch.where(better, score, best), torch.where(better, d, delta), torch.where(better, z, zp)
    return delta, zp


class UniformQuantizer(nn.Module):
    def __init__(self, n_bits: int, channel_wise: bool = False):
        super().__init__()
        assert 2 <= n_bits <= 8, "bitwidth not supported"
        self.n_bits, self.n_levels, self.channel_wise = n_bits, 2**n_bits, channel_wise
        self.delta = self.zero_point = None
        self.inited = False

    def init_quantization_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().float()
        if not self.channel_wise:
            d, z = uniform_range_search(x.reshape(1, -1), self.n_bits)
            return d[0], z[0]
        if x.dim() == 3:  # activations [B, N, C]: one range per channel C
            d, z = uniform_range_search(x.reshape(-1, x.shape[-1]).t().contiguous(), self.n_bits)
            return d.view(1, 1, -1), z.view(1, 1, -1)
        if x.dim() in (2, 4):  # weights: one range per output channel
            d, z = uniform_range_search(x.reshape(x.shape[0], -1), self.n_bits)
            shape = (-1,) + (1,) * (x.dim() - 1)
            return d.view(shape), z.view(shape)
        raise ValueError(f"channel-wise ranges of a {x.dim()}-D tensor {tuple(x.shape)}: RepQ-ViT (and this port) "
                         "only has them for 3-D activations and 2-D / 4-D weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.inited:
            self.delta, self.zero_point = self.init_quantization_scale(x)
            self.inited = True
        x_int = torch.round(x / self.delta) + self.zero_point
        return (torch.clamp(x_int, 0, self.n_levels - 1) - self.zero_point) * self.delta


def log_sqrt2_quantize(x: torch.Tensor, delta: torch.Tensor | float, n_levels: int) -> torch.Tensor:
    """RepQ-ViT's ``LogSqrt2Quantizer.quantize``: code k = round(-2 log2(x/delta)) -> delta * 2^(-k/2)."""
    x_int = torch.round(-1 * (x / delta).log2() * 2)
    mask = x_int >= n_levels
    x_quant = torch.clamp(x_int, 0, n_levels - 1)
    odd = (x_quant % 2) * (math.sqrt(2) - 1) + 1
    x_float_q = 2 ** (-1 * torch.ceil(x_quant / 2)) * odd * delta
    return torch.where(mask, torch.zeros_like(x_float_q), x_float_q)


class LogSqrt2Quantizer(nn.Module):
    def __init__(self, n_bits: int):
        super().__init__()
        assert 2 <= n_bits <= 8, "bitwidth not supported"
        self.n_bits, self.n_levels = n_bits, 2**n_bits
        self.delta = None
        self.inited = False

    def init_quantization_scale(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        flat = x.reshape(1, -1)
        delta, best = x.max(), 1e10
        for d in _quantile_rows(flat, list(PCTS))[:, 0]:
            score = float((x - log_sqrt2_quantize(x, d, self.n_levels)).pow(2).mean())
            if score < best:
                best, delta = score, d
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.inited:
            self.delta = self.init_quantization_scale(x)
            self.inited = True
        return log_sqrt2_quantize(x, self.delta, self.n_levels)


# -- quantized modules (quant/quant_modules.py) ------------------------------------------------------------
class _FakeQuant:
    """Input and weight fake quantization, each switched on by its flag (as their QuantLinear / QuantConv2d)."""

    def _fake_quant(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.use_input_quant:
            x = self.input_quantizer(x)
        return x, self.weight_quantizer(self.weight) if self.use_weight_quant else self.weight


class QuantLinear(_FakeQuant, nn.Linear):
    def __init__(self, m: nn.Linear, a_bits: int, w_bits: int, act_channel_wise: bool = False):
        super().__init__(m.in_features, m.out_features, bias=m.bias is not None)
        self.weight.data.copy_(m.weight.data)
        if m.bias is not None:
            self.bias.data.copy_(m.bias.data)
        self.input_quantizer = UniformQuantizer(a_bits, act_channel_wise)
        self.weight_quantizer = UniformQuantizer(w_bits, channel_wise=True)
        self.use_input_quant = self.use_weight_quant = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(*self._fake_quant(x), self.bias)


class QuantConv2d(_FakeQuant, nn.Conv2d):
    def __init__(self, m: nn.Conv2d, w_bits: int):
        super().__init__(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                         bias=m.bias is not None)
        self.load_state_dict(m.state_dict())
        self.input_quantizer = UniformQuantizer(8)  # RepQ-ViT: the image input of the patch embed stays 8 bit
        self.weight_quantizer = UniformQuantizer(w_bits, channel_wise=True)
        self.use_input_quant = self.use_weight_quant = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(*self._fake_quant(x), self.bias, self.stride, self.padding, self.dilation, self.groups)


class QuantMatMul(nn.Module):
    def __init__(self, a_bits: int, log_quant: bool = False):
        super().__init__()
        self.quantizer_A = LogSqrt2Quantizer(a_bits) if log_quant else UniformQuantizer(a_bits)
        self.quantizer_B = UniformQuantizer(a_bits)
        self.use_input_quant = False

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.use_input_quant:
            a, b = self.quantizer_A(a), self.quantizer_B(b)
        return a @ b


class QuantAttention(nn.Module):
    """Our Attention with q/k/v fused into timm's qkv, in the order of RepQ-ViT's ``attention_forward``."""

    def __init__(self, attn: nn.Module, a_bits: int, w_bits: int):
        super().__init__()
        self.num_heads, self.head_dim = attn.num_heads, attn.qk_dim
        assert attn.qk_dim == attn.v_dim, "fused qkv needs equal q/k and v head widths"
        self.scale = attn.scale
        fused = nn.Linear(attn.q.in_features, 3 * attn.q.out_features, bias=attn.q.bias is not None)
        fused.weight.data = torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]).detach().clone()
        if attn.q.bias is not None:
            fused.bias.data = torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]).detach().clone()
        self.qkv = QuantLinear(fused, a_bits, w_bits, act_channel_wise=True)
        self.matmul1 = QuantMatMul(a_bits)
        self.matmul2 = QuantMatMul(a_bits, log_quant=True)
        self.proj = QuantLinear(attn.proj, a_bits, w_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (self.matmul1(q, k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = self.matmul2(attn, v).transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        return self.proj(x)


QUANT_TYPES = (QuantLinear, QuantConv2d, QuantMatMul)


# -- model surgery, calibration, reparameterization (quant/quant_model.py, test_quant.py) --------------------
def quant_model(model: nn.Module, w_bits: int, a_bits: int) -> nn.Module:
    """A deep copy of our ViT with RepQ-ViT's quantized modules in place (all quantizers off)."""
    q = copy.deepcopy(model).eval()
    q.patch_embed.proj = QuantConv2d(q.patch_embed.proj, w_bits)
    for blk in q.blocks:
        blk.attn = QuantAttention(blk.attn, a_bits, w_bits)
        blk.mlp.fc1 = QuantLinear(blk.mlp.fc1, a_bits, w_bits, act_channel_wise=True)
        blk.mlp.fc2 = QuantLinear(blk.mlp.fc2, a_bits, w_bits)
    if isinstance(q.head, nn.Linear):  # RepQ-ViT quantizes a classification head too; ours has none
        q.head = QuantLinear(q.head, a_bits, w_bits)
    return q


def set_quant_state(model: nn.Module, input_quant: bool = False, weight_quant: bool = False) -> None:
    for m in model.modules():
        if isinstance(m, QUANT_TYPES):
            m.use_input_quant = input_quant
            if not isinstance(m, QuantMatMul):
                m.use_weight_quant = weight_quant


@torch.no_grad()
def scale_reparam(model: nn.Module) -> None:
    """test_quant.py's scale reparameterization of norm1 -> qkv and norm2 -> fc1."""
    for blk in model.blocks:
        for norm, nxt in ((blk.norm1, blk.attn.qkv), (blk.norm2, blk.mlp.fc1)):
            act_delta = nxt.input_quantizer.delta.reshape(-1)
            act_zero_point = nxt.input_quantizer.zero_point.reshape(-1)
            act_min = -act_zero_point * act_delta
            target_delta = torch.mean(act_delta)
            target_zero_point = torch.mean(act_zero_point)
            target_min = -target_zero_point * target_delta
            r = act_delta / target_delta
            b = act_min / r - target_min
            norm.weight.data = norm.weight.data / r
            norm.bias.data = norm.bias.data / r - b
            nxt.weight.data = nxt.weight.data * r
            if nxt.bias is None:
                nxt.bias = nn.Parameter(torch.zeros(nxt.out_features))
            nxt.bias.data = nxt.bias.data + torch.mm(nxt.weight.data, b.reshape(-1, 1)).reshape(-1)
            nxt.input_quantizer.channel_wise = False
            nxt.input_quantizer.delta = target_delta
            nxt.input_quantizer.zero_point = target_zero_point
            nxt.weight_quantizer.inited = False


@torch.no_grad()
def repq_vit(model: nn.Module, calib: torch.Tensor, w_bits: int, a_bits: int) -> nn.Module:
    q = quant_model(model, w_bits, a_bits)
    set_quant_state(q, True, True)
    q(calib)  # initial quantization: every quantizer initialises on the 32 images
    scale_reparam(q)
    set_quant_state(q, True, True)
    q(calib)  # re-calibration: the qkv/fc1 weight quantizers on the reparameterized weights
    return q


def parse_bits(s: str) -> tuple[int, int]:
    s = s.lower().replace("/", " ").replace("w", " ").replace("a", " ").split()
    if len(s) != 2:
        raise argparse.ArgumentTypeError("bits look like w4a4 or 4/4")
    return int(s[0]), int(s[1])


def main(argv=None) -> int:
    from compress.data import load_subset
    from compress.evaluation.evaluate import Evaluator
    from compress.models import load_model
    from compress.recipes.schema import DataConfig, EvaluationConfig
    from compress.runtime import TorchRunner
    from compress.utils.io import write_json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", nargs="+", type=parse_bits, default=[(4, 4)], help="w4a4 w3a3 ... (or 4/4 3/3)")
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--probe-train", type=int, default=2000)
    ap.add_argument("--calibration", type=int, default=32, help="RepQ-ViT's default calibration batch")
    ap.add_argument("--work", default="runs/quant-bench", help="where the protocol's trained probe lives")
    ap.add_argument("--out", default="benchmarks/results/repq_vit.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lm = load_model("dinov2-s14-focus")
    ref, cfg = lm.model.eval(), lm.cfg
    ev = Evaluator(ref, DataConfig(path="cifar10"), EvaluationConfig(test=args.test, probe_train=args.probe_train),
                   Path(args.work))
    ev.prepare()
    cal = load_subset("cifar10", "train", args.calibration, 0, cfg)
    calib = torch.stack([cal[i][0] for i in range(len(cal))])
    rows = [{"name": "fp32 (PyTorch reference)", "precision": "fp32", "top1": ev.reference_top1, "delta_top1": 0.0,
             "agreement": 100.0, "feature_cosine": 1.0, "images": args.test}]
    print(f"fp32 top-1 {ev.reference_top1:.2f} on {args.test} test images", flush=True)
    for w, a in args.bits:
        t0 = time.time()
        q = repq_vit(ref, calib, w, a)
        t_cal = time.time() - t0
        print(f"W{w}A{a}: calibrated in {t_cal:.0f}s", flush=True)
        scores = ev.score(TorchRunner(q), f"repq-vit W{w}A{a}")
        t_eval = time.time() - t0 - t_cal
        row = {"name": f"RepQ-ViT port W{w}A{a}", "precision": f"W{w}A{a}", "w_bits": w, "a_bits": a, **scores,
               "calibration_s": round(t_cal, 1), "eval_s": round(t_eval, 1)}
        rows.append(row)
        print(f"W{w}A{a}: top-1 {row['top1']:.2f} (delta {row['delta_top1']:+.2f}), agreement {row['agreement']:.1f}%, "
              f"feature cosine {row['feature_cosine']:.5f}, {t_eval:.0f}s eval", flush=True)
        write_json(args.out, {"method": "RepQ-ViT (Li et al., ICCV 2023), github.com/zkkli/RepQ-ViT, ported",
                              "model": "dinov2-s14-focus",
                              "protocol": {"data": "cifar10", "test": args.test, "probe_train": args.probe_train,
                                           "probe": str(Path(args.work) / "probe.safetensors"),
                                           "calibration": args.calibration, "threads": 1, "runner": "TorchRunner"},
                              "command": " ".join(["python", "benchmarks/repq_vit_port.py"] + (argv or sys.argv[1:])),
                              "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
