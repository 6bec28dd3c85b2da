"""The one registry concept: a name -> definition table where registering a second, different definition under a
name is an error (a reloaded module's same definition is not).

Three tables use it: the passes (``PASSES``; each pass descriptor owns its exporter and report section), the device
exporters the export stage calls for targets (``TARGET_EXPORTERS``, filled by ``compress.targets.deploy``) and the
runtimes that score artifacts (``compress.runtime.RUNNERS``). The first two live here, below the pipeline, recipes,
export and report that read them.
"""
from __future__ import annotations

import importlib
from typing import Callable, TypeVar

T = TypeVar("T")


def same_definition(a, b) -> bool:
    """Whether two registered objects are one definition (the same object, or its module reloaded)."""
    return a is b or (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == \
        (getattr(b, "__module__", None), getattr(b, "__qualname__", None)) != (None, None)


def _label(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


class Registry(dict):
    """``kind`` names what is registered in error messages ("pass", "target exporter", "runtime")."""

    def __init__(self, kind: str, initial: dict | None = None, builtins: tuple[str, ...] = ()):
        super().__init__(initial or {})
        self.kind = kind
        self.builtins = builtins  # modules whose import registers the built-in definitions

    def loaded(self) -> "Registry":
        """The table with its built-in definitions registered (their modules imported once, on first use)."""
        for m in self.builtins:
            importlib.import_module(m)
        return self

    def register(self, name: str, obj: T) -> T:
        old = self.get(name)
        if old is not None and not same_definition(old, obj):
            raise ValueError(f"{self.kind} {name!r} is registered twice ({_label(old)} and {_label(obj)})")
        self[name] = obj
        return obj

    def add(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``register``."""
        return lambda obj: self.register(name, obj)


# pass type -> its descriptor (a ``compress.pipeline.base.Pass`` subclass: config, run, rebuild, ordering rules,
# exporter, report section)
PASSES = Registry("pass", builtins=("compress.passes",))
# exporter name (a profile's ``exporters:`` entry) -> fn(ExportRequest with ``target`` set) -> [Artifact]
TARGET_EXPORTERS = Registry("target exporter")

__all__ = ["PASSES", "TARGET_EXPORTERS", "Registry", "same_definition"]
