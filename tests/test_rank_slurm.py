"""``harness rank`` on the real single-node SLURM cluster (``scripts/slurm-local.sh``).

The FIDs come from a synthetic sweep in the database (five encoders, REPA); the encoder
metrics are measured for real: the ``spatial`` and ``probe`` stages of the tiny sweep for those
five encoders and one candidate run as ``sbatch`` jobs, and a second identical run submits
nothing and reuses every measurement.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from synthetic_study import SyntheticStudy, write_catalogue, write_study

from harness.artifacts import read_result
from harness.cli import main
from harness.io import read_jsonl
from harness.paths import stage_dir
from harness.store.ingest import ingest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "sweeps" / "tiny.yaml")


def test_rank_measures_through_slurm_and_a_second_run_reuses_every_measurement(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_study(root, SyntheticStudy(n_encoders=5, methods=("repa",)))
    ingest(root)
    catalogue = write_catalogue(tmp_path / "catalogue.yaml", 6)
    argv = ["--results", str(root), "rank", str(catalogue), "--encoders", "enc-05"]
    argv += ["--against", "synthetic", "--sweep", TINY, "--executor", "slurm"]

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 reused, 12 run with the slurm executor" in out
    jobs_path = root / "plans" / "rank-tiny" / "jobs.jsonl"
    jobs = read_jsonl(jobs_path)
    plan = json.loads((root / "plans" / "rank-tiny" / "plan.json").read_text())
    assert {s["stage"] for s in plan["stages"]} == {"spatial", "probe"}
    assert sorted(j["key"] for j in jobs) == sorted(s["key"] for s in plan["stages"])
    assert len(jobs) == 12 and {j["executor"] for j in jobs} == {"slurm"}
    finished = {}
    for stage in plan["stages"]:
        result = read_result(stage_dir(root, stage["stage"], stage["key"]))
        assert result is not None and result["status"] == "done", stage["label"]
        assert result["provenance"]["slurm_job_id"], stage["label"]
        finished[stage["key"]] = result["provenance"]["finished_at"]

    assert main(argv) == 0  # the same command again: every measurement is reused
    out = capsys.readouterr().out
    assert "12 reused, 0 run" in out
    assert read_jsonl(jobs_path) == jobs  # nothing submitted
    for stage in plan["stages"]:
        result = read_result(stage_dir(root, stage["stage"], stage["key"]))
        assert result["provenance"]["finished_at"] == finished[stage["key"]]

    with duckdb.connect(str(root / "harness.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT DISTINCT encoder FROM predictions WHERE role = 'candidate'"
        ).fetchall()
        trained = con.execute(
            "SELECT count(DISTINCT encoder) FROM predictions WHERE role = 'held_out'"
        ).fetchall()
    assert rows == [("enc-05",)] and trained == [(5,)]
