"""``harness query "SQL"``: read-only SQL over the results database (table, CSV or JSON)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli import NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, Command
from harness.errors import HarnessError

FORMATS = (
    "table",
    "csv",
    "json",
)  # as harness.store.query.FORMATS (not imported: keeps --help fast)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sql", nargs="?", metavar="SQL", help="the query (or use --file)")
    parser.add_argument(
        "-f", "--file", metavar="FILE", help="read the query from a .sql file (e.g. analysis/*.sql)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="table", help="output format (default: table)"
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write the result to FILE instead of stdout"
    )
    parser.add_argument(
        "--max-rows",
        type=NON_NEGATIVE_INT,
        default=100,
        metavar="N",
        help="rows a table shows (default 100; 0 = all; csv and json give all rows)",
    )
    parser.add_argument(
        "--wait",
        type=NON_NEGATIVE_FLOAT,
        default=None,
        metavar="SECONDS",
        help="how long to wait while an ingest holds the database (default: $HARNESS_DB_WAIT or 60)",
    )


def run(args: argparse.Namespace) -> int:
    from harness.io import write_text
    from harness.paths import results_root
    from harness.store.query import run_query

    if (args.sql is None) == (args.file is None):
        raise HarnessError(
            "give the query either as an argument or with --file, not both",
            hint='harness query "SELECT * FROM v_study" or harness query --file analysis/x.sql',
        )
    sql = args.sql
    if args.file is not None:
        try:
            sql = Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise HarnessError(f"cannot read query file {args.file}: {exc.strerror}") from exc
    text = run_query(
        results_root(args.results),
        sql,
        args.format,
        max_rows=args.max_rows or None,
        wait=args.wait,
    )
    if args.output:
        write_text(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


COMMAND = Command(
    name="query",
    help="run read-only SQL on results/harness.duckdb (table, csv or json output)",
    examples="""
        harness query "SELECT encoder, method, step, fid, lds FROM v_study ORDER BY fid"
        harness query "SELECT * FROM v_correlations WHERE metric = 'lds'" --format csv
        harness query --file analysis/correlations_per_size.sql --format json -o corr.json
        harness query "SHOW TABLES"
    """,
    add_arguments=add_arguments,
    run=run,
    order=70,
)
