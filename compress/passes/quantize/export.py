"""Exporters run when a ``quantize`` pass is in the history: Q/DQ ONNX for ONNX Runtime and TensorRT,
MatMulNBits for ONNX Runtime CPU. Each artifact is checked, loaded back in ONNX Runtime and compared to
the PyTorch model that computes the same numbers (the fake-quantized model, or its TensorRT fallback).
"""
from __future__ import annotations

import copy

import onnx
import torch

from ... import ui
from ...export.artifacts import Artifact, ExportRequest, staged
from ...export.verify import check_onnx, verify
from ...runtime import OrtRunner, TorchRunner
from .config import QuantizeConfig
from .export_nbits import build_nbits
from .export_qdq import build_qdq
from .modules import QuantConv2d, QuantLinear, QuantMatMul, quantized_modules
from .precision import precision_summary
from .quantizers import LogQuantizer, UniformQuantizer

FILES = {"qdq": "model-qdq.onnx", "tensorrt": "model-tensorrt-qdq.onnx", "matmulnbits": "model-matmulnbits.onnx"}


def tensorrt_view(model) -> tuple[torch.nn.Module, list[str]]:
    """The nearest model TensorRT runs: activations below 8 bits widen to INT8 over the same clipping range
    (the b-bit grid is a subset of the 8-bit one: scale / 2^(8-b)); log-domain (SULQ) quantizers become
    INT8 uniform ones over the range their grid spans."""
    m = copy.deepcopy(model)
    notes, widened, relogged = [], set(), 0
    for mod in quantized_modules(m).values():
        for slot in ("input_quant", "a_quant", "b_quant"):
            q = getattr(mod, slot, None)
            if isinstance(q, LogQuantizer):
                lo = float(torch.exp2(q.lo) - q.eta)
                hi = float(torch.exp2(q.lo + (2**q.bits - 1) * q.delta) - q.eta)
                u = UniformQuantizer(8, symmetric=lo >= 0 or isinstance(mod, QuantMatMul))
                u.set_range(torch.tensor(min(lo, 0.0)), torch.tensor(hi))
                setattr(mod, slot, u)
                relogged += 1
            elif isinstance(q, UniformQuantizer) and q.bits < 8:
                f = 2 ** (8 - q.bits)
                with torch.no_grad():
                    q.scale.div_(f)
                    q.zero_point.mul_(f)
                widened.add(q.bits)
                q.bits = 8
    if widened:
        notes.append(f"TensorRT runs no {'/'.join(map(str, sorted(widened)))}-bit activations: they run as INT8 over "
                     "the same clipping range (nearest supported precision; more accurate than the PyTorch model)")
    if relogged:
        notes.append(f"TensorRT has no log-domain (SULQ) quantizer: {relogged} post-softmax/post-GELU quantizers run "
                     "as INT8 uniform over the same range")
    return m, notes


def _limits(req: ExportRequest) -> tuple[float, float, float | None]:
    v = req.recipe.export.verify
    return v.quantized_max_abs, v.quantized_min_cosine, v.quantized_noise_floor


def _compute(fmt: str, model, cfg: QuantizeConfig) -> str:
    """How the artifact's GEMMs run, for the precision string."""
    s = precision_summary(model)
    acts = bool(s["activation_bits"])
    if fmt == "matmulnbits":
        return "int8-gemm (dynamic per-block activations)" if cfg.nbits_accuracy_level == 4 else "fp32-gemm"
    if fmt == "tensorrt":
        return "int8-gemm" if acts else "fp16-gemm"
    grouped = any(isinstance(m, QuantLinear) and m.weight_quant is not None and m.weight_quant.group
                  for m in quantized_modules(model).values())
    return "int8-gemm" if acts and not grouped else "fp32-gemm"


def export_one(req: ExportRequest, fmt: str, cfg: QuantizeConfig) -> Artifact:
    model = req.state.model.eval()
    notes = []
    ref = model
    if fmt == "tensorrt":
        ref, notes = tensorrt_view(model)
        proto, more = build_qdq(req.float_onnx, ref, "tensorrt")
        from ...kernels.integer import gather_shifts

        if gather_shifts(proto):  # integer kernels: TensorRT has no uint32 tensors
            more.append("integer kernels: the per-element shift runs as a Div by a Gather of 2^0..2^30 (no uint32)")
    elif fmt == "matmulnbits":
        proto, more = build_nbits(req.float_onnx, model, cfg.nbits_block, cfg.nbits_accuracy_level)
    else:
        proto, more = build_qdq(req.float_onnx, model, "onnxruntime")
    notes += more
    path = req.artifacts_dir / FILES[fmt]
    max_abs, min_cos, floor = _limits(req)
    if fmt == "matmulnbits" and cfg.nbits_accuracy_level:
        min_cos = min(min_cos, 0.99)  # int8 re-quantization inside the kernel: close, not exact
    with staged(req.run_dir, path) as tmp:  # written beside, verified, then moved onto ``path``
        onnx.save(proto, str(tmp))
        check_onnx(tmp)
        v = verify(path, OrtRunner(tmp), TorchRunner(ref), req.verify_images, max_abs, min_cos, floor_noise=floor)
        codes = int_codes_check(tmp, ref, req.verify_images)  # integer kernels: exact code equality
    ui.info(f"  verified {v.line()}")
    label = precision_summary(ref)["label"]
    runtime = "tensorrt" if fmt == "tensorrt" else "onnxruntime"
    if fmt == "tensorrt":
        notes.append("TensorRT is not installed here: verified by running the same graph in ONNX Runtime")
    notes.append(_describe(fmt, ref, cfg))
    vd = v.to_dict() | ({"integer_codes": codes} if codes else {})
    return Artifact(f"quantized-{fmt}", str(path.relative_to(req.run_dir)), "onnx", runtime,
                    f"{label} {_compute(fmt, ref, cfg)}", notes=notes, verification=vd,
                    evaluate=fmt in cfg.evaluate and runtime == "onnxruntime")


def int_codes_check(path, model, images) -> dict | None:
    """The integer kernels' codes in the artifact vs the PyTorch reference: must be equal (VerificationError)."""
    from ...errors import VerificationError
    from ...kernels.integer import int_modules, verify_codes

    if not int_modules(model):
        return None
    r = verify_codes(path, model, images)
    ui.info(f"  integer kernels: {r['codes']} output codes of {r['kernels']} kernels, {r['kernel_mismatches']} differ "
            f"from the PyTorch reference (model-level equal: {r['model_output_codes_equal']:.6f})")
    if not r["kernel_codes_equal"]:
        raise VerificationError(f"{path}: {r['kernel_mismatches']} integer-kernel codes differ from the PyTorch reference")
    return r


def _describe(fmt: str, model, cfg: QuantizeConfig) -> str:
    mods = quantized_modules(model)
    n_lin = sum(isinstance(m, (QuantLinear, QuantConv2d)) for m in mods.values())
    n_att = sum(isinstance(m, QuantMatMul) for m in mods.values())
    what = {"qdq": "Q/DQ ONNX (static per-tensor activations, integer weights)",
            "tensorrt": "Q/DQ ONNX for TensorRT explicit quantization (symmetric activations)",
            "matmulnbits": f"MatMulNBits weights (accuracy_level {cfg.nbits_accuracy_level})"}[fmt]
    return f"{what}: {n_lin} weighted ops" + (f", {n_att} attention matmuls" if n_att else "") + " quantized"


def export_quantized(req: ExportRequest) -> list[Artifact]:
    rec = req.state.record("quantize")
    cfg = QuantizeConfig(**rec["config"])
    return [export_one(req, fmt, cfg) for fmt in cfg.export]
