"""The fits of ``harness rank`` as files, and their rows in the ``predictions`` tables.

``harness rank`` never opens the database for writing: :func:`write_fit` writes one file,
``rank/<fit_id>/predictions.json`` (atomically), and ``harness ingest`` (the only writer) loads
it into ``predictions`` and ``prediction_cv`` (schema ``004_predictions.sql``), so a rebuild
reproduces them from the files alone. Format::

    {"schema": 1, "fit_id", "created_at", "git_sha", "harness_version",
     "against", "facet", "protocol", "measure_sweep", "level",
     "provenance": {...},
     "predictions": [{"encoder", "model", "features", "role", "measured_fid",
                      "predicted_fid", "low", "high", "rank", "n_train"}],
     "cv": [{"model", "features", "n", "mae", "rmse", "spearman", "coverage",
             "mae_mean_only", "spearman_mean_only", "coverage_mean_only",
             "beats_mean_only", "note"}]}
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from harness import __version__
from harness.io import write_json

PREDICTION_SCHEMA = 1
PREDICTIONS_FILE = "predictions.json"
ROLES = ("candidate", "held_out")
_ROW_FIELDS = (
    "encoder",
    "model",
    "features",
    "role",
    "measured_fid",
    "predicted_fid",
    "low",
    "high",
    "rank",
    "n_train",
)
CV_FIELDS = (  # one row of a fit's cross-validation table (harness.report.predict)
    "model",
    "features",
    "n",
    "mae",
    "rmse",
    "spearman",
    "coverage",
    "mae_mean_only",
    "spearman_mean_only",
    "coverage_mean_only",
    "beats_mean_only",
    "note",
)
_HEADER = ("created_at", "against", "facet", "protocol", "measure_sweep", "level", "git_sha")


def fit_path(root: Path, fit_id: str) -> Path:
    """``<root>/rank/<fit_id>/predictions.json``."""
    return root / "rank" / fit_id / PREDICTIONS_FILE


def write_fit(
    root: Path,
    fit_id: str,
    *,
    header: dict[str, Any],
    predictions: list[dict[str, Any]],
    cv: list[dict[str, Any]],
    provenance: dict[str, Any],
) -> Path:
    """Write one fit's file atomically; returns its path.

    Args:
        root: results root; fit_id: content hash of the fit's inputs (same inputs, same file).
        header: against, facet, protocol, measure_sweep, level (and optionally git_sha).
        predictions: rows with ``_ROW_FIELDS``; cv: rows with ``CV_FIELDS``.
        provenance: whatever identifies the inputs (training encoders, stage keys, options).
    """
    from harness.artifacts import git_sha

    record = {
        "schema": PREDICTION_SCHEMA,
        "fit_id": fit_id,
        "created_at": time.time(),
        "git_sha": header.get("git_sha", git_sha()),
        "harness_version": __version__,
        **{k: header.get(k) for k in _HEADER if k not in ("created_at", "git_sha")},
        "provenance": provenance,
        "predictions": [{k: _clean(row.get(k)) for k in _ROW_FIELDS} for row in predictions],
        "cv": [{k: _clean(row.get(k)) for k in CV_FIELDS} for row in cv],
    }
    path = fit_path(root, fit_id)
    write_json(path, record)
    return path


def parse(record: dict[str, Any], fit_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``predictions`` and ``prediction_cv`` rows of one fit file (``fit_id``: its folder).

    Raises:
        KeyError / TypeError / ValueError: a malformed file (ingest lists it as skipped).
    """
    header = {k: record.get(k) for k in _HEADER}
    for required in ("against", "facet", "level"):
        if header[required] is None:
            raise ValueError(f"missing {required!r}")
    common = {
        "fit_id": fit_id,
        **header,
        "level": float(header["level"]),
        "harness_version": record.get("harness_version"),
        "provenance": record.get("provenance") or {},
    }
    rows = []
    for item in record["predictions"]:
        if item["role"] not in ROLES:
            raise ValueError(f"role {item['role']!r} not in {ROLES}")
        rows.append({**common, **{k: _clean(item.get(k)) for k in _ROW_FIELDS}})
        if not item.get("encoder") or not item.get("model"):
            raise ValueError("a prediction needs 'encoder' and 'model'")
    cv = [
        {"fit_id": fit_id, **{k: _clean(item.get(k)) for k in CV_FIELDS}} for item in record["cv"]
    ]
    return rows, cv


def _clean(value: Any) -> Any:
    """NaN / inf (undefined scores) as null; numpy scalars as Python numbers."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
