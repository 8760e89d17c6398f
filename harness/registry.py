"""One generic registry type; one registry instance per concept (encoder sources, stages,
metrics, projectors, alignment methods, feature extractors, ...).

Lookups are exact or raise a :class:`~harness.errors.RegistryError` listing the allowed names
with a "did you mean".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from typing import Generic, TypeVar

from harness.errors import RegistryError, did_you_mean, format_allowed

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping ``name -> T`` with helpful errors.

    Example:
        >>> PROJECTORS: Registry[type] = Registry("projector")
        >>> @PROJECTORS.register("mlp")
        ... class MLPProjector: ...
        >>> PROJECTORS.get("mlp") is MLPProjector
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""
        if not name or name != name.strip() or "/" in name:
            raise RegistryError(f"invalid {self.kind} name {name!r}")

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}",
                hint=f"allowed: {format_allowed(self._items)}",
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
