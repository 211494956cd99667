"""Named registries for every extension point (policies, importers, arrival processes).

A policy registers itself where it is defined::

    @CACHE_POLICIES.register("lru")
    class LRUCache(CachePolicy): ...

The engine asks ``CACHE_POLICIES.get(name, key="cache.name")`` and never imports a concrete
policy. Registering a name twice raises; an unknown name raises a ConfigError naming the YAML
key and listing the choices.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping name -> object with loud duplicate and unknown-name errors."""

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        # Package whose modules are imported on first lookup so that their
        # @register decorators run (one file per policy, no central list).
        self._package = package
        self._loaded = package is None

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name.lower()
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is registered twice "
                                 f"({self._items[key]!r} and {obj!r})")
            self._items[key] = obj
            try:
                obj.registry_name = key  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj
        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self._package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{self._package}.{mod.name}")

    def get(self, name: str, *, key: str | None = None, source: str | None = None) -> T:
        self._load()
        obj = self._items.get(str(name).lower())
        if obj is None:
            raise ConfigError(f"unknown {self.kind} '{name}'; choose from {', '.join(self.names())}",
                              source=source, key=key)
        return obj

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(sorted(self._items.items()))

    def __contains__(self, name: str) -> bool:
        self._load()
        return str(name).lower() in self._items
