"""Distillation machinery shared by the passes (prune's recovery, align; next TinyCLIP): the KD losses
(``losses``), the teacher's cached outputs (``teacher``), the training loop (``train``) and the least-squares
fits of linear layers (``lstsq``)."""
from .losses import Distiller
from .lstsq import Moments
from .teacher import TeacherTargets, teacher_outputs
from .train import bf16_ok, distill

__all__ = ["Distiller", "Moments", "TeacherTargets", "bf16_ok", "distill", "teacher_outputs"]
