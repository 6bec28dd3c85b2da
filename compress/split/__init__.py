"""ED-ViT splitting (arXiv 2410.11650): class-wise sub-models on several devices, fused by a small MLP.

Shared machinery below the passes: class partition (``partition``), device assignment (``assign``), the
fusion head (``fusion``), the deployment manifest (``manifest``, ``bundle``) and the ZeroMQ runtime
(``serve``, ``client``, ``local``). See docs/splitting.md.
"""
