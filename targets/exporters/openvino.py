"""OpenVINO IR (x86): the float graph as fp32 (and bf16 when asked) IR, quantized Q/DQ graphs as INT8 IR.

OpenVINO reads Q/DQ ONNX natively (FakeQuantize) and runs those MatMuls in INT8 on VNNI cores.
The precision the CPU plugin should compute in is stored in the IR's rt_info, and the runner applies
it: fp32 IR is verified at exact fp32 against PyTorch, not at the plugin's default (bf16 on AMX/
AVX512_BF16 machines), which is a separate, named artifact.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ... import ui
from ...errors import UserError
from ...export.artifacts import Artifact, ExportRequest, register_target_exporter
from ...export.verify import LOSSY_MAX_REL, LOSSY_MIN_AGREEMENT, verify
from ...models.float_view import float_view
from ...runtime import OrtRunner, TorchRunner
from .runners import OV_PRECISION_KEY, OpenVINORunner
from . import art_precision, baseline_onnx, nearest, onnx_graphs, rel, target_dir, verify_limits, wanted_precisions

RUNS = ["fp32", "bf16", "int8"]
OV_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
QUANT_MIN_COSINE = 0.999  # another runtime's INT8 rounding vs ONNX Runtime's, same scales
# OpenVINO's x86 int8 kernels without AVX-VNNI add u8 x s8 products in 16-bit pairs, which saturate: measured
# cosine 0.9969 to the exact ONNX Runtime graph on an AVX2 CPU (the same graph gives 0.9999 on VNNI CPUs)
QUANT_MIN_COSINE_NO_VNNI = 0.99
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def cpu_flags() -> set[str]:
    """This x86 CPU's feature flags (empty where /proc/cpuinfo has none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return next((set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")), set())


def int8_bound() -> tuple[float, str | None]:
    """The cosine an INT8 IR must reach against the ONNX Runtime graph on this CPU, and why when relaxed."""
    flags = cpu_flags()
    if not flags or flags & VNNI_FLAGS:
        return QUANT_MIN_COSINE, None
    return QUANT_MIN_COSINE_NO_VNNI, (f"this CPU has no AVX-VNNI: OpenVINO's int8 kernels saturate 16-bit pair sums "
                                      f"here, so the bound is cosine {QUANT_MIN_COSINE_NO_VNNI} "
                                      f"({QUANT_MIN_COSINE} on VNNI CPUs)")
BF16_MIN_COSINE = 0.995


def save_ir(onnx_path: Path, xml: Path, hint: str) -> Path:
    """ONNX -> OpenVINO IR (.xml + .bin, weights kept fp32), the inference precision in rt_info."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(hint, list(OV_PRECISION_KEY))
    tmp = Path(tempfile.mkdtemp(prefix=f".{xml.stem}.", dir=xml.parent))
    try:  # .bin first, .xml last: a reader never sees an .xml without its weights
        ov.save_model(model, str(tmp / xml.name), compress_to_fp16=False)
        os.replace(tmp / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
        os.replace(tmp / xml.name, xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml


def _conversion_failures() -> tuple[type, ...]:
    try:
        from openvino.frontend import GeneralFailure, NotImplementedFailure, OpConversionFailure
    except ImportError:
        return ()
    return OpConversionFailure, NotImplementedFailure, GeneralFailure


def _size_note(xml: Path) -> str:
    return f"IR {xml.name} + {xml.with_suffix('.bin').name}"


@register_target_exporter("openvino")
def export_openvino(req: ExportRequest) -> list[Artifact]:
    prof, out_dir = req.target, target_dir(req)
    max_abs, min_cos = verify_limits(req)
    graphs = onnx_graphs(req)
    wanted = [nearest(req, w, RUNS) for w in wanted_precisions(req)]
    notes = [n for _, ns in wanted for n in ns]
    precisions = {p for p, _ in wanted} | {"fp32"}
    have = {art_precision(a) for a, _ in graphs}
    for p in sorted(precisions - have - {"fp32", "bf16"}):
        notes.append(f"{prof['name']}: {p} asked, but the model state has no {p} ONNX graph (add a quantize pass)")
        ui.info(f"  note: {notes[-1]}")
    artifacts: list[Artifact] = []
    float_graph = next((g for a, g in graphs if art_precision(a) == "fp32"), req.float_onnx)
    float_is_model = any(art_precision(a) == "fp32" and a.evaluate for a, _ in graphs)  # no quantized graph
    with float_view(req.state.model) as m:
        torch_ref = TorchRunner(m)
        for p in sorted(precisions & {"fp32", "bf16"}):
            xml = save_ir(float_graph, out_dir / f"model-{p}.xml", OV_HINT[p])
            lossy = p != "fp32"
            v = verify(xml, OpenVINORunner(xml), torch_ref, req.verify_images,
                       float("inf") if lossy else max_abs, BF16_MIN_COSINE if lossy else min_cos, runtime="openvino",
                       max_rel=LOSSY_MAX_REL[p] if lossy else None, min_agreement=LOSSY_MIN_AGREEMENT if lossy else None)
            ui.info(f"  verified {v.line()}")
            artifacts.append(Artifact(f"{prof['name']}:openvino-{p}", rel(req, xml), "openvino-ir", "openvino", p,
                                      target=prof["name"], verification=v.to_dict(), evaluate=float_is_model,
                                      notes=[_size_note(xml), f"CPU plugin inference precision {OV_HINT[p]}"] + notes))
    # the float layers of quantized graphs (LayerNorm, softmax, GELU, residual adds) in bf16 where the CPU has
    # it natively: the plugin's own choice there, 1.25x faster on DINOv2 ViT-S than fp32 at the same agreement
    # (benchmarks/targets_bench.py); the verification below holds them to the ONNX Runtime graph
    float_hint = "bf16" if "bf16" in prof["precisions"] else "f32"
    for a, src in graphs:
        p = art_precision(a)
        if p == "fp32":
            continue
        xml = out_dir / f"{Path(a.path).stem}.xml"
        try:
            save_ir(src, xml, float_hint)
        except _conversion_failures() as e:  # an op OpenVINO's ONNX frontend does not read; bugs are not caught
            msg = f"OpenVINO cannot convert {a.path} ({p}): {str(e).strip().splitlines()[-1][:160]}"
            if not prof.get("optional"):
                raise UserError(f"target {prof['name']}: {msg}",
                                "drop that format from quantize.export, or mark the target `optional: true`") from None
            ui.info(f"  note: {msg} (optional target: skipped)")
            notes.append(msg)
            continue
        run = OpenVINORunner(xml)
        min_cos, why = int8_bound()
        v = verify(xml, run, OrtRunner(src), req.verify_images, float("inf"), min_cos, runtime="openvino",
                   max_rel=LOSSY_MAX_REL["int8"], min_agreement=LOSSY_MIN_AGREEMENT)
        ui.info(f"  verified {v.line()} (against {Path(a.path).name} in ONNX Runtime)")
        artifacts.append(Artifact(f"{prof['name']}:openvino-{Path(a.path).stem}", rel(req, xml), "openvino-ir",
                                  "openvino", a.precision, target=prof["name"], verification=v.to_dict(),
                                  notes=[_size_note(xml), f"from {a.path}",
                                         f"quantized GEMMs in int8, float layers in {run.precision}"]
                                  + ([why] if why else [])))
    base = _baseline_ir(req, out_dir)
    from .check import run_check

    run_check(req, "openvino", base, [x for x in artifacts if x.precision != "fp32" or float_is_model])
    return artifacts


def _baseline_ir(req: ExportRequest, out_dir: Path) -> Path | None:
    src = baseline_onnx(req)
    if src is None:
        return None
    if src == req.float_onnx:
        return out_dir / "model-fp32.xml"
    return save_ir(src, out_dir / "baseline-fp32.xml", "f32")
