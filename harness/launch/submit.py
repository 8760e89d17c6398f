"""Submit a plan: decide what runs, check everything, then submit in dependency waves.

Decision per stage instance (in dependency order):

* ``done`` / ``diverged``: never run again;
* queued or running (a live job of any sweep): nothing to do; dependents wait on its job id;
* ``failed`` / ``interrupted`` (and not queued again): resubmitted only with ``retry_failed``
  (training resumes from its checkpoints, evaluation from its sample shards);
* ``planned``: submitted, unless ``only`` excludes its stage kind or an upstream instance will
  not run (failed, diverged, excluded): then it is ``blocked``.

Before the first ``sbatch``: inputs are checked (:func:`harness.launch.preflight.check_inputs`:
data, reference statistics, extractor and encoder weights, every missing one in one message)
and every distinct resource request goes through ``sbatch --test-only``, so bad input submits
nothing and leaves the saved plan as it was. Then the plan, each instance's ``spec.json`` and a code snapshot
are written, and instances are submitted kind by kind as job arrays grouped by their dependency
job ids (``afterok``); each array's job ids are appended to ``jobs.jsonl`` as soon as ``sbatch``
returns, so a submission that fails halfway leaves a consistent record and a re-run submits only
the rest.

SLURM: ``submit_plan`` returns after submitting. Local and debug executors have no scheduler:
the DAG runs here, in dependency order, ``launch.local_parallelism`` jobs at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config.resources import STAGE_KINDS
from harness.errors import SubmitError
from harness.io import append_jsonl, make_dirs, share
from harness.launch.jobs import (
    JobPoller,
    StageStatus,
    jobs_file,
    record_vanished,
    stage_status,
    statuses,
)
from harness.launch.preflight import check_inputs
from harness.launch.runner import StageJob, write_spec
from harness.logs import event, get_logger
from harness.paths import jobs_dir
from harness.plan import Plan, PlannedStage, save_plan
from harness.stages import STAGES

if TYPE_CHECKING:
    from harness.launch.executor import JobHandle, Launcher, RefusedSubmission

log = get_logger(__name__)

ACTIONS = ("done", "diverged", "live", "failed", "submit", "skipped", "blocked")
_LOCAL_POLL_S = 0.5
LOCK_WAIT_S = 60.0  # how long a second `harness sweep` waits for the first to finish submitting


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

    root = root.absolute()
    sweep = plan.sweep
    poller = poller or JobPoller(sweep.launch.poll_min_s, sweep.launch.poll_max_s)
    current = plan_statuses(plan, root, poller)
    decisions = decide(plan, current, retry_failed=retry_failed, only=only)
    report = SubmitReport(executor=executor, decisions=decisions)
    todo = [d.stage for d in decisions.values() if d.action == "submit"]
    kinds = [k for k in STAGE_KINDS if any(s.stage == k for s in todo)]

    # -- everything that can fail before the first submission ------------------------------------
    check_inputs(plan, todo)
    launcher = Launcher(
        executor, jobs_dir(root), hold=hold, submit_interval_s=sweep.launch.submit_interval_s
    )
    for kind in kinds:
        launcher.check_resources(sweep.resources.for_stage(kind), name=kind)
    with submission_lock(root):
        # decide again under the lock: another `harness sweep` may have submitted meanwhile
        poller.invalidate()
        current = plan_statuses(plan, root, poller)
        record_vanished(root, current)  # jobs killed without a word: their failure goes on disk
        decisions = decide(plan, current, retry_failed=retry_failed, only=only)
        report.decisions = decisions
        todo = [d.stage for d in decisions.values() if d.action == "submit"]
        for kind in {s.stage for s in todo} - set(kinds):  # a stage whose job vanished meanwhile
            launcher.check_resources(sweep.resources.for_stage(kind), name=kind)
        save_plan(plan, root)
        if todo:
            _submit(plan, root, todo, decisions, launcher, report, on_progress)
    poller.invalidate()
    return report


@contextlib.contextmanager
def submission_lock(root: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """One submitting ``harness sweep`` per results root at a time (an ``fcntl`` lock on
    ``plans/.submit.lock``), so two concurrent invocations never submit the same stage twice.

    Raises:
        SubmitError: another submission still holds the lock after ``wait_s`` seconds.
    """
    path = root / "plans" / ".submit.lock"
    make_dirs(path.parent)
    with open(path, "a+", encoding="utf-8") as handle:
        share(path)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.seek(0)
                    raise SubmitError(
                        f"another `harness sweep` ({handle.read().strip() or 'unknown'}) is "
                        f"submitting to {root}",
                        hint="wait for it to finish (local runs hold the lock until done)",
                    ) from None
                time.sleep(_LOCAL_POLL_S)
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class _Batch:
    """The stage instances one submission sends, and where they go."""

    plan: Plan
    root: Path
    todo: list[PlannedStage]
    decisions: dict[str, Decision]
    launcher: Launcher
    report: SubmitReport
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None

    def submit(
        self, stages: list[PlannedStage], kind: str, dependency: tuple[str, ...] = ()
    ) -> list[JobHandle]:
        """Submit ``stages`` (all of stage ``kind``) as one group; record every job at once."""
        from harness.launch.executor import RefusedSubmission

        resources = self.plan.sweep.resources.for_stage(kind)
        try:
            handles = self.launcher.submit(
                [StageJob(self.root, s.stage, s.key) for s in stages],
                resources,
                name=f"{self.plan.sweep.launch.job_name}-{kind}",
                dependency=dependency,
                env={**self.env, "OMP_NUM_THREADS": str(resources.cpus_per_task)},
                workdir=self.workdir,
            )
        except RefusedSubmission as exc:  # the chunks sbatch accepted before run: record them
            self._record(stages[: len(exc.submitted)], exc.submitted)
            raise
        self._record(stages, handles)
        return handles

    def _record(self, stages: list[PlannedStage], handles: list[JobHandle]) -> None:
        for stage, handle in zip(stages, handles, strict=True):
            append_jsonl(
                jobs_file(self.root, self.plan.sweep.name),
                {
                    "key": stage.key,
                    "stage": stage.stage,
                    "job_id": handle.job_id,
                    "executor": handle.executor,
                    "submitted_at": time.time(),
                    "attempt": self.decisions[stage.key].status.attempt + 1,
                    "log": handle.log,
                },
            )
            self.report.submitted[stage.key] = handle.job_id


def _submit(
    plan: Plan,
    root: Path,
    todo: list[PlannedStage],
    decisions: dict[str, Decision],
    launcher: Launcher,
    report: SubmitReport,
    on_progress: Callable[[str, str], None] | None,
) -> None:
    from harness.launch.snapshot import take_snapshot

    batch = _Batch(plan, root, todo, decisions, launcher, report)
    snapshot = None
    if plan.sweep.launch.snapshot and launcher.kind != "debug":
        snapshot = take_snapshot(root)
        batch.env, batch.workdir = snapshot.env(), snapshot.path
    batch.env = {**batch.env, "HARNESS_RESULTS": str(root), "HARNESS_PROGRESS": "1"}
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
    if launcher.kind == "slurm":
        _submit_waves(batch)
        report.sbatch_calls = launcher.sbatch_calls
    else:
        _run_here(batch, on_progress)


def _submit_waves(batch: _Batch) -> None:
    """SLURM: one job array per stage kind and upstream job set, ``afterok`` on upstream jobs.

    Raises:
        SubmitError: sbatch refused a submission partway (a submit limit, the controller's job
            table full ...): what was submitted is recorded; the message says what was not.
    """
    from harness.launch.executor import RefusedSubmission

    job_of = {k: str(d.status.job_id) for k, d in batch.decisions.items() if d.action == "live"}
    try:
        for kind in STAGE_KINDS:
            groups: dict[tuple[str, ...], list[PlannedStage]] = {}
            for stage in (s for s in batch.todo if s.stage == kind):
                deps = tuple(sorted({job_of[u] for u in stage.needs if u in job_of}))
                groups.setdefault(deps, []).append(stage)
            for deps, members in groups.items():
                for stage, handle in zip(members, batch.submit(members, kind, deps), strict=True):
                    job_of[stage.key] = handle.job_id
    except RefusedSubmission as exc:
        raise _refused_partway(batch, exc) from exc
    event(log, "sweep.submitted", sweep=batch.plan.sweep.name, jobs=len(batch.report.submitted))


def _refused_partway(batch: _Batch, exc: RefusedSubmission) -> SubmitError:
    """The error of a submission that sbatch refused partway: how many stage jobs went in (and
    where they are recorded), how many of which stage kinds did not, and sbatch's own words."""
    submitted = batch.report.submitted
    left = [s for s in batch.todo if s.key not in submitted]
    per_kind = Counter(s.stage for s in left)
    kinds = ", ".join(f"{per_kind[k]} {k}" for k in STAGE_KINDS if per_kind[k])
    labels = ", ".join(s.label for s in left[:_LISTED]) + (
        f", ... ({len(left) - _LISTED} more)" if len(left) > _LISTED else ""
    )
    event(
        log,
        "sweep.refused",
        sweep=batch.plan.sweep.name,
        submitted=len(submitted),
        not_submitted=len(left),
        error=exc.message,
    )
    return SubmitError(
        f"{exc.message}\n"
        f"submitted {len(submitted)} of {len(batch.todo)} stage job(s) (recorded in "
        f"{jobs_file(batch.root, batch.plan.sweep.name)}); NOT submitted: {len(left)} ({kinds}): "
        f"{labels}",
        hint="the submitted jobs run as usual; once the scheduler accepts jobs again (a submit "
        "limit: `squeue -u $USER` and `sacctmgr show assoc user=$USER` / `show qos`), re-run the "
        f"same command: it submits only the {len(left)} not submitted",
    )


_LISTED = 8  # stage labels named in a refused-submission message
_LOCAL_PRIORITY = {"latents": 0, "train": 1, "fid_ref": 2, "eval": 3, "spatial": 4, "probe": 5}


def _run_here(batch: _Batch, on_progress: Callable[[str, str], None] | None) -> None:
    """Local / debug: run the DAG in dependency order, a few jobs at a time, until it is over."""
    launch = batch.plan.sweep.launch
    parallel = launch.local_parallelism if batch.launcher.kind == "local" else 1
    # Longest first: training is the critical path; per-encoder measurements fill free slots.
    pending = sorted(batch.todo, key=lambda s: _LOCAL_PRIORITY.get(s.stage, len(_LOCAL_PRIORITY)))
    running: dict[str, tuple[PlannedStage, JobHandle]] = {}
    poller = JobPoller()
    state_of = {key: d.action for key, d in batch.decisions.items()}

    def settle(stage: PlannedStage, state: str, error: str | None = None) -> None:
        state_of[stage.key] = batch.report.finished[stage.key] = state
        if error:
            event(log, "stage.failed", stage=stage.stage, key=stage.key, error=error[-500:])
        if on_progress is not None:
            on_progress(stage.key, state)

    try:
        _drive_local(batch, pending, running, parallel, poller, state_of, settle)
    except KeyboardInterrupt:  # leave no orphaned stage processes behind
        for _stage, handle in running.values():
            handle.cancel()
        raise


def _drive_local(
    batch: _Batch,
    pending: list[PlannedStage],
    running: dict[str, tuple[PlannedStage, JobHandle]],
    parallel: int,
    poller: JobPoller,
    state_of: dict[str, str],
    settle: Callable[..., None],
) -> None:
    while pending or running:
        for key, (stage, handle) in list(running.items()):
            if handle.done():
                del running[key]
                state = stage_status(batch.root, stage.stage, stage.key, None, poller).state
                state = state if state != "planned" else "failed"
                settle(stage, state, handle.outcome_error() if state != "done" else None)
        launched = False
        for stage in list(pending):
            if len(running) >= parallel:
                break
            upstream = [state_of[u] for u in stage.needs]
            if any(s not in ("done", "submit") for s in upstream):
                pending.remove(stage)  # an upstream failed: this one cannot run
                settle(stage, "blocked")
            elif all(s == "done" for s in upstream):
                pending.remove(stage)
                (handle,) = batch.submit([stage], stage.stage)
                running[stage.key] = (stage, handle)
                launched = True
        if not launched and running:
            time.sleep(_LOCAL_POLL_S)
        elif not launched and not running and pending:
            raise SubmitError(f"local run stalled with {len(pending)} stages pending")  # a bug
