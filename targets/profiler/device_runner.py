#!/usr/bin/env python3
"""vitforge device runner: time one artifact in its runtime and print a JSON report.

Self-contained (Python >= 3.8, the standard library, numpy and the artifact's runtime), so
``compress profile --host user@device`` copies it beside the artifact and runs it there:

    python3 device_runner.py model.onnx --batch 1,4 --runs 30 --threads 1 --ops --json out.json

Runtimes by file: .onnx/.ort ONNX Runtime, .pte ExecuTorch, .xml OpenVINO, .engine or a TensorRT
build kit folder: trtexec (Jetson / NVIDIA GPU). Reports latency percentiles after warm-up, throughput
per batch size, peak resident memory of this process, a per-op breakdown from the runtime's own
profiler (ONNX Runtime profiling JSON, ExecuTorch ETDump, OpenVINO performance counters,
``trtexec --exportProfile``) and, on Jetson, board power sampled by ``tegrastats``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# -- parsers (also imported by compress.targets.profiler) ---------------------------------------
def percentiles(ms) -> dict:
    t = np.asarray(ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "min_ms": float(t.min()),
            "runs": int(t.size)}


def group_ops(rows, total_ms=None, top=40) -> dict:
    """rows: [{name, op, ms}] per op instance per profiled run -> per-op-type and per-layer tables."""
    by_op, by_name = {}, {}
    for r in rows:
        by_op[r["op"]] = by_op.get(r["op"], 0.0) + r["ms"]
        by_name.setdefault(r["name"], [r["op"], 0.0])[1] += r["ms"]
    total = total_ms if total_ms else (sum(by_op.values()) or 1.0)
    ops = [{"op": k, "ms": v, "percent": 100.0 * v / total} for k, v in sorted(by_op.items(), key=lambda x: -x[1])]
    layers = [{"name": k, "op": v[0], "ms": v[1], "percent": 100.0 * v[1] / total}
              for k, v in sorted(by_name.items(), key=lambda x: -x[1][1])[:top]]
    return {"by_op": ops, "by_layer": layers, "total_ms": sum(by_op.values())}


def parse_ort_profile(events, runs: int) -> dict:
    """ONNX Runtime profiling JSON (chrome trace): Node events named '<node>_kernel_time'."""
    rows = []
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            rows.append({"name": e["name"][: -len("_kernel_time")], "op": e.get("args", {}).get("op_name", "?"),
                         "ms": e.get("dur", 0) / 1e3 / max(runs, 1)})
    return group_ops(rows)


def parse_trtexec_profile(data) -> dict:
    """``trtexec --exportProfile`` JSON: [{"count": N}, {"name", "timeMs", "averageMs", ["medianMs"], "percentage"}...]."""
    count = next((d["count"] for d in data if "count" in d and "name" not in d), None)
    rows = []
    for d in data:
        if "name" not in d:
            continue
        ms = d.get("averageMs", d["timeMs"] / count if count else d["timeMs"])
        rows.append({"name": d["name"], "op": _trt_layer_kind(d["name"]), "ms": float(ms)})
    out = group_ops(rows)
    out["iterations"] = count
    return out


def _trt_layer_kind(name: str) -> str:
    n = name.lower()
    for key, kind in (("reformat", "Reformat"), ("myelin", "Myelin"), ("softmax", "Softmax"), ("norm", "Normalization"),
                      ("matmul", "MatMul"), ("gemm", "MatMul"), ("conv", "Convolution"), ("quantize", "Q/DQ"),
                      ("gelu", "Activation"), ("erf", "Activation"), ("add", "ElementWise"), ("mul", "ElementWise")):
        if key in n:
            return kind
    return "Other"


_PERF = re.compile(r"(Latency|GPU Compute Time|Enqueue Time|H2D Latency|D2H Latency|End-to-End Host Latency): "
                   r"min = ([\d.e+-]+) ms, max = ([\d.e+-]+) ms, mean = ([\d.e+-]+) ms, median = ([\d.e+-]+) ms")
_PCT = re.compile(r"percentile\((\d+(?:\.\d+)?)%\) = ([\d.e+-]+) ms")  # one (TRT 8) or several (--percentile=90,99)
_THROUGHPUT = re.compile(r"Throughput: ([\d.e+-]+) qps")


def parse_trtexec_summary(text: str) -> dict:
    """The '=== Performance summary ===' block of trtexec's log (one percentile per line, as printed)."""
    out = {}
    for line in text.splitlines():
        m = _THROUGHPUT.search(line)
        if m:
            out["throughput_qps"] = float(m.group(1))
        m = _PERF.search(line)
        if m and not line[:m.start()].rstrip().endswith("Host"):  # "End-to-End Host Latency" is its own key
            key = m.group(1).lower().replace(" ", "_").replace("-", "_")
            entry = out.setdefault(key, {})
            entry.update({"min_ms": float(m.group(2)), "max_ms": float(m.group(3)), "mean_ms": float(m.group(4)),
                          "median_ms": float(m.group(5))})
            for q, v in _PCT.findall(line[m.end():]):
                entry[f"p{q.rstrip('0').rstrip('.') if '.' in q else q}_ms"] = float(v)
    return out


_RAIL = re.compile(r"\b((?:VDD|POM)_[A-Z0-9_]+|VIN_[A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?")
_RAM = re.compile(r"RAM (\d+)/(\d+)MB")
_GPU = re.compile(r"GR3D_FREQ (\d+)%(?:@\[?(\d+)(?:,\d+)*\]?)?")


def parse_tegrastats(text: str) -> dict:
    """tegrastats lines: 'RAM 2330/7620MB ... GR3D_FREQ 99%@[1020] ... VDD_IN 7304mW/5130mW VDD_CPU_GPU_CV ...'.

    Rails are 'NAME current/average' in mW (JetPack 5/6: with 'mW'; older POM_* rails without).
    The board total is VDD_IN (Orin, Xavier) or POM_5V_IN (Nano/TX2)."""
    samples = []
    for line in text.splitlines():
        rails = {m.group(1): int(m.group(2)) for m in _RAIL.finditer(line)}
        if not rails:
            continue
        s = {"rails_mw": rails}
        m = _RAM.search(line)
        if m:
            s["ram_used_mb"] = int(m.group(1))
            s["ram_total_mb"] = int(m.group(2))
        m = _GPU.search(line)
        if m:
            s["gpu_util"] = int(m.group(1))
            if m.group(2):
                s["gpu_mhz"] = int(m.group(2))
        samples.append(s)
    if not samples:
        return {"samples": 0}
    names = samples[0]["rails_mw"]
    rail = next((r for r in ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0") if r in names), next(iter(names)))
    watts = [s["rails_mw"].get(rail, 0) / 1e3 for s in samples]
    out = {"samples": len(samples), "rail": rail, "mean_w": float(np.mean(watts)), "peak_w": float(np.max(watts)),
           "rails_mean_w": {r: float(np.mean([s["rails_mw"].get(r, 0) for s in samples]) / 1e3) for r in names}}
    util = [s["gpu_util"] for s in samples if "gpu_util" in s]
    if util:
        out["gpu_util_mean"] = float(np.mean(util))
    ram = [s["ram_used_mb"] for s in samples if "ram_used_mb" in s]
    if ram:
        out["ram_peak_mb"] = max(ram)
    return out


# -- runtimes ------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: ru_maxrss survives exec from a larger parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def time_runs(fn, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    lat = percentiles(wall)
    lat["cpu_p50_ms"] = float(np.percentile(cpu, 50))
    return lat


class Ort:
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int, profile_dir: Path | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        so.log_severity_level = 3
        if profile_dir is not None:
            so.enable_profiling = True
            so.profile_file_prefix = str(profile_dir / "ort")
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        i = self.sess.get_inputs()[0]
        self.name, self.shape = i.name, i.shape
        self.version = ort.__version__

    def input_shape(self):
        return [d if isinstance(d, int) else 1 for d in self.shape]

    def run(self, x):
        return self.sess.run(None, {self.name: x})

    def ops(self, x, runs: int) -> dict:
        for _ in range(runs):
            self.run(x)
        path = self.sess.end_profiling()
        return parse_ort_profile(json.loads(Path(path).read_text()), runs)


class ExecuTorch:
    runtime = "executorch"

    def __init__(self, path: Path, threads: int, profile_dir: Path | None = None):
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import torch
            from executorch.extension.pybindings import portable_lib as pl
        self.torch, self.pl = torch, pl
        if pl._threadpool_get_thread_count() != threads:
            pl._unsafe_reset_threadpool(threads)
        self.module = pl._load_for_executorch(str(path), enable_etdump=profile_dir is not None)
        self.profile_dir = profile_dir
        self.shape = list(self.module.method_meta("forward").input_tensor_meta(0).sizes())
        self.version = getattr(__import__("executorch"), "__version__", "?")

    def input_shape(self):
        return self.shape

    def run(self, x):
        t = self.torch.from_numpy(x)
        if x.shape[0] == self.shape[0]:
            return self.module.run_method("forward", (t,))
        return [self.module.run_method("forward", (t[i:i + 1],)) for i in range(x.shape[0])]

    def ops(self, x, runs: int) -> dict:
        for _ in range(runs):
            self.run(x)
        etdump = self.profile_dir / "model.etdp"
        self.module.write_etdump_result_to_file(str(etdump))
        return parse_etdump(etdump, runs)


def parse_etdump(etdump: Path, runs: int) -> dict:
    """Per-op times from an ExecuTorch ETDump (through the devtools Inspector)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from executorch.devtools import Inspector

        insp = Inspector(etdump_path=str(etdump))
    rows, envelope = [], 0.0
    for block in insp.event_blocks:
        for ev in block.events:
            if not ev.perf_data or ev.name in ("Method::execute", "Program::load_method", "Method::init"):
                continue
            ms = sum(float(t) for t in list(ev.perf_data.raw)[-runs:]) / max(runs, 1)
            if ev.name == "DELEGATE_CALL":  # the envelope of the delegate's own (XNNPACK) operator events
                envelope += ms
                continue
            kind = re.sub(r"\s*#\d+$", "", ev.name)
            rows.append({"name": ev.name, "op": f"xnnpack:{kind}" if ev.is_delegated_op else kind, "ms": ms})
    out = group_ops(rows)
    out["delegate_call_ms"] = envelope
    return out


class OpenVINO:
    runtime = "openvino"

    def __init__(self, path: Path, threads: int, profile_dir: Path | None = None, precision: str | None = None):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        key = ["vitforge", "inference_precision"]
        if precision is None:
            precision = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else "f32"
        cfg = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
               "ENABLE_CPU_PINNING": False, "PERF_COUNT": profile_dir is not None}
        if precision != "default":
            cfg["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(model, "CPU", cfg)
        self.req = self.compiled.create_infer_request()
        self.shape = [d.get_length() if d.is_static else 1 for d in self.compiled.input(0).get_partial_shape()]
        self.version = ov.__version__
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def input_shape(self):
        return self.shape

    def run(self, x):
        return self.req.infer({0: x})

    def ops(self, x, runs: int) -> dict:
        rows = []
        self.run(x)  # first-inference work (weight repacking) stays out of the counters
        for _ in range(runs):
            self.run(x)
            rows += [{"name": p.node_name, "op": p.node_type, "ms": p.real_time.total_seconds() * 1e3 / runs}
                     for p in self.req.profiling_info if p.status.name == "EXECUTED"]
        return group_ops(rows)


RUNTIMES = {".onnx": Ort, ".ort": Ort, ".pte": ExecuTorch, ".xml": OpenVINO}


def profile_local(path: Path, batches, runs, warmup, threads, ops: bool) -> dict:
    rss0 = peak_rss_mb()
    cls = RUNTIMES.get(path.suffix)
    if cls is None:
        raise SystemExit(f"error: no runtime for {path.suffix} files (supported: {', '.join(RUNTIMES)}, .engine, kit)")
    rt = cls(path, threads)
    shape = rt.input_shape()
    rng = np.random.default_rng(0)
    res = {"artifact": path.name, "runtime": rt.runtime, "runtime_version": rt.version, "threads": threads,
           "batches": []}
    for b in batches:
        x = rng.standard_normal([b] + list(shape[1:])).astype(np.float32)
        lat = time_runs(lambda: rt.run(x), warmup, runs)
        res["batches"].append({"batch": b, "latency": lat, "throughput_ips": b * 1e3 / lat["mean_ms"]})
    res["latency"] = res["batches"][0]["latency"]
    res["peak_memory_mb"] = peak_rss_mb()
    res["baseline_memory_mb"] = rss0
    if ops:
        with tempfile.TemporaryDirectory() as d:
            prof = cls(path, threads, Path(d))
            x = rng.standard_normal([batches[0]] + list(shape[1:])).astype(np.float32)
            prof.run(x)  # warm-up outside the profile is not possible for all runtimes; one run is cheap
            res["ops"] = prof.ops(x, max(3, min(runs, 10)))
            res["ops"]["profiler"] = {"onnxruntime": "ONNX Runtime profiling", "executorch": "ETDump",
                                      "openvino": "OpenVINO PERF_COUNT"}[rt.runtime]
    return res


# -- TensorRT on the device ----------------------------------------------------------------------
def find_trtexec() -> str | None:
    return shutil.which("trtexec") or next((p for p in ("/usr/src/tensorrt/bin/trtexec",) if os.path.isfile(p)), None)


_TENSOR = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")


def _kit_fields_ok(man) -> bool:
    inp = man.get("input") if isinstance(man, dict) else None
    if not isinstance(inp, dict) or man.get("onnx") != "model.onnx" or not isinstance(man.get("strongly_typed"), bool):
        return False
    ints = [inp.get(k) for k in ("min_batch", "opt_batch", "max_batch")] + list(inp.get("shape") or [None])
    flags = man.get("builder_flags", [])
    return (isinstance(inp.get("name"), str) and bool(_TENSOR.fullmatch(inp["name"]))
            and isinstance(inp.get("dynamic"), bool) and all(type(v) is int and 0 < v < 1 << 20 for v in ints)
            and isinstance(flags, list) and all(f in ("fp16", "int8") for f in flags))


def kit_manifest(kit: Path) -> dict:
    """A build kit's manifest with the fields a trtexec command is made from checked, and the model's sha256."""
    import hashlib

    man = json.loads((kit / "manifest.json").read_text())
    if not _kit_fields_ok(man):
        raise SystemExit(f"error: {kit}/manifest.json is not a valid vitforge TensorRT kit manifest")
    want = (man.get("files") or {}).get("model.onnx")
    if want != hashlib.sha256((kit / "model.onnx").read_bytes()).hexdigest():
        raise SystemExit(f"error: {kit}/model.onnx does not match the sha256 in its manifest")
    return man


def kit_build_command(exe: str, man: dict) -> list[str]:
    """trtexec's engine build from the manifest's checked fields (never its free-text ``trtexec`` line)."""
    inp = man["input"]
    cmd = [exe, "--onnx=model.onnx", "--saveEngine=model.engine", "--timingCacheFile=timing.cache"]
    cmd += ["--stronglyTyped"] if man["strongly_typed"] else [f"--{f}" for f in man.get("builder_flags", [])]
    if inp["dynamic"]:
        dims = "x".join(str(d) for d in inp["shape"][1:])
        cmd += [f"--{k}Shapes={inp['name']}:{inp[f'{k}_batch']}x{dims}" for k in ("min", "opt", "max")]
    return cmd + ["--profilingVerbosity=detailed", "--exportLayerInfo=layers.json"]


def profile_tensorrt(path: Path, batches, runs, warmup, ops: bool, tegrastats: bool) -> dict:
    exe = find_trtexec()
    if exe is None:
        raise SystemExit("error: trtexec not found (JetPack installs it in /usr/src/tensorrt/bin)")
    man = {}
    if path.is_dir():  # a build kit: build the engine first (timing cache kept in the kit)
        man = kit_manifest(path)
        engine = path / "model.engine"
        if not engine.is_file():
            subprocess.run(kit_build_command(exe, man), cwd=path, check=True, capture_output=True, text=True)
        path = engine
    res = {"artifact": path.name, "runtime": "tensorrt", "threads": 1, "batches": []}
    work = Path(tempfile.mkdtemp(prefix="vitforge-trt-"))
    ts_log = work / "tegrastats.log"
    ts = None
    try:
        if tegrastats and shutil.which("tegrastats"):
            ts = subprocess.Popen(["tegrastats", "--interval", "100", "--logfile", str(ts_log)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for b in batches:
            cmd = [exe, f"--loadEngine={path}", f"--warmUp={max(warmup, 1) * 10}", f"--iterations={runs}",
                   "--duration=0", "--avgRuns=1", "--percentile=50,90,99"]
            if man.get("input", {}).get("dynamic"):
                dims = "x".join(str(d) for d in man["input"]["shape"][1:])
                cmd.append(f"--shapes={man['input']['name']}:{b}x{dims}")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            summ = parse_trtexec_summary(out)
            lat = summ.get("latency") or summ.get("gpu_compute_time") or {}
            latency = {"p50_ms": lat.get("median_ms"), "p90_ms": lat.get("p90_ms", lat.get("max_ms")),
                       "p99_ms": lat.get("p99_ms", lat.get("max_ms")), "mean_ms": lat.get("mean_ms"),
                       "min_ms": lat.get("min_ms"), "runs": runs}
            res["batches"].append({"batch": b, "latency": latency, "trtexec": summ,
                                   "throughput_ips": b * summ.get("throughput_qps", 0.0)})
        res["latency"] = res["batches"][0]["latency"]
        if ops:
            prof = work / "profile.json"
            subprocess.run([exe, f"--loadEngine={path}", f"--iterations={runs}", "--separateProfileRun",
                            "--dumpProfile", f"--exportProfile={prof}"], capture_output=True, text=True, check=True)
            res["ops"] = parse_trtexec_profile(json.loads(prof.read_text()))
            res["ops"]["profiler"] = "trtexec --exportProfile"
        if ts is not None:
            ts.terminate()
            ts.wait()
            ts = None
        if ts_log.is_file():
            res["power"] = parse_tegrastats(ts_log.read_text())
            if res["power"].get("ram_peak_mb"):
                res["peak_memory_mb"] = res["power"]["ram_peak_mb"]
    finally:
        if ts is not None:
            ts.terminate()
            ts.wait()
        shutil.rmtree(work, ignore_errors=True)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("--batch", default="1")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ops", action="store_true")
    p.add_argument("--no-tegrastats", action="store_true")
    p.add_argument("--json", help="write the report here (always printed as the last stdout line)")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    path = Path(a.artifact)
    batches = [int(b) for b in a.batch.split(",")]
    if path.suffix == ".engine" or (path.is_dir() and (path / "manifest.json").is_file()):
        res = profile_tensorrt(path, batches, a.runs, a.warmup, a.ops, not a.no_tegrastats)
    else:
        res = profile_local(path, batches, a.runs, a.warmup, a.threads, a.ops)
    res["host"] = os.uname().nodename
    res["python"] = sys.version.split()[0]
    text = json.dumps(res)
    if a.json:
        Path(a.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
