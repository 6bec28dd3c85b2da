"""A pass is a small class with a typed config, registered by name (as ModelOpt/Olive passes)."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, ClassVar

import torch.nn as nn

from ..recipes.schema import Strict

if TYPE_CHECKING:
    from .context import RunContext
    from .state import ModelState


class PassConfig(Strict):
    """Base of every pass config; subclasses declare typed, range-checked fields."""


class Pass:
    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    summary: ClassVar[str] = ""

    def __init__(self, config: PassConfig):
        self.config = config

    def run(self, state: "ModelState", ctx: "RunContext") -> dict:
        """Transform ``state`` in place; return the record kept in its history (JSON-able)."""
        raise NotImplementedError  # abstract: each registered pass implements run()

    @classmethod
    def rebuild(cls, model: nn.Module, record: dict) -> None:
        """Re-apply this pass's module-structure changes (from its ``record``) before weights load."""


PASSES: dict[str, type[Pass]] = {}
_BUILTIN_MODULES = ("compress.passes",)


def register_pass(cls: type[Pass]) -> type[Pass]:
    PASSES[cls.name] = cls
    return cls


def available_passes() -> dict[str, type[Pass]]:
    for m in _BUILTIN_MODULES:
        importlib.import_module(m)
    return PASSES
