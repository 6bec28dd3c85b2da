"""The split client: scatter an image batch to every part at once, gather under a deadline, fuse.

    with SplitClient("split/split.json", ["tcp://10.0.0.2:5555", "tcp://10.0.0.3:5555"]) as c:
        r = c.infer(images)          # images: [N, 3, S, S] preprocessed, or image paths
        r.pred, r.degraded, r.missing

One call never outlasts ``runtime.deadline_ms`` (plus the fusion itself): the deadline is cut into
``retries + 1`` equal attempts; after each, the parts that have not answered get a fresh socket (so a
request queued for a dead server is dropped) and the request again. Replies carry the request id (late
replies to an earlier attempt are dropped) and the server's build id: a build id other than the manifest's
raises ``BuildMismatch`` (exit 2), whatever the degraded policy; such parts are never fused.

A part that did not answer in time, or answered with an error or a malformed tensor, is *missing*. The
manifest's ``degraded.policy`` then decides: ``fail`` raises ``PartsUnavailable`` (exit 4, naming the
parts); ``fuse_available`` fuses the parts that answered (missing slots: zeros, mask 0; fusion.py) when at
least ``degraded.min_parts`` did, and returns the result with ``degraded=True`` and ``missing`` listed. A
result with ``degraded=False`` always has every part's answer. One client per thread (ZeroMQ sockets are not
thread-safe); several clients may share the part servers.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import manifest as mf
from .fusion import assemble
from .wire import BadMessage, decode, encode

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


class BuildMismatch(UserError):
    """A part serves another build than the manifest's: its outputs are never fused."""


class PartsUnavailable(UserError):
    """Parts did not answer and the manifest's degraded policy says fail (or too few answered)."""

    exit_code = 4


@dataclass
class SplitResult:
    logits: np.ndarray  # [N, classes]
    degraded: bool  # True: at least one part is missing from the fusion
    missing: list[int] = field(default_factory=list)
    errors: dict = field(default_factory=dict)  # part -> why it is missing
    build_id: str = ""
    wall_ms: float = 0.0
    part_ms: dict = field(default_factory=dict)  # part -> server-side inference ms

    @property
    def pred(self) -> np.ndarray:
        return self.logits.argmax(1)

    def probs(self) -> np.ndarray:
        z = self.logits - self.logits.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)


class SplitClient:
    def __init__(self, manifest: str | Path, endpoints: list[str] | None = None, deadline_ms: int | None = None,
                 retries: int | None = None):
        import zmq

        from ..runtime import ort_session

        self.manifest, folder = mf.load(manifest)
        m = self.manifest
        fusion_path = mf.verified(folder, m.fusion.onnx, m.fusion.onnx_sha256, "fusion head")
        mf.verified(folder, m.fusion.weights, m.fusion.weights_sha256, "fusion weights")
        self.fusion = ort_session(fusion_path, 1)
        width = self.fusion.get_inputs()[0].shape[-1]
        want = sum(p.output_dim for p in m.parts) + len(m.parts)
        if width != want:
            raise UserError(f"fusion head takes {width} inputs, the manifest's parts give {want} (outputs + mask)",
                            "rebuild the deployment: the head and the parts are from different builds")
        self.deadline_ms = deadline_ms if deadline_ms is not None else m.runtime.deadline_ms
        self.retries = retries if retries is not None else m.runtime.retries
        K = len(m.parts)
        if endpoints is None:
            endpoints = [m.part(i).endpoint for i in range(K)]
            if None in endpoints:
                raise UserError(f"no endpoint for part {endpoints.index(None)}",
                                "pass --endpoints (one per part) or put endpoint in the manifest's parts")
        if len(endpoints) != K:
            raise UserError(f"{len(endpoints)} endpoints for {K} parts", "give one endpoint per part, in part order")
        self.endpoints = list(endpoints)
        self._zmq = zmq
        self.ctx = zmq.Context()
        self.socks = {i: self._connect(i) for i in range(K)}
        self._ids = itertools.count(1)

    # -- transport ---------------------------------------------------------------------
    def _connect(self, i: int):
        zmq = self._zmq
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
        try:
            s.connect(self.endpoints[i])
        except zmq.ZMQError as e:
            s.close()
            raise UserError(f"endpoint {self.endpoints[i]!r} for part {i} is not valid ({e})",
                            "use tcp://HOST:PORT") from None
        return s

    def _reset(self, i: int) -> None:
        self.socks[i].close()
        self.socks[i] = self._connect(i)

    def _scatter(self, op: str, payload: dict[int, np.ndarray | None], deadline_ms: float | None = None):
        """Send ``op`` to every part in ``payload``; ({part: (header, array)}, {part: error}) within the deadline."""
        zmq = self._zmq
        budget = (deadline_ms if deadline_ms is not None else self.deadline_ms) / 1e3
        start = time.monotonic()
        attempts = self.retries + 1
        pending, got, errors = set(payload), {}, {}
        rid = next(self._ids)
        for attempt in range(attempts):
            for i in sorted(pending):
                if attempt:
                    self._reset(i)
                try:  # never block on a part whose queue is full
                    self.socks[i].send_multipart(encode({"op": op, "id": rid}, payload[i]), zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    pass  # counted as no answer; the socket is renewed below
            end = start + budget * (attempt + 1) / attempts
            while pending:
                left = end - time.monotonic()
                if left <= 0:
                    break
                poller = zmq.Poller()
                for i in pending:
                    poller.register(self.socks[i], zmq.POLLIN)
                ready = dict(poller.poll(max(1, int(left * 1e3))))
                for i in sorted(pending):
                    if self.socks[i] not in ready:
                        continue
                    try:
                        header, arr = decode(self.socks[i].recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        continue
                    except BadMessage as e:
                        errors[i] = f"malformed reply ({e})"
                        pending.discard(i)
                        continue
                    if header.get("id") != rid:
                        continue  # a late reply to an earlier call or attempt
                    self._check_build(i, header)
                    pending.discard(i)
                    if header.get("ok") is True:
                        got[i] = (header, arr)
                    else:
                        errors[i] = f"part error: {str(header.get('error'))[:200]}"
            if not pending:
                break
        for i in pending:
            errors[i] = f"no answer from {self.endpoints[i]} within {budget * 1e3:.0f} ms ({attempts} attempt(s))"
            self._reset(i)  # requests queued for it are dropped; the next call starts clean
        return got, errors

    def _check_build(self, i: int, header: dict) -> None:
        b = header.get("build_id")
        if b != self.manifest.build_id:
            raise BuildMismatch(f"part {i} at {self.endpoints[i]} serves build {str(b)[:64]!r}, the manifest is build "
                                f"{self.manifest.build_id!r}: refusing to fuse parts from different builds",
                                "serve every part from the same build's manifest")
        if header.get("part") != i:
            raise BuildMismatch(f"{self.endpoints[i]} serves part {header.get('part')!r}, not part {i}",
                                "give the endpoints in part order")

    # -- API -----------------------------------------------------------------------------
    def health(self, deadline_ms: float | None = None) -> list[dict]:
        """Per part: ok, build id and round trip, or why not (a build mismatch raises)."""
        t0 = time.monotonic()
        got, errors = self._scatter("health", {i: None for i in self.socks}, deadline_ms)
        ms = (time.monotonic() - t0) * 1e3
        return [{"part": i, "endpoint": self.endpoints[i], "ok": i in got,
                 **({"build_id": got[i][0]["build_id"], "served": got[i][0].get("served")} if i in got else
                    {"error": errors.get(i)}), "round_trip_ms": round(ms, 2)} for i in sorted(self.socks)]

    def inputs(self, images) -> dict[int, np.ndarray]:
        """Per part, its preprocessed batch [N, 3, S, S]: from an array (already preprocessed) or image paths."""
        m = self.manifest
        if isinstance(images, np.ndarray):
            x = np.ascontiguousarray(images, np.float32)
            out = {}
            for p in m.parts:
                s = p.preprocess.size
                if x.ndim != 4 or x.shape[1:] != (3, s, s):
                    raise UserError(f"part {p.index} takes images [N, 3, {s}, {s}], not {list(x.shape)}",
                                    "preprocess as the manifest says, or pass image files")
                out[p.index] = x
            return out
        cache: dict = {}
        out = {}
        for p in m.parts:
            key = p.preprocess
            if key not in cache:
                cache[key] = preprocess_files(list(images), key)
            out[p.index] = cache[key]
        return out

    def infer(self, images) -> SplitResult:
        """Fused logits for a batch (at most runtime.max_batch images), with the degraded policy applied."""
        m = self.manifest
        t0 = time.monotonic()
        x = self.inputs(images)
        n = next(iter(x.values())).shape[0]
        if not 1 <= n <= m.runtime.max_batch:
            raise UserError(f"{n} images in one call", f"send 1..{m.runtime.max_batch} per call")
        got, errors = self._scatter("infer", x)
        outs = {}
        for i, (_header, arr) in got.items():
            d = m.part(i).output_dim
            if arr is None or arr.shape != (n, d) or not np.isfinite(arr).all():
                errors[i] = f"reply of shape {None if arr is None else list(arr.shape)} (want [{n}, {d}]) or not finite"
            else:
                outs[i] = arr
        missing = sorted(set(range(len(m.parts))) - set(outs))
        if missing:
            why = "; ".join(f"part {i}: {errors.get(i, 'missing')}" for i in missing)
            if m.degraded.policy == "fail":
                raise PartsUnavailable(f"parts {missing} unavailable ({why})",
                                       "the manifest's degraded policy is 'fail'; restart the part servers")
            if len(outs) < m.degraded.min_parts:
                raise PartsUnavailable(f"only {len(outs)} of {len(m.parts)} parts answered, fewer than degraded."
                                       f"min_parts={m.degraded.min_parts} ({why})", "restart the part servers")
        dims = [m.part(i).output_dim for i in m.fusion.order]
        feats = assemble([outs.get(i) for i in m.fusion.order], dims, n)
        logits = self.fusion.run(None, {self.fusion.get_inputs()[0].name: feats})[0]
        return SplitResult(np.asarray(logits, np.float32), bool(missing), missing, {i: errors[i] for i in missing},
                           m.build_id, (time.monotonic() - t0) * 1e3, {i: h.get("ms") for i, (h, _) in got.items()})

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def image_files(specs: list[str]) -> list[Path]:
    """Files given, and the image files in folders given (sorted, recursive)."""
    out = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"image {p} does not exist", "give image files or folders of images")
    if not out:
        raise UserError(f"no image files in {', '.join(specs)}", f"use {', '.join(sorted(IMAGE_SUFFIXES))} files")
    return out


def preprocess_files(paths: list, pre) -> np.ndarray:
    """[N, 3, S, S] float32, as compress.data.Preprocess (the same resize, crop and normalisation)."""
    from PIL import Image, UnidentifiedImageError

    from ..data import Preprocess

    prep = Preprocess(pre.size, tuple(pre.mean), tuple(pre.std), pre.interpolation, pre.crop_pct, pre.resize)
    arrs = []
    for f in paths:
        try:
            with Image.open(f) as im:
                arrs.append(prep(im.convert("RGB")).numpy())
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise UserError(f"cannot read image {f} ({' '.join(str(e).split())[:120]})",
                            "give JPEG/PNG image files") from None
    return np.stack(arrs).astype(np.float32)
