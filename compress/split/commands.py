"""``compress serve-part`` and ``compress infer``: the bodies behind the two CLI commands."""
from __future__ import annotations

import argparse
import sys

from .. import ui


def add_arguments(command: str) -> argparse.ArgumentParser:
    if command == "serve-part":
        p = argparse.ArgumentParser(prog="compress serve-part",
                                    description="Serve one part of a split model (ZeroMQ) until SIGTERM/SIGINT.")
        p.add_argument("manifest", help="the split deployment's split.json")
        p.add_argument("--part", type=int, required=True, help="part index")
        p.add_argument("--endpoint", help="tcp://HOST:PORT to bind (default: the manifest's, else a free loopback "
                                          "port, tcp://127.0.0.1:*)")
        p.add_argument("--ready-file", help="write {endpoint, pid} as JSON here once serving")
    elif command == "infer":
        p = argparse.ArgumentParser(prog="compress infer",
                                    description="Classify images with a split model: scatter to every part, fuse.")
        p.add_argument("manifest", help="the split deployment's split.json")
        p.add_argument("--images", nargs="+", required=True, help="image files or folders")
        p.add_argument("--endpoints", nargs="+", help="one tcp://HOST:PORT per part, in part order (default: the "
                                                      "manifest's; with none there, start the parts here)")
        p.add_argument("--local", action="store_true", help="start the part servers here even if the manifest "
                                                            "names endpoints")
    else:  # pragma: no cover - dispatch guards this
        raise AssertionError(command)
    return p


def serve_part_command(args) -> dict:
    from .serve import serve_part

    return serve_part(args.manifest, args.part, args.endpoint, args.ready_file, threads=1)


def infer_command(args) -> dict:
    from . import manifest as mf
    from .client import PartsUnavailable, SplitClient, image_files
    from .local import LocalParts

    m, _ = mf.load(args.manifest)
    files = image_files(args.images)
    local = None
    endpoints = args.endpoints
    if args.local or (endpoints is None and any(p.endpoint is None for p in m.parts)):
        ui.info(f"starting {len(m.parts)} part servers here")
        local = LocalParts(args.manifest)
        endpoints = local.start()
    try:
        with SplitClient(args.manifest, endpoints) as client:
            health = client.health()
            bad = [h for h in health if not h["ok"]]
            if bad and m.degraded.policy == "fail":
                raise PartsUnavailable(f"parts {[h['part'] for h in bad]} unavailable ("
                                       + "; ".join(f"part {h['part']}: {h['error']}" for h in bad) + ")",
                                       "the manifest's degraded policy is 'fail'; start the part servers")
            if bad:
                ui.warn("; ".join(f"part {h['part']} not healthy: {h['error']}" for h in bad))
            rows, degraded, missing, wall = [], False, set(), 0.0
            step = m.runtime.max_batch
            for at in ui.progress(range(0, len(files), step), desc="infer", unit="batch"):
                chunk = files[at:at + step]
                r = client.infer(chunk)
                degraded, missing, wall = degraded or r.degraded, missing | set(r.missing), wall + r.wall_ms
                probs = r.probs()
                for f, k, pr in zip(chunk, r.pred, probs):
                    rows.append({"file": str(f), "pred": int(k), "prob": round(float(pr[k]), 6),
                                 "class": m.class_names[int(k)] if m.class_names else str(int(k)),
                                 "degraded": r.degraded, "missing": r.missing})
    finally:
        if local is not None:
            local.stop()
    if not ui.is_quiet():
        for row in rows:
            flag = "\tDEGRADED" if row["degraded"] else ""
            print(f"{row['file']}\t{row['class']}\t{row['prob']:.4f}{flag}")
        sys.stdout.flush()
    if degraded:
        ui.warn(f"degraded: parts {sorted(missing)} did not answer; those results fuse the other parts only")
    return {"build_id": m.build_id, "images": rows, "degraded": degraded, "missing": sorted(missing),
            "health": health, "wall_ms": round(wall, 2)}


def run(command: str, args) -> dict:
    return serve_part_command(args) if command == "serve-part" else infer_command(args)
