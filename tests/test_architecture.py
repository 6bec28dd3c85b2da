"""The import graph of ``compress`` (with ``compress.kernels`` and ``compress.targets``, installed from kernels/
and targets/): no cycle between packages, no pass importing another pass or the evaluation, every module importable.

Every import is read with ``ast``, including imports inside functions (a lazy import is still a dependency); only
imports under ``if TYPE_CHECKING:`` are left out. A module's package is the folder it lives in, so
``compress.targets`` (device profiles, LUTs) and ``compress.targets.exporters`` are different packages.

Package cycles, counted as elementary cycles of the package graph (issue 18): 46 before the refactor (main at f943977),
9 after its first half (0436035: export <-> targets, targets <-> its subpackages, kernels <-> passes.quantize and
kernels <-> kernels.triton), 0 after the targets split in two layers (``compress.targets`` below,
``compress.targets.deploy`` above the export stage), the ONNX graph helpers moved to ``compress.utils`` and the Triton
kernels moved beside their dispatcher.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
ROOTS = {"compress": REPO / "compress", "compress.kernels": REPO / "kernels", "compress.targets": REPO / "targets"}


def modules() -> dict[str, Path]:
    """Every module of compress, by dotted name (packages by their ``__init__``)."""
    out: dict[str, Path] = {}
    for prefix, root in ROOTS.items():
        for f in sorted(root.rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = f
    return out


def package_of(name: str, mods: dict[str, Path]) -> str:
    """The folder a module lives in; a module directly in compress/ (cli, errors, ...) is a unit of its own."""
    if mods[name].name == "__init__.py" or name.count(".") == 1:
        return name
    return name.rpartition(".")[0]


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes, skipping ``if TYPE_CHECKING:`` bodies (annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(target: str, mods: dict[str, Path]) -> str | None:
    """The deepest module of compress that ``target`` names (``a.b.func`` -> ``a.b``), or None."""
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the compress modules it imports (anywhere in its body)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        pkg = name if mods[name].name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = pkg.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` imports the submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                r = _resolve(t, mods) if t.startswith("compress") else None
                if r and r != name:
                    deps.add(r)
        graph[name] = deps
    return graph


def package_graph() -> dict[str, set[str]]:
    mods = modules()
    out: dict[str, set[str]] = defaultdict(set)
    for m, deps in import_graph().items():
        a = package_of(m, mods)
        out[a] |= {package_of(d, mods) for d in deps} - {a}
    return dict(out)


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Elementary cycles (each listed once, from its smallest node): a DFS per start node over larger nodes."""
    nodes = sorted(set(graph) | {d for ds in graph.values() for d in ds})
    cycles: list[list[str]] = []
    for start in nodes:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    cycles.append(path)
                elif nxt > start and nxt not in path:
                    stack.append((nxt, path + [nxt]))
    return cycles


def pass_of(module: str) -> str | None:
    """``compress.passes.prune.pruner`` -> ``prune``; ``compress.passes.align`` -> ``align``; else None."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["compress", "passes"] and parts[2] not in ("__init__",):
        return parts[2]
    return None


def test_no_cycle_between_packages():
    cycles = package_cycles(package_graph())
    assert not cycles, f"{len(cycles)} package cycles, e.g. " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:5])


def pass_violations(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a pass module into another pass's module, or of ``compress.evaluation`` into a pass."""
    bad = []
    for m, deps in graph.items():
        p = pass_of(m)
        if p is None:
            continue
        for d in sorted(deps):
            q = pass_of(d)
            if q is not None and q != p:
                bad.append(f"{m} imports pass module {d}")
            if d == "compress.evaluation" or d.startswith("compress.evaluation."):
                bad.append(f"{m} imports {d}")
    return bad


def test_no_pass_imports_another_pass_or_evaluation():
    bad = pass_violations(import_graph())
    assert not bad, "\n".join(bad)


def test_the_checks_fail_on_a_violation(tmp_path, monkeypatch):
    """A pass importing another pass, or the evaluation, and a package cycle, each planted in a copy of the tree."""
    import shutil

    for prefix, root in ROOTS.items():
        shutil.copytree(root, tmp_path / prefix, ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.yaml"))
    monkeypatch.setattr(sys.modules[__name__], "ROOTS", {p: tmp_path / p for p in ROOTS})
    assert not pass_violations(import_graph()) and not package_cycles(package_graph())
    fold = tmp_path / "compress" / "passes" / "fold.py"
    fold.write_text(fold.read_text() + "\n\ndef _late():\n    from .prune import pruner\n"
                    "    from ..evaluation.evaluate import Evaluator\n")
    assert pass_violations(import_graph()) == ["compress.passes.fold imports compress.evaluation.evaluate",
                                               "compress.passes.fold imports pass module compress.passes.prune.pruner"]
    lower = tmp_path / "compress.targets" / "devices.py"
    lower.write_text(lower.read_text() + "\n\ndef _late():\n    from .deploy import commands\n")
    assert ["compress.targets", "compress.targets.deploy"] in package_cycles(package_graph())


def test_validating_a_recipe_imports_no_exporter(tmp_path):
    """Loading a recipe that names targets and their exporters (and a pass with its own exporter) checks every name,
    and imports none of the upper targets layer (device exporters, TensorRT kits, profilers, runtimes)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\npasses:\n  quantize: {}\ntargets:\n  - jetson-orin-nano\n"
                      "  - {name: x86-avx512, exporters: [onnxruntime, openvino]}\n")
    code = ("import sys\nfrom compress.pipeline.plan import load_recipe\n"
            f"lr = load_recipe({str(recipe)!r})\n"
            "assert [p.name for _, p in lr.passes] == ['quantize'] and len(lr.recipe.targets) == 2\n"
            "upper = ('compress.targets.deploy', 'compress.targets.exporters', 'compress.targets.tensorrt',"
            " 'compress.targets.profiler', 'openvino', 'executorch', 'tensorrt')\n"
            "print(sorted(m for m in sys.modules if m.startswith(upper)))\n"
            "assert 'compress.targets' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: r\ntargets:\n  - {name: x86-avx512, exporters: [openvno]}\n")
    r = subprocess.run([sys.executable, "-m", "compress", "--recipe", str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "unknown exporter 'openvno'" in r.stderr and "did you mean 'openvino'" in r.stderr


def test_graph_sees_lazy_and_relative_imports(tmp_path):
    """The walker itself: a relative import inside a function is an edge; a TYPE_CHECKING import is not."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .x import y\n"
                     "def f():\n    from ..models import vit\n")
    got = [(n.level, n.module) for n in _imports(tree) if isinstance(n, ast.ImportFrom)]
    assert (2, "models") in got and (1, "x") not in got
    g = import_graph()
    assert "compress.models" in g["compress.cli"] or any(d.startswith("compress.") for d in g["compress.cli"])
    assert package_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"a"}}) == [["a", "b"], ["a", "b", "c"]]
    assert pass_of("compress.passes.prune.pruner") == "prune" and pass_of("compress.pipeline.run") is None


@pytest.mark.slow  # one forked import per module: about 3 CPU minutes
def test_every_module_imports():
    """Each module imported on its own into a fresh interpreter state: a child forked from a process that has
    loaded only third-party libraries and compress's root (an import-order cycle or a missing name fails here)."""
    names = sorted(m for m in modules() if not m.endswith("__main__"))
    code = ("import os, sys, importlib\n"
            "import torch, numpy, yaml, pydantic, onnx, compress  # compress's root only (its torchvision fix)\n"
            "import torchvision, timm\n"
            "assert {m for m in sys.modules if m.startswith('compress.')} == {'compress._compat'}\n"
            "bad = []\n"
            "for n in sys.argv[1:]:\n"
            "    r, w = os.pipe()\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        os.close(r)\n"
            "        try:\n"
            "            importlib.import_module(n); os._exit(0)\n"
            "        except BaseException as e:\n"
            "            os.write(w, f'{type(e).__name__}: {e}'.encode()[:400]); os._exit(1)\n"
            "    os.close(w)\n"
            "    msg = os.read(r, 500).decode(); os.close(r)\n"
            "    if os.waitpid(pid, 0)[1]: bad.append(f'{n}: {msg}')\n"
            "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, cwd=REPO / "tests",
                       timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr


if __name__ == "__main__":  # python tests/test_architecture.py: the package cycles, one a line
    for c in package_cycles(package_graph()):
        print(" -> ".join(c + [c[0]]))


def test_names_shadow_nothing_and_say_one_thing():
    """No module shadows the standard library where a folder can be sys.path[0] (compress/ itself, and any folder
    with a script, e.g. the on-device runners); no CLI function is named after a builtin; the names issue 18 found
    ambiguous (compress/inspect.py, commands.list, three latency.py, two reconstruct.py, passes.kernels beside
    compress.kernels) are each used once."""
    import builtins

    from compress import commands

    mods = modules()
    folders = {REPO / "compress"} | {p.parent for p in mods.values() if "__name__ == \"__main__\"" in p.read_text()}
    shadow = sorted(str(p.relative_to(REPO)) for p in mods.values()
                    if p.parent in folders and p.stem in sys.stdlib_module_names)
    assert not shadow, shadow
    assert not [n for n, f in vars(commands).items() if callable(f) and not n.startswith("_") and hasattr(builtins, n)]
    stems = [n.rpartition(".")[2] for n in mods if mods[n].name != "__init__.py"]
    for stem in ("inspect", "latency", "reconstruct", "kernels"):
        assert stems.count(stem) <= 1, (stem, [n for n in mods if n.endswith("." + stem)])
    assert not [n for n in mods if n.startswith("compress.passes.") and n.rpartition(".")[2] == "kernels"]
