"""Shared test fixtures.

* ``results_root``: a fresh results directory, exported as ``$HARNESS_RESULTS``.
* ``slurm_cluster``: the real SLURM cluster (``scripts/slurm-local.sh``); skipped with a visible
  reason when ``sbatch`` is absent, except in CI (``CI=true``) where that is a failure.
* ``tiny_data_config``: a small generated dataset (32 px, 4 classes).
* tests marked ``gpu`` are skipped, with a reason, when CUDA is unavailable.

This module must not import torch at import time (see ``tests/test_import_hygiene.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.config.data import DataConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SLURM_SCRIPT = REPO_ROOT / "scripts" / "slurm-local.sh"
_USABLE_NODE_STATES = {"idle", "mixed", "allocated", "completing"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture
def results_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty results root; ``$HARNESS_RESULTS`` points at it for the test."""
    root = tmp_path / "results"
    root.mkdir()
    monkeypatch.setenv("HARNESS_RESULTS", str(root))
    return root


@pytest.fixture
def tiny_data_config() -> DataConfig:
    """A generated dataset small enough for unit tests: 32 px, 4 classes, 64 + 32 images."""
    return DataConfig(resolution=32, num_classes=4, train_images=64, val_images=32, seed=0)


# ---------------------------------------------------------------------------------------------
# SLURM
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlurmCluster:
    """A reachable SLURM cluster with at least one node able to run jobs."""

    node_states: tuple[str, ...]  # `sinfo -h -o %T` of every node, e.g. ("idle",)
    started_here: bool  # whether this session had to start it with scripts/slurm-local.sh


def _usable_node_states() -> tuple[str, ...]:
    """States of the cluster's nodes; empty when slurmctld is unreachable or no node is usable."""
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    states = tuple(line.strip() for line in out.stdout.splitlines() if line.strip())
    if out.returncode != 0 or not any(s in _USABLE_NODE_STATES for s in states):
        return ()
    return states


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The SLURM cluster jobs are submitted to; starts the local one when it is down."""
    if shutil.which("sbatch") is None:
        reason = (
            "SLURM is not installed (no 'sbatch' on PATH); "
            "install and start a local cluster with: scripts/slurm-local.sh start --install"
        )
        if in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    states = _usable_node_states()
    if states:
        return SlurmCluster(node_states=states, started_here=False)
    proc = subprocess.run(
        ["bash", str(SLURM_SCRIPT), "start"], capture_output=True, text=True, timeout=300
    )
    states = _usable_node_states()
    if proc.returncode != 0 or not states:
        pytest.fail(
            f"'sbatch' exists but no SLURM node is usable and {SLURM_SCRIPT.name} start failed "
            f"(exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return SlurmCluster(node_states=states, started_here=True)


@pytest.fixture
def root(slurm_cluster, tmp_path):
    """A results root on the SLURM cluster whose jobs are cancelled after the test, whatever its
    outcome (the real-SLURM test files use it)."""
    from harness.cli import main

    path = tmp_path / "results"
    yield path
    if (path / "plans").is_dir():
        main(["--results", str(path), "cancel"])


# ---------------------------------------------------------------------------------------------
# GPU marker
# ---------------------------------------------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch  # only when a gpu test was collected: keeps plain collection torch-free

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
