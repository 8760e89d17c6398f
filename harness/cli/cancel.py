"""``harness cancel [--sweep NAME] [--stage KIND ...]``: cancel the queued and running jobs of
submitted sweeps.

Examples::

    harness cancel --sweep tiny                 # every live job of the sweep
    harness cancel --sweep tiny --stage eval   # only its evaluation jobs

Running training jobs receive SIGTERM, save a checkpoint and stop (state ``interrupted``);
``harness sweep ... --retry-failed`` resumes them later. Stages shared with other sweeps
(spatial, probe, fid_ref) are cancelled for those sweeps too.
"""

from __future__ import annotations

import argparse

from harness.cli import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", metavar="NAME", help="one sweep (default: all saved plans)")
    parser.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="KIND",
        help="only stages of this kind (repeatable): latents, fid_ref, spatial, probe, train, eval",
    )


def run(args: argparse.Namespace) -> int:
    from harness.cli.sweep import parse_only
    from harness.errors import HarnessError
    from harness.launch.jobs import JobPoller, cancel_jobs, statuses
    from harness.paths import results_root
    from harness.plan import load_saved_plan, saved_plans

    root = results_root().absolute()
    kinds = parse_only(",".join(args.stage)) if args.stage else None
    names = [args.sweep] if args.sweep else saved_plans(root)
    if not names:
        raise HarnessError(f"no sweep has been submitted under {root}", hint="nothing to cancel")
    poller = JobPoller()
    live: list[tuple[str, str]] = []
    for name in names:
        plan = load_saved_plan(root, name)
        stages = [
            (s["stage"], s["key"]) for s in plan["stages"] if not kinds or s["stage"] in kinds
        ]
        for status in statuses(root, stages, poller).values():
            if status.live and status.job_id and status.executor:
                live.append((status.job_id, status.executor))
    count = cancel_jobs(sorted(set(live)))
    print(f"cancelled {count} job(s) of {', '.join(names)}")
    return 0


COMMAND = Command(
    name="cancel",
    help="cancel the queued and running jobs of submitted sweeps",
    examples="""
        harness cancel --sweep tiny
        harness cancel --sweep tiny --stage eval
    """,
    add_arguments=add_arguments,
    run=run,
    order=35,
)
