"""``harness rank`` without a scheduler: the fits on known answers, the protocol guard, the
published join, and the predictions written to the database.

* FID exactly linear in LDS: the LDS model's leave-one-encoder-out error is zero;
* FID pure noise: interval coverage near the nominal level, and no model beats mean-only;
* FIDs of two protocols, or of fewer than 5 encoders: refused (exit 2 from the CLI);
* every published encoder name of the iREPA tables maps to one catalogue entry or is unmapped;
* a fit lands in ``rank/<fit_id>/predictions.json`` and, through ingest, in ``predictions``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pandas as pd
import pytest
from synthetic_study import Runs, SyntheticStudy, write_catalogue, write_study

from harness.cli import main
from harness.config.encoders import load_catalogue
from harness.errors import HarnessError
from harness.report import predict as P
from harness.report.published import published_fids
from harness.store.ingest import ingest
from harness.store.published import PUBLISHED_CSV, read_published

REPO = Path(__file__).resolve().parents[1]
METRICS = ("lds", "cds", "srss", "rmsc", "lp_top1")


def encoder_points(n: int, rng: np.random.Generator, facet: str = "f") -> pd.DataFrame:
    frame = pd.DataFrame({m: rng.uniform(0.0, 1.0, n) for m in METRICS})
    frame.insert(0, "encoder", [f"e{i:02d}" for i in range(n)])
    return frame.assign(facet=facet, protocol="P1")


# ---------------------------------------------------------------------------------------------
# known answers
# ---------------------------------------------------------------------------------------------
def test_fid_exactly_linear_in_lds_gives_zero_cross_validated_error() -> None:
    points = encoder_points(9, np.random.default_rng(1))
    points["fid"] = 70.0 - 45.0 * points.lds
    cv = P.cross_validate(points)
    lds = cv.table.set_index("model").loc["LDS"]
    assert lds.n == 9
    assert lds.mae < 1e-9 and lds.rmse < 1e-9
    assert lds.spearman == pytest.approx(1.0)
    assert lds.mae_mean_only > 1.0  # the baseline does not get it for free
    assert bool(lds.beats_mean_only) and cv.best() == "LDS"
    held = cv.held_out[cv.held_out.model == "LDS"]
    np.testing.assert_allclose(held.predicted, held.measured, atol=1e-9)
    # and a new encoder is predicted exactly from its LDS
    new = encoder_points(2, np.random.default_rng(2)).assign(encoder=["n0", "n1"])
    pred = P.predict(points, new, [P.Model("lds", ("lds",))])
    np.testing.assert_allclose(pred.predicted, 70.0 - 45.0 * new.lds, atol=1e-9)


def test_pure_noise_has_nominal_coverage_and_does_not_beat_mean_only() -> None:
    rng = np.random.default_rng(7)
    models = [P.Model(P.MEAN_ONLY, ()), P.Model("lds", ("lds",)), P.Model("lp_top1", ("lp_top1",))]
    covered = {m.label: [] for m in models}
    mae = {m.label: [] for m in models}
    for _ in range(12):  # 12 independent studies of 25 encoders each
        points = encoder_points(25, rng).assign(fid=lambda f: rng.normal(30.0, 5.0, len(f)))
        cv = P.cross_validate(points, models, level=0.9)
        for row in cv.table.itertuples():
            covered[row.model].append(row.coverage)
            mae[row.model].append(row.mae)
    for label in covered:
        assert abs(np.mean(covered[label]) - 0.9) < 0.05, (label, np.mean(covered[label]))
    base = np.mean(mae["mean-only"])
    for label in ("LDS", "LP"):
        assert np.mean(mae[label]) >= 0.97 * base, (label, np.mean(mae[label]), base)


def test_fewer_than_five_encoders_or_two_protocols_are_refused() -> None:
    points = encoder_points(4, np.random.default_rng(3)).assign(fid=[1.0, 2.0, 3.0, 4.0])
    with pytest.raises(HarnessError, match="at least 5"):
        P.cross_validate(points)
    mixed = encoder_points(8, np.random.default_rng(4)).assign(fid=np.arange(8.0))
    mixed.loc[4:, "protocol"] = "P2"
    with pytest.raises(HarnessError, match="2 different protocols"):
        P.cross_validate(mixed)


# ---------------------------------------------------------------------------------------------
# the published join
# ---------------------------------------------------------------------------------------------
def test_every_published_irepa_encoder_maps_to_one_entry_or_is_listed_unmapped() -> None:
    catalogue = load_catalogue(REPO / "encoders.yaml")
    names = {spec.name: spec.published_name for spec in catalogue.encoders}
    fids = published_fids(pd.DataFrame(read_published(PUBLISHED_CSV.read_bytes())))
    irepa = fids[fids.paper.str.startswith("iREPA")]
    published = set(irepa.encoder.dropna())
    join = P.published_join(names, published)
    assert not join.ambiguous
    assert set(join.mapped) | set(join.unmapped) == published
    assert not set(join.mapped) & set(join.unmapped)
    for name, entry in join.mapped.items():
        assert names[entry] == name  # the one entry that carries the published name
    assert len(join.mapped) >= 15  # the catalogue holds the paper's encoders
    # an entry named twice is reported, never silently picked
    twice = P.published_join({"a": "X", "b": "X", "c": "Y"}, ["X", "Y", "Z"])
    assert twice.ambiguous == {"X": ["a", "b"]} and twice.mapped == {"Y": "c"}
    assert twice.unmapped == ["Z"]


def test_published_points_are_one_table_per_facet() -> None:
    fids = published_fids(pd.DataFrame(read_published(PUBLISHED_CSV.read_bytes())))
    catalogue = load_catalogue(REPO / "encoders.yaml")
    join = P.published_join({s.name: s.published_name for s in catalogue.encoders}, fids.encoder)
    points = P.published_points(fids, join.mapped)
    table = points[points.facet.str.contains("iREPA") & points.facet.str.contains("SiT-B/2")]
    table = table[table.facet.str.contains("400K") & table.facet.str.contains("· REPA ·")]
    assert table.facet.nunique() == 1 and table.published_name.is_unique
    assert set(table.encoder.dropna()) <= set(catalogue.names())


# ---------------------------------------------------------------------------------------------
# the CLI on a synthetic study in the database
# ---------------------------------------------------------------------------------------------
def test_cli_refuses_a_fit_across_two_protocols_with_exit_2(results_root: Path, tmp_path, capsys):
    other = {"num_samples": 128}  # the first three encoders were evaluated with more samples
    study = SyntheticStudy(
        n_encoders=8,
        methods=("repa",),
        protocols=tuple((Runs(encoder=f"enc-{i:02d}"), other) for i in range(3)),
    )
    write_study(results_root, study)
    ingest(results_root)
    catalogue = write_catalogue(tmp_path / "cat.yaml", 8)
    argv = ["rank", str(catalogue), "--encoders", "enc-00", "--against", "synthetic"]
    argv += ["--sweep", str(REPO / "sweeps" / "tiny.yaml"), "--executor", "local"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "2 different protocols" in err and "never pooled" in err
    assert not (results_root / "plans" / "rank-tiny").exists()  # nothing was measured
    # with one protocol chosen, the guard passes (the dry run measures nothing)
    assert main([*argv, "--protocol", "P1", "--dry-run"]) == 0
    assert "5 encoders with a FID" in capsys.readouterr().out


def test_cli_refuses_too_few_encoders_with_exit_2(results_root: Path, tmp_path, capsys):
    write_study(results_root, SyntheticStudy(n_encoders=4, methods=("repa",)))
    ingest(results_root)
    catalogue = write_catalogue(tmp_path / "cat.yaml", 4)
    argv = ["rank", str(catalogue), "--encoders", "enc-00", "--against", "synthetic", "--dry-run"]
    assert main([*argv, "--sweep", str(REPO / "sweeps" / "tiny.yaml")]) == 2
    assert "a fit needs at least 5" in capsys.readouterr().err


def test_fit_is_written_ingested_and_rebuilt_into_the_predictions_table(results_root: Path):
    from harness.cli import rank

    rng = np.random.default_rng(5)
    metrics = encoder_points(8, rng).drop(columns=["facet", "protocol"])
    fids = metrics.iloc[:6][["encoder"]].assign(
        fid=60.0 - 40.0 * metrics.lds.iloc[:6], facet="synthetic · SiT-T/2", protocol="P1"
    )
    targets = rank.Targets("synthetic", fids.assign(fid_label="FID"), [])
    plan = SimpleNamespace(stages=[], sweep=SimpleNamespace(name="rank-tiny"))
    args = SimpleNamespace(level=0.9, model=None, method=None, step=None, protocol=None)
    candidates = ["e06", "e07"]
    assert rank.fit_and_report(results_root, plan, targets, metrics, candidates, args) == 0
    (fit_dir,) = (results_root / "rank").iterdir()
    record = json.loads((fit_dir / "predictions.json").read_text())
    assert (fit_dir / "predicted_vs_measured.png").stat().st_size > 0
    assert record["against"] == "synthetic" and record["provenance"]["candidates"] == candidates

    def rows(sql: str) -> list[tuple]:
        with duckdb.connect(str(results_root / "harness.duckdb"), read_only=True) as con:
            return con.execute(sql).fetchall()

    got = rows(
        "SELECT encoder, rank, predicted_fid FROM predictions "
        "WHERE role = 'candidate' AND model = 'LDS' ORDER BY rank"
    )
    expected = sorted((60.0 - 40.0 * metrics.lds.iloc[6:]).items(), key=lambda kv: kv[1])
    assert [r[0] for r in got] == [metrics.encoder[i] for i, _ in expected]
    np.testing.assert_allclose([r[2] for r in got], [v for _, v in expected], atol=1e-9)
    assert [r[1] for r in got] == [1, 2]
    held = rows("SELECT count(*) FROM predictions WHERE role = 'held_out' AND model = 'LDS'")
    assert held == [(6,)]
    cv = dict(rows("SELECT model, mae FROM prediction_cv"))
    assert cv["LDS"] < 1e-9 and cv["mean-only"] > 1.0
    before = rows("SELECT * EXCLUDE (provenance) FROM predictions ORDER BY ALL")
    ingest(results_root, rebuild=True)  # rebuilt from the files alone
    assert rows("SELECT * EXCLUDE (provenance) FROM predictions ORDER BY ALL") == before


def test_report_section_compares_spatial_metrics_lp_and_mean_only(results_root: Path) -> None:
    from harness.report.build import build_report
    from harness.report.options import ReportOptions

    write_study(results_root, SyntheticStudy(n_encoders=8, methods=("repa",)))
    ingest(results_root)
    files = build_report(results_root, ReportOptions(n_boot=0))
    html = (files.out_dir / "index.html").read_text()
    assert "Can spatial structure predict generation quality here?" in html
    table = pd.read_csv(files.out_dir / "tables" / "predictability.csv").set_index("model")
    assert {"mean-only", "LDS", "LP", "CDS"} <= set(table.index)
    # the synthetic FIDs are linear in LDS (noise sd 1, slope -50) and ignore the probe
    assert table.loc["LDS", "beats mean-only"] == "yes"
    assert table.loc["LDS", "MAE"] < 0.5 * table.loc["LDS", "MAE mean-only"]
    assert table.loc["LP", "MAE"] > table.loc["LDS", "MAE"]
