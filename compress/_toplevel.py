"""Keep the repository's ``kernels/`` and ``targets/`` folders from posing as top-level packages.

They install as ``compress.kernels`` / ``compress.targets``. When the repository root is on ``sys.path``
(``python -m ...`` or ``python -c`` run from the root), ``import kernels`` would find the folder first and
hide PyPI's ``kernels`` package, which transformers imports. Each folder's ``__init__`` calls
:func:`yield_name` when it is imported under its bare name: the name goes to the next package of that name
on ``sys.path`` outside this repository, or the import fails as if the folder were not there.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def yield_name(name: str, init_file: str) -> None:
    """Replace ``sys.modules[name]`` (the folder being imported) by the installed package of that name."""
    root = os.path.dirname(os.path.dirname(os.path.realpath(init_file)))
    path = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r} ({root}/{name} is vitforge's compress.{name}, "
                                  f"not a top-level package)", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the import statement returns what sys.modules holds after this runs
    spec.loader.exec_module(module)
