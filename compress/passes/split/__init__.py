"""ED-ViT splitting as a pass: class-wise sub-models pruned per part (``compress.pruning``), recovered by
distillation (``compress.distill``), fused by an MLP, assigned to devices and bundled for the ZeroMQ runtime
(``compress.split``). See docs/splitting.md."""
from . import split_pass  # noqa: F401  registers the pass (its descriptor declares its exporter and report section)
from .config import SplitConfig  # noqa: F401
from .split_pass import SplitPass  # noqa: F401
