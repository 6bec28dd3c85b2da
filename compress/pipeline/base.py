"""A pass is a small class with a typed config, registered by name (as ModelOpt/Olive passes).

The class is the pass's descriptor (as ModelOpt's ``ModeDescriptor``): its ``Config`` (with a ``VERSION``
checked when a stored config is read back, as torchao's ``AOBaseConfig``), ``run``, ``rebuild`` and its
ordering rules, declared as data and checked when a recipe is bound (``compress.pipeline.plan``):

- ``must_follow``: pass types that must have run earlier in the recipe;
- ``forbid_after``: pass type -> why this pass cannot run after it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, ClassVar

import torch.nn as nn

from ..recipes.schema import Strict

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


def same_definition(a, b) -> bool:
    """Whether two registered objects are one definition (the same object, or its module reloaded)."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register_pass(cls: type[Pass]) -> type[Pass]:
    old = PASSES.get(cls.name)
    if old is not None and not same_definition(old, cls):
        raise ValueError(f"pass {cls.name!r} is registered twice ({old.__module__}.{old.__qualname__} and "
                         f"{cls.__module__}.{cls.__qualname__})")
    PASSES[cls.name] = cls
    return cls


def available_passes() -> dict[str, type[Pass]]:
    for m in _BUILTIN_MODULES:
        importlib.import_module(m)
    return PASSES
