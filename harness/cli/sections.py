"""Helpers shared by ``harness eval``, ``harness fid-ref`` and ``harness probe``.

:func:`load_sections` reads the sections a command needs (``data``, ``eval``, ``probe``) from any
YAML: a sweep, a run config, a file holding just those sections, or a bare data config; errors
keep their ``file:line: key.path`` form. No torch at import: the CLI imports this module.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from harness.config.loader import YamlDoc, load_yaml, parse_override, validate
from harness.errors import ConfigError


def load_sections(
    path: str | Path | None,
    sections: dict[str, type[BaseModel]],
    overrides: Sequence[str] = (),
    *,
    bare: str | None = None,
) -> dict[str, Any]:
    """Validate the named top-level sections of ``path`` (defaults when a section is absent).

    Args:
        path: YAML file, or None for defaults only.
        sections: section name -> config class, e.g. ``{"data": DataConfig, "eval": EvalConfig}``.
        overrides: ``--set section.key=value`` (applied before validation).
        bare: a section that may also be the whole file (e.g. ``"data"`` for a data config
            without a ``data:`` key).

    Returns:
        ``{section name: validated config}``.
    """
    doc = load_yaml(path) if path is not None else YamlDoc(path="<defaults>", data={})
    if (
        bare is not None
        and doc.data
        and not set(doc.data) & set(sections)
        and _looks_like(doc, sections[bare])
    ):
        doc = YamlDoc(
            path=doc.path,
            data={bare: doc.data},
            lines={(bare, *k): v for k, v in doc.lines.items()},
        )
    for text in overrides:
        key_path, _ = parse_override(text)
        if key_path[0] not in sections:
            raise ConfigError(
                f"--set {text!r}: the key must start with a section name: {', '.join(sections)}",
                hint=f"e.g. --set {next(iter(sections))}.<key>=<value>",
            )
    out: dict[str, Any] = {}
    for name, model in sections.items():
        section_overrides = [o.partition(".")[2] for o in overrides if o.split(".", 1)[0] == name]
        data = doc.data.get(name) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{doc.where((name,))}: {name}: expected a mapping")
        lines = {k[1:]: v for k, v in doc.lines.items() if k[:1] == (name,)}
        sub = YamlDoc(path=f"{doc.path} [{name}]", data=dict(data), lines=lines)
        out[name] = validate(model, sub, section_overrides)
    return out


def _looks_like(doc: YamlDoc, model: type[BaseModel]) -> bool:
    return set(doc.data) <= set(model.model_fields)


def add_common_options(parser: argparse.ArgumentParser, set_example: str) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable) and ``--device``."""
    from harness.cli import add_overrides_argument

    add_overrides_argument(parser, example=set_example)
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")


def resolve_device(requested: str | None) -> str:
    """``requested``, else ``cuda`` when available, else ``cpu``."""
    import torch

    return requested or ("cuda" if torch.cuda.is_available() else "cpu")
