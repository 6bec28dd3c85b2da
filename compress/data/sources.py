"""Image sources: ImageFolder folders, tar.gz archives of them, Fashion-MNIST idx files, CIFAR-10 binary
batches, numpy arrays. Dataset names resolve through ``catalog.resolve``.

Each source lists samples as (loader key, label) with class names; images decode lazily.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from ..utils.io import atomic_dir, cache_dir, sha256_file, write_text
from .catalog import resolve

IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
class Source:
    classes: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        raise NotImplementedError  # abstract; every concrete source overrides it


class FolderSource(Source):
    def __init__(self, root: Path):
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        files, labels = [], []
        for ci, c in enumerate(classes):
            fs = sorted(f for f in (root / c).rglob("*") if f.suffix.lower() in IMG_EXT)
            files += fs
            labels += [ci] * len(fs)
        if not files:
            raise UserError(f"image folder {root} holds no class folders with images",
                            "expected ROOT/<class>/<image>.jpg (ImageFolder layout)")
        self.root, self.classes, self.files, self.labels = root, classes, files, np.asarray(labels)

    def image(self, i: int) -> Image.Image:
        try:
            return Image.open(self.files[i]).convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"cannot read image {self.files[i]} ({e})", "remove or replace the file") from None


class ArraySource(Source):
    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str] | None = None):
        if images.ndim not in (3, 4) or len(images) != len(labels):
            raise UserError(f"image array has shape {images.shape} for {len(labels)} labels",
                            "expected images [N,H,W] or [N,H,W,C] and labels [N]")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.classes = classes or [str(c) for c in range(int(self.labels.max()) + 1)]

    def image(self, i: int) -> Image.Image:
        a = self.images[i]
        if a.dtype != np.uint8:
            a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")


FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[:2] != b"\x00\x00":
        raise UserError(f"{path} is not an idx file", "use the original (gzipped) idx files")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated ({arr.size} of {int(np.prod(shape))} values)", "re-download it")
    return arr.reshape(shape)


def idx_source(root: Path, split: str) -> ArraySource:
    prefix = "train" if split == "train" else "t10k"
    def find(kind):
        for n in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz",
                  f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"):
            if (root / n).is_file():
                return root / n
        raise UserError(f"{root} has no {prefix}-{kind} idx file", "point --data at the Fashion-MNIST folder")
    return ArraySource(_read_idx(find("images")), _read_idx(find("labels")),
                       FASHION_CLASSES if "fashion" in str(root).lower() else None)


CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then the red, green and blue planes


def cifar_binary_source(root: Path, split: str) -> ArraySource:
    """The CIFAR-10 binary version: fixed-size records in data_batch_{1..5}.bin / test_batch.bin."""
    names = ["test_batch.bin"] if split != "train" else [f"data_batch_{i}.bin" for i in range(1, 6)]
    rows = []
    for n in names:
        if not (root / n).is_file():
            raise UserError(f"{root} has no {n}", "point --data at the cifar-10-batches-bin folder")
        raw = np.fromfile(root / n, dtype=np.uint8)
        if raw.size % CIFAR_RECORD:
            raise UserError(f"{root / n} is truncated ({raw.size} bytes)", "re-download CIFAR-10")
        rows.append(raw.reshape(-1, CIFAR_RECORD))
    rec = np.concatenate(rows)
    meta = root / "batches.meta.txt"
    classes = [c for c in meta.read_text().split() if c] if meta.is_file() else None
    return ArraySource(rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rec[:, 0].astype(np.int64), classes)


def archive_digest(path: Path) -> str:
    """SHA-256 of an archive's bytes, remembered per (size, mtime) so an unchanged file is hashed once."""
    st, where = path.stat(), hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    memo = cache_dir("datasets", ".digests") / f"{path.name}-{where}-{st.st_size}-{st.st_mtime_ns}"
    if memo.is_file():
        return memo.read_text().strip()
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise UserError(f"archive {path} is unreadable ({e})", "check its permissions or re-download it") from None
    write_text(memo, digest)
    return digest


def extract_archive(path: Path) -> Path:
    """Unpack a tar.gz once into the cache (atomically), keyed by its name and content: a copied or
    touched archive reuses the extraction (and every feature cache keyed by its folder)."""
    dest = cache_dir("datasets") / f"{path.name.split('.')[0]}-{archive_digest(path)[:16]}"
    if not dest.is_dir():
        try:
            with atomic_dir(dest) as tmp, tarfile.open(path, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise UserError(f"archive {path} is corrupt or unreadable ({e})", "re-download it") from None
    return dest


def _split_root(root: Path, split: str) -> Path:
    """Descend single wrapper folders, then into ``split`` (train/test/val) when present."""
    for _ in range(3):
        if (root / split).is_dir():
            return root / split
        if split == "test" and (root / "val").is_dir():
            return root / "val"
        subs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if len(subs) == 1 and not any(f.suffix.lower() in IMG_EXT for f in subs[0].iterdir()):
            root = subs[0]
            continue
        break
    return root


def resolve_path(spec: str) -> Path:
    return Path(resolve(spec).path)


def open_source(spec: str, split: str = "train") -> Source:
    path = resolve_path(spec)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path) as z:
            keys = {k.lower(): k for k in z.files}
            ik = keys.get(f"{split}_images") or keys.get("images") or keys.get("x")
            lk = keys.get(f"{split}_labels") or keys.get("labels") or keys.get("y")
            if not ik or not lk:
                raise UserError(f"{path} needs arrays 'images' and 'labels' (or '{split}_images'/'{split}_labels')",
                                f"found: {', '.join(z.files)}")
            return ArraySource(z[ik], z[lk])
    if path.is_file() and (path.name.endswith((".tar.gz", ".tgz", ".tar"))):
        path = extract_archive(path)
    if path.is_dir():
        if any(path.glob("*idx3-ubyte*")):
            return idx_source(path, split)
        if (path / "test_batch.bin").is_file():
            return cifar_binary_source(path, split)
        return FolderSource(_split_root(path, split))
    raise UserError(f"data file {path} has an unsupported format", "use a folder, .tar.gz, .npz or idx files")


def image_bytes_to_pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")
