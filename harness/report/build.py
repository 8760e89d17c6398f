"""``build_report``: database -> study -> statistics -> figures -> files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.logs import event, get_logger
from harness.paths import database_path, report_dir
from harness.progress import progress
from harness.report.analysis import analyse
from harness.report.data import load_study, open_database
from harness.report.figures import FIGURES, FigureOutput, ReportContext, Skipped, figure_style
from harness.report.options import ReportOptions
from harness.report.published import load_published_study, reproduction_pairs
from harness.report.render import ReportFiles, write_report

log = get_logger(__name__)


def build_report(root: Path, options: ReportOptions, out_dir: Path | None = None) -> ReportFiles:
    """Read ``root``'s database read-only and write the full report.

    Args:
        root: the results root (holds ``harness.duckdb``).
        options: what to report (sweep, step, mode, bootstrap settings).
        out_dir: where to write (default ``<root>/report``).

    Returns:
        The files written, the warnings shown and the figures skipped.

    Raises:
        HarnessError: no database, no evaluations or no encoder metrics (says what to run).
    """
    with open_database(root) as con:
        if options.against_published:
            study = load_published_study(con, options)
        else:
            study = load_study(con, options)
    analysis = analyse(study.points, options)
    reproduction = pd.DataFrame() if options.against_published else reproduction_pairs(study)
    ctx = ReportContext(
        study=study, analysis=analysis, options=options, reproduction=reproduction, root=root
    )
    outputs: list[FigureOutput | Skipped] = []
    with figure_style():
        for _, draw in progress(FIGURES.items(), desc="figures", unit="fig"):
            outputs.append(draw(ctx))
    out_dir = out_dir or report_dir(root)
    files = write_report(ctx, outputs, out_dir, source=str(database_path(root)))
    event(
        log,
        "report.written",
        out=str(out_dir / "index.html"),
        figures=sum(isinstance(o, FigureOutput) for o in outputs),
        warnings=len(files.warnings),
    )
    return files
