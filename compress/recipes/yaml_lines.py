"""YAML loading that remembers where every key came from (file and line), for error messages.

Recipes are bounded: size, nesting depth and the number of nodes after alias expansion, so a
hostile file (an alias bomb, a self-referencing anchor, /dev/zero) fails at once with one line.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UserError

MAX_BYTES = 1 << 20  # 1 MiB: shipped recipes are a few KiB
MAX_DEPTH = 32
MAX_NODES = 20_000  # after alias expansion


@dataclass(frozen=True)
class Origin:
    file: str
    line: int | None  # 1-based; None for --set overrides

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


class _Walker:
    """Node graph -> plain data, recording origins; bounded in depth and expanded size, cycles refused."""

    def __init__(self, file: str, out: dict):
        self.file, self.out, self.nodes, self.stack = file, out, 0, set()
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: yaml.Node, what: str, hint: str):
        raise UserError(f"{self.file}:{node.start_mark.line + 1}: {what}", hint)

    def walk(self, node: yaml.Node, path: tuple) -> object:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            self.fail(node, f"recipe expands to more than {MAX_NODES} values (aliases expanded)",
                      "write the values out; a recipe needs no anchors or aliases")
        if len(path) > MAX_DEPTH:
            self.fail(node, f"recipe nested deeper than {MAX_DEPTH} levels", "flatten the recipe")
        self.out[path] = Origin(self.file, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.constructor.construct_object(node)
            except yaml.YAMLError as e:
                self.fail(node, f"value not allowed in a recipe ({getattr(e, 'problem', None) or 'bad value'})",
                          "use plain strings, numbers, booleans, lists and mappings")
        if node.tag not in (yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG):
            self.fail(node, f"tag {node.tag!r} not allowed in a recipe", "use plain lists and mappings")
        if id(node) in self.stack:
            self.fail(node, "an anchor refers to itself (a cycle of aliases)", "remove the self-referencing alias")
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.walk(v, path + (i,)) for i, v in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self.stack.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: tuple) -> dict:
        d = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise UserError(f"{self.file}:{k.start_mark.line + 1}: mapping keys must be plain names",
                                "write key: value")
            key = k.value
            if key in d:
                raise UserError(f"{self.file}:{k.start_mark.line + 1}: key {'.'.join(map(str, path + (key,)))} "
                                "appears twice", "keep one of them")
            d[key] = self.walk(v, path + (key,))
            self.out[path + (key,)] = Origin(self.file, k.start_mark.line + 1)
        return d


def _read_text(path: Path) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"recipe {path} does not exist", "check the path (recipes live in recipes/)") from None
    except OSError as e:
        raise UserError(f"cannot read recipe {path}: {e.strerror}", "check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"recipe {path} is a directory, not a recipe file", "name a .yaml file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"recipe {path} is not a regular file", "name a .yaml file (not a device, pipe or socket)")
    if st.st_size > MAX_BYTES:
        raise UserError(f"recipe {path} is {st.st_size} bytes (limit {MAX_BYTES})", "a recipe is a small YAML file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read recipe {path}: {e.strerror}", "check the file's permissions") from None
    if len(data) > MAX_BYTES:
        raise UserError(f"recipe {path} is over {MAX_BYTES} bytes", "a recipe is a small YAML file")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"recipe {path} is UTF-16 text", "save it as UTF-8")
    if b"\x00" in data:
        raise UserError(f"recipe {path} is a binary file, not YAML text", "name a .yaml recipe")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise UserError(f"recipe {path} is not UTF-8 text (bad byte at offset {e.start})", "save it as UTF-8") from None


def _check_depth(text: str, path: Path) -> None:
    """Refuse deep nesting from the event stream (iterative) before the recursive composer sees it."""
    depth = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise UserError(f"{path}:{ev.start_mark.line + 1}: recipe nested deeper than {MAX_DEPTH} levels",
                                "flatten the recipe")
        elif isinstance(ev, yaml.CollectionEndEvent):
            depth -= 1


def load_yaml_with_lines(path: Path) -> tuple[dict, dict]:
    """Parse ``path``; return (data, {key path tuple: Origin})."""
    text = _read_text(path)
    try:
        _check_depth(text, path)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: malformed YAML ({problem})", "fix the syntax at that line") from None
    if node is None:
        raise UserError(f"recipe {path} is empty", "a recipe needs at least 'passes:' or 'model:'")
    lines: dict = {}
    data = _Walker(str(path), lines).walk(node, ())
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: a recipe must be a mapping of keys, not a {type(data).__name__}",
                        "start with e.g. 'name: my-recipe'")
    return data, lines
