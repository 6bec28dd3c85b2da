"""vitforge: compression and edge deployment for Vision Transformers and CLIP towers."""

__version__ = "0.1.0"
