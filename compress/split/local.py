"""Part servers started here, one process each, e.g. for ``compress infer`` without ``--endpoints``.

Each binds an ephemeral loopback port and writes it to a ready file; we wait for all of them. A server that
exits first (a sha256 mismatch, a bad manifest) makes this fail with its own one-line error.

``method="fork"`` (default on POSIX): the server is forked from this process, which has the runtime loaded
already; a fresh interpreter spends seconds importing it. The child only builds its own ZeroMQ context and
ONNX Runtime session and leaves with ``os._exit``. ``method="exec"`` runs ``python -m compress serve-part``.

    with LocalParts("split/split.json") as lp:
        with SplitClient("split/split.json", lp.endpoints) as c: ...
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import UserError


class _Forked:
    """The few Popen methods LocalParts uses, for a forked child."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None):
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.01)
        return self.returncode


def _fork_server(manifest: str, i: int, ready: Path, err: Path) -> _Forked:
    pid = os.fork()
    if pid:
        return _Forked(pid)
    code = 0  # the child: serve, then leave without running the parent's atexit handlers or finalisers
    try:
        from .. import ui
        from .serve import serve_part

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        ui.set_quiet(True)
        serve_part(manifest, i, "tcp://127.0.0.1:*", str(ready), threads=1)
    except UserError as e:
        err.write_text(f"error: {e}\n")
        code = 2
    except BaseException as e:  # noqa: BLE001 - a child must never return into the parent's code
        err.write_text(f"error: internal error in part server {i} ({type(e).__name__}: {e})\n")
        code = 1
    finally:
        os._exit(code)


class LocalParts:
    def __init__(self, manifest: str | Path, parts: list[int] | None = None, start_timeout_s: float = 120.0,
                 method: str | None = None):
        from . import manifest as mf

        m, _ = mf.load(manifest)  # fail here, once, on a malformed manifest
        self.manifest = str(manifest)
        self.parts = list(range(len(m.parts))) if parts is None else list(parts)
        self.timeout = start_timeout_s
        self.method = method or ("fork" if hasattr(os, "fork") else "exec")
        if self.method not in ("fork", "exec"):
            raise UserError(f"unknown start method {self.method!r}", "use fork or exec")
        self.procs: dict = {}
        self.exit_codes: dict[int, int] = {}  # after stop(): each server's exit code (0: stopped cleanly)
        self.endpoints: list[str] = []
        self._tmp = None

    def _spawn(self, i: int, d: Path):
        ready, err = d / f"{i}.json", d / f"{i}.err"
        if self.method == "fork":
            return _fork_server(self.manifest, i, ready, err)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(err, "wb") as fh:
            return subprocess.Popen(
                [sys.executable, "-m", "compress", "serve-part", self.manifest, "--part", str(i),
                 "--endpoint", "tcp://127.0.0.1:*", "--ready-file", str(ready), "--quiet"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fh, env=env)

    def start(self) -> list[str]:
        self._tmp = tempfile.TemporaryDirectory(prefix="vitforge-parts-")
        d = Path(self._tmp.name)
        try:
            for i in self.parts:
                self.procs[i] = self._spawn(i, d)
            end = time.monotonic() + self.timeout
            ready: dict[int, str] = {}
            while len(ready) < len(self.parts):
                for i, p in self.procs.items():
                    f = d / f"{i}.json"
                    if i in ready:
                        continue
                    if f.is_file():
                        ready[i] = json.loads(f.read_text())["endpoint"]
                    elif p.poll() is not None:
                        e = d / f"{i}.err"
                        lines = e.read_text(errors="replace").strip().splitlines() if e.is_file() else []
                        why = lines[-1] if lines else f"exit code {p.returncode}"
                        raise UserError(f"part server {i} did not start: {why.removeprefix('error: ')}",
                                        "fix the part or the manifest and retry")
                if time.monotonic() > end:
                    raise UserError(f"part servers {sorted(set(self.parts) - set(ready))} not ready within "
                                    f"{self.timeout:.0f} s", "check the machine's load and retry")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        self.endpoints = [ready[i] for i in self.parts]
        return self.endpoints

    def kill(self, i: int) -> None:
        """SIGKILL one server (tests: a part that dies without a word)."""
        self.procs[i].kill()
        self.procs[i].wait()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.exit_codes = {i: p.returncode for i, p in self.procs.items()}
        self.procs = {}
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
