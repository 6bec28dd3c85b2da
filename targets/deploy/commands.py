"""``compress profile`` and ``compress build``: the bodies behind the two CLI commands."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ... import ui
from ...errors import UserError
from ...utils.io import write_json


def _batches(text: str) -> list[int]:
    try:
        out = [int(b) for b in str(text).split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch takes sizes like 1,4,8, not {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"--batch sizes must be >= 1, got {text!r}")
    return out


def add_arguments(command: str) -> argparse.ArgumentParser:
    if command == "profile":
        p = argparse.ArgumentParser(
            prog="compress profile",
            description="Run an artifact in its runtime (here, or on --host over SSH) and report latency "
                        "percentiles, throughput per batch size, peak memory and per-op times; or build a "
                        "target's latency lookup table (--build-lut).")
        p.add_argument("artifact", nargs="?", help="artifact (.onnx, .ort, .pte, .xml, .engine, or a TensorRT kit folder)")
        p.add_argument("--target", help="target profile (required with --build-lut; else inferred or x86-avx512)")
        p.add_argument("--host", help="user@host: copy the artifact and a runner there over SSH and run it there")
        p.add_argument("--port", type=int, default=None, help="SSH port")
        p.add_argument("--identity", help="SSH private key file")
        p.add_argument("--ssh-option", action="append", default=[], metavar="OPT", help="extra ssh -o option")
        p.add_argument("--remote-python", default="python3", help="python on the remote device")
        p.add_argument("--remote-dir", default=None, help="working folder on the device (default: a temp folder)")
        p.add_argument("--batch", type=_batches, default=[1], help="batch sizes, e.g. 1,4,8 (default 1)")
        p.add_argument("--runs", type=int, default=30, help="timed runs per batch size (default 30)")
        p.add_argument("--warmup", type=int, default=5, help="warm-up runs (default 5)")
        p.add_argument("--no-ops", action="store_true", help="skip the per-op profile")
        p.add_argument("--baseline", help="baseline artifact in the same runtime: report the speed-up over it")
        p.add_argument("--min-speedup", type=float, default=None, help="fail (exit 3) if slower than this x baseline")
        p.add_argument("--out", help="write the result JSON here")
        p.add_argument("--build-lut", action="store_true", help="measure the block latency table for --target")
        p.add_argument("--grid", default="default", choices=["default", "small"], help="LUT grid")
        p.add_argument("--lut-out", help="LUT file (default: targets/luts/<target>.json, stored with the target)")
        p.add_argument("--no-validate", action="store_true", help="skip whole-model validation of the LUT")
    else:
        p = argparse.ArgumentParser(
            prog="compress build",
            description="Build the device's TensorRT engine from a build kit (on the device: engines are not "
                        "portable across TensorRT versions).")
        p.add_argument("kit", help="TensorRT build kit folder (artifacts/<name>.trt-kit) or a run folder")
        p.add_argument("--target", required=True, help="target profile, e.g. jetson-orin-nano")
        p.add_argument("--timing-cache", help="timing cache file (default: beside the engine)")
        p.add_argument("--dry-run", action="store_true", help="print the trtexec command line and stop")
    return p


def profile(args) -> dict:
    if args.build_lut:
        return _build_lut(args)
    if not args.artifact:
        raise UserError("compress profile needs an ARTIFACT (or --build-lut --target T)",
                        "e.g. compress profile runs/x/artifacts/model.onnx --batch 1,4")
    from ..profiler import profile_artifact, speedup_check

    res = profile_artifact(args.artifact, host=args.host, batches=args.batch, runs=args.runs, warmup=args.warmup,
                           threads=args.threads, ops=not args.no_ops, target=args.target,
                           ssh=_ssh_opts(args))
    if args.baseline:
        base = profile_artifact(args.baseline, host=args.host, batches=[args.batch[0]], runs=args.runs,
                                warmup=args.warmup, threads=args.threads, ops=False, target=args.target,
                                ssh=_ssh_opts(args))
        res["baseline"] = {k: base[k] for k in ("artifact", "runtime", "latency") if k in base}
        res["check"] = speedup_check(res, base, args.min_speedup)
    if args.out:
        write_json(args.out, res)
    _print_profile(res)
    if res.get("check") and not res["check"]["passed"]:
        from ...errors import VerificationError

        raise VerificationError(res["check"]["message"])
    return res


def _ssh_opts(args) -> dict:
    return {"port": args.port, "identity": args.identity, "options": args.ssh_option,
            "python": args.remote_python, "remote_dir": args.remote_dir}


def _print_profile(res: dict) -> None:
    if ui.is_quiet():
        return
    where = res.get("host") or "this machine"
    print(f"{res['artifact']} [{res['runtime']}] on {where}, {res.get('threads', 1)} thread(s)")
    for b in res["batches"]:
        lat = b["latency"]
        print(f"  batch {b['batch']:>3}: p50 {lat['p50_ms']:.2f} ms  p90 {lat['p90_ms']:.2f}  p99 {lat['p99_ms']:.2f}  "
              f"{b['throughput_ips']:.1f} img/s")
    if res.get("peak_memory_mb"):
        print(f"  peak memory {res['peak_memory_mb']:.0f} MB (resident set of the runner process)")
    if res.get("power"):
        pw = res["power"]
        print(f"  power {pw.get('mean_w', 0):.2f} W mean over {pw.get('samples', 0)} tegrastats samples ({pw.get('rail')})")
    for row in (res.get("ops") or {}).get("by_op", [])[:8]:
        print(f"    {row['op']:<28} {row['ms']:8.3f} ms  {row['percent']:5.1f}%")
    if res.get("check"):
        print(f"  {res['check']['message']}")


def _build_lut(args) -> dict:
    from ..latency_models import lut_path
    from ..lut import build_lut, validation_configs

    if not args.target:
        raise UserError("--build-lut needs --target", "e.g. compress profile --build-lut --target x86-avx512")
    if args.host:
        raise UserError("--build-lut runs here (ONNX Runtime); on a device run it there",
                        "ssh to the device and run compress profile --build-lut --target ... on it")
    lut = build_lut(args.target, args.grid, args.threads, validate_models=None if args.no_validate else
                    validation_configs() if args.grid == "default" else [])
    out = Path(args.lut_out) if args.lut_out else lut_path(args.target)
    write_json(out, lut)
    ui.info(f"latency table: {out}")
    if not ui.is_quiet():
        for v in lut.get("validation", []):
            print(f"  {v['model']:<18} predicted {v['predicted_ms']:7.1f} ms  measured {v['measured_ms']:7.1f} ms  "
                  f"error {v['error']:+.1%}  (roofline {v['roofline_ms']:.1f} ms)")
    return {"lut": str(out), "validation": lut.get("validation", []), "seconds": lut["seconds"]}


def build(args) -> dict:
    from ..tensorrt.build import build_from_kit

    res = build_from_kit(Path(args.kit), args.target, timing_cache=args.timing_cache, dry_run=args.dry_run)
    if not ui.is_quiet():
        print(json.dumps(res, indent=2))
    return res
