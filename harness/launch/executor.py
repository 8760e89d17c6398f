"""The cluster boundary: the only module of the product that imports ``submitit``.

Submit side (the ``harness sweep`` process)::

    launcher = Launcher("slurm", jobs_dir(root), hold=False)
    launcher.check_resources(resources, name="train")        # sbatch --test-only, submits nothing
    handles = launcher.submit(stage_jobs, resources, name="harness-train",
                              dependency=["123_4", "125"], env={...}, workdir=snapshot)

Job side (inside a running stage job; see :mod:`harness.launch.runner`): the job id and ranks,
``torch.distributed`` variables, the resubmission object of ``checkpoint()``, and the
cooperative-stop signal handler that lets training save a checkpoint at a step boundary before
submitit requeues the job.

submitit is pinned to ``>=1.5,<2``; two private helpers are used and named where they are:
``SlurmExecutor._make_submission_file_text`` (the exact sbatch script, for ``--test-only``) and
the parameters dict of an executor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError, UncompletedJobError

from harness.config.resources import EXECUTOR_CHOICES, EXECUTORS, ResourceConfig
from harness.errors import SubmitError
from harness.logs import event, get_logger

log = get_logger(__name__)

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize
_SCHEDULER_TIMEOUT_S = 60


# ---------------------------------------------------------------------------------------------
# Which executor
# ---------------------------------------------------------------------------------------------
def slurm_available() -> bool:
    """True when ``sbatch`` is installed and the controller answers ``sinfo``."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def resolve_executor(requested: str) -> str:
    """``auto`` → ``slurm`` when SLURM answers, else ``local``; explicit names are checked."""
    if requested == "auto":
        return "slurm" if slurm_available() else "local"
    if requested not in EXECUTORS:
        raise SubmitError(
            f"unknown executor {requested!r}", hint=f"allowed: {', '.join(EXECUTOR_CHOICES)}"
        )
    if requested == "slurm" and not slurm_available():
        raise SubmitError(
            "--executor slurm: SLURM does not answer (sbatch/sinfo missing or the controller is down)",
            hint="check `sinfo`; for a single machine use --executor local "
            "(or scripts/slurm-local.sh start for a local test cluster)",
        )
    return requested


@lru_cache(maxsize=1)
def max_array_size() -> int:
    """The cluster's ``MaxArraySize`` (arrays hold at most this many tasks, indices 0..N-1)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"],
            capture_output=True,
            text=True,
            timeout=_SCHEDULER_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, flags=re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


# ---------------------------------------------------------------------------------------------
# Submission
# ---------------------------------------------------------------------------------------------
@dataclass
class JobHandle:
    """One submitted job (an array task for arrays)."""

    job_id: str  # SLURM "123" / "123_4"; local: controller pid; debug: DEBUG_<n>
    executor: str
    log: str | None = None  # stdout file of the job (task 0)
    handle: Any = field(default=None, repr=False)  # the submitit Job (local/debug waiting)

    def done(self) -> bool:
        """Local/debug only: whether the job has finished (debug runs it now, in-process)."""
        return True if self.handle is None else bool(self.handle.done())

    def cancel(self) -> None:
        """Local only: stop the job's process (used when the user interrupts a local sweep)."""
        if self.handle is not None and not self.handle.done():
            self.handle.cancel(check=False)

    def outcome_error(self) -> str | None:
        """Local/debug only: the job's error text when it did not finish cleanly, else None."""
        if self.handle is None:
            return None
        try:
            self.handle.result()
        except (FailedJobError, UncompletedJobError) as exc:
            return str(exc)
        except Exception as exc:  # debug executor re-raises the stage's own exception
            return f"{type(exc).__name__}: {exc}"
        return None


class RefusedSubmission(SubmitError):
    """The scheduler refused a submission; ``submitted`` holds the jobs of this call that it had
    already accepted (earlier chunks of an array larger than MaxArraySize), in order."""

    def __init__(self, message: str, hint: str | None, submitted: list[JobHandle]) -> None:
        super().__init__(message, hint=hint)
        self.submitted = submitted


class _Throttle:
    """At most one scheduler call per ``interval_s`` (sbatch rate limits; submitit#1659)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = float("-inf")

    def wait(self) -> None:
        delay = self._last + self.interval_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._last = time.monotonic()


class Launcher:
    """Submits stage jobs through one submitit executor kind.

    Args:
        kind: ``slurm``, ``local`` or ``debug`` (see :func:`resolve_executor`).
        folder: the submitit folder (job scripts, pickles, stdout/stderr), on a shared filesystem.
        hold: SLURM only: submit held (``sbatch --hold``); release with ``scontrol release``.
        submit_interval_s: minimum seconds between two ``sbatch`` calls.
    """

    def __init__(
        self,
        kind: str,
        folder: Path,
        *,
        hold: bool = False,
        submit_interval_s: float = 0.05,
    ) -> None:
        if kind not in EXECUTORS:
            raise SubmitError(f"unknown executor {kind!r}", hint=f"allowed: {', '.join(EXECUTORS)}")
        self.kind = kind
        self.folder = Path(folder).absolute()
        self.hold = hold
        self._throttle = _Throttle(submit_interval_s)
        self.sbatch_calls = 0

    # -- parameters -----------------------------------------------------------------------------
    def _executor(
        self,
        resources: ResourceConfig,
        *,
        name: str,
        dependency: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> submitit.AutoExecutor:
        folder = self.folder / "%j"
        if self.kind == "debug":
            return submitit.AutoExecutor(folder=folder, cluster="debug")
        executor = submitit.AutoExecutor(
            folder=folder,
            cluster=self.kind,
            **{f"{self.kind}_max_num_timeout": resources.max_requeues},
        )
        params: dict[str, Any] = {
            "name": name,
            "timeout_min": resources.time_min,
            "nodes": resources.nodes,
            "tasks_per_node": resources.num_tasks,
            "cpus_per_task": resources.cpus_per_task,
        }
        if resources.gpus_per_node:
            params["gpus_per_node"] = resources.gpus_per_node
        if self.kind == "slurm":
            params.update(_slurm_parameters(resources, dependency, env, workdir, self.hold))
        executor.update_parameters(**params)
        return executor

    def check_resources(self, resources: ResourceConfig, *, name: str) -> None:
        """Ask SLURM whether it would accept this request (``sbatch --test-only``).

        Raises:
            SubmitError: SLURM rejects the request; the message is sbatch's own.
        """
        if self.kind != "slurm":
            return
        executor = self._executor(resources, name=name)
        # private but exact: the very script submitit would submit for this request
        script = executor._executor._make_submission_file_text("true", "test-only")
        with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as handle:
            handle.write(script)
            path = handle.name
        try:
            self._throttle.wait()
            out = subprocess.run(
                ["sbatch", "--test-only", path],
                capture_output=True,
                text=True,
                timeout=_SCHEDULER_TIMEOUT_S,
            )
        finally:
            os.unlink(path)
        if out.returncode != 0:
            lines = (out.stderr or out.stdout).strip().replace("sbatch: error: ", "").splitlines()
            message = "; ".join(line.strip() for line in lines if line.strip())
            raise SubmitError(
                f"SLURM rejects the resources of stage '{name}': {message}",
                hint=f"fix resources.{name} (or resources.default) in the sweep file; "
                "`sinfo -s` lists partitions, `sacctmgr show assoc user=$USER` accounts and QOS",
            )

    def submit(
        self,
        jobs: Sequence[Callable[[], Any]],
        resources: ResourceConfig,
        *,
        name: str,
        dependency: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> list[JobHandle]:
        """Submit ``jobs`` (one job array per chunk of at most MaxArraySize tasks).

        Args:
            jobs: picklable callables (``StageJob``), all sharing ``resources``.
            resources: the request of every job.
            name: the SLURM job name.
            dependency: job ids that must all finish successfully first (``afterok``).
            env: environment variables of the jobs.
            workdir: the jobs' working directory (the code snapshot).

        Returns:
            One handle per job, in order.

        Raises:
            RefusedSubmission: the scheduler refused a chunk (sbatch's message included); the
                handles of the chunks it accepted before are on the exception.
        """
        if not jobs:
            return []
        chunk = max_array_size() if self.kind == "slurm" else len(jobs)
        handles: list[JobHandle] = []
        for start in range(0, len(jobs), chunk):
            part = list(jobs[start : start + chunk])
            executor = self._executor(
                resources, name=name, dependency=dependency, env=env, workdir=workdir
            )
            self._throttle.wait()
            self.sbatch_calls += self.kind == "slurm"
            try:
                with (
                    _submission_env(env if self.kind != "slurm" else None, workdir),
                    executor.batch(),
                ):
                    submitted = [executor.submit(job) for job in part]
            except (FailedJobError, FailedSubmissionError, OSError) as exc:
                raise RefusedSubmission(
                    f"sbatch refused job '{name}' ({len(part)} task(s)): {_tail(exc)}",
                    hint="the jobs submitted before this one are recorded, so re-running the same "
                    "command submits only the rest",
                    submitted=handles,
                ) from exc
            for job in submitted:
                handles.append(
                    JobHandle(
                        job_id=str(job.job_id),
                        executor=self.kind,
                        log=str(job.paths.stdout),
                        handle=None if self.kind == "slurm" else job,
                    )
                )
        event(
            log,
            "launch.submitted",
            logging.DEBUG,
            executor=self.kind,
            job_name=name,
            jobs=len(handles),
            first=handles[0].job_id,
        )
        return handles


def _slurm_parameters(
    resources: ResourceConfig,
    dependency: Sequence[str],
    env: Mapping[str, str] | None,
    workdir: Path | None,
    hold: bool,
) -> dict[str, Any]:
    additional: dict[str, Any] = dict(resources.additional)
    if dependency:
        additional["dependency"] = "afterok:" + ":".join(dependency)
        additional["kill-on-invalid-dep"] = "yes"
    if hold:
        additional["hold"] = True
    if workdir is not None:
        additional["chdir"] = str(workdir)
    setup = [f"export {key}={shlex.quote(str(value))}" for key, value in (env or {}).items()]
    params: dict[str, Any] = {
        "slurm_array_parallelism": resources.array_parallelism,
        "slurm_signal_delay_s": resources.signal_delay_s,
        "slurm_setup": setup + list(resources.setup),
        "slurm_additional_parameters": additional,
    }
    if resources.mem_gb is not None:
        params["mem_gb"] = resources.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(resources, key)
        if value is not None:
            params[f"slurm_{key}"] = value
    return params


@contextlib.contextmanager
def _submission_env(env: Mapping[str, str] | None, workdir: Path | None) -> Iterator[None]:
    """Submit with a clean scheduler environment (no inherited ``SLURM_*`` of an enclosing job,
    submitit#1814 aside: ``SLURM_CONF`` is kept); local jobs also inherit ``env`` and ``workdir``."""
    slurm_conf = os.environ.get("SLURM_CONF")
    previous_cwd = Path.cwd()
    with submitit.helpers.clean_env():
        if slurm_conf is not None:
            os.environ["SLURM_CONF"] = slurm_conf
        saved = {key: os.environ.get(key) for key in (env or {})}
        os.environ.update(env or {})
        try:
            if workdir is not None and env is not None:
                os.chdir(workdir)  # local jobs start in the snapshot, like RsyncSnapshot does
            yield
        finally:
            os.chdir(previous_cwd)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if slurm_conf is not None:
                os.environ.pop("SLURM_CONF", None)


def _tail(exc: BaseException, lines: int = 6) -> str:
    kept = [line for line in str(exc).splitlines() if line.strip()][-lines:]
    return " | ".join(line.replace("sbatch: error: ", "") for line in kept)


# ---------------------------------------------------------------------------------------------
# Inside a job
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobInfo:
    """Where this process runs: its job id and torch.distributed rank layout."""

    job_id: str | None
    executor: str | None
    global_rank: int = 0
    local_rank: int = 0
    num_tasks: int = 1


def job_info() -> JobInfo:
    """The current submitit job (ids, ranks); an empty record outside any job."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return JobInfo(job_id=None, executor=None)
    return JobInfo(
        job_id=str(env.job_id),
        executor=env.cluster,
        global_rank=env.global_rank,
        local_rank=env.local_rank,
        num_tasks=env.num_tasks,
    )


def discard_unexpanded_folder() -> None:
    """Remove the empty ``jobs/%j`` folder that submitit's local controller leaves.

    The controller makes its folder argument (the unexpanded ``jobs/%j``) before it starts the
    task, though every file goes to the expanded ``jobs/<job id>/``. The job removes it when
    empty; a controller started later makes it again, and its own job removes it then.
    """
    folder = os.environ.get("SUBMITIT_FOLDER", "")
    if "%j" in Path(folder).name:
        with contextlib.suppress(OSError):  # not there, or not empty: not the controller's
            Path(folder).rmdir()


def export_torch_distributed() -> None:
    """Set MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from the job and bind this task to its
    own GPU before CUDA starts: the task keeps the local-rank-th of the job's GPUs (SLURM gives
    every task of a node all of the node's GPUs; submitit#1704)."""
    env = submitit.helpers.TorchDistributedEnvironment().export(
        set_cuda_visible_devices=False, overwrite=True
    )
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(visible) > 1 and env.local_rank < len(visible):
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[env.local_rank]


def resubmission(job: Callable[[], Any]) -> Any:
    """What ``checkpoint()`` returns: the same callable, resubmitted (state lives on disk)."""
    return submitit.helpers.DelayedSubmission(job)


class StopSignal:
    """Cooperative preemption: USR2 (preemption / time limit) and SIGTERM set :attr:`requested`
    instead of interrupting the code; :meth:`hand_back` then runs submitit's own handler, which
    calls the job's ``checkpoint()``, requeues it (bounded by ``max_requeues``) and exits."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.signum != _usr_signal():  # USR2 wins over SIGTERM: it asks for a requeue
            self.signum = signum
        event(log, "job.stop_requested", signal=signal.Signals(signum).name)

    def install(self) -> None:
        for signum in (_usr_signal(), signal.SIGTERM):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def hand_back(self) -> None:
        """After the work stopped cleanly: requeue through submitit when USR2 asked for it.

        SIGTERM alone (``scontrol requeue``, preemption, ``scancel``) needs nothing: SLURM itself
        requeues or ends the job.
        """
        previous = self._previous.get(_usr_signal())
        self.restore()
        if self.signum == _usr_signal() and callable(previous):
            previous(self.signum, None)  # checkpoint() + `scontrol requeue` + sys.exit


@contextlib.contextmanager
def cooperative_stop(enabled: bool) -> Iterator[StopSignal]:
    """Install :class:`StopSignal` for the body when ``enabled`` (inside a submitit job)."""
    stop = StopSignal()
    if enabled and job_info().job_id is not None:
        stop.install()
    try:
        yield stop
    finally:
        stop.restore()


def _usr_signal() -> int:
    return int(submitit.JobEnvironment._usr_sig())
