"""ExecuTorch ``.pte`` lowered to XNNPACK (Android, Raspberry Pi): fp32, and INT8 by PT2E quantization.

Before export two modules are swapped for XNNPACK-friendly equivalents (same fp32 math): LayerNorm,
which XNNPACK has no operator for, becomes mean/rsqrt over a 4-D view it does delegate, and the
attention matmuls become 3-D ``bmm`` (4-D matmul decomposes to ``expand_copy``, also not delegated).
Each undelegated op would split the graph into another delegate, so the whole encoder lowers as one.
INT8 quantizes the Linear and patch Conv layers only (per-channel symmetric weights, static per-tensor
activations calibrated on the recipe's calibration images); LayerNorm, softmax and GELU stay fp32.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ... import ui
from ...export.artifacts import Artifact, ExportRequest, register_target_exporter
from ...export.verify import LOSSY_MAX_REL, LOSSY_MIN_AGREEMENT, compare, verify
from ...models.vit import MatMul
from ...models.float_view import float_view
from ...runtime import TorchRunner
from ...utils.io import atomic_path
from .runners import ExecuTorchRunner, quiet_imports
from . import nearest, rel, target_dir, verify_limits, wanted_precisions

RUNS = ["fp32", "int8"]
INT8_MIN_COSINE = 0.999  # XNNPACK's int8 kernels vs the PT2E reference graph (same scales)


class LayerNorm4D(nn.Module):
    """LayerNorm over the last axis as mean over the inner dims of a 4-D view (XNNPACK's mean.dim)."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4 = x.reshape(*x.shape, 1)
        d = x4 - x4.mean((2, 3), keepdim=True)
        y = d * torch.rsqrt((d * d).mean((2, 3), keepdim=True) + self.eps)
        return y.reshape(x.shape) * self.weight + self.bias


class BatchedMatMul(MatMul):
    """``a @ b`` over flattened leading dims as one 3-D ``bmm``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        lead = a.shape[:-2]
        out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
        return out.reshape(*lead, a.shape[-2], b.shape[-1])


def xnnpack_view(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with LayerNorm and attention matmuls in the forms XNNPACK delegates."""
    model = copy.deepcopy(model).eval()
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(mod, name, LayerNorm4D(child))
            elif type(child) is MatMul:
                setattr(mod, name, BatchedMatMul())
    return model


def quantize_pt2e(model: nn.Module, example: torch.Tensor, calibration: list[torch.Tensor]) -> nn.Module:
    """PT2E static INT8 (XNNPACKQuantizer) of Linear and Conv2d layers; returns the converted graph module."""
    with quiet_imports():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    qcfg = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    quantizer = XNNPACKQuantizer().set_module_type(nn.Linear, qcfg).set_module_type(nn.Conv2d, qcfg)
    gm = torch.export.export(model, (example,)).module()
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for x in calibration:
            for i in range(len(x)):  # the program is batch 1: calibrate the graph at that shape
                prepared(x[i:i + 1])
    return convert_pt2e(prepared)


def lower(model: nn.Module, example: torch.Tensor, dest: Path) -> Path:
    with quiet_imports():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    ep = torch.export.export(model, (example,))
    with quiet_imports():
        prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    with atomic_path(dest) as tmp:
        tmp.write_bytes(prog.buffer)
    return dest


def per_image(graph_module):
    """A batch-1 exported graph as a runner over any number of images."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([graph_module(x[i:i + 1]) for i in range(len(x))]).float()

    return run


def calibration_images(req: ExportRequest, count: int | None = None) -> list[torch.Tensor]:
    from ...data import load_subset

    c = req.recipe.data.calibration
    ds = load_subset(req.recipe.data.path, c.split, count or c.count, c.seed, req.state.cfg)
    imgs = [ds[i][0] for i in range(len(ds))]
    bs = req.recipe.data.batch_size
    return [torch.stack(imgs[i:i + bs]) for i in range(0, len(imgs), bs)]


def export_pte(model: nn.Module, dest: Path, precision: str,
               calibration: list[torch.Tensor] | None = None) -> tuple[Path, nn.Module]:
    """Lower ``model`` (fp32, eval) to ``dest``; returns the file and the PyTorch module it came from."""
    cfg = model.cfg
    example = torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size)
    view = xnnpack_view(model)
    if precision == "int8":
        view = quantize_pt2e(view, example, calibration or [])
    lower(view, example, dest)
    return dest, view


@register_target_exporter("executorch")
def export_executorch(req: ExportRequest) -> list[Artifact]:
    prof, out_dir = req.target, target_dir(req)
    max_abs, min_cos = verify_limits(req)
    wanted = [nearest(req, w, RUNS) for w in wanted_precisions(req)]
    notes = [n for _, ns in wanted for n in ns]
    precisions = ["fp32"] + [p for p in dict.fromkeys(p for p, _ in wanted) if p != "fp32"]
    artifacts = []
    with float_view(req.state.model) as model:
        fp32_ref = TorchRunner(model)
        for p in precisions:
            ui.info(f"  lowering to XNNPACK ({p}){': calibrating PT2E' if p == 'int8' else ''}")
            calib = calibration_images(req) if p == "int8" else None
            dest, ref_module = export_pte(model, out_dir / f"model-{p}.pte", p, calib)
            runner = ExecuTorchRunner(dest)
            if p == "fp32":
                v = verify(dest, runner, fp32_ref, req.verify_images, max_abs, min_cos, runtime="executorch")
                extra = []
            else:  # against the PT2E graph it was lowered from; the drift from fp32 is recorded
                v = verify(dest, runner, per_image(ref_module), req.verify_images, float("inf"), INT8_MIN_COSINE,
                           runtime="executorch", max_rel=LOSSY_MAX_REL["int8"], min_agreement=LOSSY_MIN_AGREEMENT,
                           against="the PT2E INT8 PyTorch graph it was lowered from")
                mab, cos = compare(runner(req.verify_images), fp32_ref(req.verify_images))
                extra = [f"vs the fp32 PyTorch model: cosine {cos:.5f}, max|diff| {mab:.3g} (PT2E static INT8, "
                         f"{sum(len(x) for x in calib)} calibration images)"]
            ui.info(f"  verified {v.line()}")
            artifacts.append(Artifact(
                f"{prof['name']}:executorch-{p}", rel(req, dest), "pte", "executorch", "w8a8" if p == "int8" else p,
                target=prof["name"], verification=v.to_dict(), evaluate=p != "fp32" or len(precisions) == 1,
                notes=["XNNPACK delegate, batch 1 program"] + extra + notes))
    from .check import run_check

    run_check(req, "executorch", None, artifacts)
    return artifacts
