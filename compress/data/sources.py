"""Image sources: ImageFolder folders, tar.gz archives of them, Fashion-MNIST idx files, numpy arrays.

Each source lists samples as (loader key, label) with class names; images decode lazily.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from ..utils.io import atomic_dir, cache_dir, sha256_file, write_text

IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
# well-known names -> where they live on machines set up by `make setup`
KNOWN = {
    "cifar10": ["$VITFORGE_DATA/cifar10-jpeg.tar.gz", "{repo}/../shared/datasets/cifar10-jpeg.tar.gz"],
    "fashion-mnist": ["$VITFORGE_DATA/fashion-mnist", "/usr/share/datasets/fashion-mnist"],
}


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
    if spec in KNOWN:
        repo = Path(__file__).resolve().parents[2]
        for cand in KNOWN[spec]:
            if cand.startswith("$VITFORGE_DATA") and not os.environ.get("VITFORGE_DATA"):
                continue
            p = Path(cand.replace("$VITFORGE_DATA", os.environ.get("VITFORGE_DATA", "")).format(repo=repo))
            if p.exists():
                return p
        raise UserError(f"dataset {spec!r} was not found (looked in {', '.join(KNOWN[spec])})",
                        "pass --data PATH or set VITFORGE_DATA")
    p = Path(spec).expanduser()
    if not p.exists():
        raise UserError(f"data path {spec} does not exist", f"pass an image folder, a .tar.gz, an .npz, "
                        f"or a known dataset name ({', '.join(KNOWN)})")
    return p


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
        return FolderSource(_split_root(path, split))
    raise UserError(f"data file {path} has an unsupported format", "use a folder, .tar.gz, .npz or idx files")


def image_bytes_to_pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")
