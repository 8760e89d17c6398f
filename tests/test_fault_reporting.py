"""How faults are reported, without a cluster (the real-SLURM versions: test_slurm_faults.py).

* a full disk under ``atomic_write`` (even when the writer, like ``torch.save``, wraps the
  ``OSError`` in its own exception) raises ``OSError(ENOSPC)`` naming the target and leaves
  neither a temporary file nor a changed target; a failed stage's error says what to do;
* ``squeue -t all`` answers become ``requeued`` stages and scheduler end states (NODE_FAIL) in
  the status details, recorded in ``state.json`` for when the scheduler has forgotten the job.
"""

from __future__ import annotations

import errno
import subprocess

import pytest

from harness.io import atomic_write, disk_full, write_text
from harness.launch import jobs
from harness.launch.jobs import (
    JobPoller,
    LiveJob,
    read_state,
    record_vanished,
    stage_status,
    write_state,
)
from harness.launch.runner import failure_text
from harness.paths import stage_dir


def test_a_wrapped_enospc_becomes_an_oserror_naming_the_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "ckpt" / "step_0000002.pt"
    write_text(target, "previous")
    with pytest.raises(OSError) as caught, atomic_write(target) as handle:
        handle.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert disk_full(caught.value) == errno.ENOSPC
    assert target.read_text() == "previous"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no .tmp left
    text = failure_text(caught.value)
    assert text.startswith("OSError: [Errno 28] No space left on device: ")
    assert "--retry-failed" in text


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ValueError), atomic_write(tmp_path / "x") as handle:
        handle.write(b"x")
        raise ValueError("bad")
    assert failure_text(ValueError("bad")) == "ValueError: bad"
    assert not list(tmp_path.iterdir())


class _Poller(JobPoller):
    def __init__(self, jobs_: dict[str, LiveJob]) -> None:
        super().__init__()
        self._slurm, self._fetched_at, self.answered_at = jobs_, float("inf"), 1e12


def _submission(job_id: str) -> dict:
    return {"job_id": job_id, "executor": "slurm", "attempt": 1}


def test_requeued_and_node_fail_are_named(tmp_path):
    root = tmp_path
    a, b, c = (stage_dir(root, "train", k) for k in ("a", "b", "c"))
    write_state(a, "interrupted", job_id="7", error="stopped by a scheduler signal")
    write_state(b, "interrupted", job_id="8", error="stopped by a scheduler signal")
    write_state(c, "running", job_id="9", started_at=1.0)
    poller = _Poller(
        {
            "7": LiveJob("PENDING", "BeginTime", restarts=1),
            "8": LiveJob("NODE_FAIL", "NodeDown"),
            "9": LiveJob("NODE_FAIL", "NodeDown"),
        }
    )
    requeued = stage_status(root, "train", "a", _submission("7"), poller)
    assert requeued.state == "requeued" and requeued.live
    assert requeued.detail == "requeued 1x, waiting: BeginTime"
    failed_node = stage_status(root, "train", "b", _submission("8"), poller)
    assert failed_node.state == "interrupted" and failed_node.ended == "NODE_FAIL"
    assert failed_node.detail.startswith("job 8 ended NODE_FAIL (its node failed); stopped")
    killed = stage_status(root, "train", "c", _submission("9"), poller)
    assert killed.state == "failed" and killed.vanished
    assert "ended while running: NODE_FAIL (its node failed)" in killed.detail

    assert record_vanished(root, {"b": failed_node, "c": killed}) == 2
    assert read_state(b)["state"] == "interrupted" and "NODE_FAIL" in read_state(b)["error"]
    assert read_state(c)["state"] == "failed" and "NODE_FAIL" in read_state(c)["error"]
    forgotten = _Poller({})  # past MinJobAge: the record on disk still says it
    assert "NODE_FAIL" in stage_status(root, "train", "b", _submission("8"), forgotten).detail
    assert record_vanished(root, {"b": failed_node}) == 0  # recorded once


def test_squeue_answer_is_parsed_with_restarts_and_ended_jobs(monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        out = "12_3|PENDING|BeginTime|2\n13|NODE_FAIL|NodeDown|0\n14|CANCELLED by 0|None|0\n"
        return subprocess.CompletedProcess(command, 0, out, "")

    monkeypatch.setattr(jobs.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(jobs.subprocess, "run", fake_run)
    answer = jobs._squeue()
    assert "-t" in calls[0] and "all" in calls[0]
    assert answer["12_3"] == LiveJob("PENDING", "BeginTime", restarts=2)
    assert answer["13"].over and answer["14"].state == "CANCELLED"
    poller = JobPoller()
    assert poller.live("13", "slurm") is None and poller.ended("13", "slurm") == "NODE_FAIL"
    assert poller.live("12_3", "slurm").restarts == 2 and poller.ended("12_3", "slurm") is None


def test_consistent_block_calls_squeue_once_and_only_for_slurm_jobs(monkeypatch):
    """A block of local-only queries never runs squeue (an unreachable controller costs ~20 s
    per call); a block of SLURM queries runs it once, however many jobs it asks about."""
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "5|RUNNING|None|0\n", "")

    monkeypatch.setattr(jobs.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(jobs.subprocess, "run", fake_run)
    poller = JobPoller(min_interval_s=0.0)
    with poller.consistent():
        assert poller.live("999999999", "local") is None
        assert poller.ended("999999999", "local") is None
    assert calls == []
    with poller.consistent():
        answers = [poller.live(j, "slurm") for j in ("5", "6", "5")]
        assert answers == [LiveJob("RUNNING", "None"), None, LiveJob("RUNNING", "None")]
        assert poller.ended("6", "slurm") is None
    assert len(calls) == 1
