"""Content keys: the one function that names every stage instance and every cache.

A key is the hash of what a computation's result depends on and nothing else: its ``kind``,
its ``version`` (bumped when the result's meaning changes), the slice of its resolved
config named by ``fields`` (dotted paths) minus ``exclude`` (operational settings inside them),
and the keys of the computations it consumes (``needs``). Every stage kind
(:class:`harness.stages.Stage`) and every cache (reference statistics, latents, the substitute
extractor, pooled features, in-house encoders) declares its :class:`KeyFields` once and is keyed
by :meth:`KeyFields.key`, so the same computation asked for by ``harness sweep`` or by a command
(``harness eval``, ``probe``, ``fid-ref``, ``metrics``, ``train``) lands in the same place.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.io import content_hash

KEY_LENGTH = 16  # hex digits of SHA-256


@dataclass(frozen=True)
class KeyFields:
    """What a kind of computation is keyed by.

    Example:
        >>> REF = KeyFields("reference", 1, fields=("dataset", "extractor"))
        >>> REF.key({"dataset": "abc", "extractor": "inception", "batch_size": 8}) == REF.key(
        ...     {"dataset": "abc", "extractor": "inception", "batch_size": 64})
        True
    """

    kind: str
    version: int
    fields: tuple[str, ...]  # dotted config paths that determine the result
    exclude: tuple[str, ...] = ()  # dotted paths inside those that do not (operational)
    length: int = KEY_LENGTH

    def select(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The slice of ``config`` that determines the result (absent paths are skipped)."""
        selected: dict[str, Any] = {}
        for path in self.fields:
            value = _get_path(config, path)
            if value is not _MISSING:
                _set_path(selected, path, copy.deepcopy(value))
        for path in self.exclude:
            _pop_path(selected, path)
        return selected

    def key(self, config: Mapping[str, Any], needs: Iterable[str] = ()) -> str:
        """The content key of ``config`` (and of the upstream keys it consumes)."""
        return content_hash(
            {
                "stage": self.kind,  # "stage": the name every stage key has hashed since v1
                "version": self.version,
                "config": self.select(config),
                "needs": sorted(needs),
            },
            self.length,
        )


_MISSING = object()


def _get_path(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set_path(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


def _pop_path(target: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    node: Any = target
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)
