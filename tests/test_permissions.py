"""File modes on a shared cluster: everything the harness writes follows the umask (0644 / 0755
under umask 022, 0664 / 0775 under 002), and ``--group`` / ``$HARNESS_GROUP`` gives files and
directories to a lab group, group-readable, with setgid directories.

Real writes: atomic_write, write_json, append_jsonl, a training checkpoint, a DuckDB ingest (a
fresh database, an in-place update and a published snapshot), ``harness ingest`` and a report.
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from synthetic_study import SyntheticStudy, write_study

from harness.cli import main
from harness.io import ENV_GROUP, append_jsonl, atomic_write, make_temp_dir, write_json
from harness.paths import database_path

TINY = SyntheticStudy(n_encoders=1, methods=("repa",), eval_steps=(50,), per_image=2)
MODES = {0o022: (0o644, 0o755), 0o002: (0o664, 0o775)}  # umask -> (file, directory)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask() -> Iterator[object]:
    """``umask(value)`` sets the process umask for the test; the old one is restored after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def lab_group_name() -> str:
    """A group the current user may give files to: another one than the primary group when
    there is one (root may use any), else the primary group."""
    primary = os.getegid()
    candidates = [g for g in os.getgroups() if g != primary]
    if not candidates and os.geteuid() == 0:
        candidates = [g.gr_gid for g in grp.getgrall() if g.gr_gid != primary]
    gid = candidates[0] if candidates else primary
    return grp.getgrgid(gid).gr_name


def assert_tree(
    root: Path, file_mode: int, dir_mode: int, gid: int | None = None, *, inclusive: bool = True
) -> int:
    """Every file and directory under ``root`` (and ``root``) has these modes (and group)."""
    count = 0
    for path in [root, *root.rglob("*")][0 if inclusive else 1 :]:
        expected = dir_mode if path.is_dir() else file_mode
        assert mode(path) == expected, f"{path}: {oct(mode(path))} != {oct(expected)}"
        if gid is not None:
            assert os.stat(path).st_gid == gid, f"{path}: group {os.stat(path).st_gid} != {gid}"
        count += 1
    return count


@pytest.mark.parametrize("mask", sorted(MODES))
def test_atomic_writes_follow_the_umask(mask: int, umask, tmp_path: Path) -> None:
    file_mode, dir_mode = MODES[mask]
    umask(mask)
    out = tmp_path / "out"
    with atomic_write(out / "a" / "blob.bin") as handle:
        handle.write(b"x")
    write_json(out / "a" / "b" / "result.json", {"ok": True})
    write_json(out / "a" / "b" / "result.json", {"ok": False})  # replacing keeps the mode
    append_jsonl(out / "a" / "log.jsonl", {"step": 1})
    make_temp_dir(out, ".staging.")
    assert assert_tree(out, file_mode, dir_mode) == 7


@pytest.mark.parametrize("mask", sorted(MODES))
def test_checkpoint_files_follow_the_umask(mask: int, umask, tmp_path: Path) -> None:
    import torch

    from harness.train.checkpoint import checkpoint_path, save_checkpoint

    file_mode, dir_mode = MODES[mask]
    umask(mask)
    run = tmp_path / "run"
    save_checkpoint(
        checkpoint_path(run, 1), {"step": 1, "model": {"w": torch.ones(2)}, "ema": {}, "run": "{}"}
    )
    assert assert_tree(run, file_mode, dir_mode) == 3


@pytest.mark.parametrize("mask", sorted(MODES))
def test_database_follows_the_umask(
    mask: int, umask, results_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.store.ingest import ingest

    file_mode, dir_mode = MODES[mask]
    umask(mask)
    write_study(results_root, TINY)
    db = database_path(results_root)
    assert ingest(results_root).mode == "created"
    for path in (db, db.with_name(db.name + ".lock"), db.with_suffix(".ingest.json")):
        assert mode(path) == file_mode, path
    write_json(results_root / "stages" / "extra" / "x" / "result.json", {})  # something new
    assert ingest(results_root).mode == "inplace"
    assert mode(db) == file_mode
    monkeypatch.setenv("HARNESS_DB_MODE", "snapshot")
    assert ingest(results_root, rebuild=True).mode == "rebuild"
    assert mode(db) == file_mode
    # every artifact too (the results root itself was made by the fixture)
    assert assert_tree(results_root, file_mode, dir_mode, inclusive=False) > 10


def test_snapshot_of_the_code_follows_the_umask(umask, tmp_path: Path) -> None:
    from harness.launch.snapshot import take_snapshot

    umask(0o022)
    snapshot = take_snapshot(tmp_path)
    assert mode(snapshot.path) == 0o755  # was 0700: tempfile.mkdtemp, renamed into place
    assert mode(snapshot.path / "harness" / "io.py") & 0o644 == 0o644


def test_group_makes_database_and_artifacts_group_readable(
    umask, results_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = lab_group_name()
    gid = grp.getgrnam(name).gr_gid
    umask(0o077)  # the strictest umask: the group still gets read access
    os.environ[ENV_GROUP] = name
    try:
        write_study(results_root, TINY)
    finally:
        del os.environ[ENV_GROUP]
    assert main(["--group", name, "ingest", "--results", str(results_root)]) == 0
    assert ENV_GROUP not in os.environ  # scoped to the command
    capsys.readouterr()
    # files 0640, directories 2750 (setgid: what others create inside inherits the group)
    assert assert_tree(results_root, 0o640, 0o2750, gid, inclusive=False) > 10
    assert mode(database_path(results_root)) == 0o640
    # the results root (made by the fixture, 0755) joins the group and gains setgid
    assert os.stat(results_root).st_gid == gid and mode(results_root) == 0o2755


def test_group_makes_the_report_group_readable(
    umask, results_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.report.build import build_report
    from harness.report.options import ReportOptions
    from harness.store.ingest import ingest

    write_study(results_root, TINY)
    ingest(results_root)
    name = lab_group_name()
    gid = grp.getgrnam(name).gr_gid
    umask(0o002)
    monkeypatch.setenv(ENV_GROUP, name)
    out = results_root / "report"
    build_report(results_root, ReportOptions(n_boot=100, dpi=50), out)
    assert assert_tree(out, 0o664, 0o2775, gid) >= 3
    assert os.stat(results_root).st_gid == gid  # the results root itself is shared


def test_unknown_group_is_a_user_error(
    results_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--group", "no-such-group-zz9", "ingest"]) == 2
    err = capsys.readouterr().err
    assert "no group named 'no-such-group-zz9'" in err and "your groups:" in err
    assert not database_path(results_root).exists()  # checked before anything is written
