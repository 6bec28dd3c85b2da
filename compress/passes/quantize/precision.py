"""What a quantized model computes: its precision label (``w4a8``, ``w4.50(mixed 4-8)a8``) and bit widths."""
from __future__ import annotations

from .modules import QuantLinear, quantized_modules


def precision_summary(model) -> dict:
    """What the quantized model computes: parameter-weighted mean weight bits, widths, activation bits."""
    mods = quantized_modules(model)
    lin = {n: m for n, m in mods.items() if isinstance(m, QuantLinear) and m.weight_quant is not None}
    params = {n: m.weight.numel() for n, m in lin.items()}
    total = sum(params.values()) or 1
    avg = sum(params[n] * m.weight_quant.bits for n, m in lin.items()) / total
    widths = sorted({m.weight_quant.bits for m in lin.values()})
    acts = sorted({q.bits for m in mods.values() for q in m.children() if q is not getattr(m, "weight_quant", None)})
    attention = any(n.endswith(("qk_matmul", "av_matmul")) for n in mods)
    return {"weight_bits_avg": avg, "weight_bits": widths, "activation_bits": acts, "attention_quantized": attention,
            "label": precision_label(avg, widths, acts)}


def precision_label(avg: float, widths: list[int], acts: list[int]) -> str:
    w = f"w{widths[0]}" if len(widths) == 1 else f"w{avg:.2f}(mixed {widths[0]}-{widths[-1]})"
    a = f"a{acts[0]}" if len(acts) == 1 else (f"a{acts[0]}-{acts[-1]}" if acts else "a32")
    return w + a
