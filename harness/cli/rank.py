"""``harness rank ENCODERS.yaml --encoders ...``: predict how good a REPA target an encoder is
before training on it.

1. **Measure.** The named encoders, and every encoder whose FID the fit uses, get their
   ``spatial`` (LDS, CDS, SRSS, RMSC) and ``probe`` (linear probe) stages on the sweep's image
   set, through the same plan, content keys and executors as ``harness sweep`` (so SLURM works
   and a second run reuses every measurement). The stages are saved as the plan
   ``rank-<sweep>``.
2. **Fit.** FID against the metrics on the encoders that have a FID under one protocol: the
   published iREPA / REPA gFIDs (``--against published``, joined through ``published_name``) or
   a sweep of the results database (``--against SWEEP``). Models: mean-only, each metric alone
   (LP alone included), and a ridge on the standardised metrics
   (:mod:`harness.report.predict`).
3. **Honesty.** Leave-one-encoder-out MAE, Spearman ρ and interval coverage for every model
   next to the mean-only predictor; fewer than 5 encoders or several protocols: exit 2.
4. **Predict.** Every named encoder without a FID gets a predicted FID with a prediction
   interval, ranked; the fit goes to ``rank/<fit_id>/predictions.json`` (then the
   ``predictions`` and ``prediction_cv`` tables, via ``harness ingest``) with the figure
   ``predicted_vs_measured.png`` next to it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness.cli import NON_NEGATIVE_INT, Command, add_overrides_argument, bounded
from harness.config.resources import EXECUTOR_CHOICES, MEASUREMENT_KINDS
from harness.metrics import SPATIAL_METRICS

PUBLISHED = "published"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("catalogue", metavar="ENCODERS.yaml", help="the encoder catalogue")
    parser.add_argument(
        "--encoders",
        required=True,
        metavar="A,B",
        help="the encoders to rank (names or globs; 'all' for the whole catalogue)",
    )
    parser.add_argument(
        "--sweep",
        metavar="FILE",
        help="sweep file whose image set, spatial and probe settings the measurements use "
        "(default: sweeps/<SWEEP>.yaml for --against SWEEP when it exists, else "
        "sweeps/default.yaml)",
    )
    add_overrides_argument(parser, example="data.val_images=1000", what="a sweep setting")
    parser.add_argument(
        "--against",
        default=PUBLISHED,
        metavar="published|SWEEP",
        help="the FIDs to fit: the papers' published gFIDs (default) or a sweep in the database",
    )
    parser.add_argument("--model", metavar="NAME", help="the SiT size of the FIDs (e.g. SiT-B/2)")
    parser.add_argument("--method", metavar="NAME", help="the alignment method (repa, irepa)")
    parser.add_argument(
        "--step", type=NON_NEGATIVE_INT, metavar="N", help="the training step of the FIDs"
    )
    parser.add_argument(
        "--cfg",
        type=bounded(float, gt=0),
        metavar="SCALE",
        help="published tables: the CFG scale (1 = none)",
    )
    parser.add_argument(
        "--paper", metavar="TEXT", help="published tables: only papers whose name contains TEXT"
    )
    parser.add_argument(
        "--protocol", metavar="ID", help="the evaluation protocol id (P1, ...; --against SWEEP)"
    )
    parser.add_argument(
        "--level",
        type=bounded(float, gt=0, lt=1),
        default=0.9,
        help="nominal coverage of the prediction intervals (default 0.9)",
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTOR_CHOICES,
        help="where the measurement jobs run (default: the sweep's launch.executor)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the measurements to run and their GPU-hour cost; change nothing",
    )


def default_sweep(against: str) -> Path:
    from harness.cli.sweep import default_sweep_path

    own = Path("sweeps") / f"{against}.yaml"
    return own if against != PUBLISHED and own.exists() else default_sweep_path()


def run(args: argparse.Namespace) -> int:
    from harness.cli.status import ingest_quietly
    from harness.config.encoders import load_catalogue
    from harness.config.sweep import load_sweep
    from harness.paths import results_root
    from harness.plan import resolve_encoders

    catalogue = load_catalogue(args.catalogue)
    patterns = [p.strip() for p in args.encoders.split(",") if p.strip()]
    candidates = resolve_encoders(catalogue, patterns)
    root = results_root().absolute()
    sweep_path = args.sweep or default_sweep(args.against)
    if args.against == PUBLISHED:
        targets = published_targets(catalogue, args)
    else:
        if root.is_dir():
            ingest_quietly(root)
        targets = sweep_targets(root, args)
    trained = [e for e in targets.points.encoder if e not in candidates]
    measure = [*candidates, *(e for e in trained if e not in candidates)]
    listed = "[" + ", ".join(f"'{n}'" for n in measure) + "]"
    sweep = load_sweep(sweep_path, [*args.overrides, f"encoders={listed}"])
    plan = measurement_plan(catalogue, sweep)
    _print_targets(targets, candidates)
    if args.dry_run:
        return _dry_run(plan, root)
    if not measure_encoders(plan, root, args.executor or sweep.launch.executor):
        return 1
    metrics = measured_metrics(root, plan)
    return fit_and_report(root, plan, targets, metrics, candidates, args)


# ----------------------------------------------------------------------------- fit targets


class Targets:
    """The FIDs of one fit: ``points`` (encoder, fid, facet, protocol, fid_label) and notes."""

    def __init__(self, against: str, points: Any, notes: list[str]) -> None:
        self.against = against
        self.points = points
        self.notes = notes

    @property
    def facet(self) -> str:
        return str(self.points.facet.iloc[0])

    @property
    def protocol(self) -> str:
        return str(self.points.protocol.iloc[0])

    @property
    def fid_label(self) -> str:
        return str(self.points.fid_label.iloc[0])


def _filtered(points: Any, args: argparse.Namespace, *, step_column: str = "step") -> Any:
    from harness.report.published import model_key

    if args.model:
        points = points[points.model.map(model_key) == model_key(args.model)]
    if args.method:
        points = points[points.method == args.method]
    if args.step is not None:
        points = points[points[step_column] == args.step]
    if getattr(args, "cfg", None) is not None and "cfg" in points:
        points = points[points.cfg == args.cfg]
    if getattr(args, "paper", None) and "paper" in points:
        points = points[points.paper.str.contains(args.paper, regex=False)]
    if getattr(args, "protocol", None):
        points = points[points.protocol == args.protocol]
    return points


def _check_selection(points: Any, everything: Any, what: str) -> None:
    from harness.errors import HarnessError
    from harness.report.predict import check_fit_points

    if points.empty:
        facets = everything.groupby("facet").encoder.nunique()
        raise HarnessError(
            f"no FIDs of {what} match --model / --method / --step / --protocol",
            hint="facets: " + "; ".join(f"{k} ({v} encoders)" for k, v in facets.items()),
        )
    check_fit_points(points)


def published_targets(catalogue: Any, args: argparse.Namespace) -> Targets:
    """The published gFIDs of one paper table, joined to catalogue entries."""
    import pandas as pd

    from harness.errors import HarnessError
    from harness.report.predict import published_join, published_points
    from harness.report.published import published_fids
    from harness.store.published import PUBLISHED_CSV, read_published

    if args.protocol:
        raise HarnessError("--protocol applies to --against SWEEP (published tables have none)")
    fids = published_fids(pd.DataFrame(read_published(PUBLISHED_CSV.read_bytes())))
    names = {spec.name: spec.published_name for spec in catalogue.encoders}
    join = published_join(names, fids.encoder.unique())
    if join.ambiguous:
        raise HarnessError(
            "published names shared by several catalogue entries: "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(join.ambiguous.items())),
            hint="give each published encoder to one entry (published_name in encoders.yaml)",
        )
    everything = published_points(fids, join.mapped)
    selected = _filtered(everything, args)
    points = selected[selected.encoder.notna()]
    _check_selection(points, everything[everything.encoder.notna()], "the published tables")
    notes = []
    unmapped = sorted(selected[selected.encoder.isna()].published_name)
    if unmapped:
        notes.append(
            f"published encoders of this table with no catalogue entry (left out): "
            f"{', '.join(unmapped)}"
        )
    return Targets(PUBLISHED, points.reset_index(drop=True), notes)


def sweep_targets(root: Path, args: argparse.Namespace) -> Targets:
    """One facet of a sweep's FIDs in the results database (the report's protocol guard)."""
    from harness.report.data import load_study, open_database
    from harness.report.options import ReportOptions

    with open_database(root) as con:
        study = load_study(con, ReportOptions(sweep=args.against, step=args.step))
    everything = study.points
    points = _filtered(everything, args)
    _check_selection(points, everything, f"sweep {args.against}")
    keep = ["encoder", "fid", "facet", "protocol", "fid_label", "model", "method", "step"]
    return Targets(args.against, points[keep].reset_index(drop=True), list(study.warnings))


def _print_targets(targets: Targets, candidates: list[str]) -> None:
    fitted = sorted(targets.points.encoder)
    print(f"fit against {targets.against}: {targets.facet} ({len(fitted)} encoders with a FID)")
    for note in targets.notes:
        print(f"note: {note}")
    new = [c for c in candidates if c not in set(fitted)]
    print(f"to rank: {', '.join(new) or 'none (every named encoder has a FID)'}")


# ----------------------------------------------------------------------------- measurements


def measurement_plan(catalogue: Any, sweep: Any) -> Any:
    """The ``spatial`` and ``probe`` stages of ``sweep`` (same content keys as ``harness
    sweep``), as the plan ``rank-<sweep>``."""
    from harness.plan import Plan, build_plan

    full = build_plan(catalogue, sweep)
    renamed = sweep.model_copy(update={"name": f"rank-{sweep.name}"})
    stages = [s for s in full.stages if s.stage in MEASUREMENT_KINDS]
    return Plan(sweep=renamed, stages=stages, encoders=full.encoders)


def _dry_run(plan: Any, root: Path) -> int:
    from harness.cli.sweep import print_plan
    from harness.launch.jobs import JobPoller
    from harness.launch.submit import decide, plan_statuses

    poller = JobPoller(plan.sweep.launch.poll_min_s, plan.sweep.launch.poll_max_s)
    print_plan(plan, decide(plan, plan_statuses(plan, root, poller)))
    images = plan.sweep.spatial.images or plan.sweep.data.val_images
    print(
        f"measurements: {len(plan.encoders)} encoders × {images} images (spatial) and "
        f"{plan.sweep.data.train_images} + {plan.sweep.data.val_images} images (probe); "
        f"≈ {plan.total_gpu_hours * 60:.1f} GPU-minutes in all (cost model of harness.plan)"
    )
    return 0


def measure_encoders(plan: Any, root: Path, executor_name: str) -> bool:
    """Run (or reuse) every measurement of ``plan``; True when all are done."""
    from harness.cli.status import ingest_quietly, watch
    from harness.launch.executor import resolve_executor
    from harness.launch.jobs import JobPoller
    from harness.launch.submit import plan_statuses, submit_plan

    executor = resolve_executor(executor_name)
    poller = JobPoller(plan.sweep.launch.poll_min_s, plan.sweep.launch.poll_max_s)
    report = submit_plan(plan, root, executor=executor, only=MEASUREMENT_KINDS, poller=poller)
    reused = sum(d.action == "done" for d in report.decisions.values())
    print(
        f"measurements: {reused} reused, {len(report.submitted)} run with the {executor} executor"
    )
    current = plan_statuses(plan, root, poller)
    if any(s.live for s in current.values()):  # SLURM: follow the jobs until they end
        watch(root, [plan.sweep.name], poller)  # the status table, as `harness sweep --wait`
        current = plan_statuses(plan, root, poller)
    else:
        ingest_quietly(root)
    failed = [s for s in plan.stages if current[s.key].state != "done"]
    for stage in failed:
        status = current[stage.key]
        print(f"{stage.label}: {status.state} {status.detail}".rstrip(), file=sys.stderr)
    if failed:
        print(
            f"{len(failed)} measurement(s) did not finish: see `harness status --sweep "
            f"{plan.sweep.name}`; re-run with the same arguments to reuse the rest",
            file=sys.stderr,
        )
    return not failed


def measured_metrics(root: Path, plan: Any) -> Any:
    """One row per encoder: LDS, CDS, SRSS, RMSC and LP top-1 from the plan's own artifacts."""
    import numpy as np
    import pandas as pd

    from harness.artifacts import read_result
    from harness.paths import stage_dir

    rows: dict[str, dict[str, Any]] = {}
    for stage in plan.stages:
        result = read_result(stage_dir(root, stage.stage, stage.key)) or {}
        payload = result.get("payload") or {}
        row = rows.setdefault(stage.labels["encoder"], {"encoder": stage.labels["encoder"]})
        row[f"{stage.stage}_key"] = stage.key
        if stage.stage == "spatial":
            for name, value in (payload.get("metrics") or {}).items():
                mean = value.get("mean") if isinstance(value, dict) else None
                row[name] = np.nan if mean is None else float(mean)
        else:
            top1 = payload.get("top1")
            row["lp_top1"] = np.nan if top1 is None else float(top1)
    frame = pd.DataFrame(list(rows.values()))
    for column in (*SPATIAL_METRICS, "lp_top1"):
        if column not in frame:
            frame[column] = np.nan
    return frame


# ----------------------------------------------------------------------------- fit


def fit_and_report(
    root: Path,
    plan: Any,
    targets: Targets,
    metrics: Any,
    candidates: list[str],
    args: argparse.Namespace,
) -> int:
    import numpy as np

    from harness.cli.status import ingest_quietly
    from harness.io import content_hash, write_text
    from harness.report import predict as P
    from harness.store.predictions import write_fit

    points = targets.points.merge(metrics, on="encoder", how="inner")
    fitted = set(points.encoder)
    new = metrics[metrics.encoder.isin([c for c in candidates if c not in fitted])]
    cv = P.cross_validate(points, level=args.level)
    models = P.models_for(points)
    predictions = P.predict(points, new, models, args.level)
    keys = sorted(f"{s.stage}:{s.key}" for s in plan.stages)
    fit_id = content_hash(
        {
            "against": targets.against,
            "facet": targets.facet,
            "fids": sorted(zip(points.encoder, points.fid.round(9))),
            "measurements": keys,
            "candidates": sorted(new.encoder),
            "level": args.level,
        }
    )
    rows = []
    for model in predictions.model.unique():
        for row in P.ranked(predictions, model).itertuples():
            rows.append({**_pred(row), "role": "candidate", "rank": int(row.rank)})
    for row in cv.held_out.itertuples():
        rows.append({**_pred(row), "role": "held_out", "measured_fid": row.measured})
    header = {
        "against": targets.against,
        "facet": targets.facet,
        "protocol": targets.protocol,
        "measure_sweep": plan.sweep.name.removeprefix("rank-"),
        "level": args.level,
    }
    provenance = {
        "trained_encoders": sorted(fitted),
        "candidates": sorted(new.encoder),
        "measurement_stages": keys,
        "fid_label": targets.fid_label,
        "notes": targets.notes,
        "options": {k: getattr(args, k) for k in ("model", "method", "step", "protocol")},
    }
    path = write_fit(
        root,
        fit_id,
        header=header,
        predictions=rows,
        cv=cv.table.to_dict("records"),
        provenance=provenance,
    )
    write_text(path.parent / "cv.csv", cv.table.to_csv(index=False))
    best = cv.best()
    shown = [m for m in dict.fromkeys([best or "LDS", "LP", P.MEAN_ONLY]) if m]
    figure = P.predicted_vs_measured_figure(
        cv, shown, predictions, title=f"{targets.against}: {targets.facet}", fid_label="FID"
    )
    figure.savefig(path.parent / "predicted_vs_measured.png", dpi=110)
    ingest_quietly(root)

    print(f"\nleave-one-encoder-out cross-validation ({len(points)} encoders, {targets.facet}):")
    print(P.cv_display(cv).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if best is None:
        print("no model beats the mean-only predictor here: the predictions below are not "
              "better than guessing the average FID")  # fmt: skip
    ranking_model = best or P.MEAN_ONLY
    table = P.ranked(predictions, ranking_model)
    print(f"\npredicted FID of the encoders without one (model {ranking_model}, "
          f"{args.level:.0%} prediction intervals):")  # fmt: skip
    if table.empty:
        print("(none: every named encoder has a FID in this fit)")
    else:
        shown_table = table[["rank", "encoder", "predicted", "low", "high", "n_train"]]
        print(shown_table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nwritten: {path} (+ cv.csv, predicted_vs_measured.png); table `predictions`")
    return 0 if np.isfinite(cv.table.mae.astype(float)).any() else 2


def _pred(row: Any) -> dict[str, Any]:
    return {
        "encoder": row.encoder,
        "model": row.model,
        "features": row.features,
        "predicted_fid": row.predicted,
        "low": row.low,
        "high": row.high,
        "n_train": getattr(row, "n_train", None),
    }


COMMAND = Command(
    name="rank",
    help="predict each encoder's REPA FID from its spatial metrics and linear probe",
    examples="""
        harness rank encoders.yaml --encoders pixels,hog --sweep sweeps/tiny.yaml --paper iREPA \\
            --model SiT-XL/2 --method irepa --step 100000 --cfg 1 --dry-run
        harness rank encoders.yaml --encoders 'siglip2-*' --against published --paper iREPA \\
            --model SiT-XL/2 --method irepa --step 100000 --cfg 1 \\
            --sweep sweeps/irepa-sitxl-100k.yaml --dry-run
        harness rank encoders.yaml --encoders all --against cpu-study-full --method repa
    """,
    add_arguments=add_arguments,
    run=run,
    order=37,
)
