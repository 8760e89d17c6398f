"""The paper-scale presets: their values are the published protocols (paper_facts.md §(b)), and
their dry-run plans have the expected number of stages and GPU-hour estimates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.cli import main
from harness.config.encoders import load_catalogue
from harness.config.sweep import load_sweep
from harness.plan import build_plan

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"
REPA_ENCODERS = {  # REPA Table 2 (SiT-L/2, 400K): MAE-L, DINO-B, MoCov3-L, I-JEPA-H, CLIP-L, DINOv2-B/L/g
    "mae-vit-l",
    "dino-vit-b",
    "mocov3-vit-l",
    "jepa-vit-h",
    "clip-vit-L",
    "dinov2-vit-b",
    "dinov2-vit-l",
    "dinov2-vit-g",
}
# preset -> (models, methods, train steps, eval steps, alignment depth, precision, decode VAE)
PRESETS = {
    "irepa-sitxl-100k": (
        ["SiT-XL/2"],
        ["repa", "irepa"],
        100_000,
        [100_000],
        8,
        "bf16",
        "stabilityai/sd-vae-ft-mse",
    ),
    "irepa-sitb-400k": (
        ["SiT-B/2"],
        ["repa", "irepa"],
        400_000,
        [100_000, 400_000],
        4,
        "bf16",
        "stabilityai/sd-vae-ft-mse",
    ),
    "repa-sitl-400k": (
        ["SiT-L/2"],
        ["repa"],
        400_000,
        [400_000],
        8,
        "fp16",
        "stabilityai/sd-vae-ft-ema",
    ),
    "default": (
        ["SiT-B/2", "SiT-L/2", "SiT-XL/2"],
        ["repa", "irepa"],
        400_000,
        [100_000, 400_000],
        None,
        "bf16",
        "stabilityai/sd-vae-ft-mse",
    ),
}


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(REPO / "encoders.yaml")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_matches_the_published_protocol(name, catalogue):
    models, methods, steps, at_steps, depth, precision, decode_vae = PRESETS[name]
    sweep = load_sweep(SWEEPS / f"{name}.yaml")
    assert (sweep.models, sweep.methods, sweep.seeds) == (models, methods, [0])
    # data: ImageNet-1K, ADM centre crop at 256 px, SD-VAE latents (32x32x4)
    data = sweep.data
    assert (data.source, data.resolution, data.num_classes) == ("folder", 256, 1000)
    assert (data.train_images, data.val_images) == (1_281_167, 50_000)
    assert sweep.model.space == "latent" and sweep.model.class_dropout == 0.1
    assert not sweep.model.learn_sigma
    # optimisation (both papers): AdamW lr 1e-4 constant, betas (0.9, 0.999), wd 0, batch 256,
    # clip 1.0, EMA 0.9999; linear interpolant, velocity prediction, uniform t
    train = sweep.train
    assert (train.steps, train.global_batch, train.lr) == (steps, 256, 1e-4)
    assert (train.betas, train.weight_decay, train.grad_clip, train.ema_decay) == (
        [0.9, 0.999],
        0.0,
        1.0,
        0.9999,
    )
    assert (train.path, train.prediction, train.time_sampling) == ("linear", "velocity", "uniform")
    assert train.precision == precision  # iREPA: bf16; REPA: fp16
    assert (train.vae, train.latent_scale) == ("stabilityai/sd-vae-ft-mse", 0.18215)
    # alignment: REPA = 3-layer MLP (2048), λ 0.5, cosine; iREPA = 3x3 conv + z-score γ 0.6, λ 0.5
    repa = sweep.align["repa"]
    assert (repa.projector, repa.projector_dim, repa.proj_coeff, repa.zscore, repa.loss) == (
        "mlp",
        2048,
        0.5,
        False,
        "cosine",
    )
    assert repa.encoder_depth == depth
    if "irepa" in methods:
        irepa = sweep.align["irepa"]
        assert (irepa.projector, irepa.kernel_size, irepa.proj_coeff) == ("conv", 3, 0.5)
        assert (irepa.zscore, irepa.zscore_gamma, irepa.encoder_depth) == (True, 0.6, depth)
    # evaluation: FID-50K, 250-step Euler–Maruyama SDE ending at t = 0.04, no CFG, ADM reference
    ev = sweep.eval
    assert (ev.at_steps, ev.num_samples, ev.vae) == (at_steps, 50_000, decode_vae)
    assert (ev.sampler.mode, ev.sampler.num_steps, ev.sampler.last_step_size) == ("sde", 250, 0.04)
    assert (ev.sampler.cfg_scale, ev.sampler.guidance_low, ev.sampler.guidance_high) == (
        1.0,
        0.0,
        1.0,
    )
    assert ev.extractor == "inception-v3-compat"
    assert (ev.reference.source, Path(ev.reference.path).name) == (
        "npz",
        "VIRTUAL_imagenet256_labeled.npz",
    )
    assert sweep.probe.pooling == "mean"  # iREPA's LP: mean of patch tokens
    assert (sweep.spatial.images, sweep.spatial.split) == (10_000, "val")
    # SLURM: one task per GPU on 8-GPU nodes for training and sampling
    for stage in ("train", "eval"):
        resources = sweep.resources.for_stage(stage)
        assert (resources.gpus_per_node, resources.num_tasks) == (8, 8)
    # the resolved runs: 16x16 tokens, the model's default depth where the preset leaves it unset
    plan = build_plan(catalogue, sweep)
    runs = [s.config["run"] for s in plan.stages if s.stage == "train"]
    assert {(r["model"]["input_size"], r["model"]["in_channels"]) for r in runs} == {(32, 4)}
    expected_depth = {"SiT-B/2": 4, "SiT-L/2": 8, "SiT-XL/2": 8}
    for run in runs:
        if run["method"] != "none":
            assert run["align"]["encoder_depth"] == (depth or expected_depth[run["model"]["name"]])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_dry_run_counts(name, catalogue):
    models, methods, _, at_steps, *_ = PRESETS[name]
    plan = build_plan(catalogue, load_sweep(SWEEPS / f"{name}.yaml"))
    n_enc = 8 if name == "repa-sitl-400k" else 27
    if name == "repa-sitl-400k":
        assert set(plan.encoders) == REPA_ENCODERS
    else:
        assert len(plan.encoders) == 27 and all(catalogue.get(e).irepa27 for e in plan.encoders)
    runs = (n_enc * len(methods) + 1) * len(models)  # + the `none` baseline per model size
    assert plan.counts() == {
        "latents": 1,
        "fid_ref": 1,
        "spatial": n_enc,
        "probe": n_enc,
        "train": runs,
        "eval": runs * len(at_steps),
    }
    assert plan.total_gpu_hours > 0


def test_full_study_size_and_estimate(catalogue):
    plan = build_plan(catalogue, load_sweep(SWEEPS / "default.yaml"))
    assert len(plan.stages) == 2 + 27 * 2 + 165 + 330  # ~550 instances
    train = {s.labels["model"]: s.est_gpu_hours for s in plan.stages if s.stage == "train"}
    # SiT-XL/2 400K at REPA's 5.4 it/s on 8 H100s: 164.6 GPU-hours per run
    assert train["SiT-XL/2"] == pytest.approx(164.6, rel=0.01)
    assert train["SiT-B/2"] < train["SiT-L/2"] < train["SiT-XL/2"]


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path, capsys):
    code = main(
        [
            "--results",
            str(tmp_path / "results"),
            "sweep",
            str(REPO / "encoders.yaml"),
            "--sweep",
            str(SWEEPS / "irepa-sitxl-100k.yaml"),
            "--dry-run",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    for word in ("fid_ref", "spatial", "probe", "train", "eval", "total", "166", "GPU-h"):
        assert word in captured.out
    assert "not submittable yet" in captured.err and "cpu-study" in captured.err
    assert not (tmp_path / "results").exists()


def test_paper_preset_without_imagenet_stops_before_submitting(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data/imagenet does not exist here
    code = main(
        [
            "--results",
            str(tmp_path / "results"),
            "sweep",
            str(REPO / "encoders.yaml"),
            "--sweep",
            str(SWEEPS / "irepa-sitxl-100k.yaml"),
            "--executor",
            "debug",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "data/imagenet" in err and "--set data.root=" in err
    assert "harness sweep encoders.yaml --sweep sweeps/cpu-study.yaml" in err
    assert not (tmp_path / "results" / "plans").exists()
    assert not (tmp_path / "results" / "jobs").exists()


# ---------------------------------------------------------------------------------------------
# The released iREPA LDM settings (issue 12, item 5)
# ---------------------------------------------------------------------------------------------
RELEASE = SWEEPS / "irepa-release-sitxl-100k.yaml"
TABLE4_ENCODERS = [  # iREPA Table 4 (+ CLIP-L from Table 8)
    "dinov2-vit-b",
    "dinov3-vit-b16",
    "webssl-vit-dino1b_full2b_224",
    "pe-vit-g",
    "clip-vit-L",
]


@pytest.mark.parametrize("name", [*sorted(PRESETS), RELEASE.stem])
def test_paper_preset_header_names_its_published_table(name):
    header = []
    for line in (SWEEPS / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = " ".join(header)
    assert re.search(r"arXiv 2(512\.10794|410\.06940)", text)
    assert re.search(r"\b(Table|Tables) \d", text)


def test_release_preset_differs_from_the_paper_preset_only_in_the_released_values():
    paper = load_sweep(SWEEPS / "irepa-sitxl-100k.yaml").to_dict()
    release = load_sweep(RELEASE).to_dict()
    assert release["encoders"] == TABLE4_ENCODERS
    assert release["align"]["irepa"]["kernel_size"] == 1  # ldm/train.py default
    assert release["align"]["irepa"]["proj_coeff"] == 1.0  # ldm/configs/irepa.yaml
    assert release["train"]["latent_stats"] == "data/irepa-latent-stats.npz"
    for doc in (paper, release):
        for key in ("name", "description", "encoders"):
            doc.pop(key)
        doc["align"]["irepa"].pop("kernel_size")
        doc["align"]["irepa"].pop("proj_coeff")
        doc["train"].pop("latent_stats")
    assert release == paper  # everything else (REPA baseline, γ, SDE, FID-50K ...) is shared


def test_release_preset_validates_and_dry_run_plans_1x1_projectors_with_lambda_1(
    tmp_path, capsys, monkeypatch, catalogue
):
    monkeypatch.chdir(tmp_path)  # no data/irepa-latent-stats.npz here
    assert main(["validate", str(REPO / "encoders.yaml"), str(RELEASE)]) == 0
    capsys.readouterr()
    results = tmp_path / "results"
    code = main(
        ["--results", str(results), "sweep", str(REPO / "encoders.yaml"), "--sweep", str(RELEASE),
         "--dry-run"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and "train" in captured.out and not results.exists()
    assert "not submittable yet" in captured.err
    missing = tmp_path / "data" / "irepa-latent-stats.npz"  # planned as an absolute path
    assert f"train.latent_stats {missing} does not exist" in captured.err
    plan = build_plan(catalogue, load_sweep(RELEASE))
    assert plan.encoders == TABLE4_ENCODERS
    runs = [s.config["run"] for s in plan.stages if s.stage == "train"]
    assert len(runs) == 2 * 5 + 1
    for run in runs:  # every run normalises its latents per channel, as the released train.py
        assert run["train"]["latent_stats"] == str(missing)  # absolute: jobs run elsewhere
        assert run["model"]["in_channels"] == 4
    irepa = [r["align"] for r in runs if r["method"] == "irepa"]
    assert len(irepa) == 5
    assert all(
        (a["projector"], a["kernel_size"], a["proj_coeff"]) == ("conv", 1, 1.0) for a in irepa
    )
    assert all(a["zscore"] and a["zscore_gamma"] == 0.6 for a in irepa)
    repa = [r["align"] for r in runs if r["method"] == "repa"]
    assert all((a["projector"], a["proj_coeff"]) == ("mlp", 0.5) for a in repa)


def test_latent_stats_changes_the_train_and_eval_keys_only(catalogue):
    def keys(*overrides):
        plan = build_plan(catalogue, load_sweep(RELEASE, overrides))
        by = {}
        for s in plan.stages:
            by.setdefault(s.stage, set()).add(s.key)
        return by

    release = keys()
    other = keys("train.latent_stats=data/other-stats.json")
    scalar = keys("train.latent_stats=null")
    for variant in (other, scalar):
        for stage in ("train", "eval"):  # what the normalisation changes: every run and its FID
            assert release[stage].isdisjoint(variant[stage]), stage
        for stage in ("latents", "fid_ref", "spatial", "probe"):  # raw VAE moments, real images
            assert release[stage] == variant[stage], stage
