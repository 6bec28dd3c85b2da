"""TinyCLIP distillation as a pass: affinity mimicking, weight inheritance (manual or by learnable masks) and
progressive multi-stage compression of a CLIP image tower, data-parallel under torchrun. The machinery lives below
the passes: ``compress.pruning.inherit`` / ``masks`` (inheritance), ``compress.distill.clip_cache`` (the teacher's
cached outputs) and ``compress.distill.clip_loop`` (the loop). See docs/distillation.md."""
from .config import DistillConfig  # noqa: F401
from .distill_pass import DistillPass  # noqa: F401  registers the pass
