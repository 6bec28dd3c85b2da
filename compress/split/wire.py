"""Messages between the split client and the part servers, on ZeroMQ (client DEALER -> server ROUTER).

A message is a multipart ZeroMQ message: a small JSON header, then (for tensors) one frame of raw bytes,
C order, the dtype and shape the header states. Requests: ``{"op": "infer"|"health", "id": n,
"shape": [...], "dtype": "float32"}``; replies: ``{"id": n, "ok": bool, "part": i, "build_id": ...,
"shape": [...], "dtype": "float32", "ms": server time, "error": "..."}``. The id pairs a reply with its
request (a late reply to an earlier attempt is dropped); every reply carries the server's build id.
"""
from __future__ import annotations

import json

import numpy as np

MAX_HEADER_BYTES = 4096
DTYPES = {"float32": np.float32}


class BadMessage(ValueError):
    pass


def encode(header: dict, array: np.ndarray | None = None) -> list[bytes]:
    if array is not None:
        a = np.ascontiguousarray(array, np.float32)
        header = {**header, "shape": list(a.shape), "dtype": "float32"}
        return [json.dumps(header).encode(), a.tobytes()]
    return [json.dumps(header).encode()]


def decode(frames: list[bytes]) -> tuple[dict, np.ndarray | None]:
    """(header, array or None); BadMessage on anything malformed (never trusted further)."""
    if not 1 <= len(frames) <= 2 or len(frames[0]) > MAX_HEADER_BYTES:
        raise BadMessage("expected a JSON header frame and at most one data frame")
    try:
        header = json.loads(frames[0])
    except ValueError:
        raise BadMessage("header is not JSON") from None
    if not isinstance(header, dict):
        raise BadMessage("header is not a JSON object")
    if len(frames) == 1:
        return header, None
    shape, dtype = header.get("shape"), header.get("dtype")
    if dtype not in DTYPES or not isinstance(shape, list) or not all(isinstance(s, int) and 0 <= s for s in shape) \
            or len(shape) > 8:
        raise BadMessage("data frame needs a float32 dtype and a shape of at most 8 non-negative ints")
    want = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
    if want != len(frames[1]):
        raise BadMessage(f"data frame has {len(frames[1])} bytes, shape {shape} needs {want}")
    return header, np.frombuffer(frames[1], DTYPES[dtype]).reshape(shape)
