"""The store on artifacts of a real (tiny) sweep, and the synthetic study checked against them.

``sweeps/tiny.yaml`` on one encoder runs to completion with the debug executor (every stage
kind, ~10 s on one free core); ``harness ingest`` loads it and the DuckDB views must hold exactly what the stages'
``result.json`` files say. The synthetic study (``tests/synthetic_study.py``) that the other
store and report tests use must write files with the same keys as that real sweep, so a format
change in the product breaks it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from synthetic_study import Runs, SyntheticStudy, write_study

from harness.artifacts import read_result
from harness.cli import main
from harness.io import read_jsonl
from harness.paths import stage_dir
from harness.store.db import open_readonly
from harness.store.ingest import ingest

REPO = Path(__file__).resolve().parents[1]
METRICS = ("lds", "cds", "srss", "rmsc")


def results(root: Path, stage: str) -> list[dict[str, Any]]:
    """The result records of every ``stage`` instance of the saved tiny plan."""
    plan = json.loads((root / "plans" / "tiny" / "plan.json").read_text())
    records = [
        read_result(stage_dir(root, s["stage"], s["key"]))
        for s in plan["stages"]
        if s["stage"] == stage
    ]
    assert records and all(r is not None and r["status"] == "done" for r in records), stage
    return records  # type: ignore[return-value]


# objects whose keys are values (names of metrics, steps, builder parameters), not a format
FREE = ("encoder_spec.params", "payload.metrics", "payload.skipped", "payload.checkpoints")


def same_format(mine: Any, theirs: Any, where: str) -> None:
    """``mine`` has the key structure of ``theirs``: the same keys in every object (recursively),
    lists compared by their first element; a null on either side is a value, not a format."""
    if mine is None or theirs is None or where.endswith(FREE):
        return
    if isinstance(theirs, dict):
        assert isinstance(mine, dict) and sorted(mine) == sorted(theirs), where
        for key, value in theirs.items():
            same_format(mine[key], value, f"{where}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(mine, list), where
        if mine and theirs:
            same_format(mine[0], theirs[0], f"{where}[0]")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sweep on one encoder (pixels), run to completion (debug executor), ingested."""
    root = tmp_path_factory.mktemp("real") / "results"
    argv = ["--results", str(root), "sweep", str(REPO / "encoders.yaml")]
    argv += ["--sweep", str(REPO / "sweeps" / "tiny.yaml"), "--encoders", "pixels"]
    assert main([*argv, "--executor", "debug"]) == 0
    assert ingest(root).skipped == []
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic study with one failed training run and one evaluation not run yet."""
    root = tmp_path_factory.mktemp("synthetic") / "results"
    study = SyntheticStudy(
        n_encoders=2,
        failed=((Runs(encoder="enc-01", method="irepa"), 50),),
        skip_evals=((Runs(encoder="enc-00", method="repa"), 100),),
    )
    write_study(root, study)
    return root


def test_v_study_holds_what_the_real_result_files_say(real: Path) -> None:
    spatial = {r["payload"]["encoder"]: r["payload"] for r in results(real, "spatial")}
    probe = {r["payload"]["encoder"]: r["payload"] for r in results(real, "probe")}
    evals = {(r["payload"]["run_id"], r["payload"]["step"]): r for r in results(real, "eval")}
    train = {r["payload"]["run_id"]: r["payload"] for r in results(real, "train")}
    with open_readonly(real) as con:
        relation = con.sql("SELECT * FROM v_study")
        rows = [dict(zip(relation.columns, r)) for r in relation.fetchall()]
        encoder_spatial = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT encoder, lds, cds, srss, rmsc, n_images, grid, random_weights "
                "FROM v_encoder_spatial"
            ).fetchall()
        }
        encoder_probe = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT encoder, top1, top5, n_train, grid, random_weights FROM v_encoder_probe"
            ).fetchall()
        }
        per_image = con.execute("SELECT count(*) FROM spatial_per_image").fetchone()[0]
        log_rows = con.execute("SELECT count(*) FROM train_log").fetchone()[0]
    assert set(encoder_spatial) == set(spatial) == {"pixels"}
    for name, payload in spatial.items():
        assert encoder_spatial[name] == (
            *(payload["metrics"][m]["mean"] for m in METRICS),
            payload["n_images"],
            json.dumps(payload["grid"], separators=(",", ":")),  # a JSON column
            payload["random_weights"],
        )
    assert set(encoder_probe) == set(probe)
    for name, payload in probe.items():
        assert encoder_probe[name] == (
            payload["top1"],
            payload["top5"],
            payload["n_train"],
            json.dumps(payload["token_grid"], separators=(",", ":")),
            payload["random_weights"],
        )
    assert per_image == sum(p["n_images"] for p in spatial.values())
    assert log_rows == sum(p["steps_done"] for p in train.values())  # tiny.yaml: log_every 1

    assert len(rows) == len(evals) == 3  # pixels x {repa, irepa} + none, one step each
    for row in rows:
        record = evals[(row["run_id"], row["step"])]
        payload, protocol = record["payload"], record["payload"]["protocol"]
        run = train[row["run_id"]]
        assert (row["method"], row["model"], row["seed"]) == (
            run["method"],
            run["model"],
            run["seed"],
        )
        assert row["sweep"] == "tiny" and row["train_status"] == "done"
        assert row["fid"] == payload["metrics"]["fid"]
        assert row["isc"] == payload["metrics"]["isc_mean"]
        assert row["kid"] == payload["metrics"]["kid_mean"]
        for column, field in [
            ("num_samples", "num_samples"),
            ("sampler", "sampler"),
            ("nfe", "nfe"),
            ("cfg_scale", "cfg_scale"),
            ("vae", "vae"),
            ("reference_key", "reference_key"),
            ("extractor", "extractor"),
            ("extractor_substitute", "extractor_substitute"),
            ("sampler_precision", "precision"),
            ("to_uint8", "to_uint8"),
            ("class_balanced", "class_balanced"),
        ]:
            assert row[column] == protocol[field], column
        assert row["random_weights"] is True  # tiny.yaml: random_weights: true
        if run["method"] == "none":
            assert row["encoder"] is None and row["lds"] is None and row["lp_top1"] is None
            continue
        assert row["encoder"] == run["encoder"]
        assert list(row["grid"]) == spatial[run["encoder"]]["grid"]
        assert [row[m] for m in METRICS] == [
            spatial[run["encoder"]]["metrics"][m]["mean"] for m in METRICS
        ]
        assert row["lp_top1"] == probe[run["encoder"]]["top1"]


def test_report_runs_on_the_real_sweep(real: Path) -> None:
    out = real / "report"
    assert main(["--results", str(real), "report", "--out", str(out), "--n-boot", "10"]) == 0
    assert (out / "report.md").is_file() and (out / "tables" / "points.csv").is_file()


def test_synthetic_study_writes_the_real_formats(real: Path, synthetic: Path) -> None:
    """Every file kind of the synthetic study has the keys the real sweep's files have."""
    for stage in ("fid_ref", "spatial", "probe", "train", "eval"):
        mine = [p for p in (synthetic / "stages" / stage).glob("*/result.json")]
        assert mine, stage
        theirs = results(real, stage)[0]
        for path in mine:
            record = json.loads(path.read_text())
            same_format(record, theirs, f"{stage} result.json")
    plan = json.loads((synthetic / "plans" / "synthetic" / "plan.json").read_text())
    real_plan = json.loads((real / "plans" / "tiny" / "plan.json").read_text())
    same_format({**plan, "stages": []}, {**real_plan, "stages": []}, "plan.json")

    def kind(item: dict[str, Any]) -> tuple[str, bool]:  # the baseline's labels have no encoder
        return item["stage"], "encoder" in item["labels"]

    by_kind = {kind(s): s for s in real_plan["stages"]}
    for item in plan["stages"]:
        same_format(item, by_kind[kind(item)], f"plan.json {item['label']}")
    jobs = read_jsonl(synthetic / "plans" / "synthetic" / "jobs.jsonl")
    real_jobs = read_jsonl(real / "plans" / "tiny" / "jobs.jsonl")
    assert {tuple(sorted(j)) for j in jobs} == {tuple(sorted(real_jobs[0]))}
    real_log = read_jsonl(next((real / "stages" / "train").glob("*/train_log.jsonl")))
    for path in (synthetic / "stages" / "train").glob("*/train_log.jsonl"):
        assert {tuple(sorted(r)) for r in read_jsonl(path)} == {tuple(sorted(real_log[0]))}
    real_csv = next((real / "stages" / "spatial").glob("*/per_image.csv")).read_text()
    for path in (synthetic / "stages" / "spatial").glob("*/per_image.csv"):
        assert path.read_text().splitlines()[0] == real_csv.splitlines()[0]
    (failed,) = (synthetic / "stages" / "train").glob("*/state.json")
    state = json.loads(failed.read_text())
    assert state["state"] == "failed" and "synthetic failure after step 50" in state["error"]
    assert not (failed.parent / "result.json").exists()  # a stage that raised writes none
