"""``StageJob``: the picklable, checkpointable callable every scheduler job runs.

A job receives paths, never big pickles: ``StageJob(root, stage, key)`` loads the instance's
``spec.json`` (written at submit time), and the lead task (rank 0)

1. returns at once when ``result.json`` says done (a done stage never runs again);
2. writes ``state.json`` = running (job id, start time);
3. checks every upstream instance is done;
4. calls the stage (training gets ``torch.distributed`` variables for multi-task jobs);
5. writes ``result.json`` last (status done / diverged / failed) and removes ``state.json``.

On an exception it writes ``state.json`` = failed with the error and the traceback tail, then
re-raises (the job fails). On preemption or time limit, submitit calls :meth:`checkpoint`, which
requeues the same callable: resume state lives on disk (training checkpoints, sample shards),
never in the pickle (submitit requeues the *original* pickle after a node failure).
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

from harness.artifacts import is_done, read_result, write_result
from harness.errors import ArtifactError, StageError
from harness.io import disk_full, write_json
from harness.launch.jobs import STATE_FILE, write_state
from harness.logs import add_json_log, event, get_logger, setup_logging
from harness.paths import stage_dir
from harness.stages import STAGES, StageContext

log = get_logger(__name__)

SPEC_FILE = "spec.json"
SPEC_SCHEMA = 1
LOG_FILE = "log.jsonl"
_TAIL_LINES = 40


class StageInterrupted(RuntimeError):
    """The stage saved and stopped (preemption / cancel); the job must not count as succeeded."""


def write_spec(
    root: Path,
    stage: str,
    key: str,
    *,
    config: dict[str, Any],
    needs: list[tuple[str, str]],
    labels: dict[str, Any],
    version: int,
) -> Path:
    """Write the instance's ``spec.json`` (what its job will run), atomically."""
    path = stage_dir(root, stage, key) / SPEC_FILE
    write_json(
        path,
        {
            "schema": SPEC_SCHEMA,
            "stage": stage,
            "key": key,
            "version": version,
            "config": config,
            "needs": [{"stage": s, "key": k} for s, k in needs],
            "labels": labels,
        },
    )
    return path


def read_spec(out_dir: Path) -> dict[str, Any]:
    path = out_dir / SPEC_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(
            f"{path}: missing stage spec",
            hint="specs are written by `harness sweep` before submitting; re-run it",
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"{path}: unreadable stage spec: {exc}") from exc
    if spec.get("schema") != SPEC_SCHEMA:
        raise StageError(f"{path}: stage spec schema {spec.get('schema')} != {SPEC_SCHEMA}")
    return spec


class StageJob:
    """Run one stage instance inside a scheduler job.

    Args:
        root: the results root (absolute path, shared filesystem).
        stage: the stage name (``harness.stages.STAGES``).
        key: the instance's content key.
    """

    def __init__(self, root: str | os.PathLike[str], stage: str, key: str) -> None:
        self.root = str(Path(root).absolute())
        self.stage = stage
        self.key = key

    def __repr__(self) -> str:
        return f"StageJob({self.stage}/{self.key})"

    @property
    def out_dir(self) -> Path:
        return stage_dir(Path(self.root), self.stage, self.key)

    def __call__(self) -> str:
        from harness.launch.executor import discard_unexpanded_folder, job_info

        info = job_info()
        if info.executor == "local":
            discard_unexpanded_folder()
        leader = info.global_rank == 0
        out_dir = self.out_dir
        if is_done(out_dir):
            return "done"
        spec = read_spec(out_dir)
        if not logging.getLogger("harness").handlers:  # a fresh job process
            setup_logging(1)
        handler = add_json_log(out_dir / LOG_FILE) if leader else None
        try:
            return self._run(spec, info, leader)
        finally:
            if handler is not None:
                logging.getLogger("harness").removeHandler(handler)
                handler.close()

    def _run(self, spec: dict[str, Any], info: Any, leader: bool) -> str:
        from harness.launch.executor import cooperative_stop, export_torch_distributed

        out_dir = self.out_dir
        stage = STAGES.get(spec["stage"])
        started = time.time()
        if leader:
            write_state(out_dir, "running", job_id=info.job_id, started_at=started)
        event(log, "stage.start", stage=self.stage, key=self.key, job_id=info.job_id)
        try:
            needs = self._upstream(spec)
            if info.num_tasks > 1:
                export_torch_distributed()
            with cooperative_stop(stage.cooperative_stop) as stop:
                ctx = StageContext(
                    root=Path(self.root),
                    stage=self.stage,
                    key=self.key,
                    config=spec["config"],
                    out_dir=out_dir,
                    needs=needs,
                    device=_device(info.local_rank),
                    should_stop=stop,
                )
                outcome = stage.run(ctx)
                if outcome.status == "interrupted":
                    if leader:
                        write_state(
                            out_dir,
                            "interrupted",
                            job_id=info.job_id,
                            started_at=started,
                            error="stopped by a scheduler signal after saving its state",
                        )
                    event(log, "stage.interrupted", stage=self.stage, key=self.key)
                    stop.hand_back()  # USR2: submitit checkpoints + requeues + exits here
                    raise StageInterrupted(f"{self.stage} {self.key} saved and stopped")
            if not leader:
                return outcome.status
            write_result(  # inside the try: a full disk here fails the stage visibly too
                out_dir,
                stage=self.stage,
                key=self.key,
                config=spec["config"],
                payload=outcome.payload,
                status=outcome.status,
                error=outcome.error,
                started_at=started,
            )
        except StageInterrupted:
            raise
        except Exception as exc:
            if leader:
                _record_failure(out_dir, info.job_id, started, exc)
            event(log, "stage.failed", stage=self.stage, key=self.key, error=str(exc))
            raise
        (out_dir / STATE_FILE).unlink(missing_ok=True)
        event(log, "stage.finished", stage=self.stage, key=self.key, status=outcome.status)
        return outcome.status

    def checkpoint(self) -> Any:
        """submitit's requeue hook (preemption / time limit): resubmit this same callable."""
        from harness.launch.executor import job_info, resubmission

        if not is_done(self.out_dir):
            write_state(
                self.out_dir,
                "interrupted",
                job_id=job_info().job_id,
                error="requeued after preemption or time limit",
            )
        return resubmission(self)

    def _upstream(self, spec: dict[str, Any]) -> dict[str, list[str]]:
        needs: dict[str, list[str]] = {}
        for need in spec.get("needs", []):
            upstream = stage_dir(Path(self.root), need["stage"], need["key"])
            if not is_done(upstream):
                try:
                    record = read_result(upstream)
                except ArtifactError as exc:
                    record = {"status": f"unreadable ({exc})"}
                found = record["status"] if record else "not finished"
                raise StageError(
                    f"upstream {need['stage']} {need['key']} is {found}",
                    hint="see `harness status`; --retry-failed resubmits failed upstream stages",
                )
            needs.setdefault(need["stage"], []).append(need["key"])
        return needs


def failure_text(exc: BaseException) -> str:
    """The ``error`` of a failed stage; a full disk or quota says so and what to do."""
    text = f"{type(exc).__name__}: {exc}"
    full = disk_full(exc)
    if full is None:
        return text
    if not (isinstance(exc, OSError) and exc.errno == full):
        text = f"{os.strerror(full)}: {text}"
    return (
        f"{text}; free space on that file system, then `harness sweep ... --retry-failed` "
        "resumes the stage (training from its last checkpoint)"
    )


def _record_failure(out_dir: Path, job_id: str | None, started: float, exc: BaseException) -> None:
    """``state.json`` = failed with the error and the traceback tail; best effort (on a full disk
    even this small write can fail: the job's own log still has the traceback)."""
    tail = traceback.format_exc().splitlines()[-_TAIL_LINES:]
    try:
        write_state(
            out_dir,
            "failed",
            job_id=job_id,
            started_at=started,
            error=failure_text(exc),
            log_tail="\n".join(tail),
        )
    except OSError as write_error:
        event(
            log,
            "stage.failure_unrecorded",
            level=logging.ERROR,
            path=str(out_dir / STATE_FILE),
            error=str(write_error),
        )


def _device(local_rank: int) -> str:
    import torch

    if torch.cuda.is_available():
        # multi-task jobs see one GPU each (CUDA_VISIBLE_DEVICES = local rank)
        return "cuda:0" if torch.cuda.device_count() == 1 else f"cuda:{local_rank}"
    return "cpu"
