"""Shared fixtures: one thread, tiny models, small image folders, real images (Fashion-MNIST)."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def _have(mark: str) -> bool:
    if mark == "gpu":
        return torch.cuda.is_available()
    from compress.kernels import cuda

    return cuda.nvcc() is not None


def pytest_collection_modifyitems(config, items):
    """Markers registered in pyproject.toml: ``gpu`` tests skip without a CUDA GPU, ``nvcc`` tests without the CUDA
    compiler; ``slow`` ones run unless deselected (-m "not slow")."""
    have: dict[str, bool] = {}
    for item in items:
        for mark in ("gpu", "nvcc"):
            if mark in item.keywords and not have.setdefault(mark, _have(mark)):
                item.add_marker(pytest.mark.skip(reason=f"needs {'a CUDA GPU' if mark == 'gpu' else 'nvcc'}"))


@pytest.fixture(scope="session")
def real_images() -> str:
    """Real images that every set-up machine has: Fashion-MNIST from Debian's dataset-fashion-mnist (make setup
    installs it when run as root). Fails in CI (CI=true) rather than skipping."""
    from compress.data.catalog import resolve
    from compress.errors import UserError

    try:
        return resolve("fashion-mnist").path
    except UserError as e:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(str(e))


@pytest.fixture(autouse=True)
def _loud_again():
    """A CLI call made in-process with --quiet/--json must not silence the tests after it."""
    yield
    from compress import ui

    ui.set_quiet(False)


def tiny_config(**kw):
    from compress.models.vit import ViTConfig

    base = dict(img_size=32, patch_size=8, global_pool="none", layer_scale=True, name="tiny")
    return ViTConfig.uniform(kw.pop("embed_dim", 32), kw.pop("depth", 2), kw.pop("num_heads", 2), **(base | kw))


@pytest.fixture
def tiny_model():
    from compress.models import build

    torch.manual_seed(0)
    m = build(tiny_config())
    with torch.no_grad():  # non-trivial LayerScale so folding is tested for real
        for blk in m.blocks:
            blk.ls1.gamma.uniform_(0.5, 1.5)
            blk.ls2.gamma.uniform_(0.5, 1.5)
    return m


def make_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 40, split: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    base = root / split if split else root
    for c in range(classes):
        d = base / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            arr[..., c % 3] = 200  # a class-dependent colour: learnable by a probe
            Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    make_image_folder(root, split="train")
    make_image_folder(root, split="test")
    return root
