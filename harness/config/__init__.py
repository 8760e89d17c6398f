"""Typed configuration: the encoder catalogue, sweeps, and single training runs.

Three kinds of YAML file, told apart by their top-level keys:

* catalogue (``encoders.yaml``): ``encoders:`` is a list of encoder entries (mappings);
* run (``harness train CONFIG``): has ``encoder:`` or ``method:`` at the top level;
* sweep (``sweeps/*.yaml``): everything else.

``load_config(path, overrides)`` validates any of them (``config_from_doc`` a parsed one).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.config.loader import YamlDoc, load_yaml

# kind -> "module:function" taking (YamlDoc, overrides) and returning the typed config
LOADERS = {
    "catalogue": "harness.config.encoders:catalogue_from_doc",
    "sweep": "harness.config.sweep:sweep_from_doc",
    "run": "harness.config.run:run_from_doc",
}


def detect_kind(doc: YamlDoc) -> str:
    data = doc.data
    encoders = data.get("encoders")
    if isinstance(encoders, list) and encoders and all(isinstance(e, dict) for e in encoders):
        return "catalogue"
    if "encoder" in data or "method" in data:
        return "run"
    return "sweep"


def load_config(path: str | Path, overrides: Sequence[str] = (), kind: str | None = None) -> Any:
    """Load and validate any harness YAML file; raises ConfigError with file:line on problems."""
    return config_from_doc(load_yaml(path), overrides, kind)


def config_from_doc(doc: YamlDoc, overrides: Sequence[str] = (), kind: str | None = None) -> Any:
    """Validate a parsed harness YAML file of ``kind`` (detected when None)."""
    module_name, _, func = LOADERS[kind or detect_kind(doc)].partition(":")
    return getattr(importlib.import_module(module_name), func)(doc, overrides)
