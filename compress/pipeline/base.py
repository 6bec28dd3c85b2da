"""A pass is a small class with a typed config, registered by name (as ModelOpt/Olive passes).

The class is the pass's one descriptor (as ModelOpt's ``ModeDescriptor``): its ``Config`` (with a ``VERSION``
checked when a stored config is read back, as torchao's ``AOBaseConfig``), ``run``, ``rebuild``, the artifacts
it adds at export, its report section, and its ordering rules, declared as data and checked when a recipe is
bound (``compress.pipeline.plan``):

- ``exporter``: fn(ExportRequest) -> [Artifact], called by the export stage when the state's history holds
  this pass (e.g. quantize's Q/DQ INT8 and INT4 graphs); None: the float ONNX graph is the model's artifact;
- ``report_section``: fn(record, run_dir) -> markdown for report.md (may write plots); None: a default list;
- ``replaces_float_graph``: its exporter's artifacts stand for the model (quantize): the float graph is kept
  only as their source, unscored; False: they are built beside it (split's bundle), the float ONNX is scored;
- ``must_follow``: pass types that must have run earlier in the recipe;
- ``forbid_after``: pass type -> why this pass cannot run after it;
- ``last``: why no pass may follow this one (None: any may).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

import torch.nn as nn

from ..recipes.schema import Strict
from ..registry import PASSES, Registry

if TYPE_CHECKING:
    from .context import RunContext
    from .state import ModelState


class PassConfig(Strict):
    """Base of every pass config; subclasses declare typed, range-checked fields. Bump ``VERSION`` when a
    field's meaning changes: a checkpoint whose record holds another version is refused on load."""

    VERSION: ClassVar[int] = 1


class Pass:
    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    summary: ClassVar[str] = ""
    must_follow: ClassVar[tuple[str, ...]] = ()
    forbid_after: ClassVar[dict[str, str]] = {}
    exporter: ClassVar[Callable[..., list] | None] = None  # set with staticmethod(fn)
    replaces_float_graph: ClassVar[bool] = False
    last: ClassVar[str | None] = None
    report_section: ClassVar[Callable[[dict, Path], str] | None] = None  # set with staticmethod(fn)

    def __init__(self, config: PassConfig):
        self.config = config

    def run(self, state: "ModelState", ctx: "RunContext") -> dict:
        """Transform ``state`` in place; return the record kept in its history (JSON-able)."""
        raise NotImplementedError  # abstract: each registered pass implements run()

    @classmethod
    def rebuild(cls, model: nn.Module, record: dict) -> None:
        """Re-apply this pass's module-structure changes (from its ``record``) before weights load."""


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: the descriptor under ``cls.name``; a second, different pass of that name is an error."""
    return PASSES.register(cls.name, cls)


def available_passes() -> Registry:
    """Every registered pass, the built-in ones (``compress.passes``) imported on first use."""
    return PASSES.loaded()
