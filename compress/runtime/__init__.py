"""Runners: call a PyTorch model or an exported artifact on a batch of images, the same way."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..registry import Registry


def _ort_errors() -> tuple[type, ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as st

    return tuple(getattr(st, n) for n in ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf",
                                          "NoSuchFile", "NotImplemented") if hasattr(st, n))


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


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
    try:
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except _ort_errors() as e:  # truncated, not ONNX, or a graph ONNX Runtime rejects
        where = "the ONNX model" if isinstance(path, bytes) else path
        raise UserError(f"{where} cannot be loaded by ONNX Runtime ({_short(e)})",
                        "give a complete .onnx file (re-export it)") from None


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
        want = self.session.get_inputs()[0].shape
        if len(want) != x.ndim or any(isinstance(w, int) and w != d for w, d in zip(want, x.shape)):
            raise UserError(f"{self.path} takes input {want}, not images of shape {list(x.shape)}",
                            "evaluate it with the model (--reference) it was exported from")
        return torch.from_numpy(self.session.run(None, {self.input: x.astype(np.float32)})[0])


# runtime name -> factory(path, threads) -> runner; the upper targets layer registers executorch, openvino, ...
RUNNERS = Registry("runtime", {"onnxruntime": OrtRunner})


def register_runner(runtime: str):
    """Decorator: ``factory(path, threads)`` runs artifacts of ``runtime``; a second, different one is an error."""
    return RUNNERS.add(runtime)
