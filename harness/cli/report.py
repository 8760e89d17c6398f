"""``harness report``: figures, correlation statistics and tables from the results database.

Examples::

    harness report                                   # every sweep, best-covered eval step
    harness report --sweep cpu-study --step 2000 --out /tmp/report
    harness report --against-published               # encoder metrics vs the papers' FIDs

Ingests first (when ``harness.store.ingest`` is installed), then reads the database read-only
and writes ``index.html`` (self-contained), ``report.md``, ``figures/`` and ``tables/*.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import NON_NEGATIVE_INT, POSITIVE_INT, Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", help="output folder (default: <results>/report)")
    parser.add_argument("--sweep", metavar="NAME", help="report one sweep only (default: all)")
    parser.add_argument(
        "--step",
        type=NON_NEGATIVE_INT,
        metavar="N",
        help="eval step to correlate (default: best covered)",
    )
    parser.add_argument(
        "--against-published",
        action="store_true",
        help="no training needed: correlate encoder metrics measured here with published FIDs",
    )
    parser.add_argument(
        "--n-boot",
        type=POSITIVE_INT,
        default=2000,
        metavar="B",
        help="bootstrap resamples (default 2000)",
    )
    parser.add_argument(
        "--seed", type=NON_NEGATIVE_INT, default=0, help="bootstrap seed (default 0)"
    )
    parser.add_argument(
        "--no-ingest", action="store_true", help="report the database as it is, without ingesting"
    )


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from harness.errors import ConfigError, HarnessError
    from harness.paths import database_path, results_root
    from harness.report.options import ReportOptions
    from harness.store.sources import has_artifacts

    try:
        options = ReportOptions(
            sweep=args.sweep,
            step=args.step,
            against_published=args.against_published,
            n_boot=args.n_boot,
            seed=args.seed,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid report option: {problems}") from None
    root = results_root(args.results)
    if not database_path(root).exists() and not has_artifacts(root):  # and create nothing
        raise HarnessError(
            f"no results in {root} (run `harness sweep ...` first)",
            hint="harness sweep encoders.yaml --sweep sweeps/cpu-study.yaml --wait; or point "
            "--results (or $HARNESS_RESULTS) at the results folder of a sweep",
        )
    if not args.no_ingest:
        _ingest(root)
    from harness.report.build import build_report

    files = build_report(root, options, Path(args.out) if args.out else None)
    print(f"report: {files.out_dir / 'index.html'}")
    print(f"        {files.out_dir / 'report.md'}  (+ {len(files.files) - 3} figure/table files)")
    for warning in files.warnings:
        print(f"warning: {warning}")
    return 0


def _ingest(root: Path) -> None:
    """Bring the database up to date with the artifacts. When the database is busy (an analyst
    holds it open), report from what it already holds and say so."""
    from harness.errors import StoreError
    from harness.paths import database_path
    from harness.store.ingest import ingest

    try:
        ingest(root)
    except StoreError as exc:
        if not database_path(root).exists():
            raise
        print(f"warning: ingest skipped, reporting from the database as it is: {exc.message}")


COMMAND = Command(
    name="report",
    help="figures, correlations with CIs and tables from the results database",
    examples="""
        harness report
        harness report --sweep cpu-study --step 2000 --out /tmp/report
        harness report --against-published
    """,
    add_arguments=add_arguments,
    run=run,
    order=70,
)
