"""ViT-aware post-training quantization: quantizers, calibration, LRP-guided mixed precision, export."""
from . import export, quantize_pass, report  # noqa: F401  registers the pass, its exporters and report section
