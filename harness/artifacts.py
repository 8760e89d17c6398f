"""Stage artifacts: the on-disk source of truth that ``harness ingest`` loads into DuckDB.

Each stage instance owns one directory (``paths.stage_dir(root, stage, key)``). It writes its
own files there (logs, checkpoints, per-image tables), and finally ``result.json``, written
atomically and **last**: its presence with ``status == "done"`` means the stage is complete and
is never run again.

``result.json``::

    {
      "schema": 1,
      "stage": "train",                # stage name (registry key)
      "key": "3f2a9c0d1e4b5a6c",       # content key of the stage instance
      "status": "done",                # done | failed | diverged
      "config": {...},                 # the resolved config the stage depended on
      "provenance": {...},             # git sha, versions, host, gpu, slurm ids, wall time
      "payload": {...},                # stage-specific results (see docs/architecture.md)
      "error": null                    # message for failed / diverged
    }
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.errors import ArtifactError
from harness.io import write_json

RESULT_FILE = "result.json"
RESULT_SCHEMA = 1
STATUSES = ("done", "failed", "diverged")
_PACKAGES = (
    "torch",
    "timm",
    "open_clip_torch",
    "transformers",
    "diffusers",
    "torch-fidelity",
    "duckdb",
    "pandas",
    "submitit",
    "numpy",
    "harness",
)


def write_result(
    out_dir: str | os.PathLike[str],
    *,
    stage: str,
    key: str,
    config: dict[str, Any],
    payload: dict[str, Any],
    status: str = "done",
    error: str | None = None,
    started_at: float | None = None,
) -> Path:
    """Write ``result.json`` atomically (call this last)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    record = {
        "schema": RESULT_SCHEMA,
        "stage": stage,
        "key": key,
        "status": status,
        "config": config,
        "provenance": provenance(started_at),
        "payload": payload,
        "error": error,
    }
    path = Path(out_dir) / RESULT_FILE
    write_json(path, record)
    return path


def read_result(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The stage's result record, or None when it has not finished. Corrupt files raise."""
    path = Path(out_dir) / RESULT_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable result file: {exc}") from exc
    if not isinstance(record, dict) or record.get("schema") != RESULT_SCHEMA:
        raise ArtifactError(f"{path}: not a harness result (schema {RESULT_SCHEMA} expected)")
    return record


def is_done(out_dir: str | os.PathLike[str]) -> bool:
    try:
        record = read_result(out_dir)
    except ArtifactError:
        return False
    return record is not None and record["status"] == "done"


def provenance(started_at: float | None = None) -> dict[str, Any]:
    """Where and with what a result was produced."""
    now = time.time()
    info: dict[str, Any] = {
        "git_sha": git_sha(),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
        "finished_at": now,
        "wall_time_s": None if started_at is None else round(now - started_at, 3),
        "gpu": _gpu_name(),
    }
    return info


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The code's git SHA: $HARNESS_GIT_SHA (set by the sweep for snapshotted code) or git."""
    if sha := os.environ.get("HARNESS_GIT_SHA"):
        return sha
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _gpu_name() -> str | None:
    torch = sys.modules.get("torch")  # never import torch just for provenance
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.cuda.current_device())
