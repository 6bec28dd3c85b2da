"""One part server: a sub-model in ONNX Runtime (1 intra-op thread) behind a ZeroMQ ROUTER socket.

    serve_part("split/split.json", 0, "tcp://127.0.0.1:5555")      # blocks until SIGTERM / SIGINT

The artifact's sha256 is checked against the manifest before ONNX Runtime opens it. Requests are checked
(shape [N, 3, size, size], 1 <= N <= runtime.max_batch, float32, byte count) before inference; a malformed
request gets an error reply, never a crash. Every reply carries the manifest's build id.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np

from .. import ui
from ..errors import UserError
from . import manifest as mf
from .wire import BadMessage, decode, encode


class PartServer:
    def __init__(self, manifest_path: str | Path, index: int, threads: int = 1):
        from ..runtime import ort_session

        self.manifest, folder = mf.load(manifest_path)
        self.part = self.manifest.part(index)
        artifact = mf.verified(folder, self.part.artifact, self.part.sha256, f"part {index} artifact")
        self.session = ort_session(artifact, threads)
        self.input = self.session.get_inputs()[0].name
        width = self.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != self.part.output_dim:
            raise UserError(f"part {index} artifact gives {width} outputs, the manifest says {self.part.output_dim}",
                            "rebuild the deployment: the artifact and the manifest disagree")
        self.served = 0

    def reply(self, frames: list[bytes]) -> list[bytes]:
        base = {"part": self.part.index, "build_id": self.manifest.build_id}
        try:
            header, x = decode(frames)
            base["id"] = header.get("id")
            op = header.get("op")
            if op == "health":
                return encode({**base, "ok": True, "op": "health", "served": self.served, "pid": os.getpid()})
            if op != "infer":
                raise BadMessage(f"unknown op {str(op)[:20]!r}")
            s = self.part.preprocess.size
            if x is None or x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s) or \
                    not 1 <= x.shape[0] <= self.manifest.runtime.max_batch:
                raise BadMessage(f"infer needs images [N, 3, {s}, {s}] with 1 <= N <= "
                                 f"{self.manifest.runtime.max_batch}")
            t0 = time.perf_counter()
            y = self.session.run(None, {self.input: x})[0]
            self.served += 1
            return encode({**base, "ok": True, "ms": (time.perf_counter() - t0) * 1e3},
                          np.asarray(y, np.float32).reshape(x.shape[0], -1))
        except BadMessage as e:
            return encode({**base, "ok": False, "error": str(e)})
        except Exception as e:  # noqa: BLE001 - ONNX Runtime failed on a well-formed request: say so, keep serving
            return encode({**base, "ok": False, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"})


def serve_part(manifest_path: str | Path, index: int, endpoint: str | None = None, ready_file: str | None = None,
               threads: int = 1, stop=None) -> dict:
    """Serve part ``index`` on ``endpoint`` (default: the manifest's, else an ephemeral loopback port) until
    SIGTERM/SIGINT (or ``stop()`` returns True). ``ready_file`` receives {"endpoint", "pid"} once bound."""
    import zmq

    server = PartServer(manifest_path, index, threads)
    endpoint = endpoint or server.part.endpoint or "tcp://127.0.0.1:*"
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    s = server.part.preprocess.size
    sock.setsockopt(zmq.MAXMSGSIZE, server.manifest.runtime.max_batch * 3 * s * s * 4 + 65536)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        sock.close()
        ctx.term()
        raise UserError(f"cannot serve on {endpoint} ({e})", "give a free tcp://HOST:PORT with --endpoint") from None
    bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    stopping = []
    old = {sig: signal.signal(sig, lambda *_: stopping.append(1)) for sig in (signal.SIGTERM, signal.SIGINT)}
    if ready_file:
        from ..utils.io import write_text

        write_text(ready_file, json.dumps({"endpoint": bound, "pid": os.getpid(), "part": index,
                                           "build_id": server.manifest.build_id}))
    ui.info(f"part {index} of build {server.manifest.build_id} serving on {bound}")
    try:
        while not stopping and not (stop and stop()):
            if not sock.poll(100, zmq.POLLIN):
                continue
            frames = sock.recv_multipart()
            if len(frames) < 2:  # no routing identity + payload: nothing to answer
                continue
            sock.send_multipart([frames[0], *server.reply(frames[1:])])
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        sock.close()
        ctx.term()
    return {"part": index, "endpoint": bound, "build_id": server.manifest.build_id, "served": server.served}

