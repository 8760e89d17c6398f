"""The plan: content keys, sharing, the `none` baseline, decisions and the cost model (no SLURM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config.encoders import load_catalogue
from harness.config.loader import parse_yaml
from harness.config.model import sit_arch
from harness.config.resources import ResourceConfig, Resources
from harness.config.sweep import load_sweep, only_encoders, sweep_from_doc
from harness.errors import ConfigError, RegistryError
from harness.launch.jobs import StageStatus
from harness.launch.submit import decide
from harness.plan import (
    H100_EFFECTIVE_FLOPS,
    build_plan,
    estimate_gpu_hours,
    resolve_encoders,
    save_plan,
    sit_forward_flops,
)

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "encoders.yaml"
TINY = REPO / "sweeps" / "tiny.yaml"


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(CATALOGUE)


def tiny(*overrides: str):
    return load_sweep(TINY, overrides)


def sweep_text(text: str, *overrides: str):
    return sweep_from_doc(parse_yaml(text, "sweep.yaml"), overrides)


def keys_by_stage(plan) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for stage in plan.stages:
        out.setdefault(stage.stage, set()).add(stage.key)
    return out


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------
def test_keys_are_stable_across_processes_and_machines(catalogue, tmp_path):
    here = [(s.stage, s.key) for s in build_plan(catalogue, tiny()).stages]
    script = (
        "import json, sys\n"
        "from harness.config.encoders import load_catalogue\n"
        "from harness.config.sweep import load_sweep\n"
        "from harness.plan import build_plan\n"
        f"plan = build_plan(load_catalogue({str(CATALOGUE)!r}), load_sweep({str(TINY)!r}))\n"
        "print(json.dumps([(s.stage, s.key) for s in plan.stages]))\n"
    )
    env = {**os.environ, "HARNESS_RESULTS": str(tmp_path / "elsewhere"), "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert [tuple(x) for x in json.loads(out.stdout)] == here


def test_editing_train_steps_replans_only_train_and_eval(catalogue):
    before = keys_by_stage(build_plan(catalogue, tiny()))
    after = keys_by_stage(build_plan(catalogue, tiny("train.steps=6", "eval.at_steps=[6]")))
    for stage in ("fid_ref", "spatial", "probe"):
        assert before[stage] == after[stage], stage
    assert before["train"].isdisjoint(after["train"])
    assert before["eval"].isdisjoint(after["eval"])


def test_editing_eval_settings_keeps_training(catalogue):
    base = build_plan(catalogue, tiny())
    more_samples = build_plan(catalogue, tiny("eval.num_samples=40"))
    b, m = keys_by_stage(base), keys_by_stage(more_samples)
    assert b["train"] == m["train"] and b["spatial"] == m["spatial"]
    assert b["eval"].isdisjoint(m["eval"])
    assert b["fid_ref"] == m["fid_ref"]  # the number of generated samples is not a reference input
    # adding an eval step keeps every training key (kept checkpoints are operational)
    extra_step = keys_by_stage(build_plan(catalogue, tiny("eval.at_steps=[2, 4]")))
    assert extra_step["train"] == b["train"]
    assert b["eval"] < extra_step["eval"]


def test_operational_settings_do_not_change_keys(catalogue):
    base = keys_by_stage(build_plan(catalogue, tiny()))
    changed = keys_by_stage(
        build_plan(
            catalogue,
            tiny("train.num_workers=3", "train.ckpt_every=1", "resources.train.time_min=7"),
        )
    )
    assert base == changed


def test_reference_settings_change_fid_ref_and_every_eval(catalogue):
    base = keys_by_stage(build_plan(catalogue, tiny()))
    other = keys_by_stage(build_plan(catalogue, tiny("eval.reference.num_features=20")))
    assert base["fid_ref"].isdisjoint(other["fid_ref"])
    assert base["eval"].isdisjoint(other["eval"])  # upstream keys are part of the key
    assert base["train"] == other["train"]


# ---------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------
def test_tiny_plan_structure_and_baseline(catalogue):
    sweep = tiny()
    plan = build_plan(catalogue, sweep)
    n_enc = len(plan.encoders)
    runs = n_enc * len(sweep.methods) + 1  # + the `none` baseline
    assert plan.counts() == {
        "fid_ref": 1,
        "spatial": n_enc,
        "probe": n_enc,
        "train": runs,
        "eval": runs * len(sweep.eval_steps),
    }
    baseline = [s for s in plan.stages if s.stage == "train" and s.labels["method"] == "none"]
    assert len(baseline) == 1
    assert "encoder" not in baseline[0].labels and baseline[0].config["encoder_spec"] is None
    assert any("none" in note for note in plan.notes)
    by_key = plan.by_key()
    for stage in plan.stages:  # dependency order: every upstream comes first
        for need in stage.needs:
            assert plan.stages.index(by_key[need]) < plan.stages.index(stage)
    evals = [s for s in plan.stages if s.stage == "eval"]
    assert all({by_key[n].stage for n in s.needs} == {"train", "fid_ref"} for s in evals)


def test_per_encoder_stages_are_shared_by_runs_and_sweeps(catalogue):
    two_models = tiny("models=[SiT-T/4, SiT-S/4]", "seeds=[0, 1]")
    plan = build_plan(catalogue, two_models)
    n_enc = len(plan.encoders)
    assert plan.counts()["spatial"] == n_enc  # not × models × seeds × methods
    assert plan.counts()["probe"] == n_enc
    assert plan.counts()["train"] == 2 * 2 * (n_enc * 2 + 1)
    other_sweep = build_plan(catalogue, tiny("name=other", "train.steps=8", "eval.at_steps=[8]"))
    assert keys_by_stage(other_sweep)["spatial"] == keys_by_stage(plan)["spatial"]


def test_none_listed_explicitly_is_not_duplicated(catalogue):
    plan = build_plan(catalogue, tiny("methods=[none, repa]"))
    methods = [s.labels["method"] for s in plan.stages if s.stage == "train"]
    assert methods.count("none") == 1 and not plan.notes


def test_plan_json_format(catalogue, tmp_path):
    plan = build_plan(catalogue, tiny())
    path = save_plan(plan, tmp_path)
    assert path == tmp_path / "plans" / "tiny" / "plan.json"
    doc = json.loads(path.read_text())
    assert set(doc) == {"schema", "sweep", "created_at", "git_sha", "config", "stages"}
    assert doc["schema"] == 1 and doc["sweep"] == "tiny"
    assert doc["config"] == plan.sweep.to_dict()
    for stage in doc["stages"]:
        assert set(stage) == {"key", "stage", "label", "needs", "labels", "est_gpu_hours", "config"}
        assert set(stage["labels"]) <= {"encoder", "method", "model", "seed", "run_id", "step"}
        if stage["stage"] in ("spatial", "probe"):
            spec = stage["config"]["encoder_spec"]
            assert spec == catalogue.get(stage["labels"]["encoder"]).to_dict()
        if stage["stage"] == "eval":
            assert stage["labels"]["step"] == stage["config"]["step"]
            assert stage["labels"]["run_id"] == stage["config"]["run_id"]


# ---------------------------------------------------------------------------------------------
# Selection and bad input
# ---------------------------------------------------------------------------------------------
def test_encoder_selectors(catalogue):
    names = catalogue.names()
    assert resolve_encoders(catalogue, ["all"]) == list(names)
    irepa = resolve_encoders(catalogue, ["irepa27"])
    assert len(irepa) == 27 and all(catalogue.get(n).irepa27 for n in irepa)
    assert resolve_encoders(catalogue, ["noise", "pixels", "noise"]) == ["noise", "pixels"]
    globbed = resolve_encoders(catalogue, ["dinov2*"])
    assert globbed and all(n.startswith("dinov2") for n in globbed)


def test_unknown_encoder_says_did_you_mean(catalogue):
    with pytest.raises(RegistryError, match=r"pixles.*did you mean 'pixels'"):
        build_plan(catalogue, tiny("encoders=[pixles]"))
    with pytest.raises(RegistryError, match="matches no entry"):
        resolve_encoders(catalogue, ["zzz-*"])


def test_sweep_encoders_are_checked_against_the_catalogue_with_file_and_line(catalogue):
    text = "name: x\ndata: {source: generated}\nencoders:\n  - pixels\n  - dinov9-vit-z\n"
    with pytest.raises(ConfigError) as info:
        sweep_from_doc(parse_yaml(text, "x.yaml"), catalogue=catalogue)
    assert info.value.message.startswith(
        "x.yaml:5: encoders[1]: 'dinov9-vit-z' is not in the catalogue (did you mean 'dinov"
    )
    assert "allowed: all, irepa27, a glob, or a name: " in info.value.message
    assert "pixels" in info.value.message.split("allowed:")[1]
    assert sweep_from_doc(parse_yaml(text, "x.yaml")).encoders[1] == "dinov9-vit-z"  # unchecked


def test_encoders_option_filters_the_sweeps_own_list(catalogue):
    sweep = only_encoders(tiny(), catalogue, ["p*"])
    assert sweep.encoders == ["pixels"]
    assert build_plan(catalogue, sweep).encoders == ["pixels"]
    everything = only_encoders(tiny(), catalogue, ["all"])
    assert everything.encoders == ["pixels", "noise"]  # `all` of the sweep, not the catalogue


def test_encoders_option_outside_the_sweep_names_the_sweeps_encoders(catalogue):
    with pytest.raises(ConfigError) as info:
        only_encoders(tiny(), catalogue, ["noise", "dino*"])
    assert info.value.message == (
        "--encoders 'dino*': selects none of sweep tiny's encoders; allowed: pixels, noise"
    )


def test_encoders_option_without_a_sweep_list_selects_from_the_catalogue(catalogue):
    own = sweep_text("name: x\nencoders: [pixels]\n")
    assert only_encoders(own, catalogue, ["pixels"]).encoders == ["pixels"]
    bare = sweep_text("name: x\n")  # encoders: defaults to all
    assert only_encoders(bare, catalogue, ["hog", "dinov2-vit-b"]).encoders == [
        "hog",
        "dinov2-vit-b",
    ]
    with pytest.raises(ConfigError, match=r"'hgo' is not in the catalogue \(did you mean 'hog'"):
        only_encoders(bare, catalogue, ["hgo"])


def test_encoders_option_keeps_the_noise_floor_of_the_chosen_encoders(catalogue):
    floored = tiny("noise_floor.seeds=[1]", "noise_floor.encoders=[noise]")
    assert only_encoders(floored, catalogue, ["pixels"]).noise_floor.encoders == []
    kept = only_encoders(floored, catalogue, ["noise"])
    assert kept.noise_floor.encoders == ["noise"] and kept.noise_floor.seeds == [1]
    assert build_plan(catalogue, only_encoders(floored, catalogue, ["pixels"])).encoders


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "methods: [repa, irepaa]\n",
            r"sweep.yaml:1: methods: unknown method 'irepaa'.*did you mean 'irepa'",
        ),
        ("models: [SiT-Q/2]\n", r"sweep.yaml:1: models: .*unknown SiT model 'SiT-Q/2'"),
        (
            "train: {steps: 10}\neval: {at_steps: [20]}\n",
            r"sweep.yaml:2: eval.at_steps: \[20\] are outside 1..train.steps \(10\)",
        ),
        ("seeds: [0, 0]\n", r"sweep.yaml:1: seeds: seeds must be distinct"),
        ("align: {none: {proj_coeff: 1.0}}\n", r"align.none: not an alignment method"),
        (
            "resources: {train: {gpus_per_node: 8, tasks_per_node: 4}}\n",
            r"tasks_per_node \(4\) must equal gpus_per_node \(8\)",
        ),
        ("resources: {default: {additional: {dependency: x}}}\n", r"set by the sweep engine"),
        ("launch: {executor: pbs}\n", r"'pbs' is not allowed.*allowed: auto, debug, local, slurm"),
        ("trian: {steps: 3}\n", r"sweep.yaml:1: trian: unknown key \(did you mean 'train'\?\)"),
    ],
)
def test_malformed_sweeps_are_config_errors(text, expected):
    with pytest.raises(ConfigError, match=expected):
        sweep_text(text)


def test_inconsistent_run_is_a_config_error(catalogue):
    with pytest.raises(
        ConfigError, match=r"the run pixels / repa .*encoder_depth.*9 is beyond SiT-T/4"
    ):
        build_plan(catalogue, tiny("align.repa.encoder_depth=9"))


def test_sweep_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "my-study.yaml"
    path.write_text("models: [SiT-T/4]\n")
    assert load_sweep(path).name == "my-study"


# ---------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------
def _statuses(plan, **states_by_stage: str):
    return {
        s.key: StageStatus(s.key, s.stage, states_by_stage.get(s.stage, "planned"), job_id="7")
        for s in plan.stages
    }


def test_decisions_follow_states_and_dependencies(catalogue):
    plan = build_plan(catalogue, tiny())
    fresh = decide(plan, _statuses(plan))
    assert {d.action for d in fresh.values()} == {"submit"}

    done = decide(
        plan,
        _statuses(plan, fid_ref="done", spatial="done", probe="done", train="done", eval="done"),
    )
    assert {d.action for d in done.values()} == {"done"}

    failed_train = _statuses(plan, fid_ref="done", spatial="done", probe="done", train="failed")
    decided = decide(plan, failed_train)
    assert {d.action for d in decided.values() if d.stage.stage == "train"} == {"failed"}
    assert {d.action for d in decided.values() if d.stage.stage == "eval"} == {"blocked"}
    retried = decide(plan, failed_train, retry_failed=True)
    assert {d.action for d in retried.values() if d.stage.stage in ("train", "eval")} == {"submit"}

    queued = decide(plan, _statuses(plan, fid_ref="running", train="submitted"))
    assert {d.action for d in queued.values() if d.stage.stage in ("fid_ref", "train")} == {"live"}
    assert {d.action for d in queued.values() if d.stage.stage == "eval"} == {"submit"}

    only = decide(plan, _statuses(plan), only=["spatial", "probe"])
    assert {d.stage.stage for d in only.values() if d.action == "submit"} == {"spatial", "probe"}
    assert {d.action for d in only.values() if d.stage.stage == "eval"} == {"skipped"}
    evals_only = decide(plan, _statuses(plan, fid_ref="done"), only=["eval"])
    assert {d.action for d in evals_only.values() if d.stage.stage == "eval"} == {"blocked"}
    assert all("train" in d.reason for d in evals_only.values() if d.action == "blocked")

    diverged = decide(plan, _statuses(plan, fid_ref="done", train="diverged"), retry_failed=True)
    assert {d.action for d in diverged.values() if d.stage.stage == "train"} == {"diverged"}
    assert {d.action for d in diverged.values() if d.stage.stage == "eval"} == {"blocked"}


# ---------------------------------------------------------------------------------------------
# Resources and cost model
# ---------------------------------------------------------------------------------------------
def test_resource_overrides_merge_onto_defaults():
    resources = Resources(
        default=ResourceConfig(partition="gpu", account="vision", time_min=240, mem_gb=64),
        train=ResourceConfig(gpus_per_node=8, time_min=2880),
    )
    train = resources.for_stage("train")
    assert (train.partition, train.account, train.mem_gb) == ("gpu", "vision", 64)
    assert (train.gpus_per_node, train.time_min, train.num_tasks) == (8, 2880, 8)
    assert resources.for_stage("eval") == resources.default
    assert ResourceConfig().num_tasks == 1


def test_sit_flops_match_published_gflops():
    # DiT/SiT report 118.6 / 80.7 / 23.0 GFLOPs (multiply-adds) per forward for XL/L/B at 256 tokens
    for name, gmacs in (("SiT-XL/2", 118.64), ("SiT-L/2", 80.71), ("SiT-B/2", 23.01)):
        flops = sit_forward_flops(sit_arch(name), 256)
        assert flops / 2 / 1e9 == pytest.approx(gmacs, rel=0.03), name


def test_training_estimate_reproduces_repa_throughput():
    # calibration point: SiT-XL/2 at batch 256 runs 5.4 it/s on 8 H100 (REPA)
    run = {
        "model": {"name": "SiT-XL/2", "input_size": 32},
        "train": {"steps": 400_000, "global_batch": 256},
    }
    hours = estimate_gpu_hours("train", {"run": run})
    assert hours == pytest.approx(400_000 / 5.4 * 8 / 3600, rel=0.01)
    # 50K samples of the 250-step SDE on SiT-XL/2: about 7 GPU-hours (reported: ~7 h on one H800)
    sampler = {"num_steps": 250, "cfg_scale": 1.0, "guidance_low": 0.0, "guidance_high": 1.0}
    ev = {
        "model": {"name": "SiT-XL/2", "input_size": 32, "space": "latent"},
        "eval": {"sampler": sampler, "num_samples": 50_000},
    }
    assert 6.0 < estimate_gpu_hours("eval", ev) < 8.0
    assert H100_EFFECTIVE_FLOPS > 0


def test_noise_floor_repeats_the_baseline_and_named_runs_over_extra_seeds(catalogue):
    sweep = tiny("noise_floor.seeds=[0, 1, 2]", "noise_floor.encoders=[pixels]")
    plan = build_plan(catalogue, sweep)
    trains = [s.labels for s in plan.stages if s.stage == "train"]
    seeds = {}
    for labels in trains:
        seeds.setdefault((labels["method"], labels.get("encoder")), []).append(labels["seed"])
    assert sorted(seeds[("none", None)]) == [0, 1, 2]
    assert sorted(seeds[("repa", "pixels")]) == [0, 1, 2]  # methods default to the sweep's
    assert sorted(seeds[("irepa", "pixels")]) == [0, 1, 2]
    assert seeds[("repa", "noise")] == [0]  # not repeated
    assert len(trains) == len({lab["run_id"] for lab in trains}) == 5 + 2 * 3  # no run twice
    only_repa = tiny(
        "noise_floor.seeds=[1]", "noise_floor.encoders=[noise]", "noise_floor.methods=[repa]"
    )
    extra = [
        s.labels
        for s in build_plan(catalogue, only_repa).stages
        if s.stage == "train" and s.labels["seed"] == 1
    ]
    assert sorted((lab["method"], lab.get("encoder")) for lab in extra) == [
        ("none", None),
        ("repa", "noise"),
    ]


def test_noise_floor_encoder_outside_the_sweep_is_a_config_error(catalogue):
    with pytest.raises(ConfigError, match=r"noise_floor.encoders \['hog'\].*not among"):
        build_plan(catalogue, tiny("noise_floor.seeds=[1]", "noise_floor.encoders=[hog]"))


def test_latent_stats_key_training_by_the_files_content(catalogue, tmp_path, monkeypatch):
    """Per-channel latent statistics are read by the jobs (elsewhere: an absolute path) and
    change every number: editing the file re-plans training, rewriting it unchanged does not."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    np.savez("stats.npz", mean=np.zeros(4), std=np.ones(4))
    sweep = tiny("model.space=latent", "train.latent_stats=stats.npz")

    def train_keys() -> set[str]:
        return keys_by_stage(build_plan(catalogue, sweep))["train"]

    first = train_keys()
    (planned,) = [s for s in build_plan(catalogue, sweep).stages if s.stage == "train"][:1]
    assert planned.config["run"]["train"]["latent_stats"] == str(tmp_path / "stats.npz")
    np.savez("stats.npz", mean=np.zeros(4), std=np.ones(4))
    assert train_keys() == first
    np.savez("stats.npz", mean=np.zeros(4), std=np.full(4, 2.0))
    assert train_keys().isdisjoint(first)
