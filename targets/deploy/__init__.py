"""Targets, the upper layer: importing it registers every device exporter with the export stage
(``compress.export.artifacts.TARGET_EXPORTERS``) and the ExecuTorch / OpenVINO runtimes with ``compress.runtime``.

It sits above ``compress.export`` and the lower targets layer, and below the pipeline's export stage
(``compress.pipeline.export_stage``), which imports it: nothing below imports it, so there is no cycle. The names
it registers are the lower layer's ``BUILTIN_EXPORTERS`` (a test keeps the two equal).
"""
from ..exporters import executorch, onnxruntime, openvino, runners  # noqa: F401  registers exporters and runtimes
from ..tensorrt import kit  # noqa: F401  registers the tensorrt exporter (build kits)
from ...registry import TARGET_EXPORTERS  # noqa: E402  the table filled above

__all__ = ["TARGET_EXPORTERS"]
