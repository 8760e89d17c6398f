"""Connections to the results database: one writer (``harness ingest``), many readers.

DuckDB lets either one process open a database file read-write or any number of processes
open it read-only (DuckDB docs, "Concurrency"). The harness follows that model:

* **writer**: only :mod:`harness.store.ingest` opens the file read-write, under an exclusive
  ``fcntl`` lock on ``harness.duckdb.lock`` so that concurrent ingests queue instead of failing;
* **readers**: ``harness query``, ``harness report`` and analysts use :func:`open_readonly`.

A read-only connection held by another process blocks the writer, and the writer blocks new
readers. Both sides retry with backoff for ``$HARNESS_DB_WAIT`` seconds (default 60, or the
``wait`` argument) and then raise :class:`StoreBusyError` naming the process that holds the file.

On a network filesystem (NFS, Lustre, GPFS, SMB, ...), where DuckDB advises against
read-write use, the writer never writes the shared file in place: it works on a local copy and
publishes it with an atomic rename ("snapshot" mode, also forced with
``HARNESS_DB_MODE=snapshot``). Readers then never block the writer; they see the new contents
when they reconnect.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from harness.errors import StoreError
from harness.io import make_dirs, share
from harness.logs import event, get_logger
from harness.paths import database_path, results_root

if TYPE_CHECKING:
    import duckdb

log = get_logger(__name__)

ENV_WAIT = "HARNESS_DB_WAIT"  # seconds to wait for a busy database or ingest lock
ENV_MODE = "HARNESS_DB_MODE"  # auto | inplace | snapshot
DEFAULT_WAIT_S = 60.0
MODES = ("auto", "inplace", "snapshot")
# filesystem types on which the writer publishes snapshots instead of writing in place
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "9p"}
    | {"fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.gcsfuse", "fuse.s3fs", "panfs"}
)
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")
_BUSY_MARKERS = ("Could not set lock", "Conflicting lock")

T = TypeVar("T")
Mode = Literal["inplace", "snapshot"]


class StoreBusyError(StoreError):
    """The database or the ingest lock stayed busy for longer than the wait allowed."""


# ---------------------------------------------------------------------------------------------
# paths and settings
# ---------------------------------------------------------------------------------------------
def lock_path(db: Path) -> Path:
    """The ingest lock file next to the database (``harness.duckdb.lock``)."""
    return db.with_name(db.name + ".lock")


def wal_path(db: Path) -> Path:
    """DuckDB's write-ahead log of ``db``."""
    return db.with_name(db.name + ".wal")


def wait_seconds(wait: float | None = None) -> float:
    """How long to wait for a busy database: ``wait``, else ``$HARNESS_DB_WAIT``, else 60 s."""
    if wait is not None:
        return max(0.0, float(wait))
    raw = os.environ.get(ENV_WAIT)
    if raw is None:
        return DEFAULT_WAIT_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise StoreError(
            f"${ENV_WAIT}={raw!r} is not a number of seconds", hint=f"e.g. {ENV_WAIT}=120"
        ) from None


def storage_mode(db: Path) -> Mode:
    """``inplace`` on a local disk, ``snapshot`` on a network filesystem (or as forced)."""
    mode = os.environ.get(ENV_MODE, "auto").strip().lower()
    if mode not in MODES:
        raise StoreError(
            f"${ENV_MODE}={mode!r} is not a storage mode", hint=f"allowed: {', '.join(MODES)}"
        )
    if mode == "auto":
        return "snapshot" if filesystem_type(db.parent) in NETWORK_FILESYSTEMS else "inplace"
    return mode  # type: ignore[return-value]


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (from /proc/mounts), or None if unknown."""
    try:
        mounts = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    target = str(Path(path).resolve())
    best, best_type = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    return best_type


# ---------------------------------------------------------------------------------------------
# the ingest lock
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def ingest_lock(db: Path, *, wait: float | None = None) -> Iterator[None]:
    """Hold the exclusive ingest lock of ``db`` (an ``fcntl`` lock on ``<db>.lock``).

    Waits up to ``wait`` seconds (see :func:`wait_seconds`) for another ingest to finish, then
    raises :class:`StoreBusyError` naming the holder (pid, host, since when).
    """
    path = lock_path(db)
    make_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)  # 0o664 & ~umask
    try:
        share(path)
        _retry(
            lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB),
            is_busy=lambda exc: isinstance(exc, BlockingIOError),
            what=f"ingest lock {path}",
            holder=lambda _exc: _lock_holder(path),
            wait=wait_seconds(wait),
        )
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        info = {}
    if not info:
        return "another harness ingest"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"harness ingest (PID {info.get('pid')} on {info.get('host')}, since {since})"


# ---------------------------------------------------------------------------------------------
# connections
# ---------------------------------------------------------------------------------------------
def connect_readwrite(db: Path, *, wait: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open ``db`` read-write, retrying while another process holds it. Only ingest calls this.

    The file (created by ``harness.io.atomic_write`` when ingest publishes it, so its mode
    follows the umask) is given to the lab group, if any, so that the group can read it.
    """
    con = _connect(db, read_only=False, wait=wait)
    try:
        share(db)
    except BaseException:
        con.close()
        raise
    return con


def connect_readonly(db: Path, *, wait: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open an existing ``db`` read-only, retrying while the writer holds it."""
    if not db.exists():
        raise StoreError(
            f"no results database at {db}",
            hint="run `harness ingest` first (it builds the database from the stage artifacts)",
        )
    return _connect(db, read_only=True, wait=wait)


@contextlib.contextmanager
def open_readonly(
    root: str | os.PathLike[str] | None = None, *, wait: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the results database of ``root``, closed on exit.

    Raises:
        StoreError: the database is missing, has another schema version, or stays busy.

    Example:
        >>> with open_readonly("results") as con:  # doctest: +SKIP
        ...     df = con.sql("SELECT * FROM v_study").df()
    """
    con = connect_readonly(database_path(results_root(root)), wait=wait)
    try:
        check_schema(con)
        yield con
    finally:
        con.close()


def _connect(db: Path, *, read_only: bool, wait: float | None) -> duckdb.DuckDBPyConnection:
    import duckdb

    def attempt() -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(db), read_only=read_only)

    def is_busy(exc: BaseException) -> bool:
        return isinstance(exc, duckdb.IOException) and any(m in str(exc) for m in _BUSY_MARKERS)

    def holder(exc: BaseException) -> str:
        found = _LOCK_HOLDER.search(str(exc))
        if not found:
            return "another process"
        return f"PID {found['pid']} ({found['program']})"

    try:
        return _retry(
            attempt, is_busy=is_busy, what=str(db), holder=holder, wait=wait_seconds(wait)
        )
    except duckdb.ConnectionException as exc:
        raise StoreError(
            f"{db}: this process already has a connection to it with other settings: {exc}",
            hint="close the read-only connection (open_readonly) before running an ingest",
        ) from exc
    except duckdb.Error as exc:
        raise StoreError(
            f"cannot open {db}: {exc}",
            hint="if the file is damaged, rebuild it from the artifacts: harness ingest --rebuild",
        ) from exc


def _retry(
    attempt: Callable[[], T],
    *,
    is_busy: Callable[[BaseException], bool],
    what: str,
    holder: Callable[[BaseException], str],
    wait: float,
) -> T:
    """Call ``attempt`` until it stops failing as busy, with backoff, for ``wait`` seconds."""
    deadline = time.monotonic() + wait
    delay = 0.05
    announced = False
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not is_busy(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreBusyError(
                    f"{what} is busy: held by {holder(exc)}; gave up after {wait:g} s",
                    hint="DuckDB allows one writer or many readers at a time: close the other "
                    "connection, or wait longer (--wait SECONDS or $HARNESS_DB_WAIT); on a "
                    "shared filesystem set HARNESS_DB_MODE=snapshot so ingest never waits for "
                    "readers",
                ) from exc
            if not announced:
                # a wait the user must see without -v: otherwise it looks like a hang
                event(
                    log,
                    "store.busy",
                    logging.WARNING,
                    what=what,
                    held_by=holder(exc),
                    wait_s=round(wait, 1),
                )
                announced = True
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)


# ---------------------------------------------------------------------------------------------
# schema migrations
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Migration:
    """One ``schema/NNN_name.sql`` file."""

    version: int  # NNN
    name: str  # file name
    sql: str  # the statements
    sha256: str  # hash of the file


@lru_cache(maxsize=1)
def migrations() -> tuple[Migration, ...]:
    """The schema migrations shipped with harness, in version order."""
    found = []
    for entry in resources.files("harness.store").joinpath("schema").iterdir():
        match = re.fullmatch(r"(\d{3})_[a-z0-9_]+\.sql", entry.name)
        if not match:
            continue
        sql = entry.read_text(encoding="utf-8")
        digest = hashlib.sha256(sql.encode("utf-8")).hexdigest()[:16]
        found.append(Migration(int(match[1]), entry.name, sql, digest))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"schema migrations are not numbered 001..NNN: {[m.name for m in found]}")
    return tuple(found)


def latest_version() -> int:
    """The schema version this harness writes."""
    return migrations()[-1].version


def applied_migrations(con: duckdb.DuckDBPyConnection) -> dict[int, str]:
    """``{version: sha256}`` of the migrations applied to an open database (empty if none)."""
    (exists,) = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchall()[0]
    if not exists:
        return {}
    return dict(con.execute("SELECT version, sha256 FROM schema_version").fetchall())


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version of an open database (0 for an empty one)."""
    return max(applied_migrations(con), default=0)


def schema_changed(con: duckdb.DuckDBPyConnection) -> bool:
    """True when a migration the database applied differs from the shipped file of that
    number (a schema edited during development): only a rebuild gives the shipped schema."""
    shipped = {m.version: m.sha256 for m in migrations()}
    return any(shipped.get(v, sha) != sha for v, sha in applied_migrations(con).items())


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply the pending migrations in order (inside the caller's transaction); return them."""
    current = schema_version(con)
    _check_not_newer(current)
    applied = []
    for migration in migrations():
        if migration.version <= current:
            continue
        con.execute(migration.sql)
        con.execute(
            "INSERT INTO schema_version VALUES (?, ?, ?)",
            [migration.version, migration.name, migration.sha256],
        )
        applied.append(migration.version)
    if applied:
        event(log, "store.migrated", level=logging.DEBUG, versions=applied)
    return applied


def check_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Raise a StoreError unless the database has exactly this harness's schema."""
    current = schema_version(con)
    _check_not_newer(current)
    if schema_changed(con):
        raise StoreError(
            f"the results database was built with an earlier edit of schema v{current}",
            hint="run `harness ingest`: it rebuilds the database from the artifacts",
        )
    if current < latest_version():
        raise StoreError(
            f"the results database has schema v{current}; this harness reads v{latest_version()}",
            hint="run `harness ingest` to migrate it",
        )


def _check_not_newer(current: int) -> None:
    if current > latest_version():
        raise StoreError(
            f"the results database has schema v{current}, newer than this harness "
            f"(v{latest_version()})",
            hint="update harness, or rebuild the database with this version: "
            "harness ingest --rebuild",
        )
