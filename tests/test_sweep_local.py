"""The sweep engine without SLURM: the debug executor (in-process) and the local executor
(subprocesses through submitit), on the tiny sweep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.artifacts import read_result
from harness.cli import main
from harness.config.encoders import load_catalogue
from harness.config.sweep import load_sweep
from harness.errors import SubmitError
from harness.io import read_jsonl
from harness.launch.jobs import read_state
from harness.launch.submit import submission_lock
from harness.paths import stage_dir
from harness.plan import build_plan

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = str(REPO / "encoders.yaml")
TINY = str(REPO / "sweeps" / "tiny.yaml")


def harness(root: Path, *args: str) -> int:
    return main(["--results", str(root), *args])


def sweep(root: Path, *extra: str, executor: str = "debug") -> int:
    return harness(root, "sweep", CATALOGUE, "--sweep", TINY, "--executor", executor, *extra)


def plan_stages(root: Path, name: str = "tiny") -> list[dict]:
    return json.loads((root / "plans" / name / "plan.json").read_text())["stages"]


def job_rows(root: Path, name: str = "tiny") -> list[dict]:
    path = root / "plans" / name / "jobs.jsonl"
    return read_jsonl(path) if path.exists() else []


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny sweep, run to completion in-process (debug executor)."""
    root = tmp_path_factory.mktemp("local") / "results"
    assert sweep(root) == 0
    return root


def test_debug_executor_runs_the_whole_plan(finished):
    stages = plan_stages(finished)
    assert {s["stage"] for s in stages} == {"fid_ref", "spatial", "probe", "train", "eval"}
    for stage in stages:
        out_dir = stage_dir(finished, stage["stage"], stage["key"])
        result = read_result(out_dir)
        assert result is not None and result["status"] == "done", stage["label"]
        assert result["key"] == stage["key"] and result["config"] == stage["config"]
        assert not (out_dir / "state.json").exists()  # result.json supersedes it
        spec = json.loads((out_dir / "spec.json").read_text())
        assert [n["key"] for n in spec["needs"]] == stage["needs"]
    train = [s for s in stages if s["stage"] == "train"]
    for stage in train:
        payload = read_result(stage_dir(finished, "train", stage["key"]))["payload"]
        assert payload["run_id"] == stage["labels"]["run_id"]
        assert payload["steps_done"] == 4
    rows = job_rows(finished)
    assert len(rows) == len(stages) and {r["attempt"] for r in rows} == {1}


def test_rerun_submits_nothing(finished):
    before = job_rows(finished)
    assert sweep(finished) == 0
    assert job_rows(finished) == before


def test_edited_train_steps_runs_only_train_and_eval(finished, capsys):
    before = len(job_rows(finished))
    assert sweep(finished, "--set", "train.steps=5", "--set", "eval.at_steps=[5]") == 0
    new = job_rows(finished)[before:]
    assert sorted(r["stage"] for r in new) == ["eval"] * 5 + ["train"] * 5
    capsys.readouterr()
    assert harness(finished, "status", "--sweep", "tiny", "--no-ingest") == 0
    out = capsys.readouterr().out
    assert "train" in out and "100%" in out


def test_local_executor_runs_jobs_in_subprocesses_on_the_snapshot(tmp_path):
    root = tmp_path / "results"
    assert sweep(root, "--encoders", "noise", "--only", "spatial", executor="local") == 0
    (row,) = job_rows(root)
    assert row["executor"] == "local" and row["job_id"].isdigit()
    result = read_result(stage_dir(root, "spatial", row["key"]))
    assert result["status"] == "done"
    sha = result["provenance"]["git_sha"]
    snapshots = list((root / "jobs" / "snapshots").iterdir())
    assert len(snapshots) == 1 and (snapshots[0] / "harness" / "launch" / "runner.py").exists()
    # submitit's folder template jobs/%j is expanded, never left as a literal folder
    assert sorted(p.name for p in (root / "jobs").iterdir()) == sorted([row["job_id"], "snapshots"])
    # the job's provenance records the snapshot's commit (+ its tree hash when uncommitted)
    assert sha and (snapshots[0].name[:8] in sha if "dirty" in sha else len(sha) == 40)


def test_failed_stage_records_the_error_and_retry_resumes(finished, tmp_path, capsys):
    root = tmp_path / "results"
    shutil.copytree(finished, root)
    stages = build_plan(load_catalogue(CATALOGUE), load_sweep(TINY)).stages
    train = next(s for s in stages if s.stage == "train" and s.labels["method"] == "none")
    evaluation = next(s for s in stages if s.stage == "eval" and s.needs[0] == train.key)
    eval_dir = stage_dir(root, "eval", evaluation.key)
    shutil.rmtree(eval_dir)
    checkpoint = stage_dir(root, "train", train.key) / "checkpoints" / "step_0000004.pt"
    aside = tmp_path / "aside.pt"
    checkpoint.rename(aside)
    assert sweep(root, executor="local") == 1  # the eval job fails: its checkpoint is gone
    state = read_state(eval_dir)
    assert state["state"] == "failed" and state["error"] and state["log_tail"]
    captured = capsys.readouterr()
    assert "did not finish" in captured.err
    # the final table shows the outcome (1 eval failed, the rest done), not the plan
    eval_row = next(line for line in captured.out.splitlines() if line.startswith("│ eval"))
    cells = [c.strip() for c in eval_row.strip("│").split("│")]
    assert cells[:6] == ["eval", str(cells[1]), str(int(cells[1]) - 1), "", "", "1"], cells
    last_error = state["error"].strip().splitlines()[-1]
    assert f"failed: {evaluation.label}: {last_error}" in captured.err
    rows = len(job_rows(root))
    assert sweep(root, executor="local") == 0  # not resubmitted without --retry-failed
    assert len(job_rows(root)) == rows
    aside.rename(checkpoint)
    assert sweep(root, "--retry-failed", executor="local") == 0
    assert read_result(eval_dir)["status"] == "done"
    assert job_rows(root)[-1]["attempt"] == 3  # debug run, failed local run, retry


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "methods=[repa, irepaa]"], "did you mean 'irepa'"),
        (["--encoders", "pixls"], "did you mean 'pixels'"),
        (["--set", "data.source=folder", "--set", "data.root=/nonexistent/imagenet"], "cpu-study"),
        (["--set", "train.steps=2"], "eval.at_steps: [4] are outside"),
        (["--only", "trian"], "did you mean 'train'"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    root = tmp_path / "results"
    assert sweep(root, *args) == 2
    assert message in capsys.readouterr().err
    assert not root.exists()


# a real-weights encoder whose checkpoint file is absent ($HARNESS_WEIGHTS is empty)
MISSING_WEIGHTS = ("--set", "random_weights=false", "--set", "encoders=[pixels, mocov3-vit-b]")


def test_missing_weights_stop_the_sweep_before_anything_is_submitted(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path / "weights"))
    root = tmp_path / "results"
    assert sweep(root, *MISSING_WEIGHTS, executor="local") == 2
    err = capsys.readouterr().err
    assert f"checkpoint file mocov3_vitb.pth is not in {tmp_path / 'weights' / 'ckpts'}" in err
    assert f"put the weights file at {tmp_path / 'weights' / 'ckpts' / 'mocov3_vitb.pth'}" in err
    assert not root.exists()  # no plan, no stage folder, no job record


def test_every_missing_input_is_listed_once_and_dry_run_shows_the_list(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path / "weights"))
    root = tmp_path / "results"
    reference = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    args = (*MISSING_WEIGHTS, "--set", "eval.reference.source=npz")
    args += ("--set", f"eval.reference.path={reference}")
    assert sweep(root, *args, executor="local") == 2
    err = capsys.readouterr().err
    assert "2 inputs the jobs need are missing (nothing was submitted)" in err
    assert f"eval.reference.path {reference} does not exist" in err
    assert "mocov3-vit-b: checkpoint file mocov3_vitb.pth" in err and "fill mocov3-vit-b:" in err
    assert "pixels" not in err  # a builtin encoder needs no weights
    assert not root.exists()

    assert sweep(root, *args, "--dry-run") == 0
    dry = capsys.readouterr().err
    assert "not submittable yet: sweep tiny: 2 inputs the jobs need are missing" in dry
    assert f"eval.reference.path {reference} does not exist" in dry and "mocov3_vitb.pth" in dry
    assert not root.exists()

    # random weights need no checkpoint: only the reference is left
    assert sweep(root, *args, "--set", "random_weights=true", "--dry-run") == 0
    dry = capsys.readouterr().err
    assert "mocov3" not in dry and f"eval.reference.path {reference} does not exist" in dry


def test_malformed_sweep_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodels: [SiT-T/4\n")
    code = harness(tmp_path / "results", "sweep", CATALOGUE, "--sweep", str(bad), "--dry-run")
    assert code == 2
    assert "bad.yaml:2:9: YAML syntax error: this [ list is never closed" in capsys.readouterr().err


def test_concurrent_submissions_are_serialised(tmp_path):
    root = tmp_path / "results"
    busy = pytest.raises(SubmitError, match=r"another `harness sweep` \(pid \d+ on ")
    with submission_lock(root), busy, submission_lock(root, wait_s=0.2):
        pass
    with submission_lock(root, wait_s=0.2):  # free again once the first one is done
        pass


def test_commands_reuse_the_sweeps_results_under_the_same_keys(finished, tmp_path, capsys):
    """`harness probe / fid-ref / eval / train` with the sweep's settings compute the sweep's
    content keys, so they find its finished results instead of computing them again."""
    import yaml

    plan = build_plan(load_catalogue(CATALOGUE), load_sweep(TINY))  # other tests re-plan it
    stages = [stage.to_json() for stage in plan.stages]

    def one(stage: str, **labels) -> dict:
        (found,) = [
            s
            for s in stages
            if s["stage"] == stage and all(s["labels"].get(k) == v for k, v in labels.items())
        ]
        return found

    def reused(stage: dict, *args: str) -> None:
        result = stage_dir(finished, stage["stage"], stage["key"]) / "result.json"
        before = result.stat().st_mtime_ns
        capsys.readouterr()
        assert harness(finished, *args) == 0
        assert str(result.parent) in capsys.readouterr().out  # the sweep's directory
        assert result.stat().st_mtime_ns == before  # found done, not recomputed

    probe = one("probe", encoder="pixels")
    grid = str(probe["config"]["grid"][0])
    reused(probe, "probe", CATALOGUE, "--encoders", "pixels", "--sweep", TINY, "--grid", grid,
           "--random-weights")  # fmt: skip
    reused(one("fid_ref"), "fid-ref", TINY)
    evaluation = one("eval", encoder="noise", method="irepa")
    train_dir = stage_dir(finished, "train", evaluation["needs"][0])
    reused(evaluation, "eval", str(train_dir), "--config", TINY, "--step", "4")

    train = one("train", encoder="noise", method="repa")
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(train["config"]["run"]))
    capsys.readouterr()
    assert harness(finished, "train", str(run_yaml), "--catalogue", CATALOGUE) == 0
    assert str(stage_dir(finished, "train", train["key"])) in capsys.readouterr().out
    assert read_result(stage_dir(finished, "train", train["key"]))["payload"]["steps_done"] == 4


def test_a_sweep_reuses_what_the_commands_computed(tmp_path, capsys):
    """`harness train / eval / metrics / probe` first, then the sweep with the same settings:
    it finds those stages done and submits only the rest (the baseline's train and eval)."""
    import yaml

    root = tmp_path / "results"
    text = Path(TINY).read_text().replace("name: tiny", "name: cli-first")
    text = text.replace("encoders: [pixels, noise]", "encoders: [pixels]")
    text = text.replace("methods: [repa, irepa]", "methods: [repa]")
    sweep_file = tmp_path / "cli-first.yaml"
    sweep_file.write_text(text)
    plan = build_plan(load_catalogue(CATALOGUE), load_sweep(sweep_file))
    (train,) = [s for s in plan.stages if s.stage == "train" and s.labels["method"] == "repa"]
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(train.config["run"]))

    assert harness(root, "train", str(run_yaml), "--catalogue", CATALOGUE) == 0
    train_dir = stage_dir(root, "train", train.key)
    assert harness(root, "eval", str(train_dir), "--config", str(sweep_file), "--step", "4") == 0
    assert (
        harness(root, "metrics", CATALOGUE, "--encoders", "pixels", "--sweep", str(sweep_file)) == 0
    )
    grid = "8"  # SiT-T/4 on 32-px images
    probe = ["--encoders", "pixels", "--sweep", str(sweep_file), "--grid", grid, "--random-weights"]
    assert harness(root, "probe", CATALOGUE, *probe) == 0
    capsys.readouterr()

    assert harness(root, "sweep", CATALOGUE, "--sweep", str(sweep_file), "--executor", "debug") == 0
    submitted = {row["key"] for row in job_rows(root, "cli-first")}
    baseline = {s.key for s in plan.stages if s.labels.get("method") == "none"}
    assert submitted == baseline  # none/train + none/eval; everything else was found done
    for stage in plan.stages:
        assert read_result(stage_dir(root, stage.stage, stage.key))["status"] == "done", stage.label
