"""``harness ingest``: the only code that writes the results database.

Jobs never open DuckDB. Each stage writes files into its artifact directory (``result.json``
last, atomically); the sweep engine writes ``plans/<sweep>/plan.json`` and ``jobs.jsonl``.
:func:`ingest` loads all of them into ``results/harness.duckdb`` in one transaction:

1. **scan** every source file and compare its (mtime, size) with the ``ingested`` table, so a
   re-ingest reads only new or changed files (and drops the rows of vanished ones);
2. **source layer**: replace the rows of each changed file (``results``, ``stage_states``,
   ``plans``/``plan_stages``, ``submissions``, ``published``); an unreadable file is skipped,
   listed in ``ingest_errors`` and in the report, and never stops the ingest;
3. **child layer**: ``train_log`` / ``spatial_per_image`` rows of the artifact that owns each
   run / measurement, delete-then-insert per stage key, so a resumed run never duplicates steps;
4. **derived layer**: refresh the natural-key tables from the ``derive_*`` views.

The result is a pure function of the files: ``ingest --rebuild`` (build a new file from the
artifacts alone, then rename it into place) reproduces the same table contents.
Concurrent ingests queue on an ``fcntl`` lock; see :mod:`harness.store.db` for busy handling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ArtifactError, StoreError
from harness.io import atomic_write, write_json
from harness.logs import event, get_logger
from harness.paths import database_path, results_root
from harness.progress import progress
from harness.store import sources
from harness.store.db import (
    connect_readonly,
    connect_readwrite,
    ingest_lock,
    latest_version,
    migrate,
    schema_changed,
    schema_version,
    storage_mode,
    wal_path,
)
from harness.store.published import read_published
from harness.store.sources import SourceFile

if TYPE_CHECKING:
    import duckdb

log = get_logger(__name__)

# tables whose row counts the report gives
REPORTED_TABLES = (
    "stages",
    "runs",
    "encoders",
    "train_log",
    "evaluations",
    "spatial_metrics",
    "spatial_per_image",
    "probes",
    "fid_refs",
    "environments",
    "published",
)
# derived tables, refreshed in this order from derive_<table> (runs reads stages and train_log)
DERIVED_TABLES = (
    "stages",
    "encoders",
    "runs",
    "evaluations",
    "spatial_metrics",
    "probes",
    "fid_refs",
    "environments",
)
# source tables holding each kind of file's rows: (table, column naming the file's owner)
SOURCE_TABLES: dict[str, tuple[tuple[str, str | None], ...]] = {
    sources.RESULT: (("results", "stage_key"),),
    sources.STATE: (("stage_states", "stage_key"),),
    sources.PLAN: (("plans", "sweep"), ("plan_stages", "sweep")),
    sources.JOBS: (("submissions", "sweep"),),
    sources.PUBLISHED: (("published", None),),
    sources.PREDICTIONS: (("predictions", "fit_id"), ("prediction_cv", "fit_id")),
}
READ_THREADS = 8  # parallel file reads (latency-bound on network filesystems)
# a database of a schema older than this is rebuilt from the files: migrations 005 and 006
# changed the params_key of spatial and probe rows (token grid, weights), which only re-parsing
# gives
REPARSED_AT = 6


@dataclass
class IngestReport:
    """What an ingest did; also written to ``<db>.ingest.json`` next to the database."""

    database: str  # path of the database
    mode: str  # created | rebuild | inplace | snapshot | noop
    files: int  # source files found
    changed: dict[str, int] = field(default_factory=dict)  # files (re)read, per kind
    vanished: int = 0  # files gone since the last ingest (their rows were removed)
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable: path, kind, error
    rows: dict[str, int] = field(default_factory=dict)  # rows per table afterwards
    schema_version: int = 0  # schema of the database afterwards
    elapsed_s: float = 0.0  # wall time of the ingest

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few human-readable lines (the CLI prints them)."""
        changed = sum(self.changed.values())
        lines = [
            f"{self.database}: {self.mode}, {self.files} files, {changed} read"
            + (
                f" ({', '.join(f'{k} {v}' for k, v in sorted(self.changed.items()))})"
                if changed
                else ""
            )
            + (f", {self.vanished} vanished" if self.vanished else "")
            + f", {self.elapsed_s:.2f} s",
            "rows: " + ", ".join(f"{t} {n}" for t, n in self.rows.items()),
        ]
        for item in self.skipped:
            lines.append(f"skipped {item['path']}: {item['error']}")
        return "\n".join(lines)


def report_path(db: Path) -> Path:
    """Where the last ingest report is written (``harness.ingest.json``)."""
    return db.with_suffix(".ingest.json")


def ingest(
    root: str | os.PathLike[str] | None = None, *, rebuild: bool = False, wait: float | None = None
) -> IngestReport:
    """Bring ``<root>/harness.duckdb`` up to date with the files under the results root.

    Args:
        root: the results root (default ``$HARNESS_RESULTS`` or ``./results``).
        rebuild: build a new database from the files alone and rename it into place.
        wait: seconds to wait while another ingest or a reader holds the database
            (default ``$HARNESS_DB_WAIT`` or 60).

    Returns:
        The report: rows per table, files read, unreadable files skipped.

    Raises:
        StoreError: the results root is missing, or the database stayed busy (StoreBusyError).
    """
    started = time.perf_counter()
    root = results_root(root)
    if not root.is_dir():
        raise StoreError(
            f"results root {root} does not exist",
            hint="pass --results DIR (or set $HARNESS_RESULTS) to the directory holding stages/",
        )
    db = database_path(root)
    with ingest_lock(db, wait=wait):
        found = sources.scan(root)
        if rebuild or not db.exists():
            everything = _Changes(list(found.values()), [], {})
            mode = "rebuild" if rebuild else "created"
            report = _build_and_publish(root, db, found, everything, mode)
        else:
            report = _ingest_existing(root, db, found, wait)
        report.elapsed_s = round(time.perf_counter() - started, 3)
        write_json(report_path(db), report.to_dict())
    event(
        log,
        "store.ingest",
        mode=report.mode,
        files=report.files,
        read=sum(report.changed.values()),
        skipped=len(report.skipped),
        seconds=report.elapsed_s,
    )
    return report


# ---------------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------------
def _ingest_existing(
    root: Path, db: Path, found: dict[str, SourceFile], wait: float | None
) -> IngestReport:
    """Apply what changed since the last ingest: in place, or through a published snapshot."""
    con = connect_readonly(db, wait=wait)
    try:
        version = schema_version(con)
        if schema_changed(con) or 0 < version < REPARSED_AT <= latest_version():
            changes = None  # an edited or re-keyed schema: only a rebuild gives the shipped one
        else:
            changes = _diff(found, _known(con) if version else {})
            if changes.empty and version == latest_version():
                return _report(con, db, "noop", found, Counter(), 0)
    finally:
        con.close()
    if changes is None:
        everything = _Changes(list(found.values()), [], {})
        return _build_and_publish(root, db, found, everything, "rebuild")
    if storage_mode(db) == "snapshot":
        return _build_and_publish(root, db, found, changes, "snapshot", start_from=db)
    con = connect_readwrite(db, wait=wait)
    try:
        with _workspace() as work:
            counts = _apply(con, root, work, changes)
        report = _report(con, db, "inplace", found, counts, len(changes.vanished))
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return report


def _build_and_publish(
    root: Path,
    db: Path,
    found: dict[str, SourceFile],
    changes: _Changes,
    mode: str,
    start_from: Path | None = None,
) -> IngestReport:
    """Apply ``changes`` to a local file (empty, or a copy of ``start_from``), then publish it."""
    import duckdb

    with _workspace() as work:
        local = work / db.name
        if start_from is not None:
            shutil.copyfile(start_from, local)
        con = duckdb.connect(str(local))
        try:
            counts = _apply(con, root, work, changes)
            report = _report(con, db, mode, found, counts, len(changes.vanished))
            con.execute("CHECKPOINT")
        finally:
            con.close()
        _publish(local, db)
    return report


@contextlib.contextmanager
def _workspace() -> Iterator[Path]:
    """A private local scratch directory ($HARNESS_TMPDIR or the system temp dir)."""
    with tempfile.TemporaryDirectory(
        prefix="harness-ingest-", dir=os.environ.get("HARNESS_TMPDIR")
    ) as tmp:
        yield Path(tmp)


def _publish(built: Path, db: Path) -> None:
    """Copy a closed database file over ``db`` atomically (readers keep their old snapshot)."""
    with contextlib.suppress(FileNotFoundError):
        wal_path(db).unlink()  # a stale log of the old file must never be replayed on the new
    with atomic_write(db) as out, open(built, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 22)


# ---------------------------------------------------------------------------------------------
# change detection
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Known:
    """A file as the last ingest saw it (in ``ingested`` or, if unreadable, ``ingest_errors``)."""

    mtime_ns: int
    size: int
    kind: str
    owner: str | None  # None for an unreadable file (it contributed no rows)


def _known(con: duckdb.DuckDBPyConnection) -> dict[str, _Known]:
    query = (
        "SELECT path, mtime_ns, size, kind, NULL AS owner FROM ingest_errors "
        "UNION ALL SELECT path, mtime_ns, size, kind, owner FROM ingested"
    )
    known: dict[str, _Known] = {}
    for path, mtime, size, kind, owner in con.execute(query).fetchall():
        if owner is not None or path not in known:  # the ingested row wins (child files)
            known[path] = _Known(mtime, size, kind, owner)
    return known


@dataclass(frozen=True)
class _Changes:
    """What an ingest has to do: files to (re)read, files gone, and the last ingest's view."""

    changed: list[SourceFile]  # new or modified files (all files for a fresh database)
    vanished: list[str]  # paths known to the last ingest that are gone
    known: dict[str, _Known]  # the last ingest's files

    @property
    def empty(self) -> bool:
        return not self.changed and not self.vanished


def _diff(found: dict[str, SourceFile], known: dict[str, _Known]) -> _Changes:
    changed = [
        f
        for path, f in sorted(found.items())
        if (k := known.get(path)) is None or (k.mtime_ns, k.size) != (f.mtime_ns, f.size)
    ]
    return _Changes(changed, sorted(set(known) - set(found)), known)


# ---------------------------------------------------------------------------------------------
# the transaction
# ---------------------------------------------------------------------------------------------
def _apply(
    con: duckdb.DuckDBPyConnection, root: Path, work: Path, changes: _Changes
) -> Counter[str]:
    """One transaction: migrate, replace the rows of changed / vanished files, refresh."""
    staging = _Staging(con, work)
    con.execute("BEGIN TRANSACTION")
    try:
        migrate(con)
        counts = _load_sources(con, root, staging, changes)
        _sync_children(con, root, staging)
        for table in DERIVED_TABLES:
            con.execute(f"DELETE FROM {table}")
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM derive_{table}")
        _complete_runs(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return counts


def _complete_runs(con: duckdb.DuckDBPyConnection) -> None:
    """Fill ``runs.grid`` (by :func:`sources.run_grid`, the Python definition of a run's token
    grid, which SQL does not repeat) and ``runs.random_weights`` from each run's config
    (schema v5 on; nothing to fill before it)."""
    present = {
        name
        for (name,) in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'"
        ).fetchall()
    }
    if not {"grid", "random_weights"} <= present:
        return
    keys, grids = [], []
    for run_id, config in con.execute("SELECT run_id, config FROM runs").fetchall():
        grid = sources.run_grid(json.loads(config) if config else None)
        if grid is not None:
            keys.append(run_id)
            grids.append(grid)
    if keys:
        con.execute(
            "UPDATE runs SET grid = g.grid FROM (SELECT unnest($keys) AS run_id, "
            "unnest($grids) AS grid) g WHERE runs.run_id = g.run_id",
            {"keys": keys, "grids": grids},
        )
    con.execute(
        "UPDATE runs SET random_weights = TRY_CAST(config->>'$.run.random_weights' AS BOOLEAN)"
    )


def _load_sources(
    con: duckdb.DuckDBPyConnection, root: Path, staging: _Staging, changes: _Changes
) -> Counter[str]:
    """Replace the source rows of the changed and vanished files; return files read per kind."""
    changed, vanished = changes.changed, changes.vanished
    stale: dict[str, set[str]] = defaultdict(set)  # kind -> owners whose rows are removed
    for path in vanished:
        stale[changes.known[path].kind].add(changes.known[path].owner or "")
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ingested: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    bar = progress(total=len(changed), desc="ingest", unit="file")
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for source, data in zip(changed, pool.map(lambda f: _read(f, root), changed)):
            bar.update(1)
            stale[source.kind].add(source.owner)
            if isinstance(data, OSError):
                continue  # vanished between scan and read: handled as vanished
            counts[source.kind] += 1
            sha = hashlib.sha256(data).hexdigest()[:16]
            row = {
                k: getattr(source, k)
                for k in ("path", "kind", "stage", "owner", "mtime_ns", "size")
            }
            try:
                _parse_into(rows, source, data, root)
            except ArtifactError as exc:
                errors.append({**row, "error": exc.message})
                continue
            ingested.append({**row, "sha256": sha})
    bar.close()
    for kind, owners in stale.items():
        for table, column in SOURCE_TABLES.get(kind, ()):
            staging.delete(table, column, owners)
    for table, table_rows in rows.items():
        staging.insert(table, table_rows)
    touched = set(vanished) | {f.path for f in changed}
    staging.delete("ingested", "path", touched)
    staging.delete("ingest_errors", "path", touched)
    staging.insert("ingested", ingested)
    staging.insert("ingest_errors", [{k: e[k] for k in _ERROR_COLUMNS} for e in errors])
    for item in errors:
        event(log, "store.skipped", path=item["path"], error=item["error"])
    return counts


_ERROR_COLUMNS = ("path", "kind", "error", "mtime_ns", "size")


def _read(source: SourceFile, root: Path) -> bytes | OSError:
    try:
        return source.absolute(root).read_bytes()
    except OSError as exc:
        return exc


def _parse_into(
    rows: dict[str, list[dict[str, Any]]], source: SourceFile, data: bytes, root: Path
) -> None:
    """Append the source-table rows of one file to ``rows`` (children are loaded later)."""
    if source.kind == sources.RESULT:
        rows["results"].append(sources.parse_result(source, data))
    elif source.kind == sources.STATE:
        rows["stage_states"].append(sources.parse_state(source, data))
    elif source.kind == sources.PLAN:
        plan, stages = sources.parse_plan(source, data)
        rows["plans"].append(plan)
        rows["plan_stages"].extend(stages)
    elif source.kind == sources.JOBS:
        rows["submissions"].extend(sources.parse_jobs(source, root))
    elif source.kind == sources.PUBLISHED:
        rows["published"].extend(read_published(data))
    elif source.kind == sources.PREDICTIONS:
        predictions, cv = sources.parse_predictions(source, data)
        rows["predictions"].extend(predictions)
        rows["prediction_cv"].extend(cv)


# ---------------------------------------------------------------------------------------------
# child tables
# ---------------------------------------------------------------------------------------------
_Owned = tuple[dict[str, Any], str]  # (owner row of the *_owners view, file text)


def _insert_train_logs(
    con: duckdb.DuckDBPyConnection, staging: _Staging, files: list[_Owned]
) -> list[dict[str, Any]]:
    """Parse every training log at once in SQL (the ``parse_train_logs`` macro)."""
    con.execute(
        "INSERT INTO train_log BY NAME SELECT * FROM parse_train_logs($keys, $runs, $texts)",
        {
            "keys": [owner["stage_key"] for owner, _ in files],
            "runs": [owner["run_id"] for owner, _ in files],
            "texts": [text for _, text in files],
        },
    )
    return []


def _insert_per_image(
    con: duckdb.DuckDBPyConnection, staging: _Staging, files: list[_Owned]
) -> list[dict[str, Any]]:
    """Parse each per-image table; a malformed one is reported and contributes no rows."""
    rows, errors = [], []
    for owner, text in files:
        try:
            parsed = sources.parse_per_image(text, owner["path"])
        except ArtifactError as exc:
            errors.append({"path": owner["path"], "error": exc.message})
            continue
        extra = {c: owner[c] for c in ("stage_key", "encoder", "data_key", "params_key")}
        rows.extend({**row, **extra} for row in parsed)
    staging.insert("spatial_per_image", rows)
    return errors


@dataclass(frozen=True)
class _Child:
    table: str  # child table
    kind: str  # source file kind
    owners_view: str  # view: stage_key, path, signature + the owner columns
    owner_columns: tuple[str, ...]  # columns of the owners view the rows are keyed by
    insert: Callable[[duckdb.DuckDBPyConnection, _Staging, list[_Owned]], list[dict[str, Any]]]


CHILDREN = (
    _Child("train_log", sources.TRAIN_LOG, "train_log_owners", ("run_id",), _insert_train_logs),
    _Child(
        "spatial_per_image",
        sources.PER_IMAGE,
        "per_image_owners",
        ("encoder", "data_key", "params_key"),
        _insert_per_image,
    ),
)


def _sync_children(con: duckdb.DuckDBPyConnection, root: Path, staging: _Staging) -> None:
    """Make each child table hold exactly the rows of its owners' current files."""
    for child in CHILDREN:
        columns = ("stage_key", "path", "signature", *child.owner_columns)
        owners = {
            row[0]: dict(zip(columns, row))
            for row in con.execute(
                f"SELECT {', '.join(columns)} FROM {child.owners_view}"
            ).fetchall()
        }
        loaded = dict(
            con.execute(
                "SELECT stage_key, signature FROM child_loads WHERE child = ?", [child.table]
            ).fetchall()
        )
        outdated = {k for k, sig in loaded.items() if owners.get(k, {}).get("signature") != sig}
        missing = [owners[k] for k in sorted(owners) if loaded.get(k) != owners[k]["signature"]]
        reload = sorted(outdated | {o["stage_key"] for o in missing})
        staging.delete(child.table, "stage_key", reload)
        staging.delete("child_loads", "stage_key", reload, where=f"child = '{child.table}'")
        files: list[_Owned] = []
        errors: list[dict[str, Any]] = []
        with ThreadPoolExecutor(READ_THREADS) as pool:
            texts = pool.map(lambda o: _read_text(root / o["path"]), missing)
            for owner, text in zip(missing, texts):
                if isinstance(text, ArtifactError):
                    errors.append({"path": owner["path"], "error": text.message})
                else:
                    files.append((owner, text))
        errors += child.insert(con, staging, files) if files else []
        failed = {e["path"] for e in errors}
        staging.insert(
            "child_loads",
            [
                {"child": child.table, "stage_key": o["stage_key"], "signature": o["signature"]}
                for o in missing
                if o["path"] not in failed
            ],
        )
        _record_child_errors(con, staging, child, [o["path"] for o in missing], errors)


def _record_child_errors(
    con: duckdb.DuckDBPyConnection,
    staging: _Staging,
    child: _Child,
    attempted: list[str],
    errors: list[dict[str, Any]],
) -> None:
    """ingest_errors holds exactly the child files that failed to load this time or before."""
    con.execute(
        "DELETE FROM ingest_errors WHERE kind = ? AND (path NOT IN "
        f"(SELECT path FROM {child.owners_view}) OR path IN (SELECT unnest(?)))",
        [child.kind, attempted],
    )
    if not errors:
        return
    stat = dict(
        con.execute(
            "SELECT path, [mtime_ns, size] FROM ingested WHERE path IN (SELECT unnest(?))",
            [[e["path"] for e in errors]],
        ).fetchall()
    )
    staging.insert(
        "ingest_errors",
        [
            {**e, "kind": child.kind, "mtime_ns": stat[e["path"]][0], "size": stat[e["path"]][1]}
            for e in errors
        ],
    )
    for item in errors:
        event(log, "store.skipped", path=item["path"], error=item["error"])


def _read_text(path: Path) -> str | ArtifactError:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return ArtifactError(f"{path}: unreadable: {exc}")


# ---------------------------------------------------------------------------------------------
# bulk writes through a staging file
# ---------------------------------------------------------------------------------------------
class _Staging:
    """Bulk inserts and deletes for one connection.

    Rows go through a newline-delimited JSON file read by DuckDB's ``read_json`` with the
    table's own column types: fast, and NaN / Infinity survive (a pandas scan would turn a
    diverged run's NaN loss into NULL).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, work: Path) -> None:
        self.con = con
        self.work = work
        self.count = 0
        self.types: dict[str, dict[str, str]] = {}

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        types = self._types(table)
        columns = list(rows[0])
        self.count += 1
        path = self.work / f"{self.count:05d}-{table}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, sort_keys=True) + "\n")
        spec = ", ".join(f"'{c}': '{types[c]}'" for c in columns)
        self.con.execute(
            f"INSERT INTO {table} BY NAME SELECT * FROM read_json(?, "
            f"format = 'newline_delimited', columns = {{{spec}}}, "
            "maximum_object_size = 536870912)",
            [str(path)],
        )
        path.unlink()

    def delete(
        self, table: str, column: str | None, values: set[str] | list[str], where: str = "TRUE"
    ) -> None:
        """Delete the rows whose ``column`` is in ``values`` (every row when column is None)."""
        if not values:
            return
        if column is None:
            self.con.execute(f"DELETE FROM {table} WHERE {where}")
            return
        self.con.execute(
            f"DELETE FROM {table} WHERE {where} AND {column} IN (SELECT unnest(?))",
            [sorted(values)],
        )

    def _types(self, table: str) -> dict[str, str]:
        if table not in self.types:
            self.types[table] = dict(
                self.con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = ?",
                    [table],
                ).fetchall()
            )
        return self.types[table]


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _report(
    con: duckdb.DuckDBPyConnection,
    db: Path,
    mode: str,
    found: dict[str, SourceFile],
    changed: Counter[str],
    vanished: int,
) -> IngestReport:
    rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in REPORTED_TABLES}
    skipped = [
        {"path": p, "kind": k, "error": e}
        for p, k, e in con.execute(
            "SELECT path, kind, error FROM ingest_errors ORDER BY path"
        ).fetchall()
    ]
    return IngestReport(
        database=str(db),
        mode=mode,
        files=len(found),
        changed=dict(sorted(changed.items())),
        vanished=vanished,
        skipped=skipped,
        rows=rows,
        schema_version=schema_version(con),
    )
