"""Runners for the artifacts targets add: ExecuTorch ``.pte`` and OpenVINO IR ``.xml``.

Each is ``factory(path, threads) -> callable(images) -> outputs`` like ``OrtRunner``, registered
with ``compress.runtime.register_runner`` so the Evaluator scores these artifacts the same way.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ...errors import UserError
from ...runtime import register_runner

OV_PRECISION_KEY = ("vitforge", "inference_precision")  # rt_info entry the OpenVINO exporter writes


@contextlib.contextmanager
def quiet_imports():
    """ExecuTorch pulls in torchao, which prints about CUDA extensions it cannot load on a CPU machine."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def executorch_runtime():
    with quiet_imports():
        from executorch.runtime import Runtime

        return Runtime.get()


@register_runner("executorch")
class ExecuTorchRunner:
    kind = "executorch"

    def __init__(self, path: str | Path, threads: int = 1, etdump: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ExecuTorch program {self.path} does not exist", "check the path")
        with quiet_imports():
            from executorch.extension.pybindings import portable_lib

            if portable_lib._threadpool_get_thread_count() != threads:
                portable_lib._unsafe_reset_threadpool(threads)
            # the module API keeps one loaded method; etdump collects per-operator timings
            self.module = portable_lib._load_for_executorch(str(self.path), enable_etdump=etdump)
        self.batch = self._batch_dim()
        self.dynamic = self._dynamic()

    def _batch_dim(self) -> int | None:
        try:
            return int(self.module.method_meta("forward").input_tensor_meta(0).sizes()[0])
        except Exception:  # older runtimes without method_meta: assume a dynamic batch
            return None

    def _dynamic(self) -> bool:
        """A dynamic batch shows as its upper bound in the metadata; try one image to tell."""
        if self.batch in (None, 1):
            return self.batch is None
        meta = self.module.method_meta("forward").input_tensor_meta(0)
        try:
            self.module.run_method("forward", (torch.zeros(1, *meta.sizes()[1:]),))
            return True
        except Exception:
            return False

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.run_method("forward", (x.contiguous(),))[0].clone()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
        x = x.float()
        if self.batch is None or len(x) == self.batch or self.dynamic:
            return self._run(x)
        if self.batch != 1:
            raise UserError(f"{self.path.name} was exported for batch {self.batch}, got {len(x)} images",
                            "export it with batch 1 (the default) or the batch you run")
        return torch.cat([self._run(x[i:i + 1]) for i in range(len(x))])

    def write_etdump(self, path: str | Path) -> None:
        self.module.write_etdump_result_to_file(str(path))


@register_runner("openvino")
class OpenVINORunner:
    kind = "openvino"

    def __init__(self, path: str | Path, threads: int = 1, precision: str | None = None, profile: bool = False):
        import openvino as ov

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"OpenVINO IR {self.path} does not exist", "check the path")
        core = ov.Core()
        model = core.read_model(str(self.path))
        if precision is None:  # what the exporter recorded, else exact fp32
            key = list(OV_PRECISION_KEY)
            precision = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else "f32"
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "ENABLE_CPU_PINNING": False}
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        if profile:
            config["PERF_COUNT"] = True
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        out = self.request.infer({0: np.ascontiguousarray(x, np.float32)})
        return torch.from_numpy(np.array(out[self.compiled.output(0)]))

    def op_profile(self) -> list[dict]:
        """Per-node times of the last inference (needs ``profile=True``)."""
        rows = []
        for p in self.request.profiling_info:
            if p.status.name == "EXECUTED":
                rows.append({"name": p.node_name, "op": p.node_type, "ms": p.real_time.total_seconds() * 1e3,
                             "exec": p.exec_type})
        return rows


def threads_env(threads: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
