"""``harness sweep ENCODERS.yaml``: plan and submit a study (the product's main verb).

Examples::

    harness sweep encoders.yaml --dry-run                       # the default sweep's plan
    harness sweep encoders.yaml --sweep sweeps/tiny.yaml --executor local
    harness sweep encoders.yaml --sweep sweeps/irepa-sitxl-100k.yaml --encoders 'dinov2-*'
    harness sweep encoders.yaml --sweep sweeps/tiny.yaml --set train.steps=20 --wait
    harness sweep encoders.yaml --sweep sweeps/tiny.yaml --retry-failed

Expands the catalogue × the sweep file (default: ``sweeps/default.yaml``, the papers' protocol)
into a plan of stage instances, checks every input, then submits what is not done yet (SLURM job
arrays with ``afterok`` dependencies; the local and debug executors run the plan here). Re-running
the same command submits nothing new; ``--retry-failed`` resubmits failed stages (they resume
from their checkpoints). ``--dry-run`` prints the plan and its GPU-hour estimate and changes
nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from harness.cli import Command, add_overrides_argument
from harness.config.resources import EXECUTOR_CHOICES, STAGE_KINDS

DEFAULT_SWEEP = Path("sweeps") / "default.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("catalogue", metavar="ENCODERS.yaml", help="the encoder catalogue")
    parser.add_argument(
        "--sweep", metavar="FILE", help=f"sweep file (default: {DEFAULT_SWEEP}, the paper protocol)"
    )
    add_overrides_argument(parser, what="a sweep setting")
    parser.add_argument(
        "--encoders",
        metavar="A,B",
        help="only these of the sweep's encoders (names or globs; they pick from the sweep's "
        "encoders: list, or from the catalogue when the sweep file has none)",
    )
    parser.add_argument(
        "--only",
        metavar="STAGE[,STAGE]",
        help=f"submit only these stage kinds ({', '.join(STAGE_KINDS)})",
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTOR_CHOICES,
        help="where jobs run (default: the sweep's launch.executor; auto = slurm if sbatch works, "
        "else local; debug = in this process, with pdb on a failure)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    parser.add_argument("--wait", action="store_true", help="SLURM: follow the jobs until done")
    parser.add_argument(
        "--retry-failed", action="store_true", help="resubmit failed / interrupted stages"
    )
    parser.add_argument(
        "--hold", action="store_true", help="SLURM: submit held jobs (scontrol release to start)"
    )


def default_sweep_path() -> Path:
    """``sweeps/default.yaml`` of the working directory, else of the harness source tree."""
    if DEFAULT_SWEEP.exists():
        return DEFAULT_SWEEP
    from harness.launch.snapshot import source_tree

    return source_tree() / DEFAULT_SWEEP


def load_inputs(args: argparse.Namespace) -> tuple[Any, Any]:
    """The catalogue and the sweep (with ``--set`` and ``--encoders`` applied)."""
    from harness.config.encoders import load_catalogue
    from harness.config.loader import load_yaml
    from harness.config.sweep import load_sweep, only_encoders

    catalogue = load_catalogue(args.catalogue)
    path = args.sweep or default_sweep_path()
    sweep = load_sweep(path, args.overrides, catalogue)
    if args.encoders:
        patterns = [n.strip() for n in args.encoders.split(",") if n.strip()]
        sweep = only_encoders(sweep, catalogue, patterns, load_yaml(path).where(("encoders",)))
    return catalogue, sweep


def parse_only(text: str | None) -> list[str] | None:
    from harness.errors import ConfigError, did_you_mean

    if not text:
        return None
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for kind in kinds:
        if kind not in STAGE_KINDS:
            raise ConfigError(
                f"--only {kind!r}: not a stage{did_you_mean(kind, STAGE_KINDS)}",
                hint=f"allowed: {', '.join(STAGE_KINDS)}",
            )
    return kinds


def run(args: argparse.Namespace) -> int:
    from harness.errors import HarnessError
    from harness.launch.executor import resolve_executor
    from harness.launch.jobs import JobPoller
    from harness.launch.preflight import check_inputs
    from harness.launch.submit import decide, plan_statuses, submit_plan
    from harness.paths import results_root
    from harness.plan import build_plan

    only = parse_only(args.only)
    catalogue, sweep = load_inputs(args)
    plan = build_plan(catalogue, sweep)
    root = results_root().absolute()
    poller = JobPoller(sweep.launch.poll_min_s, sweep.launch.poll_max_s)
    if args.dry_run:
        decisions = decide(
            plan, plan_statuses(plan, root, poller), retry_failed=args.retry_failed, only=only
        )
        print_plan(plan, decisions)
        try:
            check_inputs(plan, [d.stage for d in decisions.values() if d.action == "submit"])
        except HarnessError as exc:
            print(f"\nnot submittable yet: {exc}", file=sys.stderr)
        return 0
    executor = resolve_executor(args.executor or sweep.launch.executor)
    progress = None
    if executor != "slurm":
        current = plan_statuses(plan, root, poller)
        todo = decide(plan, current, retry_failed=args.retry_failed, only=only)
        check_inputs(plan, [d.stage for d in todo.values() if d.action == "submit"])  # no bar yet
        progress = _LocalProgress(plan, sum(d.action == "submit" for d in todo.values()))
    report = submit_plan(
        plan,
        root,
        executor=executor,
        retry_failed=args.retry_failed,
        only=only,
        hold=args.hold,
        poller=poller,
        on_progress=progress.update if progress else None,
    )
    if progress:
        progress.close()
    waited = executor != "slurm" or (args.wait and report.submitted)
    if not waited:  # submitted to SLURM: the table says what was submitted
        print_plan(plan, report.decisions, submitted=report)
        return 0
    if executor == "slurm":
        from harness.cli.status import watch

        watch(root, [sweep.name], poller)
    else:
        from harness.cli.status import ingest_quietly

        ingest_quietly(root)
    poller.invalidate()
    outcome = decide(plan, plan_statuses(plan, root, poller), only=only)  # the final states
    print_plan(plan, outcome, submitted=report)
    # this run's failures (a stage that failed before and was not retried is in the table)
    failed = [d for k, d in outcome.items() if d.action == "failed" and k in report.submitted]
    for decision in failed:
        error = (decision.status.detail or "no error recorded").strip().splitlines()
        print(f"failed: {decision.stage.label}: {error[-1] if error else ''}", file=sys.stderr)
    if failed:
        print(
            f"{len(failed)} stage(s) did not finish: see `harness status --sweep {sweep.name}`",
            file=sys.stderr,
        )
        return 1
    return 0


CAPTION = "live = queued or running; GPU-h = estimated H100 GPU-hours (harness.plan cost model)"


def _hours(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


class _LocalProgress:
    """A progress bar over the stages the local / debug executor runs."""

    def __init__(self, plan: Any, total: int) -> None:
        from harness.progress import progress

        self.labels = {stage.key: stage.label for stage in plan.stages}
        self.bar = progress(total=total, desc="stages", unit="stage")

    def update(self, key: str, state: str) -> None:
        self.bar.set_postfix_str(f"last: {self.labels.get(key, key)} {state}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def print_plan(plan: Any, decisions: dict[str, Any], submitted: Any = None) -> None:
    """The plan as a table: instances per stage kind, by decision, with GPU-hour estimates."""
    from rich.console import Console
    from rich.table import Table

    columns = ("done", "diverged", "live", "failed", "submit", "blocked", "skipped")
    headers = ("done", "diverged", "live", "failed", "to run", "blocked", "skipped")
    title = f"sweep {plan.sweep.name}: {len(plan.encoders)} encoders × " + (
        f"{len(plan.sweep.all_methods)} methods × {len(plan.sweep.models)} models × "
        f"{len(plan.sweep.seeds)} seeds"
    )
    table = Table(title=title, title_justify="left", caption=CAPTION, caption_justify="left")
    table.add_column("stage", no_wrap=True)
    table.add_column("n", justify="right")
    for header in headers:
        table.add_column(header, justify="right")
    table.add_column("GPU-h to run", justify="right", no_wrap=True)
    table.add_column("GPU-h all", justify="right", no_wrap=True)
    totals: dict[str, float] = {}
    for kind in STAGE_KINDS:
        mine = [d for d in decisions.values() if d.stage.stage == kind]
        if not mine:
            continue
        counts = {c: sum(d.action == c for d in mine) for c in columns}
        todo_h = sum(d.stage.est_gpu_hours for d in mine if d.action == "submit")
        all_h = sum(d.stage.est_gpu_hours for d in mine)
        for name, value in (("n", len(mine)), ("todo", todo_h), ("all", all_h), *counts.items()):
            totals[name] = totals.get(name, 0) + value
        table.add_row(
            kind,
            str(len(mine)),
            *(str(counts[c] or "") for c in columns),
            _hours(todo_h),
            _hours(all_h),
        )
    table.add_row(
        "total",
        str(int(totals.get("n", 0))),
        *(str(int(totals.get(c, 0)) or "") for c in columns),
        _hours(totals.get("todo", 0)),
        _hours(totals.get("all", 0)),
        style="bold",
    )
    console = Console(width=max(100, shutil.get_terminal_size().columns))
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}")
    if submitted is not None:
        action = "submitted" if submitted.executor == "slurm" else "ran"
        console.print(
            f"{action} {len(submitted.submitted)} stage job(s) with the {submitted.executor} "
            f"executor"
            + (f" ({submitted.sbatch_calls} sbatch calls)" if submitted.sbatch_calls else "")
        )


COMMAND = Command(
    name="sweep",
    help="plan and submit a study: encoders × methods × SiT sizes (SLURM or local)",
    examples="""
        harness sweep encoders.yaml --dry-run
        harness sweep encoders.yaml --sweep sweeps/tiny.yaml --executor local
        harness sweep encoders.yaml --sweep sweeps/irepa-sitxl-100k.yaml --encoders 'dinov2-*'
        harness sweep encoders.yaml --sweep sweeps/tiny.yaml --retry-failed --wait
    """,
    add_arguments=add_arguments,
    run=run,
    order=10,
)
