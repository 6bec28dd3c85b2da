"""The ``quantize`` pass: ViT-aware post-training quantization, optionally LRP-guided mixed precision."""
from __future__ import annotations

import copy
import time

import torch

from ... import ui
from ...errors import UserError
from ...pipeline.base import Pass, register_pass
from . import ptq
from .config import QuantizeConfig
from .export import export_quantized
from .modules import quantized_modules, wrap
from .precision import precision_summary
from .reconstruct import BlockReconstructor
from .report import quantize_section
from ...utils.resources import measure


@register_pass
class QuantizePass(Pass):
    name = "quantize"
    Config = QuantizeConfig
    summary = "ViT-aware PTQ: post-LN reparameterization, GPTQ weights, SULQ softmax, LRP mixed precision"
    forbid_after = {"quantize": "the model is already quantized"}
    exporter = staticmethod(export_quantized)
    replaces_float_graph = True  # the Q/DQ / MatMulNBits graphs are the model; the float graph is their source
    report_section = staticmethod(quantize_section)

    def run(self, state, ctx):
        cfg: QuantizeConfig = self.config
        model = state.model
        if quantized_modules(model):
            raise UserError("the model is already quantized (a quantize pass ran earlier in this recipe)",
                            "keep one quantize pass per recipe")
        ptq.check_paths(model, cfg)
        t0, c0 = time.time(), time.process_time()
        images = torch.cat(ctx.calibration_batches(cfg.calibration_images))
        ui.info(f"    {len(images)} calibration images")
        record: dict = {"calibration_images": len(images)}
        phases: dict[str, dict] = {}  # CPU s, wall s, peak RSS of each phase (compress.utils.resources)
        relevance = None
        if cfg.mixed.strategy == "relevance":
            from .relevance import relevance_profile

            with measure() as phases["relevance"]:
                prof = relevance_profile(model, [images[: cfg.mixed.relevance_images]], target=cfg.mixed.relevance_target,
                                         rule=cfg.mixed.relevance_rule)
            relevance = prof.scores
            record["relevance"] = {"scores": relevance, "rule": prof.rule, "target": prof.target_kind,
                                   "images": prof.images, "seconds": phases["relevance"]["wall_s"],
                                   "block_error": prof.block_error()}
        with measure() as phases["reparam"]:
            record["reparam"] = ptq.reparameterize_model(model, images, cfg)
        bits: dict[str, int] = {}
        if cfg.mixed.strategy != "none":
            from .mixed import allocate_widths

            with measure() as phases["mixed"]:
                bits, record["mixed"] = allocate_widths(model, images, cfg, relevance)
        recon = BlockReconstructor(cfg.reconstruction, len(model.blocks)) if cfg.reconstruction.enabled else None
        # the float model: the reconstruction's target, and the asymmetric calibration's
        asym = cfg.weights.asymmetric or cfg.weights.bias_correction
        reference = copy.deepcopy(model).eval() if recon is not None or asym else None
        with measure() as phases["calibrate"]:
            out = ptq.quantize(model, cfg, images, bits, reference=reference, reconstruct=recon)
        del reference
        record["phases"] = phases
        model.eval()
        if recon is not None:
            record["reconstruction"] = recon.log
        record |= {"plan": out["plan"], "layer_error": out["layer_error"], "activation_error": out["activation_error"],
                   "bits": {n: m.weight_quant.bits for n, m in quantized_modules(model).items()
                            if getattr(m, "weight_quant", None) is not None},
                   "precision": precision_summary(model), "seconds": time.time() - t0,
                   "cpu_seconds": time.process_time() - c0}  # one-core cost, robust to a shared machine
        ui.info(f"    quantized: {record['precision']['label']} in {record['seconds']:.0f}s "
                f"(process CPU {record['cpu_seconds']:.0f}s)")
        return record

    @classmethod
    def rebuild(cls, model, record: dict) -> None:
        wrap(model, record["plan"])
