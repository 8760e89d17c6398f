"""Encoder measurements at two token grids in one database: each run joins the spatial and probe
results at its own grid (real plan, real spatial / probe stage runs, real ingest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.config.encoders import load_catalogue
from harness.config.model import ModelConfig
from harness.config.sweep import load_sweep
from harness.launch.runner import StageJob, write_spec
from harness.paths import stage_dir
from harness.plan import Plan, build_plan, save_plan
from harness.stages import STAGES
from harness.store.db import open_readonly
from harness.store.ingest import ingest

REPO = Path(__file__).resolve().parents[1]
# tiny.yaml on 32-px images: SiT-T/2 has a 16x16 token grid, SiT-T/4 an 8x8 one
OVERRIDES = ("encoders=[pixels]", "models=[SiT-T/2, SiT-T/4]", "methods=[repa]")


def two_grid_plan() -> Plan:
    catalogue = load_catalogue(REPO / "encoders.yaml")
    return build_plan(catalogue, load_sweep(REPO / "sweeps" / "tiny.yaml", OVERRIDES))


def run_stage(root: Path, planned: Any) -> dict[str, Any]:
    """Run one planned instance as its job does; return its result.json."""
    write_spec(
        root,
        planned.stage,
        planned.key,
        config=planned.config,
        needs=[],
        labels=planned.labels,
        version=STAGES.get(planned.stage).version,
    )
    assert StageJob(root, planned.stage, planned.key)() == "done"
    path = stage_dir(root, planned.stage, planned.key) / "result.json"
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def two_grids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("results")
    plan = two_grid_plan()
    save_plan(plan, root)
    measured: dict[str, dict[tuple[int, ...], dict[str, Any]]] = {"spatial": {}, "probe": {}}
    for planned in plan.stages:
        if planned.stage in measured:
            record = run_stage(root, planned)
            measured[planned.stage][tuple(planned.config["grid"])] = record["payload"]
    runs = {
        s.labels["run_id"]: ModelConfig.model_validate(s.config["run"]["model"]).grid
        for s in plan.stages
        if s.stage == "train" and s.labels.get("encoder") == "pixels"
    }
    assert ingest(root).skipped == []
    return {"root": root, "measured": measured, "runs": runs}


def test_plan_measures_the_encoder_at_both_grids() -> None:
    plan = two_grid_plan()
    grids = {s.stage: set() for s in plan.stages}
    for s in plan.stages:
        if s.stage in ("spatial", "probe"):
            grids[s.stage].add(tuple(s.config["grid"]))
    assert grids["spatial"] == grids["probe"] == {(16, 16), (8, 8)}


def test_each_run_joins_the_encoder_metrics_at_its_own_grid(two_grids: dict[str, Any]) -> None:
    spatial, probe = two_grids["measured"]["spatial"], two_grids["measured"]["probe"]
    lds = {grid: payload["metrics"]["lds"]["mean"] for grid, payload in spatial.items()}
    assert len(set(lds.values())) == 2  # the two grids measure different LDS: the join matters
    with open_readonly(two_grids["root"]) as con:
        rows = con.execute(
            "SELECT run_id, grid, lds, cds, srss, rmsc, lp_top1, random_weights FROM v_study "
            "WHERE encoder = 'pixels'"
        ).fetchall()
        counts = con.execute(
            "SELECT (SELECT count(*) FROM spatial_metrics), (SELECT count(*) FROM probes)"
        ).fetchone()
    assert counts == (2, 2)  # neither grid's measurement replaces the other's
    assert len(rows) == 2 and {r[0] for r in rows} == set(two_grids["runs"])
    for run_id, grid, *metrics, top1, random_weights in rows:
        expected_grid = two_grids["runs"][run_id]
        assert tuple(grid) == expected_grid
        payload = spatial[expected_grid]
        assert metrics == [payload["metrics"][m]["mean"] for m in ("lds", "cds", "srss", "rmsc")]
        assert top1 == probe[expected_grid]["top1"]
        assert random_weights is True  # tiny.yaml: random_weights: true, as its measurements
