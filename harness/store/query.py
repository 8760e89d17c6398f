"""Read-only SQL over the results database, rendered as a text table, CSV or JSON.

``harness query`` opens the database with ``read_only=True``: a write statement fails with a
clear error (results change only through ``harness ingest``); ``CREATE TEMP TABLE`` still
works for scratch work. DuckDB errors become :class:`~harness.errors.StoreError` with a hint
(a missing table lists the tables and views, a syntax error points at the query).
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

from harness.errors import StoreError, format_allowed
from harness.store.db import open_readonly

if TYPE_CHECKING:
    import duckdb

FORMATS = ("table", "csv", "json")
DEFAULT_MAX_ROWS = 100  # rows a text table shows (csv / json give every row)


def run_query(
    root: str | os.PathLike[str] | None,
    sql: str,
    fmt: str = "table",
    *,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    wait: float | None = None,
) -> str:
    """Run ``sql`` on a read-only connection and render the last statement's result.

    Args:
        root: the results root (default ``$HARNESS_RESULTS`` or ``./results``).
        sql: one or more SQL statements; the last one's result is rendered.
        fmt: ``table`` (aligned text), ``csv`` or ``json`` (a list of row objects).
        max_rows: rows shown by ``table`` (None: all).
        wait: seconds to wait while an ingest holds the database.

    Raises:
        StoreError: missing database, a write statement, an unknown table, bad SQL.
    """
    import duckdb

    if fmt not in FORMATS:
        raise StoreError(f"unknown format {fmt!r}", hint=f"allowed: {', '.join(FORMATS)}")
    if not sql.strip():
        raise StoreError("empty query", hint='e.g. harness query "SELECT * FROM v_study"')
    with open_readonly(root, wait=wait) as con:
        try:
            relation = con.sql(sql)
            if relation is None:  # the last statement returns no rows (SET, CREATE TEMP ...)
                return ""
            columns, types = relation.columns, [str(t) for t in relation.types]
            rows = relation.fetchall()
        except duckdb.Error as exc:
            raise explain_error(con, exc) from exc
    if fmt == "json":
        return _to_json(columns, types, rows)
    import pandas as pd

    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    if fmt == "csv":
        return frame.to_csv(index=False)
    return _to_table(frame.map(lambda v: "NULL" if v is None else v), max_rows)


def explain_error(con: duckdb.DuckDBPyConnection, exc: Exception) -> StoreError:
    """A StoreError for a DuckDB error, with a hint saying what to do."""
    import duckdb

    message = str(exc).strip()
    if isinstance(exc, duckdb.InvalidInputException) and "read-only" in message:
        return StoreError(
            f"the results database is read-only here: {message}",
            hint="results change only through `harness ingest` (it rebuilds every table from "
            "the stage artifacts); use CREATE TEMP TABLE for scratch tables",
        )
    if isinstance(exc, duckdb.CatalogException):
        return StoreError(message, hint=f"tables and views: {format_allowed(relations(con), 60)}")
    if isinstance(exc, duckdb.ParserException):
        return StoreError(f"SQL syntax error: {message}", hint="check the query near the caret")
    if isinstance(exc, duckdb.BinderException):
        return StoreError(message, hint="DESCRIBE <table> lists a table's columns")
    return StoreError(f"query failed: {message}")


def relations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the tables and views of the main schema (without the derive_* internals)."""
    return [
        name
        for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_name NOT LIKE 'derive\\_%' ESCAPE '\\' "
            "AND table_name NOT LIKE '%\\_owners' ESCAPE '\\' ORDER BY table_name"
        ).fetchall()
    ]


def _to_table(frame: Any, max_rows: int | None) -> str:
    if frame.empty:
        return "  ".join(frame.columns) + "\n(0 rows)\n"
    text = frame.to_string(index=False, max_rows=max_rows)
    shown = len(frame) if max_rows is None else min(len(frame), max_rows)
    tail = f"({len(frame)} rows" + (
        f", {shown} shown; --format csv -o FILE writes all)" if shown < len(frame) else ")"
    )
    return f"{text}\n{tail}\n"


def _to_json(columns: list[str], types: list[str], rows: list[tuple[Any, ...]]) -> str:
    is_json = [t == "JSON" for t in types]
    records = [{c: _json_value(v, j) for c, v, j in zip(columns, row, is_json)} for row in rows]
    return json.dumps(records, indent=2, default=str) + "\n"


def _json_value(value: Any, is_json: bool) -> Any:
    if is_json and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / Infinity
    return value
