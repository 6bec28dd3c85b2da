"""vitforge: compression and edge deployment for Vision Transformers and CLIP towers."""

__version__ = "0.1.0"

from ._compat import ensure_torchvision_ops as _ensure_torchvision_ops  # noqa: E402

# before anything (timm, transformers, open_clip) imports torchvision
_ensure_torchvision_ops()
