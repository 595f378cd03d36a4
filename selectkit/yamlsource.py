"""Safe YAML loading that remembers where every key and value sits, so an error can say
`file:line:col`. Duplicate keys and tags that build Python objects are errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from selectkit.errors import Location, RecipeError

Path_ = tuple[Any, ...]


@dataclass
class SourceMap:
    """Key path -> (location of the key, location of the value) in one YAML file."""

    file: str
    keys: dict[Path_, Location] = field(default_factory=dict)
    values: dict[Path_, Location] = field(default_factory=dict)

    def locate(self, path: Path_, at_key: bool = False) -> Location:
        """The most precise known location for `path` (falls back to its nearest ancestor)."""
        path = tuple(path)
        while path:
            table = self.keys if at_key else self.values
            if path in table:
                return table[path]
            if path in self.keys:
                return self.keys[path]
            path = path[:-1]
            at_key = True
        return self.values.get((), Location(self.file, 1, 1))


def _loc(file: str, mark) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def _walk(node: yaml.Node, path: Path_, smap: SourceMap) -> None:
    smap.values[path] = _loc(smap.file, node.start_mark)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            if key in seen:
                raise RecipeError(
                    f"duplicate key {key!r} (first defined at line {seen[key].start_mark.line + 1})",
                    _loc(smap.file, key_node.start_mark),
                )
            seen[key] = key_node
            smap.keys[path + (key,)] = _loc(smap.file, key_node.start_mark)
            _walk(value_node, path + (key,), smap)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            smap.keys[path + (index,)] = _loc(smap.file, item.start_mark)
            _walk(item, path + (index,), smap)


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML safely; return the plain data and its source map."""
    smap = SourceMap(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            raise RecipeError("the recipe is empty", Location(file, 1, 1))
        _walk(node, (), smap)
        loader = yaml.SafeLoader("")
        try:
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if "could not determine a constructor" in str(exc):
            problem = f"tag {node_tag(exc)} is not allowed: recipes are plain data (no Python objects)"
        raise RecipeError(f"YAML error: {problem}", _loc(file, mark) if mark else Location(file, 1, 1)) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"YAML error: {exc}", Location(file, 1, 1)) from None
    return data, smap


def node_tag(exc: yaml.MarkedYAMLError) -> str:
    text = exc.problem or ""
    return text.split("tag ", 1)[-1].strip() if "tag" in text else "?"
