"""Where every stage instance stands: files on disk first, the scheduler second.

The truth about a stage lives in its artifact directory (``result.json`` written last,
``state.json`` while running or after a failure) and in the sweeps' ``jobs.jsonl`` submission
logs. The scheduler is asked which job ids are still alive, how often each was requeued, and
how the jobs that ended recently ended (``NODE_FAIL``, ``TIMEOUT`` ...: slurmctld remembers them
for ``MinJobAge``, 300 s by default). That is one batched ``squeue -t all`` call for all of the
user's jobs, cached, with a backoff while nothing changes (submitit#1759); ``sacct`` is never
needed (accounting is often disabled or stale: submitit#1720).

A stage's state is one of ``STATES``:

========== ==========================================================================
planned    never submitted, or its job vanished before starting (cancelled while queued)
submitted  its job is queued (``reason`` says why: Priority, Dependency, JobHeldUser...)
running    its job runs
requeued   its job was requeued (node failure, preemption, time limit, ``scontrol requeue``) and
           waits to run again; it resumes from what the stage saved
done       ``result.json`` with status done: never runs again
diverged   ``result.json`` with status diverged (training went non-finite): terminal
failed     the job raised (``state.json`` failed), or it vanished while running (SIGKILL,
           node failure)
interrupted the job saved and stopped (preemption, cancel, node failure) and is not queued again
========== ==========================================================================

When the scheduler still knows how a job that is not queued again ended, the detail says so (e.g.
``job 31 ended NODE_FAIL (its node failed)``), and :func:`record_vanished` keeps that in
``state.json`` for later commands.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.artifacts import read_result
from harness.errors import ArtifactError
from harness.io import read_jsonl, write_json
from harness.logs import event, get_logger
from harness.paths import plan_dir, stage_dir

log = get_logger(__name__)

STATES = (
    "planned", "submitted", "running", "requeued", "done", "diverged", "failed", "interrupted"
)  # fmt: skip
STATE_FILE = "state.json"
JOBS_FILE = "jobs.jsonl"
# squeue states of jobs that are over (anything else is alive: pending, running, requeued ...)
_TERMINAL = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "TIMEOUT",
    "SPECIAL_EXIT",
    "REVOKED",
    "PREEMPTED",
}
# how a job ended, in words (squeue's terminal states)
_ENDED = {
    "BOOT_FAIL": "its node failed to boot",
    "CANCELLED": "cancelled",
    "DEADLINE": "past its deadline",
    "FAILED": "non-zero exit",
    "NODE_FAIL": "its node failed",
    "OUT_OF_MEMORY": "out of memory",
    "PREEMPTED": "preempted",
    "TIMEOUT": "time limit reached",
}
_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}


# ---------------------------------------------------------------------------------------------
# state.json (written by the job) and jobs.jsonl (written at submission)
# ---------------------------------------------------------------------------------------------
def write_state(
    out_dir: Path,
    state: str,
    *,
    job_id: str | None,
    started_at: float | None = None,
    error: str | None = None,
    log_tail: str | None = None,
    where: tuple[str | None, int | None] | None = None,
) -> None:
    """Record a running / failed / interrupted stage (atomic; ``result.json`` supersedes it).
    ``host`` and ``pid`` say where the job's lead task runs (default: this process; ``where``
    keeps another's)."""
    now = time.time()
    host, pid = where if where is not None else (socket.gethostname(), os.getpid())
    write_json(
        out_dir / STATE_FILE,
        {
            "state": state,
            "job_id": job_id,
            "started_at": started_at if started_at is not None else now,
            "updated_at": now,
            "error": error,
            "log_tail": log_tail,
            "host": host,
            "pid": pid,
        },
    )


def read_state(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / STATE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return {"state": "failed", "error": f"{path}: unreadable state file", "job_id": None}
    return record if isinstance(record, dict) else None


def jobs_file(root: Path, sweep: str) -> Path:
    return plan_dir(root, sweep) / JOBS_FILE


def load_submissions(root: Path) -> dict[str, dict[str, Any]]:
    """The latest submission row of every stage key, across every sweep of ``root`` (stages are
    shared between sweeps, so a job queued by one sweep counts for all)."""
    latest: dict[str, dict[str, Any]] = {}
    plans = root / "plans"
    if not plans.is_dir():
        return latest
    for path in sorted(plans.glob(f"*/{JOBS_FILE}")):
        for row in read_jsonl(path):
            key = row.get("key")
            if not key:
                continue
            known = latest.get(key)
            if known is None or row.get("submitted_at", 0) >= known.get("submitted_at", 0):
                latest[key] = row
    return latest


# ---------------------------------------------------------------------------------------------
# The scheduler: which jobs are alive
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveJob:
    state: str  # squeue state (PENDING, RUNNING ...) or RUNNING for a local process
    reason: str = ""  # squeue reason (Priority, Dependency, JobHeldUser, ...)
    restarts: int = 0  # how often SLURM requeued the job (node failure, preemption, requeue)

    @property
    def over(self) -> bool:
        """The job ended (squeue -t all still lists jobs that ended within MinJobAge)."""
        return self.state in _TERMINAL


class JobPoller:
    """Batched, cached job-liveness queries with a backoff.

    One ``squeue`` call returns every job of the user. The answer is reused for ``interval``
    seconds; the interval doubles (up to ``max_interval_s``) while answers do not change and
    drops back to ``min_interval_s`` when they do. When ``squeue`` fails, the last answer is
    kept (and jobs whose state is unknown count as alive, so nothing is resubmitted twice).

    Args:
        min_interval_s: shortest reuse time of an answer.
        max_interval_s: longest reuse time of an answer.
    """

    def __init__(self, min_interval_s: float = 2.0, max_interval_s: float = 60.0) -> None:
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self.interval_s = min_interval_s
        self.calls = 0
        self._slurm: dict[str, LiveJob] | None = None
        self._fetched_at = float("-inf")
        self.answered_at = 0.0  # wall-clock time of the last successful squeue answer
        self._frozen = False  # inside consistent(): answers come from one squeue call
        self._refresh_due = False  # ... which the block's first SLURM query makes, if due
        self.stale = False  # the last squeue call failed: answers may be out of date

    @contextlib.contextmanager
    def consistent(self) -> Iterator[None]:
        """Answer every query of the block from one scheduler call (refreshed once if due, on
        the first SLURM query: a block with only local jobs never calls squeue)."""
        self._frozen, self._refresh_due = True, True
        try:
            yield
        finally:
            self._frozen = self._refresh_due = False

    def invalidate(self) -> None:
        """Forget the cached answer (after submitting or cancelling)."""
        self._fetched_at = float("-inf")
        self.interval_s = self.min_interval_s

    def live(self, job_id: str, executor: str) -> LiveJob | None:
        """The job's scheduler state when it is alive, else None."""
        if executor == "slurm":
            jobs = self._slurm_jobs()
            if jobs is None:  # never answered: assume alive rather than resubmit
                return LiveJob("UNKNOWN", "squeue unavailable")
            job = jobs.get(job_id)
            return job if job is not None and not job.over else None
        if executor == "local":
            return LiveJob("RUNNING") if _local_job_alive(job_id) else None
        return None  # debug jobs ran in-process and are over

    def ended(self, job_id: str, executor: str) -> str | None:
        """How a SLURM job that is over ended (``NODE_FAIL``, ``TIMEOUT`` ...), while the
        scheduler still remembers it; None when it is alive or forgotten."""
        if executor != "slurm":
            return None
        job = (self._slurm_jobs() or {}).get(job_id)
        return job.state if job is not None and job.over else None

    def _slurm_jobs(self) -> dict[str, LiveJob] | None:
        fresh_enough = time.monotonic() - self._fetched_at < self.interval_s
        if self._frozen and not self._refresh_due:
            return self._slurm
        self._refresh_due = False
        if self._slurm is not None and fresh_enough:
            return self._slurm
        fresh = _squeue()
        self.calls += 1
        self._fetched_at = time.monotonic()
        if fresh is None:
            self.stale = True
            self.interval_s = min(self.max_interval_s, self.interval_s * 2)
            return self._slurm
        self.stale = False
        self.answered_at = time.time()
        if fresh == self._slurm:
            self.interval_s = min(self.max_interval_s, self.interval_s * 2)
        else:
            self.interval_s = self.min_interval_s
        self._slurm = fresh
        return fresh


# job id | state | reason | restart count; the -o fallback (squeue before 20.11 has no field
# suffixes in -O) has no restart count
_SQUEUE_FORMATS = (
    ["-O", "JobArrayID:|,State:|,Reason:|,RestartCnt:"],
    ["-o", "%i|%T|%r"],
)


def _squeue() -> dict[str, LiveJob] | None:
    """All of the user's jobs that are alive or ended recently, one per array task; None when
    squeue fails."""
    if shutil.which("squeue") is None:
        return None
    out = None
    for fmt in _SQUEUE_FORMATS:
        command = ["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), *fmt]
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            event(log, "jobs.squeue_failed", error=str(exc))
            return None
        if out.returncode == 0:
            break
    if out is None or out.returncode != 0:
        event(log, "jobs.squeue_failed", error=out.stderr.strip() if out else "")
        return None
    jobs: dict[str, LiveJob] = {}
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 3 or not parts[0]:
            continue
        restarts = parts[3] if len(parts) > 3 else ""
        jobs[parts[0]] = LiveJob(
            state=parts[1].split()[0] if parts[1] else "UNKNOWN",  # "CANCELLED by 0"
            reason=parts[2],
            restarts=int(restarts) if restarts.isdigit() else 0,
        )
    return jobs


def _local_job_alive(job_id: str) -> bool:
    """A local submitit job is its controller process (job id = pid)."""
    if not job_id.isdigit():
        return False
    try:
        cmdline = Path(f"/proc/{job_id}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(int(job_id), 0)
        except OSError:
            return False
        return True
    return b"submitit" in cmdline


# ---------------------------------------------------------------------------------------------
# One stage's state
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageStatus:
    """Where one stage instance stands."""

    key: str
    stage: str
    state: str  # one of STATES
    job_id: str | None = None
    executor: str | None = None
    detail: str = ""  # scheduler reason, error message ...
    log_tail: str | None = None
    started_at: float | None = None
    updated_at: float | None = None
    attempt: int = 0
    wall_time_s: float | None = None  # finished stages: the job's wall time
    vanished: bool = False  # state.json says running but the job is gone (killed)
    ended: str | None = None  # how the scheduler says the job ended (NODE_FAIL, TIMEOUT ...)

    @property
    def live(self) -> bool:
        return self.state in ("submitted", "running", "requeued")


def stage_status(
    root: Path,
    stage: str,
    key: str,
    submission: Mapping[str, Any] | None,
    poller: JobPoller,
) -> StageStatus:
    """The state of one stage instance (see the module docstring for the rules)."""
    out_dir = stage_dir(root, stage, key)
    try:
        result = read_result(out_dir)
    except ArtifactError as exc:
        result = {"status": "failed", "error": str(exc)}
    if result is not None and result.get("status") in ("done", "diverged", "failed"):
        wall = (result.get("provenance") or {}).get("wall_time_s")
        return StageStatus(
            key,
            stage,
            str(result["status"]),
            detail=str(result.get("error") or ""),
            wall_time_s=float(wall) if isinstance(wall, int | float) else None,
        )
    job_id = str(submission["job_id"]) if submission else None
    executor = str(submission.get("executor", "slurm")) if submission else None
    attempt = int(submission.get("attempt", 1)) if submission else 0
    state = read_state(out_dir)
    common = {"job_id": job_id, "executor": executor, "attempt": attempt}
    recorded = (state or {}).get("state")
    ended = None
    if job_id is not None and executor is not None:
        live = poller.live(job_id, executor)
        if live is not None:
            # requeued: SLURM restarted it, or this very job saved and stopped and is queued again
            requeued = live.restarts > 0 or (
                recorded == "interrupted" and str((state or {}).get("job_id")) == job_id
            )
            running = live.state in _RUNNING or (recorded == "running" and not requeued)
            reason = live.reason if live.reason not in ("None", "") else live.state.lower()
            if requeued and not running:
                reason = f"requeued {max(live.restarts, 1)}x, waiting: {reason}"
            return StageStatus(
                key,
                stage,
                "running" if running else "requeued" if requeued else "submitted",
                detail=reason,
                started_at=(state or {}).get("started_at") if running else None,
                updated_at=(state or {}).get("updated_at"),
                **common,
            )
        ended = poller.ended(job_id, executor)
    # the scheduler's word on how the job ended, when it still remembers (NODE_FAIL ...)
    how = f"job {job_id} ended {ended} ({_ENDED[ended]})" if ended in _ENDED else None
    if state is not None:
        times = {"started_at": state.get("started_at"), "updated_at": state.get("updated_at")}
        if recorded == "running":
            return StageStatus(
                key,
                stage,
                "failed",
                detail=f"job {job_id} ended while running: {ended} ({_ENDED[ended]}), see its log"
                if how
                else f"job {state.get('job_id')} ended while running "
                "(killed, out of memory or node failure: see its log)",
                log_tail=state.get("log_tail"),
                # only when the scheduler answered after the job started (no stale verdicts)
                vanished=executor == "local"
                or (
                    executor == "slurm"
                    and not poller.stale
                    and poller.answered_at > float(state.get("updated_at") or 0)
                ),
                ended=ended if how else None,
                **times,
                **common,
            )
        if recorded in ("failed", "interrupted"):
            error = str(state.get("error") or "")
            # news only when it is this job's record and not the job's own failure (FAILED)
            if not (ended != "FAILED" and str(state.get("job_id")) == job_id):
                how = None
            if how and how not in error:
                error = f"{how}; {error}" if error else how
            return StageStatus(
                key,
                stage,
                recorded,
                detail=error,
                log_tail=state.get("log_tail"),
                ended=ended if how else None,
                **times,
                **common,
            )
    return StageStatus(key, stage, "planned", detail=how or "", **common)


def statuses(
    root: Path, stages: Iterable[tuple[str, str]], poller: JobPoller
) -> dict[str, StageStatus]:
    """:func:`stage_status` of every ``(stage, key)``, with one scheduler query for all."""
    submissions = load_submissions(root)
    with poller.consistent():
        return {
            key: stage_status(root, stage, key, submissions.get(key), poller)
            for stage, key in stages
        }


def record_vanished(root: Path, current: Mapping[str, StageStatus]) -> int:
    """Write ``state.json`` = failed for stages whose job vanished while running (SIGKILL, node
    failure: the job could not say so itself), with the tail of the job's stderr, so that the
    database and later commands see the failure too; and add how the scheduler says a failed or
    interrupted job ended (NODE_FAIL ...) to its ``state.json`` before the scheduler forgets it.
    Returns how many were recorded."""
    count = 0
    submissions = load_submissions(root) if any(s.vanished for s in current.values()) else {}
    for status in current.values():
        out_dir = stage_dir(root, status.stage, status.key)
        if status.ended and not status.vanished and status.state in ("failed", "interrupted"):
            previous = read_state(out_dir) or {}
            if previous.get("state") == status.state and previous.get("error") != status.detail:
                write_state(
                    out_dir,
                    status.state,
                    job_id=status.job_id,
                    started_at=previous.get("started_at"),
                    error=status.detail,
                    log_tail=previous.get("log_tail"),
                    where=(previous.get("host"), previous.get("pid")),
                )
                count += 1
            continue
        if not status.vanished:
            continue
        log_path = (submissions.get(status.key) or {}).get("log")
        previous = read_state(out_dir) or {}
        write_state(
            out_dir,
            "failed",
            job_id=status.job_id,
            started_at=status.started_at,
            error=status.detail,
            log_tail=_tail_file(log_path.replace("_log.out", "_log.err")) if log_path else None,
            where=(previous.get("host"), previous.get("pid")),
        )
        count += 1
    return count


def _tail_file(path: str, lines: int = 40) -> str | None:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# Summaries and cancellation
# ---------------------------------------------------------------------------------------------
def summarize(
    stages: Iterable[tuple[str, str]], current: Mapping[str, StageStatus]
) -> dict[str, dict[str, int]]:
    """``{stage kind: {state: count}}`` over the given ``(stage, key)`` pairs."""
    table: dict[str, dict[str, int]] = {}
    for stage, key in stages:
        row = table.setdefault(stage, dict.fromkeys(STATES, 0))
        row[current[key].state] += 1
    return table


def cancel_jobs(jobs: Iterable[tuple[str, str]]) -> int:
    """Cancel ``(job id, executor)`` pairs: one batched ``scancel`` for SLURM jobs, SIGINT to the
    controller of local jobs (what submitit's ``LocalJob.cancel`` sends). Returns the count."""
    slurm = sorted({job for job, executor in jobs if executor == "slurm"})
    local = sorted({job for job, executor in jobs if executor == "local"})
    for start in range(0, len(slurm), 500):
        chunk = slurm[start : start + 500]
        out = subprocess.run(["scancel", *chunk], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            event(log, "jobs.scancel_failed", error=out.stderr.strip(), jobs=len(chunk))
    for pid in local:
        if _local_job_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGINT)
    event(log, "jobs.cancelled", slurm=len(slurm), local=len(local))
    return len(slurm) + len(local)
