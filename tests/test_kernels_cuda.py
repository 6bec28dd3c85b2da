"""The CUDA C++ kernels compile and link here (nvcc + the host compiler against torch's headers), and the
library registers its torch ops; running them needs a GPU (benchmarks/kernels_gpu_bench.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from compress.kernels import cuda

pytestmark = [pytest.mark.timeout(240), pytest.mark.nvcc, pytest.mark.slow]  # compiles every .cu: ~1.5 min


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    if cuda.nvcc() is None:
        pytest.skip("nvcc not found (CUDA toolkit absent): the CUDA sources cannot be compiled here")
    return cuda.build_library(tmp_path_factory.mktemp("cuda"), arch="sm_80")


def test_cuda_sources_compile_link_and_register_ops(library):
    objs = {p.name for p in library.parent.glob("*.o")}
    assert objs == {f"{s}.o" for s in (*cuda.CUDA_SOURCES, cuda.BINDING)}
    # every kernel object embeds a device ELF (cubin) built for sm_80 (bf16 needs it) beside its host code
    for src in cuda.CUDA_SOURCES:
        blob = (library.parent / f"{src}.o").read_bytes()
        assert blob.count(b"\x7fELF") >= 2 and b"sm_80" in blob, src
    # dlopen resolves every symbol now (a launcher signature that differs between ops.cpp and a .cu fails here)
    code = f"""
import torch
torch.ops.load_library({str(library)!r})
ops = torch.ops.vitforge_cuda
print(ops.softmax.default._schema)
print(ops.gelu.default._schema)
for call in (lambda: ops.softmax(torch.zeros(2, 3), 1.0, None, [1, 1, 0, 0, 0, 0], 2, [0.0, 0.0, -1.0, 15.0], 0),
             lambda: ops.gelu(torch.zeros(2, 3), torch.zeros(3), 2, torch.zeros(65), 8.0, 0)):
    try:
        call()
    except RuntimeError as e:  # the boxed arguments converted, the kernel wrapper ran and refused CPU tensors
        print("refused:", str(e).splitlines()[0].split(", ", 2)[-1])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("vitforge_cuda::softmax(Tensor x, float scale, Tensor? mask, int[] geometry, int poly")
    assert lines[1].startswith("vitforge_cuda::gelu(Tensor x, Tensor? bias, int method, Tensor? table")
    assert lines[2] == "refused: softmax takes a CUDA [rows, cols] tensor with unit column stride"
    assert lines[3] == "refused: gelu takes a contiguous CUDA tensor"
