"""Every path under the results root is built here, nowhere else.

::

    results/                       (--results DIR or $HARNESS_RESULTS; default ./results)
    ├── harness.duckdb             the results database (written only by `harness ingest`)
    ├── stages/<stage>/<key>/      one artifact directory per stage instance (result.json last)
    ├── plans/<sweep>/             the saved plan of each sweep (plan.json, submissions.json)
    ├── jobs/                      submitit folders (job scripts, stdout/stderr)
    ├── cache/                     content-keyed caches: datasets, features, latents, fid refs
    └── report/                    `harness report` output
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_RESULTS = "HARNESS_RESULTS"


def results_root(override: str | os.PathLike[str] | None = None) -> Path:
    if override is not None:
        return Path(override)
    return Path(os.environ.get(ENV_RESULTS, "results"))


def database_path(root: Path) -> Path:
    return root / "harness.duckdb"


def stage_dir(root: Path, stage: str, key: str) -> Path:
    return root / "stages" / stage / key


def plan_dir(root: Path, sweep_name: str) -> Path:
    return root / "plans" / sweep_name


def jobs_dir(root: Path) -> Path:
    return root / "jobs"


def cache_dir(root: Path, kind: str) -> Path:
    return root / "cache" / kind


def report_dir(root: Path) -> Path:
    return root / "report"
