"""Submit a plan: decide what runs, check everything, then submit in dependency waves.

Decision per stage instance (in dependency order):

* ``done`` / ``diverged``: never run again;
* queued or running (a live job of any sweep): nothing to do; dependents wait on its job id;
* ``failed`` / ``interrupted`` (and not queued again): resubmitted only with ``retry_failed``
  (training resumes from its checkpoints, evaluation from its sample shards);
* ``planned``: submitted, unless ``only`` excludes its stage kind or an upstream instance will
  not run (failed, diverged, excluded): then it is ``blocked``.

Before the first ``sbatch``: inputs are checked (:func:`harness.plan.check_inputs`) and every
distinct resource request goes through ``sbatch --test-only``, so bad input submits nothing and
leaves the saved plan as it was. Then the plan, each instance's ``spec.json`` and a code snapshot
are written, and instances are submitted kind by kind as job arrays grouped by their dependency
job ids (``afterok``); each array's job ids are appended to ``jobs.jsonl`` as soon as ``sbatch``
returns, so a submission that fails halfway leaves a consistent record and a re-run submits only
the rest.

SLURM: ``submit_plan`` returns after submitting. Local and debug executors have no scheduler:
the DAG runs here, in dependency order, ``launch.local_parallelism`` jobs at a time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import SubmitError
from harness.io import append_jsonl
from harness.launch.jobs import (
    JobPoller,
    StageStatus,
    jobs_file,
    record_vanished,
    stage_status,
    statuses,
)
from harness.logs import event, get_logger
from harness.paths import jobs_dir
from harness.plan import STAGE_ORDER, Plan, PlannedStage, check_inputs, save_plan
from harness.stages import STAGES
from harness.stages.runner import StageJob, write_spec

log = get_logger(__name__)

ACTIONS = ("done", "diverged", "live", "failed", "submit", "skipped", "blocked")
_LOCAL_POLL_S = 0.5


@dataclass(frozen=True)
class Decision:
    """What happens to one stage instance in this submission."""

    stage: PlannedStage
    status: StageStatus
    action: str  # one of ACTIONS
    reason: str = ""


@dataclass
class SubmitReport:
    """What a submission did."""

    executor: str
    decisions: dict[str, Decision]
    submitted: dict[str, str] = field(default_factory=dict)  # key -> job id
    sbatch_calls: int = 0
    finished: dict[str, str] = field(default_factory=dict)  # local/debug: key -> final state

    def counts(self) -> Counter[tuple[str, str]]:
        """(stage, action) → number of instances."""
        return Counter((d.stage.stage, d.action) for d in self.decisions.values())


def decide(
    plan: Plan,
    current: dict[str, StageStatus],
    *,
    retry_failed: bool = False,
    only: Iterable[str] | None = None,
) -> dict[str, Decision]:
    """The action of every instance of ``plan`` given its current status."""
    allowed = set(only) if only is not None else None
    decisions: dict[str, Decision] = {}
    for stage in plan.stages:  # dependency order
        status = current[stage.key]
        if status.state in ("done", "diverged"):
            decisions[stage.key] = Decision(stage, status, status.state)
            continue
        if status.live:
            decisions[stage.key] = Decision(stage, status, "live", f"job {status.job_id}")
            continue
        if status.state in ("failed", "interrupted") and not retry_failed:
            decisions[stage.key] = Decision(
                stage, status, "failed", "use --retry-failed to resubmit"
            )
            continue
        if allowed is not None and stage.stage not in allowed:
            decisions[stage.key] = Decision(stage, status, "skipped", "excluded by --only")
            continue
        upstream = [decisions[u] for u in stage.needs]
        stuck = [u for u in upstream if u.action not in ("done", "live", "submit")]
        if stuck:
            first = stuck[0]
            decisions[stage.key] = Decision(
                stage, status, "blocked", f"{first.stage.label} is {first.action}"
            )
            continue
        decisions[stage.key] = Decision(stage, status, "submit")
    return decisions


def plan_statuses(plan: Plan, root: Path, poller: JobPoller) -> dict[str, StageStatus]:
    return statuses(root, [(s.stage, s.key) for s in plan.stages], poller)


def submit_plan(
    plan: Plan,
    root: Path,
    *,
    executor: str,
    retry_failed: bool = False,
    only: Iterable[str] | None = None,
    hold: bool = False,
    poller: JobPoller | None = None,
    on_progress: Callable[[str, str], None] | None = None,
) -> SubmitReport:
    """Submit what ``plan`` still needs (see the module docstring).

    Args:
        plan: the plan (``harness.plan.build_plan``).
        root: results root.
        executor: ``slurm``, ``local`` or ``debug`` (already resolved).
        retry_failed: resubmit failed / interrupted instances.
        only: submit only these stage kinds.
        hold: SLURM: submit held jobs (benchmarks; release with ``scontrol release``).
        poller: job-state poller (a fresh one by default).
        on_progress: local/debug: called with (key, final state) as instances finish.

    Returns:
        The report (decisions, submitted job ids).

    Raises:
        DataError / ConfigError: an input is missing (nothing submitted, plan unchanged).
        SubmitError: SLURM rejects a request (before submitting: nothing submitted).
    """
    from harness.launch.executor import Launcher
    from harness.launch.snapshot import take_snapshot

    root = root.absolute()
    sweep = plan.sweep
    poller = poller or JobPoller(sweep.launch.poll_min_s, sweep.launch.poll_max_s)
    current = plan_statuses(plan, root, poller)
    decisions = decide(plan, current, retry_failed=retry_failed, only=only)
    report = SubmitReport(executor=executor, decisions=decisions)
    todo = [d.stage for d in decisions.values() if d.action == "submit"]
    kinds = [k for k in STAGE_ORDER if any(s.stage == k for s in todo)]

    # -- everything that can fail before the first submission ------------------------------------
    check_inputs(plan, kinds)
    record_vanished(root, current)  # jobs killed without a word: their failure goes on disk
    launcher = Launcher(
        executor, jobs_dir(root), hold=hold, submit_interval_s=sweep.launch.submit_interval_s
    )
    for kind in kinds:
        launcher.check_resources(sweep.resources.for_stage(kind), name=kind)
    save_plan(plan, root)
    if not todo:
        return report
    snapshot = take_snapshot(root) if sweep.launch.snapshot and executor != "debug" else None
    for stage in todo:
        write_spec(
            root,
            stage.stage,
            stage.key,
            config=stage.config,
            needs=[(decisions[u].stage.stage, u) for u in stage.needs],
            labels=stage.labels,
            version=STAGES.get(stage.stage).version,
        )
    env = {"HARNESS_RESULTS": str(root), **(snapshot.env() if snapshot else {})}
    workdir = snapshot.path if snapshot else None
    if executor == "slurm":
        _submit_waves(plan, root, todo, decisions, launcher, report, env, workdir)
        report.sbatch_calls = launcher.sbatch_calls
    else:
        _run_here(plan, root, todo, decisions, launcher, report, env, workdir, on_progress)
    poller.invalidate()
    return report


def _record(
    root: Path, sweep: str, stage: PlannedStage, job_id: str, executor: str, attempt: int, log: str
) -> None:
    append_jsonl(
        jobs_file(root, sweep),
        {
            "key": stage.key,
            "stage": stage.stage,
            "job_id": job_id,
            "executor": executor,
            "submitted_at": time.time(),
            "attempt": attempt,
            "log": log,
        },
    )


def _job_env(env: dict[str, str], stage: str, plan: Plan) -> dict[str, str]:
    cpus = plan.sweep.resources.for_stage(stage).cpus_per_task
    return {**env, "OMP_NUM_THREADS": str(cpus), "HARNESS_PROGRESS": "1"}


def _submit_waves(
    plan: Plan,
    root: Path,
    todo: list[PlannedStage],
    decisions: dict[str, Decision],
    launcher: object,
    report: SubmitReport,
    env: dict[str, str],
    workdir: Path | None,
) -> None:
    """SLURM: one job array per stage kind and upstream job set, ``afterok`` on upstream jobs."""
    job_of = {key: str(d.status.job_id) for key, d in decisions.items() if d.action == "live"}
    for kind in STAGE_ORDER:
        groups: dict[tuple[str, ...], list[PlannedStage]] = {}
        for stage in (s for s in todo if s.stage == kind):
            deps = tuple(sorted({job_of[u] for u in stage.needs if u in job_of}))
            groups.setdefault(deps, []).append(stage)
        resources = plan.sweep.resources.for_stage(kind)
        for deps, members in groups.items():
            handles = launcher.submit(  # type: ignore[attr-defined]
                [StageJob(root, s.stage, s.key) for s in members],
                resources,
                name=f"{plan.sweep.launch.job_name}-{kind}",
                dependency=deps,
                env=_job_env(env, kind, plan),
                workdir=workdir,
            )
            for stage, handle in zip(members, handles, strict=True):
                attempt = decisions[stage.key].status.attempt + 1
                _record(root, plan.sweep.name, stage, handle.job_id, "slurm", attempt, handle.log)
                job_of[stage.key] = handle.job_id
                report.submitted[stage.key] = handle.job_id
    event(log, "sweep.submitted", sweep=plan.sweep.name, jobs=len(report.submitted))


def _run_here(
    plan: Plan,
    root: Path,
    todo: list[PlannedStage],
    decisions: dict[str, Decision],
    launcher: object,
    report: SubmitReport,
    env: dict[str, str],
    workdir: Path | None,
    on_progress: Callable[[str, str], None] | None,
) -> None:
    """Local / debug: run the DAG in dependency order, a few jobs at a time, until it is over."""
    parallel = plan.sweep.launch.local_parallelism if launcher.kind == "local" else 1  # type: ignore[attr-defined]
    pending = list(todo)
    running: dict[str, tuple[PlannedStage, object]] = {}
    poller = JobPoller()
    state_of = {key: d.action for key, d in decisions.items()}

    def finished(stage: PlannedStage, handle: object) -> None:
        status = stage_status(root, stage.stage, stage.key, None, poller)
        state = status.state if status.state != "planned" else "failed"
        error = handle.outcome_error() if state != "done" else None  # type: ignore[attr-defined]
        state_of[stage.key] = "done" if state == "done" else state
        report.finished[stage.key] = state
        if error and state != "done":
            event(log, "stage.failed", stage=stage.stage, key=stage.key, error=error[-500:])
        if on_progress is not None:
            on_progress(stage.key, state)

    while pending or running:
        for key, (stage, handle) in list(running.items()):
            if handle.done():  # type: ignore[attr-defined]
                del running[key]
                finished(stage, handle)
        launched = False
        for stage in list(pending):
            if len(running) >= parallel:
                break
            upstream = [state_of[u] for u in stage.needs]
            if any(s not in ("done", "submit") for s in upstream):
                pending.remove(stage)  # an upstream failed: this one cannot run
                state_of[stage.key] = "blocked"
                report.finished[stage.key] = "blocked"
                if on_progress is not None:
                    on_progress(stage.key, "blocked")
                continue
            if any(s != "done" for s in upstream):
                continue
            pending.remove(stage)
            (handle,) = launcher.submit(  # type: ignore[attr-defined]
                [StageJob(root, stage.stage, stage.key)],
                plan.sweep.resources.for_stage(stage.stage),
                name=f"{plan.sweep.launch.job_name}-{stage.stage}",
                env=_job_env(env, stage.stage, plan),
                workdir=workdir,
            )
            attempt = decisions[stage.key].status.attempt + 1
            kind = launcher.kind  # type: ignore[attr-defined]
            _record(root, plan.sweep.name, stage, handle.job_id, kind, attempt, handle.log or "")
            report.submitted[stage.key] = handle.job_id
            running[stage.key] = (stage, handle)
            launched = True
        if not launched and running:
            time.sleep(_LOCAL_POLL_S)
        elif not launched and not running and pending:
            raise SubmitError(f"local run stalled with {len(pending)} stages pending")  # a bug
