"""``harness ingest``: load the stage artifacts, plans and submissions into the results database.

The only writer of ``results/harness.duckdb``. Incremental (only new or changed files are
read), idempotent (re-running changes nothing), safe against concurrent ingests (they queue
on a lock) and never stopped by one unreadable artifact (it is skipped and listed).
"""

from __future__ import annotations

import argparse
import json

from harness.cli import NON_NEGATIVE_FLOAT, Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="build a new database from the artifacts alone and swap it in atomically",
    )
    parser.add_argument(
        "--wait",
        type=NON_NEGATIVE_FLOAT,
        default=None,
        metavar="SECONDS",
        help="how long to wait while another ingest or a reader holds the database "
        "(default: $HARNESS_DB_WAIT or 60)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the ingest report as JSON instead of text"
    )


def run(args: argparse.Namespace) -> int:
    from harness.paths import results_root
    from harness.store.ingest import ingest

    report = ingest(results_root(args.results), rebuild=args.rebuild, wait=args.wait)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


COMMAND = Command(
    name="ingest",
    help="load stage artifacts, plans and job records into results/harness.duckdb",
    examples="""
        harness ingest                     # incremental: reads only new or changed files
        harness ingest --rebuild           # recreate the database from the artifacts alone
        harness ingest --wait 600 --json   # wait up to 10 min for a busy database; JSON report
    """,
    add_arguments=add_arguments,
    run=run,
    order=60,
)
