"""The CUDA C++ kernels (``csrc/``): compiled on first use with PyTorch's extension loader, called as torch ops.

``build_library`` compiles and links the same sources with nvcc and the host compiler directly; it needs
no GPU, so the sources are checked on any machine with nvcc (the tests do).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .layout import mask_view, rows_of
from .reference import GELU_IDS, GELU_METHODS, LogCodes, check_method, poly_degree

CSRC = Path(__file__).parent / "csrc"
CUDA_SOURCES = ("softmax.cu", "gelu.cu", "integer.cu")
HOST_SOURCE = "integer_host.cpp"  # integer_math.h built for the CPU (tests)
BINDING = "ops.cpp"
EXT_NAME = "vitforge_cuda_kernels"


def nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    cand = Path(home) / "bin" / "nvcc" if home else None
    return str(cand) if cand and cand.is_file() else shutil.which("nvcc")


def cuda_home() -> Path | None:
    """The toolkit folder holding include/cuda_runtime.h (nvcc on PATH may be a wrapper script)."""
    exe = nvcc()
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
             exe and Path(exe).resolve().parent.parent]
    return next((Path(c) for c in cands if c and (Path(c) / "include" / "cuda_runtime.h").is_file()), None)


def available() -> bool:
    return torch.cuda.is_available() and torch.version.cuda is not None and nvcc() is not None


@functools.cache
def load():
    """Compile (cached by PyTorch under ~/.cache/torch_extensions) and register ``torch.ops.vitforge_cuda``."""
    if not available():
        raise RuntimeError("the vitforge CUDA kernels need a CUDA build of PyTorch, a GPU and nvcc (CUDA_HOME); "
                           "use the triton or reference backend")
    from torch.utils.cpp_extension import load as load_ext

    load_ext(EXT_NAME, [str(CSRC / BINDING)] + [str(CSRC / s) for s in CUDA_SOURCES],
             extra_include_paths=[str(CSRC)], extra_cflags=["-O3"], extra_cuda_cflags=["-O3"],
             is_python_module=False, verbose=False)
    return torch.ops.vitforge_cuda


def _stream(x: torch.Tensor) -> int:
    return torch.cuda.current_stream(x.device).cuda_stream


def softmax(x: torch.Tensor, scale: float = 1.0, mask: torch.Tensor | None = None, method: str = "exact",
            codes: LogCodes | None = None) -> torch.Tensor:
    """Softmax over the last axis (or its uint8 ``codes``); the kernel is always the single-pass form."""
    poly = poly_degree(method)
    x2 = rows_of(x)
    mv = mask_view(mask, x.shape) if mask is not None else None
    code_args = [codes.eta, codes.lo, codes.step, float(codes.qmax)] if codes else []
    with torch.cuda.device(x.device):
        out = load().softmax(x2, float(scale), mv.tensor if mv else None, mv.geometry() if mv else [], poly,
                             code_args, _stream(x))
    return out.reshape(x.shape)


def softmax_codes(x: torch.Tensor, codes: LogCodes, scale: float = 1.0, mask: torch.Tensor | None = None,
                  method: str = "exact") -> torch.Tensor:
    return softmax(x, scale, mask, method, codes)


def gelu(x: torch.Tensor, bias: torch.Tensor | None = None, method: str = "erf", table: torch.Tensor | None = None,
         inv_step: float = 0.0) -> torch.Tensor:
    m = GELU_IDS[check_method(method, GELU_METHODS, "gelu")]
    if m == 2 and (table is None or inv_step <= 0):
        raise ValueError("relu-lut needs its correction table and inv_step (see GeluTable)")
    b = bias.float().contiguous() if bias is not None else None
    t = table.to(x.device, torch.float32).contiguous() if m == 2 else None
    with torch.cuda.device(x.device):
        return load().gelu(x.contiguous(), b, m, t, float(inv_step), _stream(x))


def int_softmax_codes(codes: torch.Tensor, k: int) -> torch.Tensor:
    """Integer softmax (compress.kernels.integer) of int32 codes over the last axis."""
    x2 = codes.to(torch.int32).reshape(-1, codes.shape[-1]).contiguous()
    with torch.cuda.device(codes.device):
        return load().int_softmax(x2, int(k), _stream(codes)).reshape(codes.shape)


def int_gelu_codes(codes: torch.Tensor, k: int) -> torch.Tensor:
    with torch.cuda.device(codes.device):
        return load().int_gelu(codes.to(torch.int32).contiguous(), int(k), _stream(codes))


def build_host_integer(out_dir: str | Path) -> Path:
    """Compile integer_math.h (the CUDA kernels' per-element code) for the CPU as a shared library with
    ``vf_int_softmax`` / ``vf_int_gelu`` (C ABI); the tests call it through ctypes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lib = out / "libvitforge_int_host.so"
    _run([os.environ.get("CXX", "c++"), "-shared", "-fPIC", "-O2", "-std=c++17", "-fwrapv", f"-I{CSRC}",
          str(CSRC / HOST_SOURCE), "-o", str(lib)])
    return lib


# -- compile check without a GPU -------------------------------------------------------------------
def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{r.stderr[-4000:]}")


def build_library(out_dir: str | Path, arch: str = "sm_80", jobs: int = 3) -> Path:
    """nvcc -c each .cu, c++ -c the binding (torch's stable ABI headers), link a shared library; return its path.

    Loading it (``torch.ops.load_library``) registers the ops even without a GPU; calling them needs one.
    """
    from torch.utils.cpp_extension import include_paths, library_paths

    exe, home = nvcc(), cuda_home()
    if exe is None or home is None:
        raise RuntimeError("nvcc or the CUDA headers not found (set CUDA_HOME)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_inc = [f"-I{p}" for p in include_paths()]
    cmds = [[exe, "-c", str(CSRC / s), "-o", str(out / f"{s}.o"), f"-arch={arch}", "-O3", "-std=c++17",
             "-Xcompiler", "-fPIC", f"-I{CSRC}"] for s in CUDA_SOURCES]
    cxx = os.environ.get("CXX", "c++")
    cmds.append([cxx, "-c", str(CSRC / BINDING), "-o", str(out / f"{BINDING}.o"), "-std=c++17", "-O2", "-fPIC",
                 f"-I{CSRC}", f"-I{home / 'include'}", *torch_inc])
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(_run, cmds))
    lib = out / f"lib{EXT_NAME}.so"
    libdirs = [home / "lib64", *map(Path, library_paths())]
    _run([cxx, "-shared", "-o", str(lib), *[str(out / f"{s}.o") for s in (*CUDA_SOURCES, BINDING)],
          *[f"-L{d}" for d in libdirs], *[f"-Wl,-rpath,{d}" for d in libdirs], "-lcudart", "-ltorch_cpu"])
    return lib


if __name__ == "__main__":  # python -m compress.kernels.cuda OUT_DIR [ARCH]: the compile check by hand
    print(build_library(sys.argv[1], *(sys.argv[2:3] or [])))
