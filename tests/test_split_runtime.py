"""The split runtime over real processes on loopback: K part servers (``compress serve-part`` subprocesses, ZeroMQ),
the client scattering, gathering and fusing. Sub-models and fusion head are tiny and randomly initialised
(tests/split_fixtures.py): these tests check the runtime (equality with the in-memory ensemble, degraded modes,
refusals), never accuracy.

Float tolerance: ONNX Runtime vs PyTorch on the same fp32 graphs, |fused logits difference| <= 1e-4 (seen: 6e-8),
and the argmax identical.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import split_fixtures as sf
import zmq

from compress.errors import UserError
from compress.split import manifest as mf
from compress.split.client import (
    BuildMismatch,
    PartsUnavailable,
    SplitClient,
    preprocess_files,
)
from compress.split.local import LocalParts

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4
DEADLINE_MS = 800
ORDER = [2, 0, 1]  # fusion order differs from part order on purpose


def _variant(src: Path, dst: Path, **changes) -> Path:
    """A copy of a bundle with manifest fields changed (files copied, sha256s unchanged)."""
    shutil.copytree(src.parent, dst)
    data = json.loads((dst / "split.json").read_text())
    for k, v in changes.items():
        data[k] = v
    (dst / "split.json").write_text(json.dumps(data))
    return dst / "split.json"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    path, models, head, _ = sf.build(d / "a", 3, "build-a", degraded={"policy": "fuse_available"},
                                           runtime={"deadline_ms": DEADLINE_MS, "retries": 1}, order=ORDER)
    lp = LocalParts(path)
    lp.start()
    yield {"path": path, "models": models, "head": head, "parts": lp, "dir": d}
    lp.stop()


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, sf.SIZE, sf.SIZE)).astype(np.float32)


def _cli(*args, env=None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "compress", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _one_line_error(p: subprocess.Popen, code: int, needle: str, timeout: float = 120) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == code, (p.returncode, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    return lines[0]


def test_fused_equals_in_memory_ensemble(deployment):
    x = _images(9)
    with SplitClient(deployment["path"], deployment["parts"].endpoints) as c:
        r = c.infer(x)
        health = c.health()
    ref = sf.ensemble(deployment["models"], deployment["head"], ORDER, x)
    assert not r.degraded and r.missing == [] and r.build_id == "build-a"
    assert np.abs(r.logits - ref).max() <= TOL
    assert (r.pred == ref.argmax(1)).all()
    assert [h["ok"] for h in health] == [True] * 3 and {h["build_id"] for h in health} == {"build-a"}
    m, _ = mf.load(deployment["path"])  # the assignment plan went into the manifest (optimum: 22 ms)
    assert [p.device for p in m.parts] == [r["device"] for r in m.plan["parts"]] and m.plan["makespan_ms"] == 22.0
    # a different fusion order would give a different answer: the order is really applied
    wrong = sf.ensemble(deployment["models"], deployment["head"], [0, 1, 2], x)
    assert np.abs(wrong - ref).max() > 1e-3


def test_server_answers_malformed_requests_and_keeps_serving(deployment):
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(deployment["parts"].endpoints[0])
    try:
        bad = [[b"not json"], [json.dumps({"op": "infer", "id": 1}).encode()],  # no tensor
               [json.dumps({"op": "infer", "id": 2, "shape": [1, 3, 5, 5], "dtype": "float32"}).encode(), b"\0" * 300],
               [json.dumps({"op": "infer", "id": 3, "shape": [1, 3, 16, 16], "dtype": "float32"}).encode(), b"\0" * 7],
               [json.dumps({"op": "rm -rf", "id": 4}).encode()]]
        for frames in bad:
            s.send_multipart(frames)
            header = json.loads(s.recv_multipart()[0])
            assert header["ok"] is False and header["build_id"] == "build-a" and header["error"]
    finally:
        s.close()
        ctx.term()
    with SplitClient(deployment["path"], deployment["parts"].endpoints) as c:
        assert not c.infer(_images(2)).degraded


class _LossyParts:
    """In-process stand-ins for the 3 part servers (real PartServer replies) that drop the first ``drop`` infer
    requests of part 0: a lost request, for the retry logic."""

    def __init__(self, path, drop: int):
        import queue

        from compress.split.serve import PartServer

        self.servers = [PartServer(path, i) for i in range(3)]
        self.drop, self.stop, self.q = drop, threading.Event(), queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.endpoints = self.q.get(timeout=10)

    def _run(self):
        ctx = zmq.Context()
        socks = [ctx.socket(zmq.ROUTER) for _ in range(3)]
        for s in socks:
            s.setsockopt(zmq.LINGER, 0)
            s.bind("tcp://127.0.0.1:*")
        self.q.put([s.getsockopt_string(zmq.LAST_ENDPOINT) for s in socks])
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        while not self.stop.is_set():
            for s, _ in poller.poll(50):
                frames = s.recv_multipart()
                i = socks.index(s)
                if i == 0 and self.drop > 0 and json.loads(frames[1])["op"] == "infer":
                    self.drop -= 1
                    continue
                s.send_multipart([frames[0], *self.servers[i].reply(frames[1:])])
        for s in socks:
            s.close()
        ctx.term()

    def close(self):
        self.stop.set()
        self.thread.join(10)


@pytest.mark.parametrize("retries", [1, 0])
def test_retry_recovers_a_lost_request(deployment, retries):
    """Part 0 loses the first request: with a retry the call completes (after the first attempt's share of the
    deadline); without one it is degraded with part 0 missing."""
    x = _images(3, seed=7)
    lossy = _LossyParts(deployment["path"], drop=1)
    try:
        with SplitClient(deployment["path"], lossy.endpoints, retries=retries) as c:
            t0 = time.monotonic()
            r = c.infer(x)
            wall = time.monotonic() - t0
    finally:
        lossy.close()
    if retries:
        assert not r.degraded and DEADLINE_MS / 2e3 <= wall <= DEADLINE_MS / 1e3 + 0.5
        ref = sf.ensemble(deployment["models"], deployment["head"], ORDER, x)
    else:
        assert r.degraded and r.missing == [0] and wall <= DEADLINE_MS / 1e3 + 0.5
        ref = sf.ensemble(deployment["models"], deployment["head"], ORDER, x, missing={0})
    assert np.abs(r.logits - ref).max() <= TOL


def test_busy_endpoint_and_artifact_width_are_one_line(deployment, tmp_path):
    from compress.split.serve import PartServer, serve_part

    with pytest.raises(UserError, match="cannot serve on tcp://127.0.0.1:"):
        serve_part(deployment["path"], 0, deployment["parts"].endpoints[0])
    shutil.copytree(deployment["path"].parent, tmp_path / "m")
    data = json.loads((tmp_path / "m" / "split.json").read_text())
    data["parts"][0].update(output="features", output_dim=4)
    (tmp_path / "m" / "split.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="part 0 artifact gives 3 outputs, the manifest says 4"):
        PartServer(tmp_path / "m" / "split.json", 0)


def test_build_mismatch_is_refused(deployment):
    other = _variant(deployment["path"], deployment["dir"] / "b", build_id="build-b")
    with SplitClient(other, deployment["parts"].endpoints) as c:
        with pytest.raises(BuildMismatch, match="build 'build-a', the manifest is build 'build-b'"):
            c.infer(_images(2))
        with pytest.raises(BuildMismatch):
            c.health()


def test_cli_errors_are_one_line(deployment, tmp_path, capsys):
    """Real `compress` subprocesses, run side by side: exit 2 (4 for an unavailable part), one stderr line."""
    d, path = deployment["dir"], deployment["path"]
    img = tmp_path / "img"
    img.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(img / "0.png")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"format": "vitforge-split/1", "parts": [')
    corrupt = d / "corrupt"
    shutil.copytree(path.parent, corrupt)
    with open(corrupt / "part1.onnx", "r+b") as f:  # one byte changed
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    other = d / "b" / "split.json" if (d / "b").exists() else _variant(path, d / "b", build_id="build-b")
    strict = _variant(path, d / "strict", degraded={"policy": "fail"})
    exec_parts = LocalParts(corrupt / "split.json", method="exec")  # the `compress serve-part` start path
    with socket_port() as dead:
        eps = deployment["parts"].endpoints
        t0 = time.monotonic()
        procs = {
            "json": _cli("infer", str(bad_json), "--images", str(img)),
            "sha": _cli("serve-part", str(corrupt / "split.json"), "--part", "1"),
            "build": _cli("infer", str(other), "--images", str(img), "--endpoints", *eps),
        }
        with pytest.raises(UserError, match="part server 1 did not start: part 1 artifact part1.onnx does not match"):
            exec_parts.start()
        assert exec_parts.procs == {}  # the others were stopped
        _one_line_error(procs["json"], 2, "is not valid JSON")
        _one_line_error(procs["sha"], 2, "does not match the manifest's sha256")
        _one_line_error(procs["build"], 2, "refusing to fuse parts from different builds")
        # a part nobody serves, policy 'fail': exit 4, one line, within the health deadline (in this process)
        from compress.cli import main

        t1 = time.monotonic()
        assert main(["infer", str(strict), "--images", str(img), "--endpoints", eps[0], eps[1],
                     f"tcp://127.0.0.1:{dead}"]) == 4
        assert time.monotonic() - t1 < DEADLINE_MS / 1e3 + 1.0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "parts [2] unavailable" in err[0], err
    assert time.monotonic() - t0 < 120


class socket_port:
    """A loopback port nothing listens on (bound then released)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc):
        return False


def _weights_outside(d):
    d["fusion"]["weights"] = "../../etc/passwd"


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(parts="zero"), "parts"),
    (_weights_outside, "fusion weights '../../etc/passwd' is not a plain relative path"),
    (lambda d: d.update(build_id="a b"), "build_id"),
    (lambda d: d.update(surprise=1), "surprise"),
    (lambda d: d.update(num_classes=8), "cover 0..7"),
    (lambda d: d["fusion"].update(onnx_sha256="0" * 64), "fusion head fusion.onnx does not match"),
    (lambda d: d["degraded"].update(policy="maybe"), "degraded.policy"),
    (lambda d: d["runtime"].update(deadline_ms=-1), "runtime.deadline_ms"),
    (lambda d: d["parts"][0].update(output="features", output_dim=4), "fusion head takes 10 inputs, the manifest's"),
])
def test_malformed_manifests_one_line_in_process(deployment, tmp_path, capsys, mutate, needle):
    """The same CLI path in this process (fast): exit 2 and one line naming the field or file."""
    from PIL import Image

    from compress.cli import main

    shutil.copytree(deployment["path"].parent, tmp_path / "m")
    data = json.loads((tmp_path / "m" / "split.json").read_text())
    mutate(data)
    (tmp_path / "m" / "split.json").write_text(json.dumps(data))
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "0.png")
    assert main(["infer", str(tmp_path / "m" / "split.json"), "--images", str(tmp_path / "0.png"),
                 "--endpoints", *deployment["parts"].endpoints]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_symlink_out_of_the_folder_is_refused(deployment, tmp_path):
    shutil.copytree(deployment["path"].parent, tmp_path / "m")
    outside = tmp_path / "outside.onnx"
    shutil.copy(tmp_path / "m" / "part0.onnx", outside)
    (tmp_path / "m" / "link.onnx").symlink_to(outside)
    m, folder = mf.load(tmp_path / "m" / "split.json")
    with pytest.raises(UserError, match="points outside the manifest's folder"):
        mf.verified(folder, "link.onnx", m.parts[0].sha256, "part 0 artifact")


def test_cli_infer_starts_parts_itself(tmp_path):
    """`compress infer` with no endpoints: starts K=2 servers, fuses, stops them; equals the in-memory ensemble."""
    path, models, head, _ = sf.build(tmp_path / "k2", 2, "build-k2", seed=3)
    img = tmp_path / "img"
    img.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(img / f"{i}.png")
    p = _cli("infer", str(path), "--images", str(img), "--json")
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    res = json.loads(out)
    files = sorted(img.glob("*.png"))
    m, _ = mf.load(path)
    x = preprocess_files(files, m.parts[0].preprocess)
    ref = sf.ensemble(models, head, [0, 1], x)
    assert [r["file"] for r in res["images"]] == [str(f) for f in files]
    assert [r["pred"] for r in res["images"]] == ref.argmax(1).tolist()
    assert not res["degraded"] and all(h["ok"] for h in res["health"])


def test_killing_a_part_mid_run_degrades_within_the_deadline(deployment):
    """Runs last (it kills part 1). fuse_available: every result is either complete and equal to the full ensemble,
    or flagged degraded with missing == [1] and equal to the ensemble with part 1 zeroed and masked; no call
    outlasts the deadline. The 'fail' policy on the same servers: PartsUnavailable within the deadline."""
    x = _images(4, seed=5)
    full = sf.ensemble(deployment["models"], deployment["head"], ORDER, x)
    part1_missing = sf.ensemble(deployment["models"], deployment["head"], ORDER, x, missing={1})
    results, walls = [], []
    killed = threading.Event()

    def killer():
        time.sleep(0.3)
        deployment["parts"].kill(1)
        killed.set()

    with SplitClient(deployment["path"], deployment["parts"].endpoints) as c:
        t = threading.Thread(target=killer)
        t.start()
        end = time.monotonic() + 30
        while (not killed.is_set() or sum(r.degraded for r in results) < 3) and time.monotonic() < end:
            t0 = time.monotonic()
            results.append(c.infer(x))
            walls.append(time.monotonic() - t0)
        t.join()
        assert max(walls) <= DEADLINE_MS / 1e3 + 0.5, max(walls)
        good = [r for r in results if not r.degraded]
        bad = [r for r in results if r.degraded]
        assert good and len(bad) >= 3
        for r in good:
            assert r.missing == [] and np.abs(r.logits - full).max() <= TOL
        for r in bad:
            assert r.missing == [1] and 1 in r.errors and np.abs(r.logits - part1_missing).max() <= TOL
        assert np.abs(part1_missing - full).max() > 1e-3  # the degraded answer differs, and is flagged
    strict = _variant(deployment["path"], deployment["dir"] / "strict2", degraded={"policy": "fail"})
    with SplitClient(strict, deployment["parts"].endpoints) as c:
        t0 = time.monotonic()
        with pytest.raises(PartsUnavailable, match=r"parts \[1\] unavailable"):
            c.infer(x)
        assert time.monotonic() - t0 <= DEADLINE_MS / 1e3 + 0.5
        health = c.health()
        assert [h["ok"] for h in health] == [True, False, True]
    deployment["parts"].stop()  # SIGTERM: the live servers leave cleanly
    assert deployment["parts"].exit_codes == {0: 0, 1: -9, 2: 0}
