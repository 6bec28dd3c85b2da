"""TensorRT build kit (Jetson, NVIDIA GPUs): TensorRT-ready ONNX + build_engine.py + trtexec line + manifest.

One kit per precision, ``artifacts/<target>/<name>.trt-kit/``. The engine is built on the device by
``compress build --target <target> <kit>`` (or ``python3 build_engine.py`` there): engines are not
portable across TensorRT versions. Here the kit's ONNX is verified in ONNX Runtime against the model it
came from, and the Q/DQ placement rules are checked on the graph; a kit that breaks a rule is not shipped.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from ... import ui
from ...errors import VerificationError
from ...export.artifacts import Artifact, ExportRequest, register_target_exporter
from ...export.verify import LOSSY_MAX_REL, LOSSY_MIN_AGREEMENT, verify
from ...models.float_view import float_view
from ...runtime import OrtRunner, TorchRunner
from ...utils.io import atomic_dir, sha256_file, write_json
from ..exporters import art_precision, baseline_onnx, nearest, onnx_graphs, rel, target_dir, wanted_precisions
from . import build_engine
from .graph import cap_opset, matmulnbits_to_dq, opset, set_opset, to_fp16
from .rules import check_qdq, summary

RUNS = ["fp32", "fp16", "int8", "int4"]
MIN_COSINE = {"fp32": None, "fp16": 0.999, "int8": 0.999, "int4": 0.999}  # vs the graph it was typed from
MAX_BATCH = 8
NO_ENGINE = ("no TensorRT engine was built or run here: the kit's ONNX graph was verified in ONNX Runtime; "
             "the engine's own numbers are unverified until it is built and checked on the device")


def trt_graph(src: Path, precision: str, profile: dict) -> onnx.ModelProto:
    """The TensorRT-ready graph of ``src`` for ``precision`` on ``profile``'s TensorRT."""
    model = onnx.load(str(src))
    if any(n.op_type == "MatMulNBits" for n in model.graph.node):
        model = matmulnbits_to_dq(model)
    model = set_opset(model, 17)
    strongly = profile.get("trt_strongly_typed", True)
    if strongly and profile.get("float_precision") == "fp16" and precision != "fp32":
        model = to_fp16(model)  # float layers in fp16, LayerNorm/Softmax in fp32 islands
    return cap_opset(model, profile.get("trt_max_opset"))  # e.g. TensorRT 8.5 parses up to opset 17


def manifest_for(model: onnx.ModelProto, precision: str, profile: dict, source: str) -> dict:
    inp, out = model.graph.input[0], model.graph.output[0]
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
    dynamic = dims[0] <= 0
    trt = profile["runtimes"]["tensorrt"]
    strongly = profile.get("trt_strongly_typed", True)
    has_q = any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    flags = [] if strongly else (["fp16"] if "fp16" in profile["precisions"] and precision != "fp32" else []) + \
        (["int8"] if has_q else [])
    return {"tool": "vitforge", "kind": "tensorrt-build-kit", "target": profile["name"], "precision": precision,
            "tensorrt": trt["version"], "tensorrt_via": trt.get("via", ""), "strongly_typed": strongly,
            "builder_flags": flags, "onnx": "model.onnx", "opset": opset(model), "source": source,
            "input": {"name": inp.name, "shape": [1 if d <= 0 else d for d in dims], "dynamic": dynamic,
                      "min_batch": 1, "opt_batch": 1, "max_batch": MAX_BATCH if dynamic else 1},
            "output": out.name}


def write_kit(dest: Path, model: onnx.ModelProto, man: dict) -> dict:
    """Write the kit folder atomically; returns its manifest."""
    with atomic_dir(dest) as tmp:
        onnx.save(model, str(tmp / "model.onnx"))
        shutil.copy(Path(build_engine.__file__), tmp / "build_engine.py")
        man = man | {"trtexec": " ".join(build_engine.trtexec_command(man)),
                     "build": f"compress build --target {man['target']} {dest.name}  (or: python3 build_engine.py)",
                     "files": {"model.onnx": sha256_file(tmp / "model.onnx"),
                               "build_engine.py": sha256_file(tmp / "build_engine.py")}}
        write_json(tmp / "manifest.json", man)
        (tmp / "trtexec.sh").write_text("#!/bin/sh\n# build the engine on the device\ncd \"$(dirname \"$0\")\"\n"
                                        + man["trtexec"] + " \"$@\"\n")
    return man


def make_kit(req: ExportRequest, name: str, src: Path, precision: str, reference, source: str,
             notes: list[str]) -> Artifact | None:
    """Build, verify and rule-check one kit; None (with a loud note) when the graph breaks a rule."""
    prof = req.target
    model = trt_graph(src, precision, prof)
    rules = summary(check_qdq(model, [str(p) for p in prof["precisions"]], prof.get("trt_max_opset")))
    for x in rules["violations"]:
        ui.info(f"  {x['severity']}: [{x['rule']}] {x['node']}: {x['message']}")
    if not rules["passed"]:
        msg = (f"{prof['name']}: {source} breaks {rules['errors']} TensorRT Q/DQ rule(s) "
               f"({', '.join(sorted({x['rule'] for x in rules['violations'] if x['severity'] == 'error'}))}): "
               f"no {precision} kit shipped")
        ui.info(f"  {msg}")
        notes.append(msg)
        return None
    dest = target_dir(req) / f"{name}.trt-kit"
    man = write_kit(dest, model, manifest_for(model, precision, prof, source) | {"qdq_rules": rules})
    onnx_path = dest / "model.onnx"
    max_abs, min_cos = req.recipe.export.verify.max_abs, req.recipe.export.verify.min_cosine
    lim = MIN_COSINE[precision]
    try:
        v = verify(onnx_path, OrtRunner(onnx_path), reference, req.verify_images,
                   max_abs if lim is None else float("inf"), min_cos if lim is None else lim,
                   max_rel=None if lim is None else LOSSY_MAX_REL[precision],
                   min_agreement=None if lim is None else LOSSY_MIN_AGREEMENT)
    except VerificationError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    ui.info(f"  verified {v.line()} (TensorRT-ready graph in ONNX Runtime)")
    write_json(dest / "manifest.json", man | {"verification": v.to_dict(), "engine_verified": False,
                                              "note": NO_ENGINE})
    return Artifact(f"{prof['name']}:{name}", rel(req, dest), "tensorrt-kit", "tensorrt", precision,
                    target=prof["name"], verification=v.to_dict(), evaluate=False,
                    notes=[NO_ENGINE, f"build on the device: compress build --target {prof['name']} {rel(req, dest)}",
                           f"trtexec: {man['trtexec']}",
                           f"Q/DQ rules: {rules['errors']} errors, {rules['warnings']} warnings"] + notes)


@register_target_exporter("tensorrt")
def export_tensorrt(req: ExportRequest) -> list[Artifact]:
    prof = req.target
    graphs = {art_precision(a): (a, g) for a, g in reversed(onnx_graphs(req, "tensorrt"))}
    float_src = graphs.get("fp32", (None, req.float_onnx))[1]
    artifacts, notes = [], []
    built = set()
    for want in wanted_precisions(req):
        got, n = nearest(req, want, RUNS)
        notes += n
        if got == "fp32" and not prof.get("requested_precision"):  # the GPU's float precision unless fp32 is asked
            got = prof.get("float_precision", "fp16")
        if got in ("fp32", "fp16", "bf16") or got not in graphs:
            if got not in ("fp32", "fp16", "bf16"):
                notes.append(f"{got} asked, but the model state has no {got} ONNX graph (add a quantize pass); "
                             f"building {prof.get('float_precision', 'fp16')}")
                ui.info(f"  note: {notes[-1]}")
            got = "fp32" if got == "fp32" else prof.get("float_precision", "fp16")
        if got in built:
            continue
        built.add(got)
        if got in ("fp32", "fp16"):
            with float_view(req.state.model) as m:
                a = make_kit(req, f"model-{got}", float_src, got, TorchRunner(m), rel(req, float_src), notes)
        else:
            art, src = graphs[got]
            a = make_kit(req, f"{Path(art.path).stem}", src, got, OrtRunner(src), art.path, notes)
        if a is not None:
            artifacts.append(a)
    from ..exporters.check import check_config

    if check_config(req) and req.reference is not None and baseline_onnx(req) is not None:
        base = baseline_onnx(req)
        fp = prof.get("float_precision", "fp16")
        with float_view(req.reference.model) as m:
            b = make_kit(req, f"baseline-{fp}", base, fp, TorchRunner(m), rel(req, base), [])
        if b is not None:
            b.name = f"{prof['name']}:baseline-{fp}"
            artifacts.append(b)
            from ..exporters.check import run_check

            run_check(req, "tensorrt", None, [a for a in artifacts if a is not b])
    return artifacts
