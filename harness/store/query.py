"""Read-only SQL over the results database, rendered as a text table, CSV or JSON.

``harness query`` opens the database with ``read_only=True``: a write statement fails with a
clear error (results change only through ``harness ingest``); ``CREATE TEMP TABLE`` still
works for scratch work. Statements that a read-only database still lets through but that write
files, reach outside the database or change the session (:data:`REFUSED_STATEMENTS`: COPY,
EXPORT, ATTACH, INSTALL / LOAD, SET, state-changing PRAGMAs ...) are refused before anything
runs. DuckDB errors become :class:`~harness.errors.StoreError` with a hint
(a missing table lists the tables and views, a syntax error points at the query).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import TYPE_CHECKING, Any

from harness.errors import StoreError, format_allowed
from harness.store.db import open_readonly

if TYPE_CHECKING:
    import duckdb

FORMATS = ("table", "csv", "json")
DEFAULT_MAX_ROWS = 100  # rows a text table shows (csv / json give every row)

# DuckDB statement types (``duckdb.StatementType`` names) that ``harness query`` refuses, and
# why: each writes a file, reaches outside the results database or changes the session.
REFUSED_STATEMENTS = {
    "COPY": "COPY reads or writes files",
    "EXPORT": "EXPORT DATABASE writes files",
    "ATTACH": "ATTACH opens (or creates) another database file",
    "DETACH": "DETACH changes the attached databases",
    "LOAD": "INSTALL / LOAD download and load extensions",
    "SET": "SET / RESET / USE change the session's settings (profiling_output writes a file)",
    "PRAGMA": "this PRAGMA changes the session or writes files",
    "CALL": "CALL runs procedures such as CHECKPOINT (use SELECT * FROM function(...))",
    "VACUUM": "VACUUM / ANALYZE change the database",
}  # EXECUTE runs only what this query's (checked) PREPAREs prepared
# PRAGMAs that only read (the rest are refused with the PRAGMA reason)
READ_ONLY_PRAGMAS = (
    "database_list",
    "database_size",
    "functions",
    "metadata_info",
    "platform",
    "show",
    "show_databases",
    "show_tables",
    "show_tables_expanded",
    "storage_info",
    "table_info",
    "user_agent",
    "version",
)
_PRAGMA = re.compile(r"^\s*PRAGMA\s+(\w+)\s*(=)?", re.I)
_PREPARE = re.compile(r"^\s*PREPARE\s+\w+\s+AS\s+(.*)$", re.I | re.S)
_SECRET = re.compile(r"^\s*CREATE\s+(OR\s+REPLACE\s+)?(PERSISTENT\s+)?SECRET\b", re.I)


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
        check_read_only(con, sql)
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


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse ``sql`` when one of its statements is in :data:`REFUSED_STATEMENTS` (or is a
    state-changing PRAGMA, a secret, or of a type this DuckDB cannot name), before any runs.

    Raises:
        StoreError: the first refused statement, with the reason.
    """
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise explain_error(con, exc) from exc
    for statement in statements:
        reason = _refusal(statement)
        if reason is not None:
            raise _refused(statement.query.strip(), reason)


def _refusal(statement: duckdb.Statement) -> str | None:
    try:
        kind = statement.type.name
    except ValueError:  # a statement type this duckdb client has no name for
        return "a statement of a type harness does not know"
    text = statement.query
    if kind == "PREPARE" and (inner := _PREPARE.match(text)):
        return _refusal_of_text(inner.group(1))
    if kind == "PRAGMA":
        pragma = _PRAGMA.match(text)
        if pragma and pragma.group(1).lower() in READ_ONLY_PRAGMAS and not pragma.group(2):
            return None
    if kind == "CREATE" and _SECRET.match(text):
        return "CREATE SECRET stores credentials (PERSISTENT ones in a file)"
    return REFUSED_STATEMENTS.get(kind)


def _refusal_of_text(text: str) -> str | None:
    import duckdb

    try:
        inner = duckdb.extract_statements(text)
    except (duckdb.Error, ValueError):
        return "PREPARE of a statement that cannot be checked"
    return next((reason for s in inner if (reason := _refusal(s))), None)


def _refused(statement: str, reason: str) -> StoreError:
    shown = statement if len(statement) <= 80 else statement[:77] + "..."
    return StoreError(
        f"harness query is read-only: refused {shown!r}: {reason}",
        hint="query with SELECT (SHOW, DESCRIBE, SUMMARIZE, EXPLAIN, read-only PRAGMAs); "
        "write results to a file with --format csv|json -o FILE",
    )


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
