"""The DuckDB results store: ingest of every artifact kind, views, idempotence, rebuild, queries.

Real DuckDB files under a temporary results root; artifacts written with
``harness.artifacts.write_result`` (directly or through ``tests/synthetic_study.py``).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from scipy import stats
from synthetic_study import DATA, SyntheticStudy, protocol, write_study

from harness.artifacts import write_result
from harness.cli import main
from harness.io import append_jsonl, content_hash, write_json, write_text
from harness.paths import database_path, plan_dir, stage_dir
from harness.store.db import latest_version, migrations, open_readonly
from harness.store.ingest import ingest
from harness.store.published import PUBLISHED_CSV
from harness.store.query import run_query

V_STUDY_COLUMNS = [
    "sweep", "run_id", "encoder", "method", "model", "seed", "step", "train_status",
    "fid", "isc", "kid", "precision", "recall", "fd_dinov2", "class_accuracy",
    "class_accuracy_real", "num_samples", "sampler", "nfe", "cfg_scale", "guidance_low",
    "guidance_high", "vae", "reference_key", "extractor", "extractor_substitute", "protocol_key",
    "lp_top1", "lp_top5", "lds", "cds", "srss", "rmsc", "published_name",
    "grid", "random_weights", "sampler_precision", "to_uint8", "class_balanced",
    "encoder_weights_id", "encoder_weights_revision", "encoder_weights_sha256",
]  # fmt: skip
SMALL = SyntheticStudy(n_encoders=3, eval_steps=(50, 100), per_image=6)


def query(root: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with open_readonly(root) as con:
        return con.execute(sql, params or []).fetchall()


def dump(db: Path) -> dict[str, list[str]]:
    """Every table's rows, as sorted reprs (NaN-safe), for exact comparison."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [
            t
            for (t,) in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            ).fetchall()
        ]
        return {
            t: sorted(repr(r) for r in con.execute(f"SELECT * FROM {t}").fetchall()) for t in tables
        }
    finally:
        con.close()


def write_plan(root: Path, sweep: str, stages: list[dict[str, Any]]) -> None:
    write_json(
        plan_dir(root, sweep) / "plan.json",
        {"schema": 1, "sweep": sweep, "created_at": time.time(), "git_sha": None,
         "config": {}, "stages": stages},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# v_study over every stage type
# ---------------------------------------------------------------------------------------------
def test_every_stage_type_lands_in_v_study(results_root: Path) -> None:
    manifest = write_study(results_root, SMALL)
    report = ingest(results_root)

    assert report.skipped == []
    assert report.rows["stages"] == manifest.n_artifacts
    assert report.rows["runs"] == len(manifest.runs) == 7  # 3 encoders x 2 methods + none
    assert report.rows["evaluations"] == len(manifest.fid) == 14
    assert report.rows["train_log"] == manifest.train_log_rows
    assert report.rows["spatial_per_image"] == manifest.per_image_rows
    assert report.rows["fid_refs"] == 1 and report.rows["encoders"] == 3
    with open_readonly(results_root) as con:
        relation = con.sql("SELECT * FROM v_study")
        assert relation.columns == V_STUDY_COLUMNS
        study = [dict(zip(V_STUDY_COLUMNS, r)) for r in relation.fetchall()]
    assert len(study) == len(manifest.fid)  # one row per run x eval step
    assert {(r["run_id"], r["step"]) for r in study} == set(manifest.fid)
    for row in study:
        run = manifest.runs[row["run_id"]]
        assert row["fid"] == manifest.fid[(row["run_id"], row["step"])]
        assert (row["method"], row["model"], row["seed"]) == (
            run["method"],
            run["model"],
            run["seed"],
        )
        assert row["sweep"] == "synthetic" and row["train_status"] == "done"
        assert row["protocol_key"] == manifest.protocol_key
        assert (row["num_samples"], row["sampler"], row["nfe"], row["vae"]) == (
            64,
            "sde",
            25,
            "stabilityai/sd-vae-ft-mse",  # the sweep's train.vae: SD-VAE latents
        )
        assert row["extractor_substitute"] is True and row["isc"] == 2.0 and row["kid"] == 0.01
        if run["method"] == "none":
            assert row["encoder"] is None
            assert all(row[m] is None for m in ("lp_top1", "lds", "cds", "srss", "rmsc"))
            continue
        expected = manifest.encoder_metrics[run["encoder"]]
        assert row["encoder"] == run["encoder"]
        assert {m: row[m] for m in ("lds", "cds", "srss", "rmsc", "lp_top1")} == expected
        assert row["published_name"] == f"Synthetic-{int(run['encoder'][-2:])}"


def test_encoder_metrics_join_only_the_same_dataset(results_root: Path) -> None:
    manifest = write_study(results_root, SMALL)
    # a newer, larger measurement of enc-00 on another dataset must not reach v_study
    other = {**DATA, "seed": 1}
    config = {"encoder": "enc-00", "encoder_spec": {"name": "enc-00"}, "data": other}
    write_result(
        stage_dir(results_root, "spatial", "other-data"), stage="spatial", key="other-data",
        config=config,
        payload={"encoder": "enc-00", "dataset": other, "n_images": 10_000, "grid": [4, 4],
                 "random_weights": False, "params": {}, "metrics": {m: {"mean": 0.99, "std": 0, "n": 1}
                                           for m in ("lds", "cds", "srss", "rmsc")}},
    )  # fmt: skip
    ingest(results_root)
    lds = {
        v
        for (v,) in query(results_root, "SELECT DISTINCT lds FROM v_study WHERE encoder = 'enc-00'")
    }
    assert lds == {manifest.encoder_metrics["enc-00"]["lds"]}
    assert query(results_root, "SELECT count(*) FROM spatial_metrics WHERE encoder = 'enc-00'") == [
        (2,)
    ]


def test_v_correlations_match_scipy_with_ties(results_root: Path) -> None:
    study = SyntheticStudy(n_encoders=6, methods=("repa",), eval_steps=(100,), per_image=2)
    manifest = write_study(results_root, study)
    # give enc-01 a tie with enc-00's LDS through a larger measurement (v_study prefers it)
    tied = dict(manifest.encoder_metrics["enc-00"])
    write_result(
        stage_dir(results_root, "spatial", "tie"), stage="spatial", key="tie",
        config={"encoder": "enc-01", "encoder_spec": {"name": "enc-01"}, "data": DATA},
        payload={"encoder": "enc-01", "dataset": DATA, "n_images": 100, "grid": [4, 4],
                 "random_weights": False, "params": {},
                 "metrics": {m: {"mean": tied[m], "std": 0, "n": 100}
                                           for m in ("lds", "cds", "srss", "rmsc")}},
    )  # fmt: skip
    for name in ("enc-01",):
        manifest.encoder_metrics[name].update({m: tied[m] for m in ("lds", "cds", "srss", "rmsc")})
    ingest(results_root)

    rows = query(
        results_root,
        "SELECT metric, n, pearson_r, spearman_rho, protocol_key FROM v_correlations "
        "WHERE model = 'SiT-T/2' AND method = 'repa' AND step = 100",
    )
    assert {r[0] for r in rows} == {"lp_top1", "lds", "cds", "srss", "rmsc"}
    by_encoder = {run["encoder"]: manifest.fid[(rid, 100)]
                  for rid, run in manifest.runs.items() if run["method"] == "repa"}  # fmt: skip
    names = sorted(by_encoder)
    fid = [by_encoder[e] for e in names]
    for metric, n, pearson, spearman, protocol_key in rows:
        values = [manifest.encoder_metrics[e][metric] for e in names]
        assert n == 6 and protocol_key == manifest.protocol_key
        assert pearson == pytest.approx(stats.pearsonr(values, fid).statistic, abs=1e-9)
        assert spearman == pytest.approx(stats.spearmanr(values, fid).statistic, abs=1e-9)
    lds_values = [manifest.encoder_metrics[e]["lds"] for e in names]
    assert len(set(lds_values)) == 5  # the tie is really there


# ---------------------------------------------------------------------------------------------
# idempotence, resume, corrupt files, rebuild
# ---------------------------------------------------------------------------------------------
def test_reingest_changes_nothing(results_root: Path) -> None:
    write_study(results_root, SMALL)
    ingest(results_root)
    before = dump(database_path(results_root))
    again = ingest(results_root)
    assert again.mode == "noop" and sum(again.changed.values()) == 0
    assert dump(database_path(results_root)) == before
    # a rewritten file with the same bytes is read again and gives the same rows
    result = next((results_root / "stages" / "eval").iterdir()) / "result.json"
    result.write_bytes(result.read_bytes())
    touched = ingest(results_root)
    assert touched.mode == "inplace" and touched.changed == {"result": 1}
    after = dump(database_path(results_root))
    assert {t: r for t, r in after.items() if t != "ingested"} == {
        t: r for t, r in before.items() if t != "ingested"
    }


def test_resumed_training_log_has_no_duplicate_steps(results_root: Path) -> None:
    run_id, key = "run-resume", "train-resume"
    config = {
        "run": {"data": DATA, "train": {"steps": 100}},
        "run_id": run_id,
        "encoder_spec": None,
    }
    write_plan(results_root, "s", [{
        "key": key, "stage": "train", "label": "train resume", "needs": [], "est_gpu_hours": 1.0,
        "labels": {"encoder": "enc-00", "method": "repa", "model": "SiT-T/2", "seed": 0,
                   "run_id": run_id},
        "config": config,
    }])  # fmt: skip
    out = stage_dir(results_root, "train", key)
    out.mkdir(parents=True)
    now = time.time()
    write_json(out / "state.json", {"state": "running", "job_id": "7", "started_at": now - 60,
                                    "updated_at": now - 30})  # fmt: skip
    log = out / "train_log.jsonl"
    for step in range(10, 61, 10):  # first attempt: steps 10..60, then preempted
        append_jsonl(log, {"step": step, "loss": 1.0, "time": float(step)})
    ingest(results_root)
    assert query(results_root, "SELECT status, steps_done, steps_target FROM runs") == [
        ("running", 60, 100)
    ]
    assert query(results_root, "SELECT count(*) FROM train_log WHERE run_id = ?", [run_id]) == [
        (6,)
    ]

    for step in range(50, 101, 10):  # resumed from the step-40 checkpoint: 50, 60 logged again
        append_jsonl(log, {"step": step, "loss": 2.0, "time": 1000.0 + step})
        if step == 70:  # lines that are not a step row are ignored
            write_text(log, log.read_text(encoding="utf-8") + 'oops\n{"step": 75.5}\n{"loss": 3}\n')
    with open(log, "a", encoding="utf-8") as handle:
        handle.write('{"step": 110, "lo')  # torn final line: ignored
    write_result(out, stage="train", key=key, config=config,
                 payload={"run_id": run_id, "encoder": "enc-00", "method": "repa",
                          "model": "SiT-T/2", "seed": 0, "steps_target": 100, "steps_done": 100,
                          "final": {"loss": 2.0}, "diverged": None})  # fmt: skip
    ingest(results_root)
    steps = query(
        results_root, "SELECT step, loss FROM train_log WHERE run_id = ? ORDER BY step", [run_id]
    )
    assert [s for s, _ in steps] == list(range(10, 101, 10))  # every step exactly once
    assert dict(steps)[50] == dict(steps)[60] == 2.0 and dict(steps)[40] == 1.0
    assert query(results_root, "SELECT status, steps_done, final_loss FROM runs") == [
        ("done", 100, 2.0)
    ]
    before = dump(database_path(results_root))
    ingest(results_root)
    assert dump(database_path(results_root)) == before


def test_diverged_run_keeps_nan_loss(results_root: Path) -> None:
    out = stage_dir(results_root, "train", "train-nan")
    out.mkdir(parents=True)
    write_text(out / "train_log.jsonl", '{"step": 10, "loss": 0.5}\n{"step": 20, "loss": NaN}\n')
    write_result(out, stage="train", key="train-nan", config={}, status="diverged",
                 error="non-finite loss at step 20",
                 payload={"run_id": "r-nan", "method": "repa", "encoder": "enc-00",
                          "final": {"loss": float("nan")},
                          "diverged": {"step": 20, "reason": "nan"}})  # fmt: skip
    ingest(results_root)
    (loss,) = query(results_root, "SELECT loss FROM train_log WHERE step = 20")[0]
    assert math.isnan(loss)  # NaN, not NULL: the divergence stays visible
    status, error, diverged = query(results_root, "SELECT status, error, diverged FROM runs")[0]
    assert status == "diverged" and "non-finite" in error and json.loads(diverged)["step"] == 20


def test_corrupt_artifacts_are_skipped_and_reported(results_root: Path) -> None:
    manifest = write_study(results_root, SMALL)
    eval_dirs = sorted((results_root / "stages" / "eval").iterdir())
    truncated, wrong = eval_dirs[0] / "result.json", eval_dirs[1] / "result.json"
    good_bytes = truncated.read_bytes()
    truncated.write_bytes(good_bytes[: len(good_bytes) // 2])
    wrong.write_text(json.dumps({"schema": 99}), encoding="utf-8")
    per_image = next((results_root / "stages" / "spatial").iterdir()) / "per_image.csv"
    per_image.write_text("index,lds\n0,0.1\n", encoding="utf-8")
    train_log = next((results_root / "stages" / "train").iterdir()) / "train_log.jsonl"
    train_log.write_bytes(b'{"step": 10, "loss": \xff\xfe}\n')  # not UTF-8

    report = ingest(results_root)
    skipped = {Path(s["path"]).parent.name: s["error"] for s in report.skipped}
    assert set(skipped) == {
        eval_dirs[0].name,
        eval_dirs[1].name,
        per_image.parent.name,
        train_log.parent.name,
    }
    assert "not valid JSON" in skipped[eval_dirs[0].name]
    assert "schema" in skipped[eval_dirs[1].name]
    assert "lacks columns" in skipped[per_image.parent.name]
    assert "unreadable" in skipped[train_log.parent.name]
    assert report.rows["evaluations"] == len(manifest.fid) - 2  # everything else is in
    assert report.rows["spatial_per_image"] == manifest.per_image_rows - SMALL.per_image
    assert report.rows["train_log"] == manifest.train_log_rows - 10
    assert ingest(results_root).skipped == report.skipped  # still listed while unfixed

    truncated.write_bytes(good_bytes)
    fixed = ingest(results_root)
    assert fixed.rows["evaluations"] == len(manifest.fid) - 1
    assert {Path(s["path"]).parent.name for s in fixed.skipped} == {
        eval_dirs[1].name,
        per_image.parent.name,
        train_log.parent.name,
    }


def test_newest_artifact_wins_and_deleting_it_restores_the_older(results_root: Path) -> None:
    payload = {"run_id": "r1", "step": 100, "protocol": protocol(), "metrics": {"fid": 30.0}}
    write_result(stage_dir(results_root, "eval", "old"), stage="eval", key="old", config={},
                 payload=payload)  # fmt: skip
    write_result(stage_dir(results_root, "eval", "new"), stage="eval", key="new", config={},
                 payload={**payload, "metrics": {"fid": 20.0}})  # fmt: skip
    ingest(results_root)
    assert query(results_root, "SELECT stage_key, fid FROM evaluations") == [("new", 20.0)]
    shutil.rmtree(stage_dir(results_root, "eval", "new"))
    report = ingest(results_root)
    assert report.vanished == 1
    assert query(results_root, "SELECT stage_key, fid FROM evaluations") == [("old", 30.0)]
    assert query(results_root, "SELECT count(*) FROM stages WHERE key = 'new'") == [(0,)]


def test_rebuild_reproduces_identical_contents(results_root: Path) -> None:
    write_study(results_root, SMALL)
    ingest(results_root)
    # grow the study across several incremental ingests: new artifacts, a rewritten plan
    write_study(results_root, SyntheticStudy(sweep="second", n_encoders=2, seeds=(1,), seed=1))
    ingest(results_root)
    running = stage_dir(results_root, "train", "still-running")
    running.mkdir(parents=True)
    write_json(running / "state.json", {"state": "running", "job_id": "99", "updated_at": 5.0})
    append_jsonl(running / "train_log.jsonl", {"step": 10, "loss": 0.3})
    shutil.rmtree(next((results_root / "stages" / "probe").iterdir()))
    incremental = ingest(results_root)
    assert incremental.mode == "inplace" and incremental.vanished == 1  # the probe result.json
    expected = dump(database_path(results_root))

    database_path(results_root).unlink()
    rebuilt = ingest(results_root, rebuild=True)
    assert rebuilt.mode == "rebuild" and rebuilt.rows == incremental.rows
    assert dump(database_path(results_root)) == expected
    # --rebuild over an existing database gives the same, too
    ingest(results_root, rebuild=True)
    assert dump(database_path(results_root)) == expected


# ---------------------------------------------------------------------------------------------
# stages: plan -> submitted -> running -> failed -> resubmitted -> done
# ---------------------------------------------------------------------------------------------
def test_stage_state_follows_plan_jobs_state_and_result(results_root: Path) -> None:
    key, now = "eval-key", time.time()
    write_plan(results_root, "s", [{"key": key, "stage": "eval", "label": "eval r1 @100",
                                    "needs": ["t1"], "labels": {"run_id": "r1", "step": 100},
                                    "est_gpu_hours": 0.5, "config": {}}])  # fmt: skip
    jobs, out = plan_dir(results_root, "s") / "jobs.jsonl", stage_dir(results_root, "eval", key)

    def state() -> tuple[Any, ...]:
        ingest(results_root)
        return query(
            results_root, "SELECT state, job_id, attempt, error, log_tail, sweeps FROM stages"
        )[0]

    assert state() == ("planned", None, None, None, None, ["s"])
    append_jsonl(
        jobs,
        {"key": key, "job_id": "11", "executor": "slurm", "submitted_at": now - 400, "attempt": 0},
    )
    assert state()[:3] == ("submitted", "11", 0)
    write_json(
        out / "state.json",
        {"state": "running", "job_id": "11", "started_at": now - 300, "updated_at": now - 300},
    )
    assert state()[:3] == ("running", "11", 0)
    write_json(out / "state.json", {"state": "failed", "job_id": "11", "started_at": now - 300,
                                    "updated_at": now - 200, "error": "CUDA OOM",
                                    "log_tail": ["line 1", "line 2"]})  # fmt: skip
    assert state()[:5] == ("failed", "11", 0, "CUDA OOM", "line 1\nline 2")
    append_jsonl(
        jobs,
        {"key": key, "job_id": "12", "executor": "slurm", "submitted_at": now - 100, "attempt": 1},
    )
    assert state()[:3] == ("submitted", "12", 1)
    write_result(out, stage="eval", key=key, config={},
                 payload={"run_id": "r1", "step": 100, "protocol": protocol(), "metrics": {"fid": 9.0}})  # fmt: skip
    assert state() == ("done", "12", 1, None, None, ["s"])


# ---------------------------------------------------------------------------------------------
# schema, published, queries
# ---------------------------------------------------------------------------------------------
def test_schema_version_recorded_and_newer_database_refused(
    results_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest(results_root)
    rows = query(results_root, "SELECT version, name, sha256 FROM schema_version ORDER BY version")
    assert rows == [(m.version, m.name, m.sha256) for m in migrations()]
    assert rows[-1][0] == latest_version()
    con = duckdb.connect(str(database_path(results_root)))
    con.execute("INSERT INTO schema_version VALUES (999, '999_future.sql', 'x')")
    con.close()
    assert main(["--results", str(results_root), "query", "SELECT 1"]) == 2
    assert "newer than this harness" in capsys.readouterr().err


def test_edited_schema_is_rebuilt_by_ingest(
    results_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_study(results_root, SMALL)
    ingest(results_root)
    expected = dump(database_path(results_root))
    con = duckdb.connect(str(database_path(results_root)))  # as if 001 had been edited since
    con.execute("UPDATE schema_version SET sha256 = 'edited' WHERE version = 1")
    con.execute("DROP VIEW v_study")
    con.close()
    assert main(["--results", str(results_root), "query", "SELECT 1"]) == 2
    assert "earlier edit of schema" in capsys.readouterr().err
    assert ingest(results_root).mode == "rebuild"
    assert dump(database_path(results_root)) == expected
    assert query(results_root, "SELECT count(*) FROM v_study") == [(len(SMALL.eval_steps) * 7,)]


def test_published_results_loaded(results_root: Path) -> None:
    ingest(results_root)
    n_lines = len(PUBLISHED_CSV.read_text(encoding="utf-8").strip().splitlines()) - 1
    assert query(results_root, "SELECT count(*) FROM published") == [(n_lines,)]
    assert query(
        results_root,
        "SELECT value, train_iters, cfg FROM published WHERE encoder = 'PE-Core-G' AND metric = 'gFID' "
        "AND model = 'SiT-XL/2' AND method = 'repa' AND train_iters = 100000",
    )[0] == (32.3, 100000, 1.0)
    assert query(
        results_root,
        "SELECT train_iters FROM published WHERE train_steps = '1000000 (200 epochs)' LIMIT 1",
    ) == [(1000000,)]
    assert (
        query(
            results_root,
            "SELECT count(*) FROM published WHERE train_steps = '800 epochs' AND train_iters IS NULL",
        )[0][0]
        > 0
    )


def test_query_command_is_read_only_and_explains_errors(
    results_root: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["--results", str(results_root), "query"]
    assert main([*base, "SELECT 1"]) == 2
    assert "harness ingest" in capsys.readouterr().err  # no database yet

    write_study(results_root, SMALL)
    ingest(results_root)
    capsys.readouterr()
    assert main([*base, "DELETE FROM runs"]) == 2
    assert "read-only" in capsys.readouterr().err
    assert query(results_root, "SELECT count(*) FROM runs") == [(7,)]
    assert main([*base, "SELECT * FROM v_stdy"]) == 2
    err = capsys.readouterr().err
    assert "v_study" in err and "v_correlations" in err and "derive_" not in err

    assert main([*base, "SELECT count(*) AS n FROM v_study", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 14}]
    sql_file = tmp_path / "q.sql"
    sql_file.write_text(
        "SELECT run_id, step, fid FROM v_study ORDER BY run_id, step", encoding="utf-8"
    )
    out_file = tmp_path / "out.csv"
    assert main([*base, "--file", str(sql_file), "--format", "csv", "-o", str(out_file)]) == 0
    assert out_file.read_text(encoding="utf-8").splitlines()[0] == "run_id,step,fid"
    assert len(out_file.read_text(encoding="utf-8").splitlines()) == 15
    table = run_query(
        results_root, "SELECT labels FROM stages WHERE stage = 'eval' LIMIT 1", "json"
    )
    assert isinstance(json.loads(table)[0]["labels"], dict)  # JSON columns come out as objects


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("COPY (SELECT 1) TO '{out}'", "COPY"),
        ("SELECT 1; COPY (SELECT 1) TO '{out}' (FORMAT json)", "COPY"),
        ("EXPORT DATABASE '{out}'", "EXPORT"),
        ("ATTACH '{out}' AS other", "ATTACH"),
        ("INSTALL httpfs", "INSTALL"),
        ("LOAD json", "LOAD"),
        ("SET threads = 1", "SET"),
        ("PRAGMA enable_profiling", "PRAGMA"),
        ("SET profiling_output = '{out}'", "SET"),
        ("PREPARE p AS COPY (SELECT 1) TO '{out}'", "COPY"),
        ("CHECKPOINT", "CALL"),
        ("CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')", "SECRET"),
    ],
)
def test_query_refuses_statements_that_write_files_or_change_state(
    results_root: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, sql: str, reason: str
) -> None:
    write_study(results_root, SMALL)
    ingest(results_root)
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["--results", str(results_root), "query", sql.format(out=out)]) == 2
    err = capsys.readouterr().err
    assert "read-only: refused" in err and reason in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    for allowed in ("SHOW TABLES", "PRAGMA table_info('runs')", "DESCRIBE runs",
                    "PREPARE p AS SELECT 1; EXECUTE p"):  # fmt: skip
        assert main(["--results", str(results_root), "query", allowed]) == 0, allowed


def test_store_and_cli_import_without_heavy_libraries() -> None:
    code = (
        "import sys, harness.store.ingest, harness.store.query, harness.cli.ingest, "
        "harness.cli.query; assert not {'torch', 'duckdb', 'pandas'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_protocol_key_hashes_every_protocol_field() -> None:
    from harness.store.sources import variant_key

    base = protocol()
    keys = {variant_key("eval", {"protocol": base})}
    for field, value in [("cfg_scale", 1.5), ("nfe", 250), ("vae", "ema"), ("num_samples", 50_000),
                         ("reference_key", "adm"), ("extractor_substitute", False)]:  # fmt: skip
        keys.add(variant_key("eval", {"protocol": {**base, field: value}}))
    assert len(keys) == 7
    assert variant_key("eval", {"protocol": dict(reversed(base.items()))}) == content_hash(base)
