#!/usr/bin/env python3
"""Build a TensorRT engine from this kit's model.onnx, on the device that will run it.

Self-contained (copied into every vitforge TensorRT build kit; needs only the ``tensorrt`` Python
package that JetPack / the TensorRT wheel provides). Reads ``manifest.json`` beside it:

    python3 build_engine.py                      # -> model.engine, timing.cache
    python3 build_engine.py --print-trtexec      # the equivalent trtexec command line

Engines are not portable across TensorRT versions or GPUs, which is why they are built here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

KIT = Path(__file__).resolve().parent


def manifest(kit: Path = KIT) -> dict:
    return json.loads((kit / "manifest.json").read_text())


def shapes(m: dict) -> dict:
    inp = m["input"]
    dims = "x".join(str(d) for d in inp["shape"][1:])
    return {k: f"{inp['name']}:{b}x{dims}" for k, b in (("min", inp["min_batch"]), ("opt", inp["opt_batch"]),
                                                         ("max", inp["max_batch"]))}


def trtexec_command(m: dict, engine: str = "model.engine", cache: str = "timing.cache") -> list[str]:
    s = shapes(m)
    cmd = ["trtexec", f"--onnx={m['onnx']}", f"--saveEngine={engine}", f"--timingCacheFile={cache}"]
    if m["strongly_typed"]:
        cmd.append("--stronglyTyped")  # layer precisions come from the graph's types
    else:  # TensorRT 8.x: precision flags instead
        cmd += [f"--{p}" for p in m.get("builder_flags", [])]
    if m["input"]["dynamic"]:
        cmd += [f"--minShapes={s['min']}", f"--optShapes={s['opt']}", f"--maxShapes={s['max']}"]
    cmd += ["--profilingVerbosity=detailed", "--exportLayerInfo=layers.json"]
    return cmd


def build(kit: Path = KIT, engine: Path | None = None, cache: Path | None = None, trt=None) -> dict:
    """Parse the ONNX graph, build and serialise the engine; reuse and update the timing cache."""
    if trt is None:
        import tensorrt as trt  # noqa: PLC0415 - only on the device
    m = manifest(kit)
    engine = Path(engine or kit / "model.engine")
    cache = Path(cache or kit / "timing.cache")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    flags = 0
    if m["strongly_typed"]:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(kit / m["onnx"])):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError("TensorRT could not parse the ONNX graph: " + "; ".join(errors))
    config = builder.create_builder_config()
    if not m["strongly_typed"]:
        for flag in m.get("builder_flags", []):
            config.set_flag(getattr(trt.BuilderFlag, flag.upper()))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if m["input"]["dynamic"]:
        profile = builder.create_optimization_profile()
        dims = tuple(m["input"]["shape"][1:])
        profile.set_shape(m["input"]["name"], (m["input"]["min_batch"], *dims), (m["input"]["opt_batch"], *dims),
                          (m["input"]["max_batch"], *dims))
        config.add_optimization_profile(profile)
    timing = config.create_timing_cache(cache.read_bytes() if cache.is_file() else b"")
    config.set_timing_cache(timing, False)
    t0 = time.time()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    engine.write_bytes(bytes(plan))
    cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"engine": str(engine), "timing_cache": str(cache), "tensorrt": str(trt.__version__),
            "build_seconds": round(time.time() - t0, 1), "bytes": engine.stat().st_size}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", help="engine file (default: model.engine in the kit)")
    p.add_argument("--timing-cache", help="timing cache (default: timing.cache in the kit)")
    p.add_argument("--print-trtexec", action="store_true", help="print the trtexec command line and exit")
    a = p.parse_args(argv)
    m = manifest()
    if a.print_trtexec:
        print(" ".join(trtexec_command(m)))
        return 0
    try:
        import tensorrt  # noqa: F401,PLC0415
    except ImportError:
        print("error: the tensorrt Python package is not installed; on Jetson it comes with JetPack "
              f"(TensorRT {m.get('tensorrt', '?')}). Or build with:\n  " + " ".join(trtexec_command(m)), file=sys.stderr)
        return 2
    print(json.dumps(build(engine=a.engine, cache=a.timing_cache), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
