"""One generic registry type; one registry instance per concept (encoder sources, stages,
metrics, projectors, alignment methods, feature extractors, ...).

An entry is either an object or a lazy reference ``"package.module:object"`` (or a bare
``"package.module"`` for the module itself), imported on the first :meth:`Registry.get` and
cached. Names, membership and iteration never import anything, so a registry of torch modules
can be defined in a torch-free place (the config package) and serve both config validation
(which names are allowed) and the domain code (which object a name means).

Lookups are exact or raise a :class:`~harness.errors.RegistryError` listing the allowed names
with a "did you mean".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from fnmatch import fnmatch
from typing import Any, Generic, TypeVar

from harness.errors import RegistryError, did_you_mean, format_allowed

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping ``name -> T`` with helpful errors and lazily imported entries.

    Example:
        >>> PROJECTORS: Registry[type] = Registry("projector")
        >>> @PROJECTORS.register("mlp")
        ... class MLPProjector: ...
        >>> PROJECTORS.get("mlp") is MLPProjector
        True
        >>> LOSSES: Registry[object] = Registry("loss", lazy={"sqrt": "math:sqrt"})
        >>> "sqrt" in LOSSES, LOSSES.names()  # nothing imported yet
        (True, ['sqrt'])
        >>> LOSSES.get("sqrt")(4.0)
        2.0
    """

    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # name -> "module:object" not imported yet
        for name, target in (lazy or {}).items():
            self.register_lazy(name, target)

    def _check_new(self, name: str) -> None:
        if not name or name != name.strip() or "/" in name:
            raise RegistryError(f"invalid {self.kind} name {name!r}")
        if name in self._lazy:
            raise RegistryError(f"{self.kind} {name!r} is already registered")

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""
        self._check_new(name)

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:object"`` (dotted attributes allowed after the colon, or
        no colon for the module itself) under ``name``; imported on the first :meth:`get`."""
        self._check_new(name)
        if name in self._items:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        module, _, attr = target.partition(":")
        if not module or (":" in target and not attr):
            raise RegistryError(f"{self.kind} {name!r}: invalid lazy target {target!r}")
        self._lazy[name] = target

    def get(self, name: str) -> T:
        if name in self._lazy:
            self._items[name] = _load(self._lazy[name])
            del self._lazy[name]
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self)}",
                hint=f"allowed: {format_allowed(self)}",
            ) from None

    def is_loaded(self, name: str) -> bool:
        """True once ``name`` is an object (registered directly, or a lazy entry fetched)."""
        return name in self._items

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in (*self._items, *self._lazy) if fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items) + len(self._lazy)

    def items(self) -> list[tuple[str, T]]:
        """Every ``(name, object)``, sorted; imports the lazy entries."""
        return [(name, self.get(name)) for name in self.names()]


def _load(target: str) -> Any:
    """The object named by ``"package.module:attr.attr"`` (or the module, without a colon)."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RegistryError(f"lazy registry entry {target!r}: no {part!r} there") from None
    return obj
