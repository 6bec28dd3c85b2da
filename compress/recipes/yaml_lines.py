"""YAML loading that remembers where every key came from (file and line), for error messages."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UserError


@dataclass(frozen=True)
class Origin:
    file: str
    line: int | None  # 1-based; None for --set overrides

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


def _walk(node: yaml.Node, path: tuple, file: str, out: dict) -> object:
    out[path] = Origin(file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        d = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise UserError(f"{file}:{k.start_mark.line + 1}: mapping keys must be plain names",
                                "write key: value")
            key = k.value
            if key in d:
                raise UserError(f"{file}:{k.start_mark.line + 1}: key {'.'.join(map(str, path + (key,)))} "
                                "appears twice", "keep one of them")
            out[path + (key,)] = Origin(file, k.start_mark.line + 1)
            d[key] = _walk(v, path + (key,), file, out)
            out[path + (key,)] = Origin(file, k.start_mark.line + 1)
        return d
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, path + (i,), file, out) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def load_yaml_with_lines(path: Path) -> tuple[dict, dict]:
    """Parse ``path``; return (data, {key path tuple: Origin})."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"recipe {path} does not exist", "check the path (recipes live in recipes/)") from None
    except OSError as e:
        raise UserError(f"cannot read recipe {path}: {e.strerror}", "check the file's permissions") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: malformed YAML ({problem})", "fix the syntax at that line") from None
    if node is None:
        raise UserError(f"recipe {path} is empty", "a recipe needs at least 'passes:' or 'model:'")
    lines: dict = {}
    data = _walk(node, (), str(path), lines)
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: a recipe must be a mapping of keys, not a {type(data).__name__}",
                        "start with e.g. 'name: my-recipe'")
    return data, lines
