"""Finds components through the `selectkit` entry-point group (pluggy), one plugin at a time,
so a broken plugin is reported by name and skipped instead of breaking every command."""

from __future__ import annotations

import importlib.metadata
import types
from dataclasses import dataclass, field
from typing import Any

import pluggy

from selectkit.contract import hookspecs
from selectkit.errors import PluginError, unknown_message

KINDS = ("scorers", "normalizers", "selectors", "passes", "verifiers", "readers", "executors")
ENTRY_POINT_GROUP = "selectkit"


@dataclass(frozen=True)
class Entry:
    """A registered component and the distribution that provided it."""

    cls: type
    distribution: str
    plugin: str


@dataclass
class Registry:
    """Every installed component by kind and name, plus the plugins that failed to load."""

    components: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    broken: list[tuple[str, str]] = field(default_factory=list)
    manager: pluggy.PluginManager = field(default_factory=lambda: _new_manager())

    def add(self, plugin: Any, name: str, distribution: str = "local") -> None:
        """Register a plugin object or module and collect the components it registers."""
        if isinstance(plugin, types.ModuleType):
            # hand pluggy only the hook functions: scanning every module attribute is slow and
            # would touch lazily imported libraries
            hooks = {n: getattr(plugin, n) for n in dir(plugin) if n.startswith("register_")}
            plugin = types.SimpleNamespace(__name__=plugin.__name__, **hooks)
        try:
            self.manager.register(plugin, name=name)
        except ValueError as exc:  # same plugin twice, or a bad hookimpl
            raise PluginError(f"plugin {name!r} from {distribution} cannot be registered: {exc}") from exc
        for kind in KINDS:
            hook = getattr(self.manager.hook, f"register_{kind}")
            for impl in hook.get_hookimpls():
                if impl.plugin_name == name:
                    impl.function(register=lambda cls, _k=kind: self._register(_k, cls, distribution, name))

    def _register(self, kind: str, cls: type, distribution: str, plugin: str) -> None:
        component_name = getattr(cls, "name", None)
        if not isinstance(component_name, str) or not component_name:
            raise PluginError(f"plugin {plugin!r} ({distribution}) registered a {kind[:-1]} without a name")
        existing = self.components[kind].get(component_name)
        if existing is not None and existing.cls is not cls:
            raise PluginError(
                f"{kind[:-1]} {component_name!r} is registered twice: by {existing.distribution} "
                f"(plugin {existing.plugin!r}) and by {distribution} (plugin {plugin!r})"
            )
        self.components[kind][component_name] = Entry(cls, distribution, plugin)

    def get(self, kind: str, name: str) -> type:
        """The component class, or a PluginError with a did-you-mean suggestion."""
        try:
            return self.components[kind][name].cls
        except KeyError:
            raise PluginError(unknown_message(kind[:-1], name, self.components[kind])) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def provider(self, kind: str) -> type:
        """The pass provider class that serves request kind `kind`, or a PluginError naming the kinds served."""
        for entry in self.components["passes"].values():
            if kind in entry.cls.kinds:
                return entry.cls
        known = sorted(k for e in self.components["passes"].values() for k in e.cls.kinds)
        raise PluginError(f"no pass provider serves {kind!r} (served: {', '.join(known) or 'none'})")


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("selectkit")
    manager.add_hookspecs(hookspecs)
    return manager


def load_registry(strict: bool = False) -> Registry:
    """Load every entry point of the `selectkit` group. A plugin that fails to import or
    register is recorded in `broken` and skipped; with `strict` it raises PluginError."""
    registry = Registry()
    names: dict[int, str] = {}  # a distribution's name parses its METADATA file: once per distribution
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.dist is None:
            distribution = "unknown distribution"
        elif (distribution := names.get(id(ep.dist))) is None:
            distribution = names[id(ep.dist)] = ep.dist.name
        try:
            plugin = ep.load()
            registry.add(plugin, name=ep.name, distribution=distribution)
        except PluginError as exc:
            if "registered twice" in exc.message or strict:
                raise
            registry.broken.append((f"{ep.name} ({distribution})", exc.message))
        except Exception as exc:  # a third-party plugin may fail in any way
            if strict:
                raise PluginError(f"plugin {ep.name!r} from {distribution} failed to load: {exc!r}") from exc
            registry.broken.append((f"{ep.name} ({distribution})", repr(exc)))
    return registry


_cached: Registry | None = None


def default_registry(strict: bool = False) -> Registry:
    """The process-wide registry, loaded once."""
    global _cached
    if _cached is None or strict:
        _cached = load_registry(strict=strict)
    return _cached


def find_component(kind: str, name: str) -> type:
    """The installed component class of `kind` (scorers, selectors, verifiers, ...) named `name`, or a
    PluginError with a did-you-mean (for components whose params name another component)."""
    return default_registry().get(kind, name)
