"""`harness report`'s first section, noise floor and sample grids, on studies with a known answer.

Each database is built the real way (synthetic artifacts from ``synthetic_study``,
loaded by :func:`harness.store.ingest.ingest`); where a test needs exact generation metrics it
rewrites the eval artifacts' ``result.json`` metrics before the ingest, and it writes sample
shards where the eval stage writes them (``stages/eval/<key>/samples/*.npz``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from synthetic_study import FidModel, Manifest, SyntheticStudy, write_study

from harness.report.build import build_report
from harness.report.data import read_table
from harness.report.options import ReportOptions
from harness.report.schema import READ_CONTRACT
from harness.store.ingest import ingest

FAST = {"n_boot": 200, "dpi": 50}
Metrics = Callable[[dict[str, Any], int], dict[str, float]]  # (run labels, step) -> metrics


def _study(
    root: Path,
    metrics: Metrics | None = None,
    drop: Callable[[dict[str, Any]], bool] | None = None,
    **knobs: Any,
) -> Manifest:
    """Write a synthetic study; optionally replace each evaluation's metrics and delete the
    evaluations of the runs ``drop`` selects (by labels); ingest it."""
    knobs.setdefault("log_every", 10)
    knobs.setdefault("per_image", 2)
    manifest = write_study(root, SyntheticStudy(**knobs))
    for result in (root / "stages" / "eval").glob("*/result.json"):
        doc = json.loads(result.read_text())
        labels = manifest.runs[doc["payload"]["run_id"]]
        if drop is not None and drop(labels):
            shutil.rmtree(result.parent)
            continue
        if metrics is not None:
            doc["payload"]["metrics"].update(metrics(labels, doc["payload"]["step"]))
            result.write_text(json.dumps(doc))
    ingest(root)
    return manifest


def _report(root: Path, **options: Any) -> tuple[Any, str, list[str]]:
    files = build_report(root, ReportOptions(**{**FAST, **options}), root / "report")
    md = (root / "report" / "report.md").read_text(encoding="utf-8")
    summary = json.loads((root / "report" / "summary.json").read_text())
    return files, md, summary["findings"]


def _tables(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / "report" / "tables" / f"{name}.csv")


def _eval_dirs(root: Path, manifest: Manifest) -> dict[tuple[str, int], Path]:
    """(run_id, step) -> the eval artifact directory."""
    out = {}
    for result in (root / "stages" / "eval").glob("*/result.json"):
        payload = json.loads(result.read_text())["payload"]
        out[(payload["run_id"], payload["step"])] = result.parent
    return out


SPREAD = (-1.0, 0.0, 1.0)  # seed offsets: sample sd exactly 1 within each group
DATA_LIKE = {"precision": 0.6, "recall": 0.5, "class_accuracy": 0.8, "class_accuracy_real": 0.9}


def _known_fids(centre: dict[str | None, float]) -> Metrics:
    """FID = centre[encoder] + SPREAD[seed]; data-like precision / recall / class accuracy."""

    def metrics(labels: dict[str, Any], step: int) -> dict[str, float]:
        return {"fid": centre[labels["encoder"]] + SPREAD[labels["seed"]], **DATA_LIKE}

    return metrics


# ----------------------------------------------------------------------------- noise floor


def test_noise_floor_separates_a_real_win_from_noise(tmp_path: Path) -> None:
    """Baseline FD 50 ± 1 over 3 seeds; enc-00 at 30 (far beyond the floor), enc-01 at 49.5
    (within it), enc-02 at 50.5 with a single seed. Every group's sd is exactly 1."""
    centre = {None: 50.0, "enc-00": 30.0, "enc-01": 49.5, "enc-02": 50.5}
    _study(
        tmp_path,
        _known_fids(centre),
        n_encoders=3,
        methods=("repa",),
        seeds=(0, 1, 2),
        eval_steps=(100,),
        drop=lambda run: run["encoder"] == "enc-02" and run["seed"] > 0,
    )  # enc-02: only seed 0 evaluated
    _, md, findings = _report(tmp_path)

    floor = _tables(tmp_path, "noise_floor").set_index("metric")
    fd = floor.loc["fid"]
    # pooled over none, enc-00, enc-01 (3 seeds each, sd 1); enc-02 (1 seed) adds nothing
    assert fd.sigma == pytest.approx(1.0) and fd.df == 6 and fd.n_groups == 3 and fd.n_seeds == 9
    comp = _tables(tmp_path, "comparisons")
    vs = comp[(comp.kind == "vs baseline") & (comp.metric == "fid")].set_index("encoder")
    t = sps.t.ppf(0.975, 6)
    assert vs.loc["enc-00"].threshold == pytest.approx(t * np.sqrt(2 / 3))
    assert vs.loc["enc-02"].threshold == pytest.approx(t * np.sqrt(1 + 1 / 3))  # n = 1 vs 3
    assert vs.loc["enc-00"].delta == pytest.approx(-20.0)
    assert dict(vs.exceeds_floor) == {"enc-00": "yes", "enc-01": "no", "enc-02": "no"}
    assert vs.loc["enc-00"].direction == "better"
    best = comp[comp.kind == "best vs worst"].iloc[0]
    assert (best.encoder, best.exceeds_floor) == ("enc-00", "yes")

    # the first section names enc-00 as beating the baseline, and neither of the others
    first = md.split("## ")[1]
    assert first.startswith("What this study found")
    (line,) = [f for f in findings if "beat the baseline" in f]
    claimed = line.split("encoders: ")[1].split(".")[0]
    assert "enc-00" in claimed and "enc-01" not in claimed and "enc-02" not in claimed
    assert "with 1 of 3 encoders" in line and "Within the floor" in line
    assert "did not learn" not in first
    assert "Seed-to-seed noise floor" in md and "exceeds floor" in md

    # correlations count each encoder once: its seed mean
    points = _tables(tmp_path, "points").set_index("encoder")
    assert dict(points.n_seeds) == {"enc-00": 3, "enc-01": 3, "enc-02": 1}
    assert points.loc["enc-01"].fid == pytest.approx(49.5)
    corr = _tables(tmp_path, "correlations")
    assert set(corr.n) == {3}


def test_without_repeated_seeds_differences_cannot_be_judged(tmp_path: Path) -> None:
    # every encoder's FD is 20+ below the baseline's, but there is one seed per run
    _study(
        tmp_path,
        _known_fids({None: 60.0, **{f"enc-0{i}": 30.0 + i for i in range(4)}}),
        n_encoders=4,
        methods=("repa",),
        eval_steps=(100,),
    )
    files, md, findings = _report(tmp_path)
    first = md.split("## ")[1]
    assert "no noise floor measured: differences cannot be judged" in first
    assert "No win is claimed" in first
    assert not any("beat the baseline" in f for f in findings)
    assert _tables(tmp_path, "noise_floor").empty
    comp = _tables(tmp_path, "comparisons")
    assert len(comp) and set(comp.exceeds_floor) == {"cannot be judged"}
    assert any(w.startswith("no noise floor measured") for w in files.warnings)


# ----------------------------------------------------------------------------- the papers


@pytest.mark.parametrize(
    ("slope", "verdict"),
    [(-40.0, "same direction as the papers"), (40.0, "opposite to the papers")],
)
def test_fd_lds_direction_is_compared_with_the_papers(
    tmp_path: Path, slope: float, verdict: str
) -> None:
    _study(
        tmp_path,
        n_encoders=8,
        methods=("repa",),
        eval_steps=(100,),
        fid=FidModel(intercept=60.0, slope=slope, noise=0.2),
    )
    _, md, findings = _report(tmp_path)
    (line,) = [f for f in findings if "tracks FD most closely" in f]
    assert "most closely is LDS" in line and "the CI excludes 0" in line
    lds = line.split("LDS r = ")[1]  # the papers' check of LDS
    assert lds.split(";")[0].endswith(verdict)
    assert "r ≈ −0.85 to −0.89" in md.split("## ")[1]


# ----------------------------------------------------------------------------- did it learn?


def test_noise_evaluations_say_the_study_did_not_learn(tmp_path: Path) -> None:
    """Precision = recall = 0 everywhere; FDs still differ by far more than the floor."""
    centre = {None: 300.0, "enc-00": 250.0, "enc-01": 310.0, "enc-02": 290.0}
    noise = _known_fids(centre)

    def metrics(labels: dict[str, Any], step: int) -> dict[str, float]:
        return {**noise(labels, step), "precision": 0.0, "recall": 0.0}

    _study(tmp_path, metrics, n_encoders=3, methods=("repa",), seeds=(0, 1, 2), eval_steps=(100,))
    _, _, findings = _report(tmp_path)
    assert findings[0].startswith("The study did not learn: precision and recall are ≈ 0")
    assert "describes noise" in findings[0]
    assert not any("beat the baseline" in f for f in findings)
    assert any(
        "3 of 3 encoders differ" in f and "no evidence that REPA helped" in f for f in findings
    )
    assert any("these describe noise" in f for f in findings if "tracks FD" in f)
    assert any(
        f.startswith("Baseline (no alignment) samples") and "not data-like" in f for f in findings
    )


@pytest.mark.parametrize(("accuracy", "learned"), [(0.26, False), (0.85, True)])
def test_class_accuracy_near_chance_means_the_study_did_not_learn(
    tmp_path: Path, accuracy: float, learned: bool
) -> None:
    """4 classes (chance 0.25), ceiling 0.9: 0.26 is chance, 0.85 is data-like."""
    centre = {None: 50.0, "enc-00": 30.0, "enc-01": 49.0, "enc-02": 51.0}
    base = _known_fids(centre)

    def metrics(labels: dict[str, Any], step: int) -> dict[str, float]:
        return {**base(labels, step), "class_accuracy": accuracy + 0.01 * labels["seed"]}

    _study(tmp_path, metrics, n_encoders=3, methods=("repa",), seeds=(0, 1, 2), eval_steps=(100,))
    _, md, findings = _report(tmp_path)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["learned"] is learned
    assert findings[0].startswith("The study did not learn") is not learned
    (baseline,) = [f for f in findings if f.startswith("Baseline (no alignment) samples")]
    assert "vs a ceiling of 0.90" in baseline and "chance 0.25" in baseline
    assert baseline.endswith("not data-like.") if not learned else baseline.endswith(": data-like.")
    floor = _tables(tmp_path, "noise_floor").set_index("metric")
    assert floor.loc["class_accuracy"].sigma == pytest.approx(0.01)
    assert "class accuracy" in md and "ceiling (real images)" in md


def test_older_databases_without_class_accuracy_are_read() -> None:
    con = duckdb.connect(":memory:")
    cols = ", ".join(f"CAST(NULL AS {kind}) AS {name}" for name, kind in READ_CONTRACT["v_study"])
    con.execute(f"CREATE VIEW v_study AS SELECT {cols}")  # the view before 003_class_accuracy
    frame = read_table(con, "v_study")
    assert {"class_accuracy", "class_accuracy_real"} <= set(frame.columns)
    assert frame.class_accuracy.dtype == np.float64


def test_evaluations_without_class_accuracy_are_reported(tmp_path: Path) -> None:
    _study(tmp_path, n_encoders=4, methods=("repa",), seeds=(0, 1), eval_steps=(100,))
    files, _, findings = _report(tmp_path)  # synthetic evals report no class accuracy
    assert any("no sample class accuracy" in w for w in files.warnings)
    assert any("class accuracy not measured" in f for f in findings)
    assert not _tables(tmp_path, "noise_floor").metric.eq("class_accuracy").any()


# ----------------------------------------------------------------------------- sample grids


def _write_samples(directory: Path, n: int = 24, classes: int = 4, size: int = 8) -> None:
    """A shard like the eval stage's: sample i has label i % classes and colour 10·label."""
    labels = np.arange(n) % classes
    images = np.broadcast_to(
        (10 * labels).astype(np.uint8)[:, None, None, None], (n, 3, size, size)
    ).copy()
    out = directory / "samples"
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"000000-{n - 1:06d}.npz", images=images, labels=labels, seeds=np.arange(n))


def test_sample_grids_show_baseline_best_and_worst_or_say_not_found(tmp_path: Path) -> None:
    centre = {None: 50.0, "enc-00": 30.0, "enc-01": 45.0, "enc-02": 60.0}
    manifest = _study(
        tmp_path, _known_fids(centre), n_encoders=3, methods=("repa",), eval_steps=(50, 100)
    )
    evals = _eval_dirs(tmp_path, manifest)
    for directory in evals.values():
        _write_samples(directory)
    _, md, _ = _report(tmp_path)
    sections = [s.split("\n")[0] for s in md.split("## ")[1:]]
    assert sections[:2] == ["What this study found", "Generated samples"]
    assert "figures/sample_grids.png" in md.split("## ")[2]
    grids = _tables(tmp_path, "sample_grids")
    subjects = {s: set(g.step) for s, g in grids.groupby("subject")}
    assert subjects == {
        "no alignment": {50, 100},
        "REPA best: enc-00": {50, 100},
        "REPA worst: enc-02": {50, 100},
    }
    assert set(grids.status) == {"shown"} and set(grids.n_images) == {16}  # 4 classes × 4
    assert set(grids.classes) == {"0 1 2 3"}

    # the worst encoder's samples are gone: its cells say so, the rest still show
    (worst,) = [r for r, lab in manifest.runs.items() if lab["encoder"] == "enc-02"]
    shutil.rmtree(evals[(worst, 100)] / "samples")
    _report(tmp_path)
    grids = _tables(tmp_path, "sample_grids").set_index(["subject", "step"])
    assert grids.loc[("REPA worst: enc-02", 100)].status.startswith("samples not found")
    assert (grids.drop(("REPA worst: enc-02", 100)).status == "shown").all()

    # every sample file gone (or a copied database): a clear note, no crash, no figure
    for directory in evals.values():
        shutil.rmtree(directory / "samples", ignore_errors=True)
    files, md, _ = _report(tmp_path)
    section = md.split("## ")[2]
    assert section.startswith("Generated samples") and "samples not found" in section
    assert any(s.name == "sample_grids" for s in files.skipped)
    assert not (tmp_path / "report" / "figures" / "sample_grids.png").exists()  # not stale
    assert not (tmp_path / "report" / "tables" / "sample_grids.csv").exists()


def test_sample_grid_pixels_are_the_samples(tmp_path: Path) -> None:
    from harness.report.samples import load_grid

    _write_samples(tmp_path, n=40, classes=12, size=4)
    grid = load_grid(tmp_path / "samples", per_class=3, max_classes=10)
    assert grid.classes == list(range(10)) and grid.n_images == 30
    assert grid.image is not None and grid.image.shape == (3 * 5 - 1, 10 * 5 - 1, 3)
    for c in range(10):
        tile = grid.image[0:4, c * 5 : c * 5 + 4]
        assert (tile == 10 * c).all()
    assert load_grid(tmp_path / "nowhere").reason.startswith("samples not found")
    (tmp_path / "bad" / "samples").mkdir(parents=True)
    (tmp_path / "bad" / "samples" / "000000-000009.npz").write_bytes(b"not a zip")
    assert load_grid(tmp_path / "bad" / "samples").image is None
