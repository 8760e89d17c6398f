"""Crash-safe file writes, file modes for a shared cluster, and content hashing.

Every file the harness writes for later reading goes through :func:`atomic_write`:
the bytes land in a temporary file in the same directory, are fsynced, then renamed over
the target. A crash or ``SIGKILL`` leaves either the old file or the new one, never half.

Modes: files are created ``0o666 & ~umask`` and directories ``0o777 & ~umask`` (with umask 022:
0644 / 0755; with 002: 0664 / 0775), exactly as ``open`` and ``mkdir`` do, so default POSIX ACLs
apply too. With a lab group (``--group NAME`` or ``$HARNESS_GROUP``) every file and directory
the harness creates, and the directories from the results root down to it, are given to that
group and made group-readable; directories also get the setgid bit, so whatever other programs
create inside them (DuckDB's WAL, torch.hub downloads) inherits the group. Only paths owned by
the current user are changed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from harness.errors import HarnessError
from harness.paths import results_root

ENV_GROUP = "HARNESS_GROUP"  # lab group that gets every file and directory the harness creates


# ---------------------------------------------------------------------------------------------
# the lab group
# ---------------------------------------------------------------------------------------------
def lab_group() -> int | None:
    """The gid of ``$HARNESS_GROUP`` (a group name or number), or None when it is unset.

    Raises:
        HarnessError: the group does not exist, or the current user is not a member of it.
    """
    name = os.environ.get(ENV_GROUP, "").strip()
    return _resolve_group(name) if name else None


@functools.lru_cache(maxsize=8)
def _resolve_group(name: str) -> int:
    """gid of a group name or number that the current user belongs to (cached: NSS can be slow)."""
    try:
        gid = int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise HarnessError(
            f"--group / ${ENV_GROUP}: no group named {name!r}",
            hint=f"your groups: {_my_groups()}",
        ) from None
    if os.geteuid() != 0 and gid not in os.getgroups() and gid != os.getegid():
        raise HarnessError(
            f"--group / ${ENV_GROUP}: you are not a member of group {name!r} (gid {gid})",
            hint=f"your groups: {_my_groups()}",
        )
    return gid


def _my_groups() -> str:
    names = []
    for gid in sorted({*os.getgroups(), os.getegid()}):
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    return ", ".join(names)


def share(path: str | os.PathLike[str]) -> None:
    """Give ``path`` to the lab group and make it group-readable (no-op without a group).

    Directories also get group search (``g+x``) and the setgid bit. Paths owned by another user
    are left alone (only their owner can change them).
    """
    gid = lab_group()
    if gid is None:
        return
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        return
    extra = stat.S_IRGRP | (stat.S_IXGRP | stat.S_ISGID if stat.S_ISDIR(st.st_mode) else 0)
    _apply_group(path, st, gid, extra, lambda g: os.chown(path, -1, g), lambda m: os.chmod(path, m))


def _share_fd(fd: int, shown: Path) -> None:
    """:func:`share` for a file that is open (the temporary file of an atomic write)."""
    gid = lab_group()
    if gid is not None:
        st = os.fstat(fd)
        _apply_group(
            shown, st, gid, stat.S_IRGRP, lambda g: os.fchown(fd, -1, g), lambda m: os.fchmod(fd, m)
        )


def _apply_group(
    shown: str | os.PathLike[str],
    st: os.stat_result,
    gid: int,
    extra: int,
    chown: Callable[[int], None],
    chmod: Callable[[int], None],
) -> None:
    """chgrp to ``gid`` and add the ``extra`` mode bits, through ``chown`` / ``chmod``."""
    try:
        if st.st_gid != gid:
            chown(gid)
        mode = stat.S_IMODE(st.st_mode)
        if mode | extra != mode or st.st_gid != gid:  # chown may clear setgid: set it again
            chmod(mode | extra)
    except PermissionError as exc:
        raise HarnessError(
            f"cannot give {shown} to group {os.environ.get(ENV_GROUP)!r}: {exc.strerror}",
            hint=f"you must own the path and be a member of the group (your groups: {_my_groups()})",
        ) from None


def make_dirs(directory: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` (modes from the umask); with a lab group, share the new directories and
    those from the results root down to ``directory``."""
    directory = Path(directory)
    created = []
    probe = directory
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    directory.mkdir(parents=True, exist_ok=True)
    if lab_group() is not None:
        for path in [*reversed(created), *_inside_results_root(directory)]:
            share(path)
    return directory


def _inside_results_root(directory: Path) -> list[Path]:
    """``directory`` and its ancestors up to the results root, when it lies inside the root."""
    root = results_root().resolve()
    here = directory.resolve()
    if here != root and root not in here.parents:
        return [directory]
    chain = [here, *here.parents]
    return chain[: chain.index(root) + 1]


def _open_temp(directory: Path, name: str) -> tuple[int, Path]:
    """Create ``.<name>.<random>.tmp`` in ``directory`` with mode ``0o666 & ~umask``.

    (``tempfile.mkstemp`` would make it 0600 whatever the umask.)
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC  # as mkstemp
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {directory}")


def make_temp_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A new uniquely named directory in ``parent``, mode ``0o777 & ~umask`` (unlike mkdtemp)."""
    parent = make_dirs(parent)
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        share(path)
        return path
    raise FileExistsError(f"no free temporary directory name in {parent}")


# ---------------------------------------------------------------------------------------------
# writes
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path``; on clean exit fsync and rename it into place.

    The file gets mode ``0o666 & ~umask`` (and the lab group, see :func:`share`). On any error
    the temporary file is removed and ``path`` is left as it was. A full disk or quota raises
    ``OSError`` (ENOSPC / EDQUOT) naming ``path``, even when the writer (``torch.save``) turned
    the ``OSError`` into its own exception.
    """
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = _open_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, mode) as handle:
            _share_fd(handle.fileno(), path)
            yield handle  # type: ignore[misc]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = disk_full(exc)
        if full is not None and not (isinstance(exc, OSError) and exc.filename):
            raise OSError(full, os.strerror(full), str(path)) from exc
        raise
    _fsync_dir(path.parent)


def disk_full(exc: BaseException) -> int | None:
    """``errno.ENOSPC`` / ``errno.EDQUOT`` when ``exc`` or an exception it was raised from or
    while handling is a full disk or quota, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return current.errno
        current = current.__cause__ or current.__context__
    return None


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line (used for per-step logs; readers skip a torn last line)."""
    line = json.dumps(record, sort_keys=True, default=_json_default) + "\n"
    new = not os.path.exists(path)
    with open(path, "a", encoding="utf-8") as handle:
        if new:
            _share_fd(handle.fileno(), Path(path))
        handle.write(line)
        handle.flush()


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON-lines file, skipping a torn (partially written) final line."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch arrays and scalars
        return obj.tolist()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for content hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def content_hash(obj: Any, length: int = 16) -> str:
    """Short SHA-256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


def file_hash(path: str | os.PathLike[str], length: int = 16, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:length]
