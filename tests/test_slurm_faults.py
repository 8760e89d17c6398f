"""Faults the sweep engine survives on the real single-node SLURM cluster (``scripts/slurm-local.sh``).

* a node that goes down under running training: a requeueable job is requeued (``harness
  status``: ``requeued``), a ``--no-requeue`` job ends ``NODE_FAIL`` (status says so); the first
  finishes by itself, ``--retry-failed --wait`` resumes the second, both to exactly the configured
  steps from their checkpoints;
* sbatch refusing a submission partway (a per-user submit limit, ``job_submit/throttle``, inside
  a job array split at ``MaxArraySize``): what went in is recorded, the user is told what did not
  and why, and the re-run submits exactly the rest;
* a full disk under training (a small tmpfs results root): the checkpoint write fails without a
  partial file, the previous checkpoint stays loadable, the stage fails saying "No space left on
  device", and once space is freed ``--retry-failed`` resumes it;
* SLURM's own time limit (``--time=2``, ``--signal=USR2@75``): training checkpoints, submitit
  requeues it, and it finishes at exactly the configured steps.

Tests that change the cluster (``slurm.conf`` settings, a node state, a mount) restore it in a
``finally``. They need root (CI runs as root): elsewhere they skip, in CI (``CI=true``) they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import in_ci
from test_sweep_slurm import (
    CATALOGUE,
    TINY,
    _assert_resumed_to_the_end,
    _logged_steps,
    harness,
    rows,
    squeue_ids,
    sweep_args,
    wait_for,
)

from harness.cli import main
from harness.config.encoders import load_catalogue
from harness.config.sweep import load_sweep
from harness.io import read_jsonl
from harness.launch.executor import max_array_size
from harness.launch.jobs import JobPoller, _squeue, load_submissions, read_state
from harness.launch.submit import plan_statuses
from harness.paths import stage_dir
from harness.plan import build_plan

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_CONF = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
LOCAL_MARKER = "# written by harness scripts/slurm-local.sh"


def long_train(steps: int, ckpt_every: int, *extra: str) -> list[str]:
    """Override a single baseline training run of the tiny sweep that lasts ``steps`` steps."""
    sets = ["methods=[]", f"train.steps={steps}", f"train.ckpt_every={ckpt_every}",
            f"eval.at_steps=[{steps}]", *extra]  # fmt: skip
    return [arg for s in sets for arg in ("--set", s)] + ["--only", "train"]


def plan_of(*sets: str):
    return build_plan(load_catalogue(CATALOGUE), load_sweep(TINY, list(sets)))


def train_run(root: Path, sweep: str) -> tuple[Path, str, str]:
    """(stage dir, stage key, job id) of the one training run of ``sweep``."""
    plan = json.loads((root / "plans" / sweep / "plan.json").read_text())
    (stage,) = [s for s in plan["stages"] if s["stage"] == "train"]
    job = load_submissions(root)[stage["key"]]["job_id"]
    return stage_dir(root, "train", stage["key"]), stage["key"], job


def not_allowed(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def scontrol(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def slurm_conf(**settings: str) -> Iterator[None]:
    """The local test cluster reconfigured (``scontrol reconfigure``) with these ``slurm.conf``
    settings (``SchedulerParameters`` values are appended); the file is restored byte for byte,
    and the cluster reconfigured again, afterwards."""
    original = SLURM_CONF.read_text() if SLURM_CONF.is_file() else ""
    if LOCAL_MARKER not in original:
        not_allowed(f"{SLURM_CONF} is not the local test cluster's (scripts/slurm-local.sh)")
    if not os.access(SLURM_CONF, os.W_OK):
        not_allowed(f"{SLURM_CONF} is not writable (run as root)")
    text = original
    for key, value in settings.items():
        line = re.compile(rf"^{key}=(.*)$", re.MULTILINE)
        found = line.search(text)
        if found is None:
            text += f"{key}={value}\n"
            continue
        if key == "SchedulerParameters":
            value = f"{found.group(1)},{value}"
        text = text[: found.start()] + f"{key}={value}" + text[found.end() :]
    try:
        SLURM_CONF.write_text(text)
        done = scontrol("reconfigure")
        assert done.returncode == 0, done.stderr
        yield
    finally:
        SLURM_CONF.write_text(original)
        if RESTART_NEEDED & settings.keys():
            restart_controller()
        else:
            done = scontrol("reconfigure")
            assert done.returncode == 0, f"could not restore {SLURM_CONF}: {done.stderr}"


# slurmctld keeps a job_submit plugin loaded, and its throttle counters, across `scontrol
# reconfigure`: restoring these needs a restart (otherwise later tests' sbatch calls fail with
# "Reached jobs per hour limit" / "Invalid job array specification")
RESTART_NEEDED = {"JobSubmitPlugins", "SchedulerParameters"}
CONTROLLER_PID = Path("/run/slurmctld.pid")


def restart_controller() -> None:
    """Restart slurmctld on the restored ``slurm.conf`` (job state survives: StateSaveLocation)
    and wait until it answers."""
    pid = int(CONTROLLER_PID.read_text().strip())
    os.kill(pid, 15)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), "slurmctld to stop", 30, every=0.2)
    started = subprocess.run(["slurmctld", "-f", str(SLURM_CONF)], capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    wait_for(lambda: "UP" in scontrol("ping").stdout, "slurmctld to answer", 60, every=0.2)

    def node_usable() -> bool:  # slurmd has registered: the controller would place a job again
        probe = ["sbatch", "--test-only", "--mem=1G", "--cpus-per-task=1", "--wrap=true"]
        return subprocess.run(probe, capture_output=True, text=True).returncode == 0

    wait_for(node_usable, "the node to register with the restarted slurmctld", 90, every=0.2)


def node_name() -> str:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True)
    return out.stdout.split()[0]


def row_of(out: str, sweep: str, stage: str) -> dict[str, str]:
    """The ``stage`` row of ``sweep``'s table in ``harness status`` output, as {column: cell}."""
    lines = re.split(rf"^sweep {re.escape(sweep)} *$", out, maxsplit=1, flags=re.MULTILINE)[1]
    lines = lines.splitlines()
    header = [
        c.strip() for c in next(li for li in lines if li.startswith("┃")).strip("┃").split("┃")
    ]
    cells = next(li for li in lines if li.startswith(f"│ {stage} "))
    return dict(zip(header, [c.strip() for c in cells.strip("│").split("│")], strict=True))


def duckdb_rows(root: Path, sql: str, *params) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(root / "harness.duckdb"), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def assert_no_duplicate_rows(root: Path, run_key: str, steps: int) -> None:
    """The database holds the run's training log once per step, and its result once."""
    assert harness(root, "ingest") == 0
    run_id = json.loads((stage_dir(root, "train", run_key) / "run.json").read_text())["run_id"]
    ((count, distinct, first, last),) = duckdb_rows(
        root,
        "SELECT count(*), count(DISTINCT step), min(step), max(step) FROM train_log WHERE run_id = ?",
        run_id,
    )
    assert (count, distinct, first, last) == (steps, steps, 1, steps)
    assert duckdb_rows(root, "SELECT status FROM results WHERE stage_key = ?", run_key) == [
        ("done",)
    ]


# ---------------------------------------------------------------------------------------------
# Node failure
# ---------------------------------------------------------------------------------------------
NODE_STEPS = 200


def test_node_down_requeues_or_fails_and_training_resumes(root, capsys):
    node = node_name()
    requeue = sweep_args(*long_train(NODE_STEPS, 20, "seeds=[1]", "name=tiny-requeue"))
    norequeue = sweep_args(*long_train(NODE_STEPS, 20, "seeds=[2]", "name=tiny-norequeue",
                                       "resources.train.additional.no-requeue=true"))  # fmt: skip
    # an administrator's "down" stays down until "resume" (slurm-local.sh's ReturnToService=2
    # would bring the node back at once)
    with slurm_conf(ReturnToService="1"):
        assert harness(root, *requeue) == 0
        assert harness(root, *norequeue) == 0
        (a_dir, a_key, a_job), (b_dir, b_key, b_job) = (
            train_run(root, "tiny-requeue"),
            train_run(root, "tiny-norequeue"),
        )
        wait_for(
            lambda: min(len(_logged_steps(a_dir)), len(_logged_steps(b_dir))) >= 30,
            "both runs to train a while",
            every=0.2,
        )
        try:
            down = scontrol("update", f"nodename={node}", "state=down", "reason=harness-test")
            assert down.returncode == 0, down.stderr

            def settled():
                jobs = _squeue() or {}
                a, b = jobs.get(a_job), jobs.get(b_job)
                gone = not Path(f"/proc/{read_state(b_dir)['pid']}").exists()  # done writing
                return (
                    a and a.restarts >= 1 and not a.over and b and b.state == "NODE_FAIL" and gone
                )

            wait_for(settled, "the requeue of one job and the NODE_FAIL of the other", 60)
            capsys.readouterr()
            assert harness(root, "status", "--no-ingest") == 0
            out = capsys.readouterr().out
        finally:
            scontrol("update", f"nodename={node}", "state=resume")
    assert row_of(out, "tiny-requeue", "train")["requeued"] == "1", out
    assert row_of(out, "tiny-norequeue", "train")["requeued"] == "", out
    assert re.search(r"(failed|interrupted) \(NODE_FAIL\): train none/SiT-T/4/s2", out), out
    assert f"job {b_job} ended NODE_FAIL (its node failed)" in out
    assert "NODE_FAIL" in read_state(b_dir)["error"]  # kept once the scheduler forgets the job

    assert harness(root, *norequeue, "--retry-failed", "--wait") == 0
    _assert_resumed_to_the_end(b_dir, NODE_STEPS)
    _assert_resumed_to_the_end(a_dir, NODE_STEPS)  # requeued by SLURM: no resubmission needed
    jobs = Counter(
        r["key"] for name in ("tiny-requeue", "tiny-norequeue") for r in rows(root, name)
    )
    assert jobs == {a_key: 1, b_key: 2}
    assert train_run(root, "tiny-requeue")[2] == a_job  # the very same job ran again
    for key in (a_key, b_key):
        assert_no_duplicate_rows(root, key, NODE_STEPS)


# ---------------------------------------------------------------------------------------------
# sbatch refuses partway
# ---------------------------------------------------------------------------------------------
def test_submission_refused_partway_reports_it_and_the_rerun_submits_the_rest(root, capsys):
    args = sweep_args("--set", "encoders=[pixels, noise, hog]", "--only", "spatial,probe")
    # 3 spatial and 3 probe stages; with MaxArraySize=2 each kind is 2 sbatch calls (2 + 1 tasks).
    # job_submit/throttle counts every sbatch, --test-only included: 2 resource checks + 3 arrays
    # pass, the 4th array (the last probe) is refused as a QOS submit limit would be.
    max_array_size.cache_clear()
    try:
        with slurm_conf(
            MaxArraySize="2",
            JobSubmitPlugins="throttle",
            SchedulerParameters="jobs_per_user_per_hour=5",
        ):
            code = harness(root, *args)
    finally:
        max_array_size.cache_clear()
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert "sbatch refused job 'harness-probe' (1 task(s))" in err
    assert "Job violates accounting/QOS policy" in err  # sbatch's own words
    assert "submitted 5 of 6 stage job(s)" in err and "NOT submitted: 1 (1 probe): probe " in err
    assert "re-run the same command: it submits only the 1 not submitted" in err
    first = rows(root)
    assert Counter(r["stage"] for r in first) == {"spatial": 3, "probe": 2}
    assert {r["job_id"] for r in first} <= set(_squeue() or {})  # real jobs SLURM knows

    plan = plan_of("encoders=[pixels, noise, hog]")
    wanted = {s.key for s in plan.stages if s.stage in ("spatial", "probe")}
    (missing,) = wanted - {r["key"] for r in first}
    assert f"): {plan.by_key()[missing].label}\n" in err  # which one, by name

    assert harness(root, *args, "--wait") == 0  # the limit is lifted
    after = rows(root)
    assert after[: len(first)] == first  # nothing recorded twice, nothing lost
    assert [r["key"] for r in after[len(first) :]] == [missing]
    assert len({r["job_id"] for r in after}) == len(after) == 6
    statuses = plan_statuses(plan, root, JobPoller())
    assert {statuses[k].state for k in wanted} == {"done"}
    assert duckdb_rows(
        root,
        "SELECT count(*), count(DISTINCT stage_key) FROM submissions WHERE sweep = 'tiny'",
    ) == [(6, 6)]
    assert duckdb_rows(root, "SELECT count(*) FROM results WHERE status = 'done'") == [(6,)]


# ---------------------------------------------------------------------------------------------
# Disk full
# ---------------------------------------------------------------------------------------------
DISK_STEPS = 160


@pytest.fixture
def small_disk(slurm_cluster, tmp_path):
    """A 48 MiB tmpfs as the results root (jobs run on this machine and see it too)."""
    path = tmp_path / "results"
    path.mkdir()
    if os.geteuid() != 0:
        not_allowed("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        not_allowed(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if (path / "plans").is_dir():
            main(["--results", str(path), "cancel"])
        for _ in range(20):  # a cancelled job may still hold a file open for a moment
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(path)], check=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_full_fails_cleanly_and_retry_resumes_from_the_checkpoint(small_disk, capsys):
    from harness.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

    root = small_disk
    args = sweep_args(*long_train(DISK_STEPS, 20, "train.keep_last=1"))
    assert harness(root, *args) == 0
    out_dir, key, job = train_run(root, "tiny")
    saved = wait_for(lambda: list_checkpoints(out_dir), "a first checkpoint", every=0.1)
    size = saved[-1][1].stat().st_size
    filler = root / "filler"
    with open(filler, "wb") as handle:  # leave 1 MiB: less than one checkpoint (~5 MiB)
        os.posix_fallocate(handle.fileno(), 0, free_bytes(root) - (1 << 20))
    assert free_bytes(root) < size

    wait_for(lambda: job not in squeue_ids(), "the training job to end")
    state = read_state(out_dir)
    assert state["state"] == "failed", state
    assert "no space left on device" in state["error"].lower(), state["error"]
    assert "--retry-failed" in state["error"]
    assert "/checkpoints/step_" in state["error"]  # the checkpoint write hit the full disk
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]  # no partial file
    kept = latest_checkpoint(out_dir)
    assert kept is not None and [p for _, p in list_checkpoints(out_dir)] == [kept]
    step = load_checkpoint(kept)["step"]
    assert 0 < step < DISK_STEPS
    assert max(_logged_steps(out_dir)) > step  # it trained on past the checkpoint before failing

    capsys.readouterr()
    assert harness(root, "status") == 0  # the disk is still full: status still answers
    shown, warned = capsys.readouterr()
    assert "warning: ingest skipped: [Errno 28] No space left on device" in warned
    assert row_of(shown, "tiny", "train")["failed"] == "1", shown
    assert "No space left on device" in shown

    filler.unlink()
    assert harness(root, *args, "--retry-failed", "--wait") == 0
    _assert_resumed_to_the_end(out_dir, DISK_STEPS)
    assert min(e["step"] for e in read_jsonl(out_dir / "log.jsonl")
               if e.get("event") == "train.resumed") == step  # fmt: skip
    assert_no_duplicate_rows(root, key, DISK_STEPS)


# ---------------------------------------------------------------------------------------------
# SLURM's own time limit
# ---------------------------------------------------------------------------------------------
# slurmctld checks limits every 30 s (PERIODIC_TIMEOUT) and sends the --signal warning at the
# first check at or after end - delay - 30 s, so that it is never late: with --time=2 and
# USR2@75 that is 15-45 s into each run. 15 s leaves every run time to start Python and install
# submitit's handlers (a USR2 before that would kill the job: it is not what the test is about);
# 45 s of training is < 1500 steps even on an idle machine (~25 steps/s here), so the first run
# is always interrupted. Each run then trains 10-40 s: ~2 min in all idle, ~5 under load.
TIME_STEPS = 1500


def test_slurm_time_limit_checkpoints_requeues_and_finishes(root):
    args = sweep_args(*long_train(TIME_STEPS, 50, "resources.train.time_min=2",
                                  "resources.train.signal_delay_s=75",
                                  "resources.train.max_requeues=20"))  # fmt: skip
    assert harness(root, *args) == 0
    out_dir, key, job = train_run(root, "tiny")
    script = Path(load_submissions(root)[key]["log"]).with_name(f"{job}_submission.sh")
    assert "#SBATCH --time=2" in script.read_text()
    assert "#SBATCH --signal=USR2@75" in script.read_text()
    wait_for(lambda: job not in squeue_ids(), "the training job to finish", timeout=600, every=1)
    result = json.loads((out_dir / "result.json").read_text())
    assert result["status"] == "done", result.get("error")
    assert int(result["provenance"]["slurm_restart_count"]) >= 1, "never hit its time limit"
    _assert_resumed_to_the_end(out_dir, TIME_STEPS)
    stops = [e for e in read_jsonl(out_dir / "log.jsonl") if e.get("event") == "job.stop_requested"]
    assert stops and {e["signal"] for e in stops} == {"SIGUSR2"}  # SLURM's warning, nothing else
    assert len(rows(root)) == 1  # requeued by submitit, never resubmitted
    assert_no_duplicate_rows(root, key, TIME_STEPS)
