"""Exported artifacts: ONNX export and numerical verification against the PyTorch model."""
