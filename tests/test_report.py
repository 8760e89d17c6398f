"""`harness report`: statistics on a synthetic study with a known answer, the protocol guard,
the offline HTML, the figures' data tables, bad input, and the named SQL queries.

Every database is built the real way: ``synthetic_study`` (tests/) writes the artifacts of a
finished sweep (plan, result.json files, train logs) and :func:`harness.store.ingest.ingest`
loads them, so the report reads the store's own views."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from synthetic_study import (
    ENCODER_METRICS,
    FidModel,
    Manifest,
    Runs,
    SyntheticStudy,
    published_fids,
    write_study,
)

from harness.cli import main
from harness.errors import HarnessError
from harness.report import stats
from harness.report.analysis import analyse
from harness.report.build import build_report
from harness.report.data import load_study, open_database
from harness.report.figures import (
    FIGURES,
    FigureOutput,
    ReportContext,
    figure_style,
    freeze_layout,
)
from harness.report.labels import place_labels, place_line_label
from harness.report.options import ReportOptions
from harness.report.published import reproduction_pairs
from harness.report.schema import READ_CONTRACT
from harness.store.ingest import ingest
from harness.store.published import PUBLISHED_CSV, read_published

REPO = Path(__file__).resolve().parents[1]
FAST = {"n_boot": 100, "dpi": 50}
PAPER = "iREPA (arXiv 2512.10794v1)"
B2_REPA_400K = published_fids(PAPER, "SiT-B/2", "repa", 400_000)  # {published name: gFID}
# the paper's evaluation protocol, with the real Inception extractor (FID label "FID")
PROTOCOL = {
    "num_samples": 10_000,
    "sampler": "sde-euler",
    "nfe": 250,
    "vae": "sd-vae-ft-ema",
    "extractor_substitute": False,
}
# final FID = 45 + model / method offsets - 40·LDS + noise; the linear probe plays no part
FID = FidModel(
    intercept=45.0,
    slope=-40.0,
    noise=0.5,
    model_offsets={"SiT-B/2": 20.0, "SiT-L/2": 8.0},
    method_offsets={"none": 12.0, "irepa": -3.0},
)


def _study(root: Path, **knobs: Any) -> Manifest:
    """Write a synthetic study's artifacts under ``root`` and ingest them into its database.

    ``protocols`` given here apply on top of :data:`PROTOCOL`."""
    steps = knobs.get("eval_steps", SyntheticStudy.eval_steps)
    study = SyntheticStudy(
        **{
            "fid": FID,
            "log_every": max(1, max(steps) // 20),
            "per_image": 2,
            **knobs,
            "protocols": ((Runs(), PROTOCOL), *knobs.get("protocols", ())),
        }
    )
    root.mkdir(parents=True, exist_ok=True)
    manifest = write_study(root, study)
    ingest(root)
    return manifest


def _names(published: list[str | None]) -> dict[str, str | None]:
    """Published names for enc-00, enc-01, ... in order."""
    return {f"enc-{i:02d}": name for i, name in enumerate(published)}


def _report(root: Path, **options: object):
    return build_report(root, ReportOptions(**{**FAST, **options}), root / "report")


def _context(root: Path, **options: object) -> ReportContext:
    opts = ReportOptions(**{**FAST, **options})
    with open_database(root) as con:
        study = load_study(con, opts)
    return ReportContext(
        study, analyse(study.points, opts), opts, reproduction_pairs(study), root=root
    )


def _write_samples(root: Path, n: int = 8, classes: int = 4, size: int = 8) -> int:
    """A sample shard in every eval artifact, as the eval stage writes it (label i % classes)."""
    labels = np.arange(n) % classes
    images = np.zeros((n, 3, size, size), dtype=np.uint8) + (40 * labels)[
        :, None, None, None
    ].astype(np.uint8)
    written = 0
    for result in (root / "stages" / "eval").glob("*/result.json"):
        out = result.parent / "samples"
        out.mkdir(exist_ok=True)
        np.savez(out / f"000000-{n - 1:06d}.npz", images=images, labels=labels, seeds=np.arange(n))
        written += 1
    return written


@pytest.fixture(scope="module")
def study_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FID = 45 + offsets - 40·LDS + noise; LP drawn independently of everything. The encoders
    carry the names of iREPA's SiT-B/2 table, so the reproduction gap has points."""
    root = tmp_path_factory.mktemp("study")
    _study(
        root,
        n_encoders=12,
        models=("SiT-B/2", "SiT-L/2"),
        eval_steps=(50_000, 400_000),
        published_names=_names(list(B2_REPA_400K)[:12]),
    )
    assert _write_samples(root) > 0
    _report(root)
    return root


def _corr(frame: pd.DataFrame, metric: str, method: str = "pearson") -> pd.DataFrame:
    return frame[(frame.metric == metric) & (frame.method == method)]


# ----------------------------------------------------------------------------- the known answer


def test_report_finds_strong_lds_and_weak_lp_correlation(study_root: Path) -> None:
    corr = pd.read_csv(study_root / "report" / "tables" / "correlations.csv")
    per_model = corr[corr.model != "all models"]
    assert set(per_model.scope) == {
        f"{m} · {k} · step 400,000" for m in ("SiT-B/2", "SiT-L/2") for k in ("REPA", "iREPA")
    }
    lds, lp = _corr(per_model, "lds"), _corr(per_model, "lp_top1")
    assert (lds.r < -0.95).all() and (lds.ci_high < -0.8).all() and (lds.n == 12).all()
    assert (lp.r.abs() < 0.5).all() and ((lp.ci_low < 0) & (lp.ci_high > 0)).all()
    assert (_corr(per_model, "lds", "spearman").r < -0.9).all()
    pooled = corr[corr.model == "all models"]  # B and L together: model offsets blur the trend
    assert set(pooled.n) == {24} and len(pooled.scope.unique()) == 2
    assert (_corr(pooled, "lds").r < -0.5).all()
    partial = pd.read_csv(study_root / "report" / "tables" / "partial_correlations.csv")
    pearson = partial[(partial.method == "partial-pearson") & (partial.model != "all models")]
    lds_given_lp = pearson[pearson.target == "lds"].set_index("scope")
    lp_given_lds = pearson[(pearson.target == "lp_top1") & (pearson.control == "lds")].set_index(
        "scope"
    )
    assert (lds_given_lp.r < -0.95).all() and (lds_given_lp.ci_high < -0.8).all()
    assert (lp_given_lds.r.abs() < lds_given_lp.r.abs() - 0.3).all()  # LP adds little given LDS
    md = (study_root / "report" / "report.md").read_text()
    assert "Pearson r [95% CI]" in md and "Partial correlations" in md


def test_every_figure_table_holds_exactly_the_plotted_points(study_root: Path) -> None:
    ctx = _context(study_root)
    drawn = 0
    with figure_style():
        for name, draw in FIGURES.items():
            out = draw(ctx)
            assert isinstance(out, FigureOutput), f"{name} skipped: {out}"
            csv = pd.read_csv(study_root / "report" / "tables" / f"{name}.csv")
            assert len(csv) == len(out.table) and list(csv.columns) == list(out.table.columns)
            for panel, rows in out.table.groupby("panel", sort=False):
                axes = [ax for ax in out.figure.axes if ax.get_gid() == panel]
                assert len(axes) == 1, f"{name}: panel {panel!r} has no unique axes"
                assert _plotted(name, axes[0]) == _expected(name, rows), f"{name}: {panel}"
                drawn += 1
    assert drawn > 20


def _pairs(values: np.ndarray) -> list[tuple[float, float]]:
    return sorted((round(float(a), 6), round(float(b), 6)) for a, b in values)


def _plotted(name: str, ax: object) -> object:
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]  # type: ignore[attr-defined]
    if name in ("fid_vs_metrics", "reproduction_gap"):
        return _pairs(np.concatenate([c.get_offsets() for c in scatters]))
    if name == "repa_vs_irepa":
        return sorted(round(float(x), 6) for c in scatters for x in c.get_offsets()[:, 0])
    if name in ("convergence", "training_curves"):
        return _pairs(np.concatenate([np.column_stack(line.get_data()) for line in ax.get_lines()]))  # type: ignore[attr-defined]
    if name == "correlation_heatmap":
        return sorted(t.get_text() for t in ax.texts)  # type: ignore[attr-defined]
    if name == "sample_grids":  # the mosaic's tiles: (rows, classes) of 8-px samples + 1-px gaps
        (image,) = ax.images  # type: ignore[attr-defined]
        h, w = image.get_array().shape[:2]
        return ((h + 1) // 9) * ((w + 1) // 9)
    raise AssertionError(f"no extractor for figure {name}")


def _expected(name: str, rows: pd.DataFrame) -> object:
    if name == "fid_vs_metrics":
        return _pairs(rows[["x", "fid"]].to_numpy())
    if name == "reproduction_gap":
        return _pairs(rows[["published", "ours"]].to_numpy())
    if name == "repa_vs_irepa":
        return sorted(round(float(x), 6) for x in [*rows.fid_repa, *rows.fid_irepa])
    if name in ("convergence", "training_curves"):
        return _pairs(rows[["step", "value"]].to_numpy())
    if name == "sample_grids":
        (n,) = rows.n_images
        return int(n)
    return sorted(f"{r:.2f}" for r in rows.r.dropna())


def test_html_report_is_self_contained(study_root: Path) -> None:
    out = study_root / "report"
    page = (out / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://", page), "external URL in index.html"
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs
    embedded = [r for r in refs if r.startswith("data:image/png;base64,")]
    files = [r for r in refs if not r.startswith("data:")]
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert len(embedded) == len(figures) == 7
    for ref in files:
        assert not ref.startswith("/") and (out / ref).is_file(), ref
    md = (out / "report.md").read_text(encoding="utf-8")
    for ref in re.findall(r"\]\(([^)]+)\)", md):
        assert (out / ref).is_file(), ref


def test_first_sections_lead_with_the_answer_then_samples_then_the_floor(study_root: Path) -> None:
    md = (study_root / "report" / "report.md").read_text(encoding="utf-8")
    titles = [s.split("\n")[0] for s in md.split("\n## ")[1:]]
    assert titles[:4] == [
        "What this study found",
        "Generated samples",
        "Seed-to-seed noise floor",
        "Differences against the noise floor",
    ]
    summary = json.loads((study_root / "report" / "summary.json").read_text())
    # one seed per run: no floor, so no win may be claimed although every encoder looks better
    assert any("differences cannot be judged" in f for f in summary["findings"])
    assert not any("beat the baseline" in f for f in summary["findings"])
    lds = [f for f in summary["findings"] if "tracks FD" in f or "tracks FID" in f]
    assert len(lds) == 4 and all("most closely is LDS" in f for f in lds)
    grids = pd.read_csv(study_root / "report" / "tables" / "sample_grids.csv")
    assert set(grids.status) == {"shown"} and grids.model.nunique() == 2
    assert grids.subject.str.contains("best").any() and grids.subject.str.contains("worst").any()


def test_training_curves_plot_the_flow_loss_not_the_total(study_root: Path) -> None:
    table = pd.read_csv(study_root / "report" / "tables" / "training_curves.csv")
    assert set(table.quantity) == {"flow_loss", "align_cos"}
    con = duckdb.connect(str(study_root / "harness.duckdb"), read_only=True)
    logged = (
        con.sql(
            "SELECT step, avg(flow_loss) AS flow, avg(loss) AS total FROM train_log GROUP BY step"
        )
        .df()
        .set_index("step")
    )
    con.close()
    flow = table[table.quantity == "flow_loss"]
    np.testing.assert_allclose(flow.value, logged.flow.loc[flow.step].to_numpy(), atol=1e-6)
    assert (np.abs(flow.value.to_numpy() - logged.total.loc[flow.step].to_numpy()) > 1e-3).all()


@pytest.mark.parametrize("name", ["fid_vs_metrics", "convergence", "training_curves"])
def test_axis_titles_and_labels_are_inside_the_figure_and_apart(
    study_root: Path, name: str
) -> None:
    ctx = _context(study_root)
    with figure_style():
        out = FIGURES.get(name)(ctx)
        assert isinstance(out, FigureOutput)
        fig = out.figure
        freeze_layout(fig)
        renderer = FigureCanvasAgg(fig).get_renderer()
        frame = fig.bbox
        boxes = []
        for i, ax in enumerate(a for a in fig.axes if a.get_visible()):
            for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
                if text.get_text():
                    box = text.get_window_extent(renderer)
                    assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1, text.get_text()
                    assert frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1, text.get_text()
                    boxes.append((i, text.get_text(), box))
        for k, (i, a_text, a) in enumerate(boxes):
            for j, b_text, b in boxes[k + 1 :]:
                assert i == j or not a.overlaps(b), (a_text, b_text)
        for legend in fig.legends:  # the figure legend's entries are not cut off either
            for text in legend.get_texts():
                box = text.get_window_extent(renderer)
                assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1, text.get_text()


def test_a_narrow_figure_wraps_its_legend() -> None:
    from harness.report.figures import legend_columns

    labels = ["efficientnet-lite0", "inhouse-simclr", "noise", "no alignment", "pixels"]
    assert legend_columns(3.3, labels) == 2  # one 3.3-inch panel: 2 entries per row
    assert legend_columns(13.2, labels) == 5  # four panels: all in one row
    assert legend_columns(3.3, ["x"] * 20) == 7 and legend_columns(30, ["x"] * 20) == 8


# ----------------------------------------------------------------------------- protocol guard


def test_mixed_protocols_are_split_and_never_pooled(tmp_path: Path) -> None:
    fifty_k = {"num_samples": 50_000}  # enc-00..03 and the baseline: another protocol
    others = [(Runs(encoder=f"enc-0{i}"), fifty_k) for i in range(4)]
    manifest = _study(
        tmp_path,
        n_encoders=10,
        methods=("repa",),
        eval_steps=(100_000,),
        protocols=(*others, (Runs(method="none"), fifty_k)),
    )
    assert len(set(manifest.protocol_keys.values())) == 2
    files = _report(tmp_path)
    split = [w for w in files.warnings if "evaluation protocols" in w]
    assert (
        len(split) == 1
        and "num_samples (10000 vs 50000)" in split[0]
        and "never pooled" in split[0]
    )
    points = pd.read_csv(tmp_path / "report" / "tables" / "points.csv")
    assert points.groupby("facet").protocol.nunique().max() == 1
    assert sorted(points.groupby("protocol").encoder.nunique()) == [4, 6]
    corr = pd.read_csv(tmp_path / "report" / "tables" / "correlations.csv")
    assert sorted(set(_corr(corr, "lds").n)) == [4, 6]  # no scope mixes the two
    assert any("P2" in s for s in corr.scope) and any("n = 4" in w for w in files.warnings)


def test_substitute_extractor_is_labelled_on_every_figure_and_table(tmp_path: Path) -> None:
    substitute = {"extractor": "harness-cnn-gen32", "extractor_substitute": True}
    _study(tmp_path, n_encoders=6, eval_steps=(10_000, 20_000), protocols=((Runs(), substitute),))
    files = _report(tmp_path)
    label = "FD (substitute extractor: harness-cnn-gen32)"
    out = tmp_path / "report"
    for name in ("fid_vs_metrics", "repa_vs_irepa", "correlations", "partial_correlations"):
        assert set(pd.read_csv(out / "tables" / f"{name}.csv").fid_label) == {label}, name
    assert any(label in w for w in files.warnings)
    md = (out / "report.md").read_text()
    assert f"{label} ~ LDS \\| LP" in md  # the pipe is escaped inside a Markdown table
    for figure in ("fid_vs_metrics", "repa_vs_irepa", "convergence", "correlation_heatmap"):
        svg = (out / "figures" / f"{figure}.svg").read_text()
        assert "FD (substitute extractor: harness-cnn-gen32)" in svg, figure


# ----------------------------------------------------------------------------- missing values


def test_missing_values_are_excluded_and_counted(tmp_path: Path) -> None:
    late, failed = Runs(encoder="enc-03", seed=1), Runs(encoder="enc-04", seed=0)
    manifest = _study(
        tmp_path,
        n_encoders=8,
        methods=("repa",),
        seeds=(0, 1),
        eval_steps=(10, 20),
        unmeasured={"enc-01": ("lds",), "enc-02": ("lds",)},  # no LDS for two encoders
        skip_evals=((late, 20),),  # evaluated at step 10; step 20 not run yet
        failed=((failed, 15),),  # training failed at step 15: no evaluation at all
    )
    (late_id,), (failed_id,) = manifest.run_ids(late), manifest.run_ids(failed)
    files = _report(tmp_path)
    out = tmp_path / "report" / "tables"
    corr = pd.read_csv(out / "correlations.csv")
    assert set(_corr(corr, "lds").n) == {6} and set(_corr(corr, "lds").n_excluded) == {2}
    assert set(_corr(corr, "cds").n) == {8}
    exclusions = pd.read_csv(out / "exclusions.csv")
    assert (exclusions.reason.str.startswith("LDS missing")).sum() == 2
    late_rows = exclusions[exclusions.reason.str.startswith("no FID at step 20")]
    assert set(zip(late_rows.run_id, late_rows.reason)) == {
        (late_id, "no FID at step 20 (training done)"),
        (failed_id, "no FID at step 20 (training failed)"),
    }
    points = pd.read_csv(out / "points.csv")
    seeds = points.set_index("encoder").n_seeds.to_dict()
    assert seeds == {f"enc-0{i}": 1 if i in (3, 4) else 2 for i in range(8)}
    assert any("4 exclusion(s)" in w for w in files.warnings)


def test_small_n_is_warned(tmp_path: Path) -> None:
    _study(tmp_path, n_encoders=4, methods=("repa",), eval_steps=(10,))
    files = _report(tmp_path)
    assert any("only n = 4" in w and "indicative only" in w for w in files.warnings)
    svg = (tmp_path / "report" / "figures" / "fid_vs_metrics.svg").read_text()
    assert "(n &lt; 5: indicative only)" in svg


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("exists", [False, True])
def test_report_without_results_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exists: bool
) -> None:
    root = tmp_path / "results"
    if exists:
        root.mkdir()
    assert main(["report", "--results", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"no results in {root} (run `harness sweep ...` first)" in err
    assert sorted(tmp_path.rglob("*")) == ([root] if exists else [])


def test_empty_database_says_what_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest(tmp_path)  # no artifacts at all: only the papers' numbers
    with pytest.raises(HarnessError, match="no evaluations yet") as info:
        _report(tmp_path)
    assert "harness sweep" in str(info.value) and "harness ingest" in str(info.value)
    code = main(["report", "--results", str(tmp_path), "--no-ingest"])
    err = capsys.readouterr().err
    assert code == 2 and "no evaluations yet" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"eval_metrics": ("isc_mean", "kid_mean")}, "no FID yet"),  # evaluations without FID
        ({"unmeasured": {f"enc-0{i}": ENCODER_METRICS for i in range(4)}}, "no encoder metrics"),
        ({"methods": ()}, "only `none`"),  # baselines only
    ],
)
def test_missing_metrics_say_what_to_run(
    tmp_path: Path, knobs: dict[str, Any], message: str
) -> None:
    _study(tmp_path, n_encoders=4, eval_steps=(10,), **knobs)
    with pytest.raises(HarnessError, match=re.escape(message)) as info:
        _report(tmp_path)
    assert info.value.hint and ("harness" in info.value.hint)


def test_step_and_sweep_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _study(tmp_path, n_encoders=5, eval_steps=(100, 200))
    with pytest.raises(HarnessError, match="no FID at step 150") as info:
        _report(tmp_path, step=150)
    assert "100, 200" in str(info.value)
    ctx = _context(tmp_path, step=100)
    assert set(ctx.study.points.step) == {100}
    with pytest.raises(HarnessError, match="did you mean 'synthetic'"):
        _report(tmp_path, sweep="synthetik")
    with pytest.raises(SystemExit) as exited:  # argparse's range check: a usage error
        main(["report", "--results", str(tmp_path), "--no-ingest", "--n-boot", "-1"])
    assert exited.value.code == 2 and "--n-boot" in capsys.readouterr().err
    out = tmp_path / "cli-out"
    assert (
        main(
            [
                "report",
                "--results",
                str(tmp_path),
                "--no-ingest",
                "--out",
                str(out),
                "--n-boot",
                "50",
            ]
        )
        == 0
    )
    assert (out / "index.html").is_file() and (out / "tables" / "correlations.csv").is_file()


# ----------------------------------------------------------------------------- published


def test_against_published_correlates_encoder_metrics_with_paper_fids(tmp_path: Path) -> None:
    """No training at all; each encoder's LDS falls linearly with its paper gFID (+ noise)."""
    table = list(B2_REPA_400K.items())[:12]
    noise = np.random.default_rng(0).normal(0.0, 0.005, len(table))
    lds = {f"enc-{i:02d}": {"lds": 0.05 + 0.1 * (27.0 - gfid) + e}
           for i, ((_, gfid), e) in enumerate(zip(table, noise))}  # fmt: skip
    names = _names([name for name, _ in table[:11]] + [None])  # one the papers do not have
    _study(tmp_path / "a", n_encoders=12, models=(), published_names=names, encoder_values=lds)
    files = _report(tmp_path / "a", against_published=True, min_published_matches=11)
    corr = pd.read_csv(tmp_path / "a" / "report" / "tables" / "correlations.csv")
    corr = corr[corr.model != "all models"]
    main_table = _corr(corr[corr.scope == f"{PAPER} · SiT-B/2 · REPA · 400K steps · cfg 1"], "lds")
    assert len(main_table) == 1 and main_table.r.item() < -0.95 and main_table.n.item() == 11
    # one facet per published FID table (numeric steps) holding all 11 named encoders
    measured = set(names.values()) - {None}
    tables: dict[tuple[object, ...], set[str]] = {}
    for row in read_published(PUBLISHED_CSV.read_bytes()):
        if row["metric"] == "gFID" and (row["train_steps"] or "").isdigit():
            key = (row["paper"], row["model"], row["method"], row["train_steps"], row["cfg"])
            tables.setdefault(key, set()).update({row["encoder"]} & measured)
    assert corr.scope.nunique() == sum(len(found) == 11 for found in tables.values()) > 1
    assert (corr.n == 11).all()
    assert set(corr.fid_label) == {"published gFID"}
    skipped = {s.name for s in files.skipped}
    assert {"convergence", "training_curves"} <= skipped  # they need training runs
    _study(tmp_path / "b", n_encoders=12, models=(), published_names=_names([None] * 12))
    with pytest.raises(HarnessError, match="published_name"):
        _report(tmp_path / "b", against_published=True)


def test_against_published_refuses_random_weight_measurements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = _names([name for name, _ in list(B2_REPA_400K.items())[:12]])
    encoders = tuple(names)
    _study(tmp_path / "all", n_encoders=12, models=(), published_names=names,
           random_weights=encoders)  # fmt: skip
    argv = ["report", "--results", str(tmp_path / "all"), "--no-ingest", "--against-published"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "random weights" in err and all(e in err for e in encoders)
    assert not (tmp_path / "all" / "report").exists()

    left_out = encoders[:3]  # a mixed dir: only the real-weight encoders are compared
    _study(tmp_path / "mixed", n_encoders=12, models=(), published_names=names,
           random_weights=left_out)  # fmt: skip
    files = _report(tmp_path / "mixed", against_published=True, min_published_matches=9)
    corr = pd.read_csv(tmp_path / "mixed" / "report" / "tables" / "correlations.csv")
    assert (corr.n == 9).all() and len(corr)  # 12 measured, 3 with random weights left out
    (warning,) = [w for w in files.warnings if "random weights" in w]
    assert all(e in warning for e in left_out)
    assert not any(e in warning for e in encoders[3:])


def test_reproduction_pairs_match_on_every_setting(tmp_path: Path) -> None:
    names = _names(list(B2_REPA_400K)[:5])
    knobs = {"n_encoders": 5, "models": ("SiT-B/2",), "eval_steps": (100_000, 400_000)}
    manifest = _study(tmp_path / "a", published_names=names, **knobs)
    pairs = _context(tmp_path / "a").reproduction
    # every no-CFG SiT-B/2 gFID the papers give at our steps, for our encoders or the baseline
    expected = sorted(
        (row["encoder"] if row["method"] != "none" else "none", row["method"],
         int(row["train_steps"]), row["paper"], row["value"])
        for row in read_published(PUBLISHED_CSV.read_bytes())
        if row["metric"] == "gFID" and row["model"] == "SiT-B/2" and row["cfg"] == 1.0
        and row["train_steps"] in ("100000", "400000")
        and (row["method"] == "none" or row["encoder"] in names.values())
        and "recipe=" not in row["source_note"]  # REPA-E / MeanFlow rows are other recipes
        and ("NFE=" not in row["source_note"] or "NFE=250" in row["source_note"])
    )  # fmt: skip
    published_name = pairs.published_name.where(pairs.method != "none", "none")
    got = sorted(zip(published_name, pairs.method, pairs.step, pairs.paper, pairs.published))
    assert got == expected and {"repa", "irepa", "none"} <= set(pairs.method)
    for row in pairs.itertuples():  # ours: the FID written for that run and step
        encoder = None if row.method == "none" else row.encoder
        (run_id,) = manifest.run_ids(Runs(encoder=encoder, method=row.method))
        assert row.ours == pytest.approx(manifest.fid[(run_id, row.step)])
    guided = {"cfg_scale": 1.5}  # the papers give no SiT-B/2 gFID at this guidance scale
    _study(tmp_path / "b", published_names=names, protocols=((Runs(), guided),), **knobs)
    assert _context(tmp_path / "b").reproduction.empty
    # the same runs with random weights (encoders and VAE): never paired with the papers
    _study(tmp_path / "c", published_names=names, sweep_random_weights=True, **knobs)
    random = _context(tmp_path / "c")
    assert random.reproduction.empty and len(random.study.curves) == len(
        _context(tmp_path / "a").study.curves
    )


# ----------------------------------------------------------------------------- pieces


def test_labels_do_not_overlap() -> None:
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.normal(0.3, 0.03, 8), rng.uniform(0, 1, 19)])  # a tight cluster
    ys = np.concatenate([rng.normal(20, 1.0, 8), rng.uniform(10, 40, 19)])
    labels = [f"encoder-{i:02d}" for i in range(xs.size)]
    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.subplots()
    ax.scatter(xs, ys)
    assert place_labels(ax, xs, ys, labels) == 0
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == xs.size
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)


@pytest.mark.parametrize("crowded", ["right", "left"])
def test_reference_line_label_avoids_points(crowded: str) -> None:
    """The baseline's label goes to the end of its line where no point sits, and the point
    labels placed after it avoid it."""
    x_end = 0.98 if crowded == "right" else 0.02
    xs, ys = np.array([x_end, 0.5]), np.array([20.3, 10.0])  # one point on the line's end
    fig = Figure(figsize=(4, 3), dpi=100)
    ax = fig.subplots()
    ax.set_xlim(0, 1), ax.set_ylim(0, 40)
    ax.scatter(xs, ys)
    place_line_label(ax, 20.0, "no alignment 20.0", xs, ys)
    (label,) = ax.texts
    assert label.get_horizontalalignment() == ("left" if crowded == "right" else "right")
    assert place_labels(ax, xs, ys, ["enc-a", "enc-b"]) == 0
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    point = ax.transData.transform((xs[0], ys[0]))
    assert not boxes[0].contains(*point)
    assert not any(boxes[0].overlaps(b) for b in boxes[1:])


def test_named_queries_run_and_agree_with_the_report(study_root: Path) -> None:
    con = duckdb.connect(str(study_root / "harness.duckdb"), read_only=True)
    queries = sorted((REPO / "analysis").glob("*.sql"))
    names = {q.stem for q in queries}
    assert {
        "best_encoder_per_size",
        "correlations_per_size",
        "repa_vs_irepa",
        "failed_stages",
    } <= names
    results = {q.stem: con.sql(q.read_text()).df() for q in queries}
    points = pd.read_csv(study_root / "report" / "tables" / "points.csv")
    sql = results["correlations_per_size"]
    for (model, method), g in points.groupby(["model", "method"]):
        row = sql[
            (sql.model == model)
            & (sql.method == method)
            & (sql.step == 400_000)
            & (sql.metric == "lds")
        ]
        assert row.pearson_r.item() == pytest.approx(stats.pearson(g.lds, g.fid)[0], abs=1e-4)
        assert row.spearman_rho.item() == pytest.approx(stats.spearman(g.lds, g.fid)[0], abs=1e-4)
        best = results["best_encoder_per_size"]
        chosen = best[(best.model == model) & (best.method == method)]
        assert chosen.best_encoder.item() == g.sort_values("fid").encoder.iloc[0]
    dumbbell = pd.read_csv(study_root / "report" / "tables" / "repa_vs_irepa.csv")
    pairs = results["repa_vs_irepa"].query("step == 400000")
    assert len(pairs) == len(dumbbell)
    merged = pairs.merge(dumbbell, on=["model", "encoder"])
    np.testing.assert_allclose(merged.rel_change_pct_x, merged.rel_change_pct_y, atol=0.01)
    con.close()


def test_read_contract_is_a_subset_of_the_store_schema() -> None:
    from harness.store.db import migrate

    con = duckdb.connect(":memory:")
    migrate(con)
    for name, spec in READ_CONTRACT.items():
        present = {
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name]
            ).fetchall()
        }
        missing = {c for c, _ in spec} - present
        assert not missing, f"{name} lacks {missing}"


def test_cli_module_imports_without_heavy_libraries() -> None:
    code = (
        "import sys, harness.cli.report; "
        "heavy = {'torch', 'matplotlib', 'seaborn', 'scipy', 'pandas', 'duckdb'} & set(sys.modules); "
        "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_run_two_sweeps_share_belongs_to_both_studies() -> None:
    import duckdb

    from harness.report.data import _in_every_sweep

    con = duckdb.connect()
    con.execute(
        "CREATE TABLE plan_stages (sweep VARCHAR, stage_key VARCHAR, stage VARCHAR, labels JSON)"
    )
    con.execute(
        "INSERT INTO plan_stages VALUES ('quick', 'k1', 'train', '{\"run_id\": \"r1\"}'), "
        "('full', 'k1', 'train', '{\"run_id\": \"r1\"}'), ('full', 'k2', 'train', '{\"run_id\": \"r2\"}'), "
        "('full', 'k3', 'eval', '{\"run_id\": \"r1\"}')"
    )
    # v_study names the first sweep that planned a run: r1 -> quick only
    rows = pd.DataFrame({"run_id": ["r1", "r1", "r2"], "sweep": ["quick", "quick", "full"],
                         "step": [1, 2, 1], "fid": [9.0, 8.0, 7.0]})  # fmt: skip
    out = _in_every_sweep(con, rows)
    assert list(out.columns) == list(rows.columns)
    assert sorted(zip(out.sweep, out.run_id, out.step, out.fid)) == [
        ("full", "r1", 1, 9.0), ("full", "r1", 2, 8.0), ("full", "r2", 1, 7.0),
        ("quick", "r1", 1, 9.0), ("quick", "r1", 2, 8.0),
    ]  # fmt: skip


def test_long_facet_labels_wrap_at_their_separators() -> None:
    from harness.report.figures import wrap_facet

    assert wrap_facet("SiT-T/4 · REPA · step 1,200") == "SiT-T/4 · REPA · step 1,200"
    assert wrap_facet("cpu-study-full · SiT-T/4 · REPA · step 1,200") == (
        "cpu-study-full · SiT-T/4\nREPA · step 1,200"
    )
    assert all(len(line) <= 28 for line in wrap_facet("a" * 10 + " · b · " + "c" * 20).split("\n"))
