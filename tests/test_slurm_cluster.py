"""Real jobs on the real SLURM cluster, through submitit's SLURM executor.

These check what the sweep engine relies on: a submitted Python function runs under SLURM and
returns its value, and a preempted checkpointable job (USR2 via ``scancel --signal``) is requeued
by ``scontrol requeue`` and finishes on its second run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

pytestmark = pytest.mark.timeout(240)

# The workers unpickle these functions without this test module on their sys.path.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _where_am_i(a: int, b: int) -> dict[str, object]:
    return {
        "product": a * b,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "host": socket.gethostname(),
        "python": sys.executable,
    }


class _WaitForPreemption(submitit.helpers.Checkpointable):
    """First run: announce itself and wait to be preempted. Second run: report the restart."""

    def __call__(self, marker_dir: str) -> dict[str, object]:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        Path(marker_dir, f"run-{restarts}").touch()
        if restarts == 0:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # submitit's USR2 handler ends this run
                time.sleep(0.1)
            raise RuntimeError("was never preempted")
        return {"restarts": restarts, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _executor(folder: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=10, cpus_per_task=1, mem_gb=1, name="harness-test")
    return executor


@pytest.mark.slurm
def test_submitit_job_runs_under_slurm(slurm_cluster, tmp_path: Path) -> None:
    job = _executor(tmp_path).submit(_where_am_i, 6, 7)
    assert job.job_id.isdigit()

    result = job.result()

    assert result["product"] == 42
    assert result["slurm_job_id"] == job.job_id
    assert result["host"] == socket.gethostname()  # single-node cluster: this machine
    assert result["python"] == sys.executable
    assert (tmp_path / job.job_id / f"{job.job_id}_0_log.out").exists()


@pytest.mark.slurm
def test_preempted_checkpointable_job_is_requeued(slurm_cluster, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    job = _executor(tmp_path).submit(_WaitForPreemption(), str(markers))

    deadline = time.monotonic() + 60
    while not (markers / "run-0").exists():
        assert time.monotonic() < deadline, "the job did not start within 60 s"
        time.sleep(0.1)
    # USR2 alone (SLURM's warning signal): submitit checkpoints and runs `scontrol requeue`.
    # Not _interrupt()'s TERM-then-USR2: a late TERM can kill that scontrol child mid-requeue.
    job._interrupt(timeout=True)

    result = job.result()

    assert result == {"restarts": 1, "slurm_job_id": job.job_id}
    assert (markers / "run-1").exists()


@pytest.mark.parametrize(("ci", "outcome"), [("", "skip"), ("true", "fail")])
def test_missing_sbatch_skips_visibly_except_in_ci(ci: str, outcome: str, tmp_path: Path) -> None:
    """The slurm_cluster fixture without sbatch on PATH: a visible skip, a failure when CI=true."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         f"{__file__}::test_submitit_job_runs_under_slurm"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PATH": str(tmp_path), "CI": ci},
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    if outcome == "skip":
        assert proc.returncode == 0, out
        assert "SKIPPED" in out and "SLURM is not installed" in out
    else:
        assert proc.returncode == 1, out
        assert "CI=true but SLURM is not installed" in out
