"""No lost results: concurrent artifact writers, racing ingests and an analyst's open connection.

Every other process here is real: an analyst process holding ``open_readonly``, ``harness
ingest`` processes, and 32 writer threads producing stage artifacts at once. Synchronisation is
through pipes (the reader says "ready"; an ingest logs ``store.busy`` when it starts waiting),
never through sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from synthetic_study import DATA, SyntheticStudy, protocol, write_study

from harness.artifacts import write_result
from harness.io import write_text
from harness.paths import database_path, stage_dir
from harness.store.db import ingest_lock, open_readonly
from harness.store.ingest import ingest

pytestmark = pytest.mark.timeout(240)

# The analyst: opens the database read-only, answers one SQL count per stdin line, "close" ends.
READER = """
import sys
from harness.store.db import open_readonly
with open_readonly(sys.argv[1]) as con:
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "close":
            break
        print(con.execute(line).fetchall()[0][0], flush=True)
print("closed", flush=True)
"""
STUDY = SyntheticStudy(n_encoders=2, eval_steps=(100,), per_image=2)
N_WRITERS = 32


def _env() -> dict[str, str]:
    return {**os.environ, "HARNESS_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


class Analyst:
    """A separate process holding a read-only connection until told to close."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER, str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert self._line() == "ready"

    def count(self, table: str) -> int:
        self._send(f"SELECT count(*) FROM {table}")
        return int(self._line())

    def close(self) -> None:
        if self.proc.poll() is None:
            self._send("close")
            assert self._line() == "closed"
            self.proc.wait(timeout=60)

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()


@pytest.fixture
def analyst(results_root: Path) -> Iterator[Analyst]:
    write_study(results_root, STUDY)
    ingest(results_root)
    reader = Analyst(results_root)
    try:
        yield reader
    finally:
        reader.close()


def start_ingest(root: Path, wait: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "--results", str(root), "ingest", "--wait", str(wait)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def busy_or_exit(proc: subprocess.Popen[str]) -> list[str]:
    """Read an ingest's log until it reports waiting (store.busy) or exits; return the lines."""
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "store.busy" in line:
            break
    return lines


def write_new_artifact(root: Path, index: int, run_ids: list[str]) -> str:
    """Artifact ``index`` of the burst: an eval of an existing run, or a new encoder's spatial."""
    key = f"burst-{index:02d}"
    if index % 8 == 7:  # 4 of 32: spatial measurements with a per-image table
        out = stage_dir(root, "spatial", key)
        write_text(
            out / "per_image.csv", "index,lds,cds,srss,rmsc\n0,1,2,3,4\n1,1,2,3,4\n2,1,2,3,nan\n"
        )
        payload = {"encoder": f"late-{index}", "dataset": DATA, "n_images": 3, "grid": [4, 4],
                   "params": {}, "metrics": {m: {"mean": 0.5, "std": 0.1, "n": 3}
                                             for m in ("lds", "cds", "srss", "rmsc")}}  # fmt: skip
        write_result(out, stage="spatial", key=key, config={"data": DATA}, payload=payload)
        return key
    payload = {"run_id": run_ids[index % len(run_ids)], "step": 1000 + index,
               "protocol": protocol(), "metrics": {"fid": float(index)}}  # fmt: skip
    write_result(stage_dir(root, "eval", key), stage="eval", key=key, config={}, payload=payload)
    return key


def test_no_lost_results_with_reader_racing_ingests_and_writers(
    results_root: Path, analyst: Analyst
) -> None:
    before = {t: analyst.count(t) for t in ("evaluations", "spatial_per_image", "results")}
    run_ids = [r for (r,) in _rows(results_root, "SELECT run_id FROM runs ORDER BY run_id")]
    barrier = threading.Barrier(N_WRITERS)

    def writer(index: int) -> str:
        barrier.wait()  # all 32 artifacts appear at once
        return write_new_artifact(results_root, index, run_ids)

    with ThreadPoolExecutor(N_WRITERS) as pool:
        burst = pool.map(writer, range(N_WRITERS))
        racers = [start_ingest(results_root, wait=200) for _ in range(2)]
        keys = list(burst)
    logs = [busy_or_exit(p) for p in racers]
    # while the analyst holds the file, no ingest can have changed what it reads
    assert {t: analyst.count(t) for t in before} == before
    db_waits = [
        line for log in logs for line in log if "harness.duckdb " in line or "held_by=PID" in line
    ]
    assert db_waits and all(f"PID {analyst.proc.pid}" in line for line in db_waits)
    analyst.close()
    for proc, log in zip(racers, logs):
        _, err = proc.communicate(timeout=200)
        assert proc.returncode == 0, "".join(log) + err

    final = ingest(results_root)
    assert final.skipped == []
    on_disk = {p.parent.name for p in (results_root / "stages").glob("*/*/result.json")}
    in_db = [k for (k,) in _rows(results_root, "SELECT stage_key FROM results")]
    assert sorted(in_db) == sorted(on_disk) and set(keys) <= on_disk  # each exactly once
    assert final.rows["evaluations"] == before["evaluations"] + 28
    assert final.rows["spatial_per_image"] == before["spatial_per_image"] + 4 * 3
    assert _rows(
        results_root, "SELECT count(*) FROM stages WHERE key LIKE 'burst-%' AND state = 'done'"
    ) == [(32,)]
    for table, key in [("evaluations", "run_id, step, protocol_key"), ("train_log", "run_id, step"),
                       ("spatial_per_image", "encoder, data_key, params_key, image_index")]:  # fmt: skip
        total, distinct = _rows(
            results_root, f"SELECT count(*), count(DISTINCT ({key})) FROM {table}"
        )[0]
        assert total == distinct


def test_reader_blocks_inplace_ingest_with_a_clear_error(
    results_root: Path, analyst: Analyst
) -> None:
    write_new_artifact(
        results_root, 0, [r for (r,) in _rows(results_root, "SELECT run_id FROM runs")]
    )
    proc = start_ingest(results_root, wait=0.3)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "busy" in err and f"PID {analyst.proc.pid}" in err and "HARNESS_DB_MODE=snapshot" in err
    evaluations = analyst.count("evaluations")
    analyst.close()
    assert ingest(results_root).rows["evaluations"] == evaluations + 1


def test_snapshot_mode_publishes_without_waiting_for_readers(
    results_root: Path, analyst: Analyst, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_DB_MODE", "snapshot")
    evaluations = analyst.count("evaluations")
    write_new_artifact(
        results_root, 0, [r for (r,) in _rows(results_root, "SELECT run_id FROM runs")]
    )
    report = ingest(results_root, wait=0)
    assert report.mode == "snapshot" and report.rows["evaluations"] == evaluations + 1
    assert analyst.count("evaluations") == evaluations  # the open connection keeps its snapshot
    assert _rows(results_root, "SELECT count(*) FROM evaluations") == [(evaluations + 1,)]
    assert not database_path(results_root).with_name("harness.duckdb.wal").exists()


def test_concurrent_ingest_waits_for_the_lock_then_says_who_holds_it(results_root: Path) -> None:
    with ingest_lock(database_path(results_root), wait=0):
        proc = start_ingest(results_root, wait=0.3)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert f"harness ingest (PID {os.getpid()}" in err
    proc = start_ingest(results_root, wait=5)  # free again
    assert proc.wait(timeout=120) == 0


def _rows(root: Path, sql: str) -> list[tuple[object, ...]]:
    with open_readonly(root) as con:
        return con.execute(sql).fetchall()
