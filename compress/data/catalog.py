"""Named datasets (``data: {path: cifar10}``) and the one chain that finds them; the first hit wins.

1. ``--data PATH`` / a path in the recipe: used as given (not a name).
2. ``$VITFORGE_DATA/<file>``.
3. Local caches: ``<repo>/../shared/datasets/<file>`` (hidden with ``VITFORGE_NO_SHARED=1``) and the user
   cache ``$VITFORGE_CACHE/datasets/<file>`` (default ``~/.cache/vitforge``), then system-wide installs.
4. Download from the dataset's canonical source into the user cache, resumable, checked against its MD5
   (skipped with ``VITFORGE_OFFLINE=1``; a machine without internet fails this step in about a second).
5. A fallback dataset that a package registry installs (CIFAR-10 -> Fashion-MNIST, Debian
   ``dataset-fashion-mnist``, which ``make setup`` installs as root).

Every resolution is announced once per process on stderr and recorded in the run's report.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from .. import ui
from ..errors import UserError
from ..utils.io import atomic_dir, cache_dir

REPO = Path(__file__).resolve().parents[2]
DOWNLOAD_TIMEOUT_S = 15


@dataclass(frozen=True)
class Download:
    url: str
    md5: str
    size: int
    filename: str
    members: tuple[str, ...]  # the only archive members extracted (regular files)
    folder: str  # where they land, under the user cache's datasets/


@dataclass(frozen=True)
class Dataset:
    name: str
    files: tuple[str, ...]  # names looked for in $VITFORGE_DATA, ../shared/datasets and the user cache
    system: tuple[str, ...] = ()  # system-wide installs (registry packages)
    download: Download | None = None
    fallback: str | None = None
    install: str = ""  # how a registry installs it


_CIFAR_BIN = tuple(f"cifar-10-batches-bin/{n}" for n in
                   [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin", "batches.meta.txt"])
CATALOG = {
    "cifar10": Dataset(
        "cifar10", files=("cifar10-jpeg.tar.gz", "cifar-10-batches-bin"),
        download=Download("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                          "c32a1d4ab5d03f1284b67883e8d87530", 170_052_171, "cifar-10-binary.tar.gz",
                          _CIFAR_BIN, "cifar-10-batches-bin"),
        fallback="fashion-mnist"),
    "fashion-mnist": Dataset(
        "fashion-mnist", files=("fashion-mnist",), system=("/usr/share/datasets/fashion-mnist",),
        install="apt-get install dataset-fashion-mnist (make setup does it when run as root)"),
}


@dataclass(frozen=True)
class Resolved:
    requested: str  # what the recipe asked for
    dataset: str  # what is used (another name after a fallback)
    path: str
    source: str  # path | $VITFORGE_DATA | shared | user cache | system | download
    note: str = ""

    def line(self) -> str:
        what = self.requested if self.dataset == self.requested else f"{self.dataset} (instead of {self.requested})"
        return f"data: {what} from {self.path} ({self.source})" + (f"; {self.note}" if self.note else "")

    def to_dict(self) -> dict:
        return asdict(self)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _local(ds: Dataset) -> tuple[Path, str] | None:
    places = []
    if os.environ.get("VITFORGE_DATA"):
        places.append((Path(os.environ["VITFORGE_DATA"]).expanduser(), "$VITFORGE_DATA"))
    if not _flag("VITFORGE_NO_SHARED"):
        places.append((REPO.parent / "shared" / "datasets", "shared"))
    places.append((cache_dir("datasets"), "user cache"))
    for folder, label in places:
        for f in ds.files:
            if (folder / f).exists():
                return folder / f, label
    for p in ds.system:
        if Path(p).exists():
            return Path(p), "system"
    return None


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(dl: Download, dest_dir: Path) -> Path:
    """Download ``dl`` into ``dest_dir`` (resuming a ``.part`` file), check size and MD5, move into place."""
    final, part = dest_dir / dl.filename, dest_dir / f"{dl.filename}.part"
    if final.is_file():
        return final
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(dl.url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_S) as resp:
        if have and resp.status != 206:  # the server ignored the range: start over
            have = 0
        with open(part, "ab" if have else "wb") as out:
            bar = ui.bar(total=dl.size, initial=have, desc=f"downloading {dl.filename}", unit="B")
            left = dl.size - have + 1  # never more than the published size (+1 byte, to notice a longer file)
            for chunk in iter(lambda: resp.read(min(1 << 20, left)), b""):
                out.write(chunk)
                bar.update(len(chunk))
                left -= len(chunk)
                if left <= 0:
                    break
            bar.close()
    size = part.stat().st_size
    if size != dl.size or _md5(part) != dl.md5:
        part.unlink()
        raise OSError(f"{dl.url} gave {size} bytes that do not match the published size/MD5 (removed)")
    os.replace(part, final)
    return final


def extract_members(archive: Path, members: tuple[str, ...], dest: Path) -> Path:
    """Extract exactly ``members`` (regular files) from a tar archive into ``dest``, atomically."""
    with atomic_dir(dest) as tmp, tarfile.open(archive, "r:*") as tar:
        for name in members:
            info = tar.getmember(name)
            if not info.isfile():
                raise tarfile.TarError(f"{name} is not a regular file")
            src = tar.extractfile(info)
            out = tmp / Path(name).name
            out.write_bytes(src.read())
    return dest


def _download(ds: Dataset) -> tuple[Path | None, str]:
    dl = ds.download
    if dl is None:
        return None, "no download source"
    if _flag("VITFORGE_OFFLINE"):
        return None, "downloads off (VITFORGE_OFFLINE)"
    try:
        archive = fetch(dl, cache_dir("downloads"))
        return extract_members(archive, dl.members, cache_dir("datasets") / dl.folder), ""
    except (urllib.error.URLError, OSError, tarfile.TarError, KeyError) as e:
        return None, f"download failed ({getattr(e, 'reason', e)})"


@lru_cache(maxsize=None)
def resolve(spec: str) -> Resolved:
    """Where the data named (or located) by ``spec`` comes from; announced once per process."""
    if spec not in CATALOG:
        p = Path(spec).expanduser()
        if not p.exists():
            raise UserError(f"data path {spec} does not exist", "pass an image folder, a .tar.gz, an .npz, or a "
                            f"known dataset name ({', '.join(CATALOG)})")
        return Resolved(spec, spec, str(p), "path")
    r = _resolve_named(CATALOG[spec])
    ui.info(r.line())
    return r


def _resolve_named(ds: Dataset, why: str = "") -> Resolved:
    hit = _local(ds)
    if hit:
        return Resolved(ds.name, ds.name, str(hit[0]), hit[1])
    path, failed = _download(ds)
    if path is not None:
        return Resolved(ds.name, ds.name, str(path), "download", f"from {ds.download.url}")
    missing = f"{ds.name} is not on this machine ({failed})"
    if ds.fallback:
        r = _resolve_named(CATALOG[ds.fallback], missing)
        return Resolved(ds.name, r.dataset, r.path, r.source, "; ".join(x for x in (missing, r.note) if x))
    looked = [f"$VITFORGE_DATA/{ds.files[0]}", f"../shared/datasets/{ds.files[0]}",
              f"~/.cache/vitforge/datasets/{ds.files[0]}", *ds.system]
    raise UserError(f"dataset {ds.name!r} was not found (looked in {', '.join(looked)}; {failed})"
                    + (f"; {why}" if why else ""),
                    (f"install it: {ds.install}, or " if ds.install else "") + "pass --data PATH or set VITFORGE_DATA")


__all__ = ["CATALOG", "Dataset", "Download", "Resolved", "extract_members", "fetch", "resolve"]
