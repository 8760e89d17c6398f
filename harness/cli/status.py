"""``harness status [--sweep NAME] [--watch]``: where every stage of the submitted sweeps stands.

Examples::

    harness status                      # every sweep with a saved plan
    harness status --sweep tiny --watch # follow one sweep live (Ctrl-C stops watching, not jobs)

Ingests finished results into the database first (``harness ingest``), then shows per stage
kind: instances by state, progress and an ETA from the wall time of finished instances, and the
error and last log lines of every failed stage.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness.cli import Command

FAILURE_TAIL_LINES = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", metavar="NAME", help="one sweep (default: all saved plans)")
    parser.add_argument("--watch", action="store_true", help="refresh until every stage is over")
    parser.add_argument(
        "--no-ingest", action="store_true", help="do not ingest results into the database first"
    )


def run(args: argparse.Namespace) -> int:
    from harness.errors import HarnessError
    from harness.launch.jobs import JobPoller
    from harness.paths import results_root
    from harness.plan import saved_plans

    root = results_root().absolute()
    names = [args.sweep] if args.sweep else saved_plans(root)
    if not names:
        raise HarnessError(
            f"no sweep has been submitted under {root}",
            hint="run `harness sweep encoders.yaml --sweep sweeps/...` first "
            "(or pass --results DIR)",
        )
    poller = JobPoller()
    for name in names:  # jobs killed without a word: record them before ingesting
        sweep_view(root, name, poller, record=True)
    if not args.no_ingest:
        ingest_quietly(root)
    if not args.watch:
        views = [sweep_view(root, name, poller) for name in names]
        print_views(views)
        return 0
    return watch(root, names, poller)


def ingest_quietly(root: Path) -> str | None:
    """Run ``harness ingest`` (engineer E's store) when it is available; returns a note."""
    try:
        from harness.store.ingest import ingest
    except ImportError:
        return "the results store is not available: skipped ingest"
    from harness.errors import StoreError

    try:
        ingest(root)
    except (StoreError, OSError) as exc:  # OSError: e.g. a full disk; the status still shows
        print(f"warning: ingest skipped: {exc}", file=sys.stderr)
        return str(exc)
    return None


def sweep_view(root: Path, name: str, poller: Any, *, record: bool = False) -> dict[str, Any]:
    """The status of one saved sweep plan: summary rows, failures, totals (``record``: also write
    the failure of jobs that vanished while running into their ``state.json``)."""
    from harness.launch.jobs import load_submissions, record_vanished, stage_status
    from harness.plan import load_saved_plan

    plan = load_saved_plan(root, name)
    submissions = load_submissions(root)
    stages = plan["stages"]
    with poller.consistent():
        current = {
            s["key"]: stage_status(root, s["stage"], s["key"], submissions.get(s["key"]), poller)
            for s in stages
        }
    if record:
        record_vanished(root, current)
    rows: dict[str, dict[str, Any]] = {}
    failures = []
    for stage in stages:
        status = current[stage["key"]]
        row = rows.setdefault(
            stage["stage"], {"total": 0, "walls": [], "states": {}, "gpu_h_left": 0.0}
        )
        row["total"] += 1
        row["states"][status.state] = row["states"].get(status.state, 0) + 1
        if status.wall_time_s is not None:
            row["walls"].append(status.wall_time_s)
        if status.state not in ("done", "diverged"):
            row["gpu_h_left"] += stage.get("est_gpu_hours", 0.0)
        if status.state in ("failed", "interrupted"):
            log_path = (submissions.get(stage["key"]) or {}).get("log")
            failures.append((stage, status, log_path))
    return {
        "name": name,
        "rows": rows,
        "failures": failures,
        "current": current,
        "failed": bool(failures),
        "stages": stages,
    }


def _eta(row: dict[str, Any]) -> str:
    states = row["states"]
    left = row["total"] - states.get("done", 0) - states.get("diverged", 0)
    if left == 0:
        return "done"
    if not row["walls"]:
        return "—"
    running = max(1, states.get("running", 0))
    seconds = statistics.mean(row["walls"]) * left / running
    return _human(seconds)


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render_view(view: dict[str, Any]) -> Any:
    """A rich renderable of one sweep's status."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from harness.config.resources import STAGE_KINDS
    from harness.launch.jobs import STATES

    table = Table(title=f"sweep {view['name']}", title_justify="left")
    table.add_column("stage")
    table.add_column("total", justify="right")
    for state in STATES:
        table.add_column(state, justify="right")
    table.add_column("progress", justify="right")
    table.add_column("ETA", justify="right")
    totals = dict.fromkeys(STATES, 0)
    for kind in sorted(
        view["rows"], key=lambda k: STAGE_KINDS.index(k) if k in STAGE_KINDS else 99
    ):
        row = view["rows"][kind]
        for state in STATES:
            totals[state] += row["states"].get(state, 0)
        done = row["states"].get("done", 0)
        table.add_row(
            kind,
            str(row["total"]),
            *(str(row["states"].get(s, 0) or "") for s in STATES),
            f"{100 * done / row['total']:.0f}%",
            _eta(row),
        )
    total = sum(totals.values())
    table.add_row(
        Text("all", style="bold"),
        str(total),
        *(str(totals[s] or "") for s in STATES),
        f"{100 * totals['done'] / max(total, 1):.0f}%",
        "",
    )
    parts: list[Any] = [table]
    for stage, status, log_path in view["failures"]:
        state = f"{status.state} ({status.ended})" if status.ended else status.state
        lines = [
            f"{state}: {stage['label']}  ({stage['stage']} {stage['key']}, job {status.job_id})",
            f"  {status.detail}",
        ]
        tail = (status.log_tail or "").splitlines()[-FAILURE_TAIL_LINES:]
        lines += [f"  | {line}" for line in tail]
        if log_path:
            lines.append(f"  log: {log_path}")
        parts.append(Text("\n".join(lines), style="red" if status.state == "failed" else "yellow"))
    return Group(*parts)


def _console() -> Any:
    import shutil

    from rich.console import Console

    return Console(width=max(124, shutil.get_terminal_size().columns))  # every column unwrapped


def print_views(views: list[dict[str, Any]]) -> None:
    console = _console()
    for view in views:
        console.print(render_view(view))


def watch(root: Path, names: list[str], poller: Any) -> int:
    """Refresh the status until no stage of these sweeps is queued or running."""
    from rich.console import Group
    from rich.live import Live

    console = _console()
    views = [sweep_view(root, name, poller) for name in names]
    try:
        with Live(Group(*map(render_view, views)), console=console, refresh_per_second=1) as live:
            while any(s.live for v in views for s in v["current"].values()):
                time.sleep(poller.interval_s)
                views = [sweep_view(root, name, poller) for name in names]
                live.update(Group(*map(render_view, views)))
    except KeyboardInterrupt:
        console.print("stopped watching (the jobs keep running)")
        return 0
    ingest_quietly(root)
    return 0


COMMAND = Command(
    name="status",
    help="show where the stages of submitted sweeps stand (progress, ETA, failures)",
    examples="""
        harness status
        harness status --sweep tiny --watch
    """,
    add_arguments=add_arguments,
    run=run,
    order=30,
)
