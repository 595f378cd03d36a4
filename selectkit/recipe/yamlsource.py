"""Safe YAML loading that remembers where every key and value sits, so an error can say
`file:line:col`. Duplicate keys and tags that build Python objects are errors, and a recipe is
bounded: its file size, its alias uses, what those aliases expand to, and its nesting depth."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selectkit.errors import Location, RecipeError

Path_ = tuple[Any, ...]

MAX_RECIPE_BYTES = 2 << 20  # recipes are configuration; data belongs in data files
MAX_ALIASES = 100  # alias uses (`*name`) per recipe
MAX_ALIAS_NODES = 10_000  # nodes that all alias uses together add when expanded
MAX_DEPTH = 64  # nesting levels of the expanded document (the composer and our walk recurse)


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


def _loc(file: str, mark, end=None) -> Location:
    if end is None:
        return Location(file, mark.line + 1, mark.column + 1)
    return Location(file, mark.line + 1, mark.column + 1, end.line + 1, end.column + 1)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts alias uses and the size and depth they expand to.
    PyYAML keeps an alias as a shared node, so the blow-up of an alias bomb would happen later,
    in `_walk` and in pydantic over the constructed data; here it stops at the alias itself."""

    def __init__(self, text: str, file: str):
        super().__init__(text)
        self.file = file
        self.aliases = 0
        self.alias_nodes = 0
        self.depth = 0
        self.open_anchors: set[str] = set()
        self.size: dict[int, int] = {}  # id(node) -> nodes in its expansion
        self.height: dict[int, int] = {}  # id(node) -> nesting levels of its expansion
        self.alias_marks: dict[tuple[int, Any], Location] = {}  # (id(parent), index) -> where the alias is used

    def _limit(self, message: str, event) -> RecipeError:
        return RecipeError(message, _loc(self.file, event.start_mark, event.end_mark), code="yaml-limit",
                           hint="recipes may use aliases for small repeated blocks, not to build large documents")

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self.open_anchors:
                raise self._limit(f"alias *{event.anchor} is used inside the node it names (a recursive document)",
                                  event)
            node = super().compose_node(parent, index)
            self.aliases += 1
            self.alias_nodes += self.size[id(node)]
            if self.aliases > MAX_ALIASES:
                raise self._limit(f"more than {MAX_ALIASES} alias uses", event)
            if self.alias_nodes > MAX_ALIAS_NODES:
                raise self._limit(f"alias *{event.anchor} expands the recipe past {MAX_ALIAS_NODES:,} nodes", event)
            if self.depth + self.height[id(node)] > MAX_DEPTH:
                raise self._limit(f"alias *{event.anchor} nests the recipe deeper than {MAX_DEPTH} levels", event)
            if index is not None:
                self.alias_marks[(id(parent), index if isinstance(index, int) else id(index))] = _loc(
                    self.file, event.start_mark, event.end_mark)
            return node
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise RecipeError(f"the recipe nests deeper than {MAX_DEPTH} levels", _loc(self.file, event.start_mark),
                              code="yaml-limit")
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        node = super().compose_node(parent, index)
        self.open_anchors.discard(event.anchor)
        self.depth -= 1
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        self.size[id(node)] = 1 + sum(self.size[id(c)] for c in children)
        self.height[id(node)] = 1 + max((self.height[id(c)] for c in children), default=0)
        return node


def _walk(node: yaml.Node, path: Path_, smap: SourceMap, aliases: dict, at: Location | None = None) -> None:
    smap.values[path] = at or _loc(smap.file, node.start_mark, node.end_mark)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            if key in seen:
                raise RecipeError(
                    f"duplicate key {key!r} (first defined at line {seen[key].start_mark.line + 1})",
                    _loc(smap.file, key_node.start_mark, key_node.end_mark), code="duplicate-key",
                )
            seen[key] = key_node
            smap.keys[path + (key,)] = _loc(smap.file, key_node.start_mark, key_node.end_mark)
            _walk(value_node, path + (key,), smap, aliases, aliases.get((id(node), id(key_node))))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            where = aliases.get((id(node), index))
            smap.keys[path + (index,)] = where or _loc(smap.file, item.start_mark, item.end_mark)
            _walk(item, path + (index,), smap, aliases, where)


def read_recipe_text(file: Path) -> str:
    """The text of a recipe file, refusing files over MAX_RECIPE_BYTES before parsing them."""
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"cannot read the recipe: {exc.strerror or exc}", Location(str(file), 1, 1),
                          code="recipe-file") from None
    if len(raw) > MAX_RECIPE_BYTES:
        size = file.stat().st_size if file.is_file() else len(raw)
        raise RecipeError(f"the recipe file is {size / 2**20:.1f} MiB, over the {MAX_RECIPE_BYTES >> 20} MiB limit "
                          "for recipes", Location(str(file), 1, 1), code="recipe-file",
                          hint="keep data in data files and point `data:` at them")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecipeError(f"the recipe is not UTF-8 text (byte {raw[exc.start]:#04x})",
                          Location(str(file), line, column), code="recipe-file") from None


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML safely; return the plain data and its source map. A document without aliases is
    composed by libyaml (a recipe validates in CI on every commit: the pure-Python composer was most
    of validate's time); anything else, and every error, goes through the bounded Python loader,
    which says what is wrong and where."""
    fast = _load_plain(text, file)
    if fast is not None:
        return fast
    smap = SourceMap(file)
    loader = None
    try:
        loader = _BoundedLoader(text, file)  # checks the characters of the whole text first
        node = loader.get_single_node()
        if node is None:
            raise RecipeError("the recipe is empty", Location(file, 1, 1), code="not-a-mapping")
        _walk(node, (), smap, loader.alias_marks)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem, code = exc.problem or "invalid YAML", "yaml-syntax"
        if "could not determine a constructor" in str(exc):
            problem = f"tag {node_tag(exc)} is not allowed: recipes are plain data (no Python objects)"
            code = "yaml-tag"
        raise RecipeError(f"YAML error: {problem}", _loc(file, mark) if mark else Location(file, 1, 1),
                          code=code) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, at a character offset
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise RecipeError(f"YAML error: character U+{char:04X} is not allowed in YAML",
                          Location(file, line, column), code="yaml-syntax") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"YAML error: {exc}", Location(file, 1, 1), code="yaml-syntax") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, smap


def _load_plain(text: str, file: str) -> tuple[Any, SourceMap] | None:
    """(data, source map) of a document libyaml composes without an alias or deep nesting (nothing
    an alias bomb needs); None when the bounded loader must look at it, or when there is no libyaml."""
    if not getattr(yaml, "__with_libyaml__", False):
        return None
    loader = None
    try:
        yaml.reader.Reader(text)  # the characters YAML allows, exactly as the bounded loader checks them
        loader = yaml.CSafeLoader(text)
        node = loader.get_single_node()
        if node is None or not _plain(node):
            return None
        smap = SourceMap(file)
        _walk(node, (), smap, {})
        return loader.construct_document(node), smap
    except (yaml.YAMLError, RecipeError):
        return None  # the bounded loader reports it, with its own positions and words
    finally:
        if loader is not None:
            loader.dispose()


def _plain(root: yaml.Node) -> bool:
    """True when no node is reached twice (an alias shares its node) and nesting stays within MAX_DEPTH."""
    seen: set[int] = set()
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen or depth > MAX_DEPTH:
            return False
        seen.add(id(node))
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        stack.extend((child, depth + 1) for child in children)
    return True


def node_tag(exc: yaml.MarkedYAMLError) -> str:
    text = exc.problem or ""
    return text.split("tag ", 1)[-1].strip() if "tag" in text else "?"
