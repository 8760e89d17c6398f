"""Light modules import without torch, so ``harness --help`` and config checks stay fast.

Each module is imported in a fresh interpreter; the test fails if ``torch`` (or another heavy
library) ends up in ``sys.modules``. The list is fixed on purpose: a module that disappears is a
failure here, not a silent skip. Add new light modules (``harness.store``, ``harness.plan``) to it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

LIGHT_MODULES = [
    "harness.cli",
    "harness.config",
    "harness.config.loader",
    "harness.config.data",
    "harness.config.sampler",
    "harness.paths",
    "harness.artifacts",
    "harness.io",
    "harness.config.encoders",
    "harness.config.metrics",
    "harness.config.model",
    "harness.config.train",
    "harness.config.run",
    "harness.config.eval",
    "harness.config.sweep",
    "harness.config.resources",
    "harness.plan",
    "harness.stages",
    "harness.launch.jobs",
    "harness.launch.submit",
    "harness.store",
    "harness.store.ingest",
    "harness.store.query",
    "harness.report.stats",
]
HEAVY = ["torch", "torchvision", "timm", "open_clip", "transformers", "diffusers", "torch_fidelity"]


def _heavy_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the heavy modules it left imported."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_module_imports_without_heavy_libraries(module: str) -> None:
    assert _heavy_after(f"import {module}") == []


def test_cli_parser_with_every_command_imports_without_torch() -> None:
    """``harness --help`` imports every subcommand module: none may import torch at the top."""
    assert _heavy_after("from harness.cli import build_parser\nbuild_parser()") == []


def test_only_the_executor_module_imports_submitit() -> None:
    """submitit is the cluster boundary: exactly one product module imports it."""
    import harness

    root = Path(harness.__file__).parent
    importers = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if re.search(r"^\s*(import submitit|from submitit)", p.read_text(), re.M)
    )
    assert importers == ["launch/executor.py"]


def test_only_the_ingest_module_writes_duckdb() -> None:
    """DuckDB has one writer: read-write connections are opened only by harness.store.db for
    harness.store.ingest."""
    import harness

    root = Path(harness.__file__).parent
    writers = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "connect_readwrite(" in p.read_text() and "def connect_readwrite" not in p.read_text()
    )
    assert writers == ["store/ingest.py"]
