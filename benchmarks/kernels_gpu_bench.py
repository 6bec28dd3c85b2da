"""GPU benchmark of the softmax / GELU kernels: correctness on the device, bandwidth, speed vs PyTorch eager.

Needs a CUDA GPU (Triton; nvcc for the CUDA C++ kernels, compiled on first use); runs in under 5 minutes::

    python benchmarks/kernels_gpu_bench.py --out runs/kernels-gpu          # on the GPU machine
    python benchmarks/kernels_gpu_bench.py --smoke --out /tmp/kg           # CPU: Triton interpreter, tiny sizes

1. Every kernel (Triton and CUDA, each dtype) against the PyTorch reference on the device, with the bounds of
   the CPU tests (``tests/test_kernels_triton.py``): a kernel that is wrong on real hardware fails here.
2. The roofline: the GPU's measured copy bandwidth (``dst.copy_(src)``, 1 GiB, read + write bytes / time).
3. Softmax and GELU at large sizes: achieved bandwidth (compulsory bytes: one read, one write) as a share of
   the copy bandwidth (target >= 85%) and speed vs PyTorch eager (target >= 1x); the ViT attention shape too.
4. Fused bias + GELU vs the unfused pair (``x + b`` then GELU, PyTorch eager; target: faster).
5. Integer softmax / GELU (``compress.kernels.integer``, Triton and CUDA): codes equal to the PyTorch reference's
   on the device (bit for bit), int32 codes in and out at the same sizes, judged like the float kernels with
   the PyTorch integer reference on the device as "eager".
Writes ``<out>/results.json`` and prints markdown tables; times are medians of CUDA-event timings.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before the Triton kernels are decorated

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HALF_ULP = {torch.float32: 0.0, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
# large sizes hold 256 MiB of fp32 (16-bit dtypes: twice the rows, the same bytes); the last: ViT-S batch 64
SOFTMAX_SHAPES = [(65536, 1024), (16384, 4096), (2048, 32768), (64 * 6 * 257, 257)]
GELU_SHAPES = [(65536, 4096), (64 * 257, 1536)]  # 1 GiB of fp32; ViT-S batch 64 MLP
SMOKE_SOFTMAX, SMOKE_GELU = [(4, 20000), (64, 257)], [(64, 128), (64, 129)]


def timer(smoke: bool):
    if smoke:
        def cpu(fn, reps=3):
            fn()
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            return (time.perf_counter() - t) / reps * 1e3
        return cpu
    from triton.testing import do_bench

    return lambda fn: do_bench(fn, warmup=25, rep=100, return_mode="median")  # ms, L2 flushed between runs


def backends(smoke: bool) -> dict:
    from compress.kernels import cuda as ck
    from compress.kernels import triton as tk

    out = {"triton": tk}
    if not smoke:
        try:
            ck.load()
            out["cuda"] = ck
        except Exception as e:  # noqa: BLE001 - reported, the Triton half still runs
            print(f"CUDA C++ kernels unavailable: {e}", file=sys.stderr)
    return out


def check_correctness(kb: dict, device) -> list[dict]:
    """Every kernel and layout against the reference: cached / fused rows, streamed rows, aligned (vector) and
    ragged GELU tensors."""
    from compress.kernels import GeluTable, reference as R

    rows, g = [], torch.Generator().manual_seed(0)
    table = GeluTable()
    tv = table.values().to(device)
    for dname, dt in DTYPES.items():
        for shape in ((96, 1000), (6, 20000), (3, 40000)):
            x = (torch.randn(*shape, generator=g) * 6).to(dt).to(device)
            mask = torch.zeros(shape[1], device=device)
            mask[int(0.7 * shape[1]):] = float("-inf")
            for bname, k in kb.items():
                for method in R.SOFTMAX_METHODS:
                    want = R.softmax_f32(x, 0.5, mask, method)
                    err = float((k.softmax(x, 0.5, mask, method).float() - want).abs().max())
                    rows.append({"op": f"softmax {method} {shape[1]} wide", "backend": bname, "dtype": dname,
                                 "max_error": err, "bound": 2e-6 + HALF_ULP[dt]})
        for shape in ((33, 777), (48, 768)):
            a = (torch.randn(*shape, generator=g) * 4).to(dt).to(device)
            for bias in (torch.randn(shape[1], generator=g).to(device), None):
                for bname, k in kb.items():
                    for method in R.GELU_METHODS:
                        want = R.gelu_f32(a, bias, method, tv, table.inv_step)
                        got = k.gelu(a, bias, method, tv, table.inv_step).float()
                        z = (a.float() + (0 if bias is None else bias)).abs().clamp_min(1)
                        err = float(((got - want).abs() / (1e-6 * z + HALF_ULP[dt] * want.abs() + 1e-30)).max())
                        rows.append({"op": f"gelu {method}{' + bias' if bias is not None else ''} {shape}",
                                     "backend": bname, "dtype": dname, "max_error": err, "bound": 1.0})
    for r in rows:
        r["ok"] = r["max_error"] <= r["bound"]
    return rows


def copy_bandwidth(bench, device, smoke: bool) -> float:
    n = (1 << 18) if smoke else (1 << 28)  # 1 GiB of fp32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (bench(lambda: dst.copy_(src)) * 1e-3) / 1e9


def fp32_bytes(shape: tuple, dt) -> tuple:
    """``shape`` with its rows scaled so a tensor of dtype ``dt`` holds as many bytes as in fp32."""
    rows, cols = shape
    return rows * (4 // (torch.finfo(dt).bits // 8)), cols


def sized(shapes: list, dt) -> list[tuple[tuple, bool]]:
    """(shape, large?) pairs: the large ones scaled to the fp32 byte count, the last (the ViT shape) as is."""
    return [(fp32_bytes(s, dt), True) for s in shapes[:-1]] + [(tuple(shapes[-1]), False)]


def bench_softmax(bench, kb, device, copy_gbs, shapes) -> list[dict]:
    rows = []
    for dname, dt in DTYPES.items():
        for shape, large in sized(shapes, dt):
            x = torch.randn(shape, device=device).to(dt)
            gb = 2 * x.numel() * x.element_size() / 1e9
            t_torch = bench(lambda: torch.softmax(x, -1))
            rows.append(_row("softmax", "pytorch eager", "exact", dname, shape, t_torch, gb, copy_gbs, t_torch, large))
            for bname, k in kb.items():
                for method in ("exact", "online", "online-poly2"):
                    t = bench(lambda: k.softmax(x, 1.0, None, method))
                    rows.append(_row("softmax", bname, method, dname, shape, t, gb, copy_gbs, t_torch, large))
            del x
    return rows


def bench_gelu(bench, kb, device, copy_gbs, shapes) -> list[dict]:
    from compress.kernels import GeluTable

    table = GeluTable()
    tv = table.values().to(device)
    rows = []
    for dname, dt in DTYPES.items():
        for shape, large in sized(shapes, dt):
            x = torch.randn(shape, device=device).to(dt)
            b = torch.randn(shape[-1], device=device).to(dt)
            gb = 2 * x.numel() * x.element_size() / 1e9
            t_torch = bench(lambda: F.gelu(x))
            rows.append(_row("gelu", "pytorch eager", "erf", dname, shape, t_torch, gb, copy_gbs, t_torch, large))
            t_pair = bench(lambda: F.gelu(x + b))  # the unfused pair: two kernels, x + b round-trips memory
            rows.append(_row("bias+gelu", "pytorch eager (unfused pair)", "erf", dname, shape, t_pair, gb,
                             copy_gbs, t_pair, large))
            for bname, k in kb.items():
                for method in ("erf", "tanh", "relu-lut"):
                    t = bench(lambda: k.gelu(x, None, method, tv, table.inv_step))
                    rows.append(_row("gelu", bname, method, dname, shape, t, gb, copy_gbs, t_torch, large))
                    t = bench(lambda: k.gelu(x, b, method, tv, table.inv_step))
                    rows.append(_row("bias+gelu", f"{bname} (fused)", method, dname, shape, t, gb, copy_gbs, t_pair,
                                     large))
            del x
    return rows


def int_impls(kb: dict) -> dict:
    from compress.kernels import triton_integer as tint

    return {"triton": tint} | ({"cuda": kb["cuda"]} if "cuda" in kb else {})


def check_int(kb: dict, device) -> list[dict]:
    """Integer softmax / GELU codes on the device equal to the PyTorch reference's (bound 0: bit for bit)."""
    from compress.kernels import integer as I

    kb = int_impls(kb)
    rows, g = [], torch.Generator().manual_seed(0)
    for shape, k in (((96, 1000), 8), ((6, 20000), 3), ((64 * 6, 257), 10)):
        c = I.quantize(torch.randn(*shape, generator=g) * 30, k)
        want = I.softmax_codes(c, k)
        for bname, mod in kb.items():
            got = mod.int_softmax_codes(c.to(device), k).cpu()
            err = float((got - want).abs().max())
            rows.append({"op": "int-softmax", "backend": bname, "dtype": "int32", "max_error": err, "bound": 0.0,
                         "ok": err == 0})
    c = torch.arange(-32768, 32768, dtype=torch.int32).reshape(64, 1024)
    for k in (8, 11, 14):
        want = I.gelu_codes(c, k)
        for bname, mod in kb.items():
            err = float((mod.int_gelu_codes(c.to(device), k).cpu() - want).abs().max())
            rows.append({"op": "int-gelu", "backend": bname, "dtype": "int32", "max_error": err, "bound": 0.0,
                         "ok": err == 0})
    return rows


def bench_int(bench, kb, device, copy_gbs, softmax_shapes, gelu_shapes) -> list[dict]:
    """int32 codes in, int32 codes out (8 bytes an element); 'vs eager' compares with the PyTorch integer reference
    on the same device; fp32 eager torch.softmax / gelu are timed beside for scale."""
    from compress.kernels import integer as I

    impls = int_impls(kb)
    rows = []
    for op, shapes, k in (("int-softmax", softmax_shapes, 8), ("int-gelu", gelu_shapes, 11)):
        for shape, large in sized(shapes, torch.float32):
            c = I.quantize(torch.randn(shape, device=device) * (30 if op == "int-softmax" else 3), k)
            gb = 2 * c.numel() * 4 / 1e9
            ref = I.softmax_codes if op == "int-softmax" else I.gelu_codes
            t_ref = bench(lambda: ref(c, k))
            rows.append(_row(op, "pytorch-int-reference", "int", "int32", shape, t_ref, gb, copy_gbs, t_ref, large))
            for bname, mod in impls.items():
                fn = mod.int_softmax_codes if op == "int-softmax" else mod.int_gelu_codes
                t = bench(lambda: fn(c, k))
                rows.append(_row(op, bname, "int", "int32", shape, t, gb, copy_gbs, t_ref, large))
            del c
    return rows


def sweep_configs(smoke: bool) -> list[tuple[str, tuple, bool, dict]]:
    """(op, fp32 shape, large?, launch parameters) around the defaults: what tuned them."""
    if smoke:
        return [("softmax", (4, 20000), True, {"warps": 8}), ("softmax", (64, 257), False, {"rows": 2, "warps": 2}),
                ("gelu", (64, 128), True, {"tile": 1024, "warps": 2})]
    out = [("softmax", (65536, 1024), True, {"rows": r, "warps": w}) for r in (1, 2, 4) for w in (2, 4, 8)]
    out += [("softmax", (16384, 4096), True, {"warps": w}) for w in (4, 8, 16)]
    out += [("softmax", (2048, 32768), True, {"warps": w}) for w in (16, 32)]
    out += [("softmax", (2048, 32768), True, {"block": 4096, "warps": 16})]
    out += [("softmax", (64 * 6 * 257, 257), False, {"rows": r, "warps": w}) for r in (2, 4, 8, 16) for w in (2, 4, 8)]
    out += [("gelu", (65536, 4096), True, {"tile": t, "warps": w}) for t in (1024, 2048, 4096) for w in (2, 4, 8)]
    return out


def sweep_triton(bench, device, copy_gbs, smoke: bool) -> list[dict]:
    from compress.kernels import triton as tk

    rows = []
    for dname in ("fp32", "bf16"):
        dt = DTYPES[dname]
        for op, shape, large, kw in sweep_configs(smoke):
            shape = fp32_bytes(shape, dt) if large else shape
            x = torch.randn(shape, device=device).to(dt)
            gb = 2 * x.numel() * x.element_size() / 1e9
            fn = (lambda: tk.softmax(x, **kw)) if op == "softmax" else (lambda: tk.gelu(x, **kw))
            t = bench(fn)
            name = "triton " + " ".join(f"{k}={v}" for k, v in kw.items())
            rows.append(_row(op, name, "exact" if op == "softmax" else "erf", dname, shape, t, gb, copy_gbs, t))
            del x
    return rows


def _row(op, backend, method, dname, shape, ms, gb, copy_gbs, ms_ref, large=False) -> dict:
    gbs = gb / (ms * 1e-3)
    return {"op": op, "backend": backend, "method": method, "dtype": dname, "shape": list(shape), "ms": ms,
            "gb_per_s": gbs, "share_of_copy": gbs / copy_gbs, "speedup_vs_eager": ms_ref / ms, "large": large}


def verdict(res: dict) -> list[dict]:
    """The issue's GPU targets per backend and dtype, at the large sizes (the ViT shapes are reported, not judged):
    softmax / GELU >= 85% of copy bandwidth and >= PyTorch eager; fused bias + GELU faster than the unfused pair."""
    out = []
    for r in res["timings"]:
        if not r["large"] or "pytorch" in r["backend"]:
            continue
        if (r["op"] == "softmax" and r["method"] == "exact" or r["op"] == "gelu" and r["method"] == "erf"
                or r["op"].startswith("int-")):
            ok = r["share_of_copy"] >= 0.85 and r["speedup_vs_eager"] >= 1.0
            what = f"{100 * r['share_of_copy']:.0f}% of copy, {r['speedup_vs_eager']:.2f}x eager"
        elif r["op"] == "bias+gelu" and r["method"] == "erf":
            ok, what = r["speedup_vs_eager"] > 1.0, f"{r['speedup_vs_eager']:.2f}x the unfused pair"
        else:
            continue
        out.append({"op": r["op"], "backend": r["backend"], "dtype": r["dtype"], "shape": r["shape"], "met": ok,
                    "measured": what})
    return out


def markdown(res: dict) -> str:
    bad = [r for r in res["correctness"] if not r["ok"]]
    lines = [f"Device: {res['device']}; copy bandwidth {res['copy_gb_per_s']:.0f} GB/s (read + write).", "",
             f"Correctness on the device: {len(res['correctness']) - len(bad)}/{len(res['correctness'])} within bounds"
             + "".join(f"\n- FAILED {r['op']} {r['backend']} {r['dtype']}: {r['max_error']:.3g} > {r['bound']:.3g}"
                       for r in bad), "",
             "| op | backend | method | dtype | shape | ms | GB/s | % of copy | vs eager |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["timings"]:
        lines.append(f"| {r['op']} | {r['backend']} | {r['method']} | {r['dtype']} | {'x'.join(map(str, r['shape']))} | "
                     f"{r['ms']:.3f} | {r['gb_per_s']:.0f} | {100 * r['share_of_copy']:.1f} | {r['speedup_vs_eager']:.2f}x |")
    if res.get("sweep"):
        lines += ["", "Launch-parameter sweep (Triton; ms, % of copy):", "| op | config | dtype | shape | ms | % of copy |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['op']} | {r['backend']} | {r['dtype']} | {'x'.join(map(str, r['shape']))} | {r['ms']:.3f} | "
                  f"{100 * r['share_of_copy']:.1f} |" for r in res["sweep"]]
    if res["device"].startswith("cpu"):
        return "\n".join(lines + ["", "Targets: not judged in a --smoke run (the Triton interpreter on the CPU)."])
    lines += ["", "Targets (large sizes):"] + [f"- {v['op']} {v['backend']} {v['dtype']} {'x'.join(map(str, v['shape']))}: "
                                                  f"{v['measured']}: {'met' if v['met'] else 'NOT met'}"
                                                  for v in res["verdict"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "kernels-gpu")
    ap.add_argument("--smoke", action="store_true", help="CPU dry run: Triton interpreter, tiny sizes, no CUDA C++")
    ap.add_argument("--sweep", action="store_true", help="also time the Triton launch parameters around the defaults")
    args = ap.parse_args(argv)
    from compress.utils.io import write_json

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU here: run this on a GPU machine (or --smoke to check the script on CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    t0 = time.time()
    kb = backends(args.smoke)
    bench = timer(args.smoke)
    res = {"command": " ".join(sys.argv), "device": "cpu (smoke: Triton interpreter)" if args.smoke else
           torch.cuda.get_device_name(), "torch": torch.__version__, "backends": list(kb)}
    res["correctness"] = check_correctness(kb, device) + check_int(kb, device)
    res["copy_gb_per_s"] = copy_bandwidth(bench, device, args.smoke)
    res["timings"] = bench_softmax(bench, kb, device, res["copy_gb_per_s"], SMOKE_SOFTMAX if args.smoke else
                                   SOFTMAX_SHAPES)
    res["timings"] += bench_gelu(bench, kb, device, res["copy_gb_per_s"], SMOKE_GELU if args.smoke else GELU_SHAPES)
    res["timings"] += bench_int(bench, kb, device, res["copy_gb_per_s"], SMOKE_SOFTMAX if args.smoke else
                                SOFTMAX_SHAPES, SMOKE_GELU if args.smoke else GELU_SHAPES)
    if args.sweep:
        res["sweep"] = sweep_triton(bench, device, res["copy_gb_per_s"], args.smoke)
    res["verdict"] = verdict(res)
    res["seconds"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", res)
    print(markdown(res))
    print(f"\n{res['seconds']:.0f} s; results in {args.out / 'results.json'}")
    return 0 if all(r["ok"] for r in res["correctness"]) else 1


if __name__ == "__main__":
    sys.exit(main())
