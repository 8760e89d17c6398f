"""The sweep engine on the real single-node SLURM cluster (``scripts/slurm-local.sh``).

* the tiny sweep runs to completion through real ``sbatch`` (arrays, ``afterok``), and the
  database's ``v_study`` then holds every run and eval step with all its metrics;
* re-running submits nothing; editing ``train.steps`` re-plans only training and evaluation;
* preemption: ``scancel --signal=USR2`` and ``scontrol requeue`` on a running training job
  requeue it and it resumes from its checkpoint to exactly the configured steps, with no
  duplicate training-log rows; ``scancel --signal=KILL`` leaves it failed and
  ``--retry-failed`` resumes it;
* bad input exits 2 with nothing submitted and the saved plan unchanged;
* ``harness cancel`` cancels a sweep's queued jobs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.artifacts import read_result
from harness.cli import main
from harness.config.encoders import load_catalogue
from harness.config.sweep import load_sweep
from harness.io import read_jsonl
from harness.launch.jobs import JobPoller, load_submissions, read_state
from harness.launch.submit import decide, plan_statuses
from harness.paths import stage_dir
from harness.plan import build_plan

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = str(REPO / "encoders.yaml")
TINY = str(REPO / "sweeps" / "tiny.yaml")
# a single baseline training run that lasts long enough to be signalled
STEPS = 400
LONG_TRAIN = ["--set", "methods=[]", "--set", f"train.steps={STEPS}", "--set", "train.ckpt_every=25",
              "--set", f"eval.at_steps=[{STEPS}]", "--only", "train"]  # fmt: skip
DEADLINE_S = 240


def harness(root: Path, *args: str) -> int:
    return main(["--results", str(root), *args])


STUDY_SET = ("--set", "encoders=[pixels, noise, hog]", "--set", "eval.at_steps=[2, 4]")


def sweep_args(*extra: str) -> list[str]:
    return ["sweep", CATALOGUE, "--sweep", TINY, "--executor", "slurm", *extra]


def wait_for(condition, what: str, timeout: float = DEADLINE_S, every: float = 0.5):
    """Poll ``condition`` until it returns a truthy value (a bounded wait, not a sleep)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


SENT: list[subprocess.Popen] = []


def run(command: list[str]) -> None:
    """Send a scheduler command without waiting: while a sibling array task is being requeued,
    slurmctld answers "try again later" and scancel retries for up to half a minute."""
    SENT.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True)
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def rows(root: Path, sweep: str = "tiny") -> list[dict]:
    path = root / "plans" / sweep / "jobs.jsonl"
    return read_jsonl(path) if path.exists() else []


# ---------------------------------------------------------------------------------------------
# The tiny sweep end to end
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_tiny(slurm_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm") / "results"
    # the reduced study: 3 control encoders x {REPA, iREPA} + none, evaluated at two steps
    assert harness(root, *sweep_args("--wait", *STUDY_SET)) == 0
    return root


def test_tiny_sweep_runs_to_completion_through_sbatch(finished_tiny):
    root = finished_tiny
    plan = json.loads((root / "plans" / "tiny" / "plan.json").read_text())
    for stage in plan["stages"]:
        result = read_result(stage_dir(root, stage["stage"], stage["key"]))
        assert result is not None and result["status"] == "done", stage["label"]
        assert result["provenance"]["slurm_job_id"], stage["label"]
        assert result["provenance"]["git_sha"]  # the snapshot's sha reached the job
    submitted = rows(root)
    assert sorted(r["key"] for r in submitted) == sorted(s["key"] for s in plan["stages"])
    assert {r["executor"] for r in submitted} == {"slurm"}
    # one job array per stage kind: the two spatial stages share an array job id
    spatial = [r["job_id"] for r in submitted if r["stage"] == "spatial"]
    assert len(spatial) == 3 and len({j.split("_")[0] for j in spatial}) == 1


def test_v_study_has_every_run_and_metric(finished_tiny):
    import duckdb

    with duckdb.connect(str(finished_tiny / "harness.duckdb"), read_only=True) as con:
        frame = con.sql("SELECT * FROM v_study ORDER BY run_id, step").df()
    assert len(frame) == 14  # ({pixels, noise, hog} x {repa, irepa} + none) x steps {2, 4}
    assert set(frame["method"]) == {"none", "repa", "irepa"}
    assert frame["fid"].notna().all() and set(frame["step"]) == {2, 4}
    assert (frame.groupby("run_id")["step"].count() == 2).all()
    encoder_runs = frame[frame["method"] != "none"]
    for column in ("lp_top1", "lds", "cds", "srss", "rmsc"):
        assert encoder_runs[column].notna().all(), column
    assert frame[frame["method"] == "none"]["lds"].isna().all()


def test_report_of_the_reduced_study_has_every_figure(finished_tiny, tmp_path):
    out = tmp_path / "report"
    assert harness(finished_tiny, "report", "--out", str(out)) == 0
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"fid_vs_metrics", "repa_vs_irepa", "convergence", "training_curves",
            "correlation_heatmap"} <= figures  # fmt: skip
    html = (out / "index.html").read_text()
    assert "substitute extractor" in html and "http://" not in html and "https://" not in html
    for figure in figures:
        assert (out / "tables" / f"{figure}.csv").exists(), figure


def test_rerun_submits_nothing_and_train_steps_replan_only_train_and_eval(finished_tiny):
    root = finished_tiny
    before = rows(root)
    assert harness(root, *sweep_args()) == 0
    assert rows(root) == before
    catalogue = load_catalogue(CATALOGUE)
    longer = build_plan(catalogue, load_sweep(TINY, ["train.steps=6", "eval.at_steps=[6]"]))
    decisions = decide(longer, plan_statuses(longer, root, JobPoller()))
    to_run = {d.stage.stage for d in decisions.values() if d.action == "submit"}
    assert to_run == {"train", "eval"}
    assert {d.action for d in decisions.values() if d.stage.stage not in to_run} == {"done"}


# ---------------------------------------------------------------------------------------------
# Preemption, requeue, kill
# ---------------------------------------------------------------------------------------------
def _train_dirs(root: Path) -> dict[int, tuple[Path, str]]:
    """seed -> (train stage dir, job id) of the long training sweep."""
    plan = json.loads((root / "plans" / "tiny" / "plan.json").read_text())
    jobs = load_submissions(root)
    return {
        s["labels"]["seed"]: (stage_dir(root, "train", s["key"]), jobs[s["key"]]["job_id"])
        for s in plan["stages"]
        if s["stage"] == "train"
    }


def _logged_steps(out_dir: Path) -> list[int]:
    path = out_dir / "train_log.jsonl"
    return [row["step"] for row in read_jsonl(path)] if path.exists() else []


def _resumed_from(out_dir: Path) -> list[int]:
    events = read_jsonl(out_dir / "log.jsonl")
    return [e["step"] for e in events if e.get("event") == "train.resumed"]


def _assert_resumed_to_the_end(out_dir: Path, steps: int) -> None:
    result = wait_for(lambda: read_result(out_dir), f"{out_dir.name} to finish")
    assert result["status"] == "done"
    assert result["payload"]["steps_done"] == steps
    logged = _logged_steps(out_dir)
    assert logged == list(range(1, steps + 1))  # exactly the configured steps, no duplicates
    resumed = _resumed_from(out_dir)
    # resumed from a checkpoint, not from scratch (a stop after the last step but before the
    # result was written resumes at the last step itself and only writes the result)
    assert resumed and 0 < resumed[0] < steps and all(0 < r <= steps for r in resumed)


def test_preemption_requeues_and_resumes_from_checkpoint(root):
    seeds = ["--set", "seeds=[1, 2, 3, 4]"]
    assert harness(root, *sweep_args(*LONG_TRAIN, *seeds)) == 0
    runs = _train_dirs(root)

    def sigkill_task(job_id: str, out_dir: Path) -> None:  # what the OOM killer does
        os.kill(int(read_state(out_dir)["pid"]), signal.SIGKILL)

    signals = {
        1: lambda job, _: run(["scancel", "--signal=USR2", job]),  # preemption notice
        2: lambda job, _: run(["scontrol", "requeue", job]),  # the scheduler requeues (SIGTERM)
        3: lambda job, _: run(["scancel", "--signal=KILL", job]),  # a cancel: SIGTERM, then KILL
        4: sigkill_task,  # no warning at all: the job cannot say anything
    }
    pending = dict(signals)

    def signal_those_training() -> bool:  # each run is signalled once it has trained a while
        for seed in [s for s in pending if len(_logged_steps(runs[s][0])) >= 40]:
            out_dir, job_id = runs[seed]
            pending.pop(seed)(job_id, out_dir)
        return not pending

    wait_for(signal_those_training, "every run to train a while", every=0.2)
    _assert_resumed_to_the_end(runs[1][0], STEPS)
    _assert_resumed_to_the_end(runs[2][0], STEPS)
    assert read_result(runs[1][0])["provenance"]["slurm_restart_count"] not in (None, "0")

    for seed in (3, 4):
        wait_for(lambda j=runs[seed][1]: j not in squeue_ids(), f"seed {seed} to leave the queue")
    plan = build_plan(
        load_catalogue(CATALOGUE),
        load_sweep(TINY, ["methods=[]", f"train.steps={STEPS}", "train.ckpt_every=25",
                          f"eval.at_steps=[{STEPS}]", "seeds=[1, 2, 3, 4]"]),
    )  # fmt: skip
    states = plan_statuses(plan, root, JobPoller())
    cancelled, killed = states[runs[3][0].name], states[runs[4][0].name]
    assert cancelled.state in ("interrupted", "failed")  # SIGTERM came first: it saved
    assert killed.state == "failed" and "ended while running" in killed.detail
    submitted = len(rows(root))
    assert harness(root, *sweep_args(*LONG_TRAIN, *seeds)) == 0
    assert len(rows(root)) == submitted  # failed stages are not resubmitted by default
    assert read_state(runs[4][0])["state"] == "failed"  # the engine recorded the silent death
    assert harness(root, *sweep_args(*LONG_TRAIN, *seeds, "--retry-failed")) == 0
    assert len(rows(root)) == submitted + 2
    assert {r["attempt"] for r in rows(root)[-2:]} == {2}
    _assert_resumed_to_the_end(runs[3][0], STEPS)
    _assert_resumed_to_the_end(runs[4][0], STEPS)
    assert [p.wait(timeout=60) for p in SENT] == [0] * len(SENT)


# ---------------------------------------------------------------------------------------------
# Bad input and cancel
# ---------------------------------------------------------------------------------------------
def test_rejected_resources_submit_nothing_and_keep_the_plan(root, capsys):
    assert harness(root, *sweep_args("--hold", "--only", "spatial")) == 0
    plan_file = root / "plans" / "tiny" / "plan.json"
    saved, jobs_before = plan_file.read_bytes(), rows(root)
    queue_before = squeue_ids()
    code = harness(
        root, *sweep_args("--set", "resources.train.partition=nonexistent", "--set", "train.steps=5",
                          "--set", "eval.at_steps=[5]")
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "SLURM rejects the resources of stage 'train'" in err and "partition" in err
    assert plan_file.read_bytes() == saved and rows(root) == jobs_before
    assert squeue_ids() - queue_before == set()  # nothing new (older jobs may finish meanwhile)
    for args in (
        ["--set", "methods=[repa, irepaa]"],  # unknown method
        ["--encoders", "pixls"],  # unknown encoder
        ["--set", "data.source=folder", "--set", "data.root=/nonexistent/imagenet"],  # no dataset
    ):
        assert harness(root, *sweep_args(*args)) == 2, args
    assert plan_file.read_bytes() == saved and rows(root) == jobs_before


def test_cancel_removes_queued_jobs(root, capsys):
    assert harness(root, *sweep_args("--hold")) == 0
    mine = {r["job_id"] for r in rows(root)}
    assert mine and mine <= squeue_ids()
    assert harness(root, "cancel", "--sweep", "tiny", "--stage", "eval") == 0
    evals = {r["job_id"] for r in rows(root) if r["stage"] == "eval"}
    wait_for(lambda: not (evals & squeue_ids()), "eval jobs to be cancelled")
    assert (mine - evals) <= squeue_ids()  # other stages stay queued
    assert harness(root, "cancel", "--sweep", "tiny") == 0
    wait_for(lambda: not (mine & squeue_ids()), "every job to be cancelled")
    capsys.readouterr()
    assert harness(root, "status", "--sweep", "tiny", "--no-ingest") == 0
    assert "planned" in capsys.readouterr().out
