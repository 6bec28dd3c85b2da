"""Runners: call a PyTorch model or an exported artifact on a batch of images, the same way."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def ort_session(path: str | Path | bytes, threads: int = 1, profile: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")  # exact INT4 results
    so.log_severity_level = 3
    if profile:
        so.enable_profiling = True
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


class TorchRunner:
    kind = "pytorch"

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(images).float()


class OrtRunner:
    kind = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        self.session = ort_session(path, threads)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        return torch.from_numpy(self.session.run(None, {self.input: x.astype(np.float32)})[0])


# runtime name -> factory(path, threads) -> runner; targets register executorch, openvino, ...
RUNNERS = {"onnxruntime": OrtRunner}


def register_runner(runtime: str):
    def deco(factory):
        RUNNERS[runtime] = factory
        return factory

    return deco
