"""docs/architecture.md stays true: its worked examples run, and every path it names exists.

The fenced ``python`` blocks run in order, in one fresh interpreter and one namespace, with ``tmp`` (an empty folder),
``images`` (a small image folder with train/test splits) and the device profiles folder pointed at a copy; each
"How to add ..." section must register what it adds and use it (the blocks assert that themselves, and the
interpreter reports each section it finished).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image_folder

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
HOWTO = ("How to add a pass", "How to add a target", "How to add an exporter", "How to add a kernel")

pytestmark = pytest.mark.timeout(600)


def sections() -> dict[str, list[str]]:
    """``## heading`` -> its fenced python blocks, in order."""
    out: dict[str, list[str]] = {}
    for part in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        title, _, body = part.partition("\n")
        out[title.strip()] = re.findall(r"^```python\n(.*?)^```", body, flags=re.M | re.S)
    return out


def test_the_page_has_the_flow_the_map_and_every_howto():
    s = sections()
    assert {"Data flow", "Module map", *HOWTO} <= set(s)
    assert all(s[h] for h in HOWTO), "every how-to has a worked example"
    flow = DOC.read_text().split("## Data flow")[1].split("## Module map")[0]
    steps = re.findall(r"^\d+\. \*\*(\w+)\*\*", flow, flags=re.M)
    assert steps == ["recipe", "plan", "passes", "export", "evaluation", "report", "manifest"]


def test_every_path_named_exists():
    named = set(re.findall(r"`((?:compress|kernels|targets|tests|docs)/[\w./*-]*?)`", DOC.read_text()))
    named = {n.split(":")[0] for n in named}
    assert len(named) > 30
    missing = [n for n in sorted(named) if not (list(REPO.glob(n)) if "*" in n else (REPO / n).exists())]
    assert not missing, missing


def test_worked_examples_run(tmp_path):
    make_image_folder(tmp_path / "images", split="train")
    make_image_folder(tmp_path / "images", split="test")
    (tmp_path / "work").mkdir()
    prelude = (
        "import shutil, sys\nfrom pathlib import Path\n"
        "from compress.targets import devices\n"
        f"tmp, images = Path({str(tmp_path / 'work')!r}), Path({str(tmp_path / 'images')!r})\n"
        "devices.PROFILE_DIR = Path(shutil.copytree(devices.PROFILE_DIR, tmp / 'profiles'))\n")
    script = [prelude]
    for title in HOWTO:
        script += sections()[title] + [f"print('done:', {title!r}, flush=True)\n"]
    script.append("from compress.registry import PASSES, TARGET_EXPORTERS\n"
                  "assert 'scale-norm' in PASSES and 'ort-optimized' in TARGET_EXPORTERS\n")
    r = subprocess.run([sys.executable, "-c", "\n".join(script)], capture_output=True, text=True, cwd=tmp_path,
                       env={**__import__("os").environ, "VITFORGE_CACHE": str(tmp_path / "cache"),
                            "OMP_NUM_THREADS": "1"}, timeout=580)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert [line.split("done: ")[1] for line in r.stdout.splitlines() if line.startswith("done: ")] == list(HOWTO)
    assert not (REPO / "targets" / "profiles" / "my-board.yaml").exists()  # the examples wrote into tmp only
