"""Published numbers (REPA, iREPA papers) as a separate source of the ``published`` table.

The CSV ships with harness at ``analysis/published/published_results.csv`` (one number per
row: paper, encoder, model, method, train_steps, cfg, metric, value, source_note). ``NA`` means
not applicable or not stated. ``train_steps`` is kept as printed ("800 epochs",
"1000000 (200 epochs)") and, when it starts with an iteration count, parsed into
``train_iters``. Join runs to papers through ``encoders.published_name`` = ``published.encoder``.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from harness.errors import ArtifactError

PUBLISHED_CSV = (
    Path(__file__).resolve().parents[2] / "analysis" / "published" / "published_results.csv"
)
COLUMNS = (
    "paper",
    "encoder",
    "model",
    "method",
    "train_steps",
    "cfg",
    "metric",
    "value",
    "source_note",
)
MISSING = "NA"
_ITERS = re.compile(r"^\s*(\d+)\s*(?:\(.*\))?\s*$")


def read_published(data: bytes, name: str = PUBLISHED_CSV.name) -> list[dict[str, Any]]:
    """``published`` rows from the CSV bytes; raises ArtifactError naming the bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{name}: not UTF-8: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ArtifactError(f"{name}: header must be {','.join(COLUMNS)}, got {reader.fieldnames}")
    rows = []
    for row_id, line in enumerate(reader, start=1):
        try:
            value = float(line["value"])
            cfg = None if line["cfg"] == MISSING else float(line["cfg"])
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{name}:{row_id + 1}: bad number: {exc}") from exc
        steps = None if line["train_steps"] == MISSING else line["train_steps"]
        iters = _ITERS.match(steps) if steps else None
        rows.append(
            {
                "row_id": row_id,
                "paper": line["paper"],
                "encoder": _or_none(line["encoder"]),
                "model": _or_none(line["model"]),
                "method": _or_none(line["method"]),
                "train_steps": steps,
                "train_iters": int(iters[1]) if iters else None,
                "cfg": cfg,
                "metric": line["metric"],
                "value": value,
                "source_note": _or_none(line["source_note"]),
            }
        )
    return rows


def _or_none(text: str | None) -> str | None:
    return None if text in (None, "", MISSING) else text
