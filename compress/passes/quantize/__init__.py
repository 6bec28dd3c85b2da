"""ViT-aware post-training quantization: quantizers, calibration, LRP-guided mixed precision, export."""
from . import quantize_pass  # noqa: F401  registers the pass (its descriptor declares its exporter and report section)
