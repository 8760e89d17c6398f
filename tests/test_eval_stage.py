"""The eval stage: reference statistics, resumable sampling, metrics with their protocol, and bad
input. Runs the real torch-fidelity path with the substitute extractor and a toy generator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity

from harness.config.data import DataConfig
from harness.config.eval import EvalConfig
from harness.errors import ArtifactError, ConfigError, DataError, StageError
from harness.eval.driver import SampleSource, evaluate_checkpoint
from harness.eval.fidelity import METRIC_KEYS
from harness.eval.generation import SamplePlan, generate_samples, read_shards
from harness.eval.reference import compute_reference, load_adm_npz, load_reference

TESTS = Path(__file__).resolve().parent
DATA = DataConfig(resolution=32, num_classes=4, train_images=240, val_images=40, seed=0)
EVAL = {
    "num_samples": 120,
    "shard_size": 25,
    "batch_size": 16,
    "extractor": "harness-cnn",
    "sampler": {"batch_size": 10},
    "substitute": {"widths": [8, 16, 32], "feature_dim": 16, "epochs": 2, "batch_size": 64},
    "metrics": {"kid_subsets": 10, "kid_subset_size": 50},
}


def eval_config(**changes: object) -> EvalConfig:
    return EvalConfig.model_validate({**EVAL, **changes})


def toy_source(data: DataConfig = DATA, *, resolution: int | None = 32) -> SampleSource:
    """A deterministic 'model': a val image of the requested class plus noise seeded per sample."""
    from harness.data import build_dataset

    val = build_dataset(data, "val")
    labels = val.labels()
    templates = torch.stack(
        [val[int(np.flatnonzero(labels == c)[0])]["image"] for c in range(data.num_classes)]
    )

    def generate(batch_labels: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        images = []
        for label, seed in zip(batch_labels.tolist(), seeds.tolist()):
            noise = torch.randint(
                -30, 31, templates.shape[1:], generator=torch.Generator().manual_seed(seed)
            )
            images.append((templates[label].int() + noise).clamp(0, 255).to(torch.uint8))
        return torch.stack(images)

    return SampleSource(
        generate, data.num_classes, "toy-run", {"model": "toy-v1"}, resolution=resolution
    )


@pytest.fixture
def reference(results_root: Path) -> Path:
    out = results_root / "stages" / "fid_ref" / "ref"
    compute_reference(DATA, eval_config(), out)
    return out


# ---------------------------------------------------------------------------------------------
# reference statistics
# ---------------------------------------------------------------------------------------------
def test_reference_is_computed_once_and_keyed_by_content(
    results_root: Path, reference: Path
) -> None:
    payload = json.loads((reference / "reference.json").read_text())
    assert payload["extractor"].startswith("harness-cnn-") and payload["extractor_substitute"]
    assert payload["n_images"] == 240 and payload["n_features"] == 240
    assert (
        payload["dataset"]["split"] == "train"
        and payload["torch_fidelity"] == torch_fidelity.__version__
    )
    loaded = load_reference(reference)
    assert loaded.fid.mu.dtype == np.float64 and loaded.fid.sigma.shape == (16, 16)
    cached = results_root / "cache" / "fid_refs" / payload["reference_key"] / "stats.npz"
    mtime = cached.stat().st_mtime_ns
    again = compute_reference(DATA, eval_config(), results_root / "stages" / "fid_ref" / "other")
    assert again["reference_key"] == payload["reference_key"]
    assert cached.stat().st_mtime_ns == mtime  # reused, not recomputed
    other_data = compute_reference(
        DATA.model_copy(update={"seed": 1}), eval_config(), results_root / "x"
    )
    assert other_data["reference_key"] != payload["reference_key"]


def test_adm_npz_reference(tmp_path: Path, results_root: Path) -> None:
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=2048), np.diag(rng.uniform(0.1, 1.0, 2048))
    np.savez(tmp_path / "adm.npz", mu=mu, sigma=sigma)
    weights = tmp_path / "inception.pth"
    torch.save({"stand-in": torch.zeros(1)}, weights)  # only hashed: no features are extracted
    cfg = eval_config(
        extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights),
        reference={"source": "npz", "path": str(tmp_path / "adm.npz")},
    )
    payload = compute_reference(DATA, cfg, results_root / "adm")
    assert payload["source"] == "npz" and payload["extractor"] == "inception-v3-compat"
    assert payload["available"] == {"fid": True, "kid": False, "prc": False, "fd_dinov2": False}
    loaded = load_reference(results_root / "adm")
    np.testing.assert_array_equal(loaded.fid.mu, mu)
    stats, images = load_adm_npz(tmp_path / "adm.npz")
    assert images is None and stats.sigma.dtype == np.float64
    substitute = eval_config(reference={"source": "npz", "path": str(tmp_path / "adm.npz")})
    with pytest.raises(ConfigError, match="Inception pool statistics"):
        compute_reference(DATA, substitute, results_root / "bad")


def test_missing_or_corrupt_adm_npz(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such file"):
        load_adm_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "nomu.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ArtifactError, match="needs arrays 'mu' and 'sigma'"):
        load_adm_npz(tmp_path / "nomu.npz")
    np.savez(tmp_path / "ok.npz", mu=np.zeros(4), sigma=np.eye(4))
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        load_adm_npz(tmp_path / "cut.npz")


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def test_samples_are_class_balanced_seeded_per_index_and_independent_of_world_size(
    tmp_path: Path,
) -> None:
    plan = SamplePlan(num_samples=50, num_classes=4, seed=7, class_balanced=True, shard_size=8)
    source = toy_source()
    generate_samples(plan, source.generate, tmp_path / "one", identity={}, batch_size=5)
    for rank in (1, 0):  # two "GPUs", in any order, other batch size
        generate_samples(
            plan,
            source.generate,
            tmp_path / "two",
            identity={},
            batch_size=3,
            rank=rank,
            world_size=2,
        )
    one = np.concatenate(list(read_shards(tmp_path / "one", plan)))
    two = np.concatenate(list(read_shards(tmp_path / "two", plan)))
    np.testing.assert_array_equal(one, two)
    assert np.array_equal(plan.labels(0, 50), np.arange(50) % 4)
    assert np.array_equal(plan.seeds(0, 50), np.arange(7, 57))
    unbalanced = SamplePlan(50, 4, 7, False, 8)
    assert np.array_equal(unbalanced.labels(10, 20), unbalanced.labels(0, 50)[10:20])


def test_eval_payload_records_metrics_and_full_protocol(
    results_root: Path, reference: Path
) -> None:
    out = results_root / "stages" / "eval" / "e1"
    payload = evaluate_checkpoint(
        "toy.pt", eval_config(), out, reference_dir=reference, step=300, source=toy_source()
    )
    metrics = payload["metrics"]
    assert set(metrics) == set(METRIC_KEYS) - {"fd_dinov2"}  # fd_dinov2 is off by default
    assert metrics["fid"] > 0 and metrics["isc_mean"] >= 1.0 and 0 <= metrics["precision"] <= 1
    protocol = payload["protocol"]
    ref_meta = json.loads((reference / "reference.json").read_text())
    assert protocol["extractor_substitute"] is True
    assert protocol["extractor"] == ref_meta["extractor"] and protocol["extractor"].startswith(
        "harness-cnn-"
    )
    assert protocol["extractor_weights"] == ref_meta["extractor_weights"]
    assert protocol["reference_key"] == ref_meta["reference_key"]
    assert protocol["torch_fidelity"] == torch_fidelity.__version__
    assert (protocol["num_samples"], protocol["sampler"], protocol["nfe"], protocol["seed"]) == (
        120,
        "sde",
        250,
        0,
    )
    assert protocol["kid_subset_size"] == 50 and protocol["tf32"] is False
    assert payload["step"] == 300 and payload["run_id"] == "toy-run"
    assert len(list((out / "samples").glob("*.npz"))) == 5


def test_evals_differing_only_in_sampler_precision_are_two_protocols(
    results_root: Path, reference: Path
) -> None:
    from harness.artifacts import write_result
    from harness.paths import stage_dir
    from harness.store.db import open_readonly
    from harness.store.ingest import ingest

    write_result(  # the run the evaluations belong to (v_study lists runs)
        stage_dir(results_root, "train", "t1"),
        stage="train",
        key="t1",
        config={},
        payload={"run_id": "toy-run"},
    )
    protocols = {}
    for precision in ("fp32", "bf16"):
        cfg = eval_config(sampler={"batch_size": 10, "precision": precision})
        key = f"e-{precision}"
        out = stage_dir(results_root, "eval", key)
        payload = evaluate_checkpoint(
            "toy.pt", cfg, out, reference_dir=reference, step=300, source=toy_source()
        )
        write_result(out, stage="eval", key=key, config={"eval": cfg.to_dict()}, payload=payload)
        protocols[precision] = payload["protocol"]
    differ = {k for k in protocols["fp32"] if protocols["fp32"][k] != protocols["bf16"][k]}
    assert differ == {"precision"}  # the toy source ignores it: the metrics are identical too
    assert protocols["fp32"]["to_uint8"] == "truncate" and protocols["fp32"]["class_balanced"]
    assert ingest(results_root).skipped == []
    with open_readonly(results_root) as con:
        rows = con.execute(
            "SELECT sampler_precision, protocol_key, fid FROM v_study ORDER BY 1"
        ).fetchall()
        evaluations = con.execute("SELECT count(DISTINCT protocol_key) FROM evaluations").fetchone()
    assert [r[0] for r in rows] == ["bf16", "fp32"] and rows[0][1] != rows[1][1]
    assert rows[0][2] == rows[1][2]  # same FID: only the protocol record tells them apart
    assert evaluations == (2,)


def test_better_samples_get_a_lower_fd(results_root: Path, reference: Path) -> None:
    good = evaluate_checkpoint(
        "g.pt",
        eval_config(),
        results_root / "g",
        reference_dir=reference,
        step=1,
        source=toy_source(),
    )
    source = toy_source()

    def washed_out(labels: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        return (source.generate(labels, seeds).float() * 0.1 + 200).to(torch.uint8)

    bad_source = SampleSource(washed_out, 4, "toy-bad", {"model": "bad"}, resolution=32)
    bad = evaluate_checkpoint(
        "b.pt",
        eval_config(),
        results_root / "b",
        reference_dir=reference,
        step=1,
        source=bad_source,
    )
    assert bad["metrics"]["fid"] > 2 * good["metrics"]["fid"]


KILLER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_eval_stage import eval_config, toy_source
from harness.eval.driver import SampleSource, evaluate_checkpoint
from harness.eval.fidelity import METRIC_KEYS
source = toy_source()
calls = []
def generate(labels, seeds):
    calls.append(len(labels))
    if sum(calls) > 60:  # third shard, mid-way: die like a preempted job
        os.kill(os.getpid(), signal.SIGKILL)
    return source.generate(labels, seeds)
evaluate_checkpoint("toy.pt", eval_config(), {out!r}, reference_dir={ref!r}, step=1,
                    source=SampleSource(generate, 4, "toy-run", {{"model": "toy-v1"}}, resolution=32))
"""


def test_killed_eval_resumes_with_identical_metrics(results_root: Path, reference: Path) -> None:
    killed = results_root / "killed"
    script = KILLER.format(tests=str(TESTS), out=str(killed), ref=str(reference))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert sorted(p.name for p in (killed / "samples").glob("*.npz")) == [
        "000000-000024.npz",
        "000025-000049.npz",
    ]
    source = toy_source()
    generated: list[int] = []

    def counting(labels: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        generated.append(len(labels))
        return source.generate(labels, seeds)

    resumed = evaluate_checkpoint(
        "toy.pt",
        eval_config(),
        killed,
        reference_dir=reference,
        step=1,
        source=SampleSource(counting, 4, "toy-run", {"model": "toy-v1"}, resolution=32),
    )
    assert sum(generated) == 70  # only the missing 3 shards were generated
    straight = evaluate_checkpoint(
        "toy.pt",
        eval_config(),
        results_root / "straight",
        reference_dir=reference,
        step=1,
        source=toy_source(),
    )
    assert resumed["metrics"] == straight["metrics"]


# ---------------------------------------------------------------------------------------------
# bad input: clear errors, nothing recorded as complete
# ---------------------------------------------------------------------------------------------
def test_missing_and_corrupt_reference(results_root: Path, reference: Path) -> None:
    out = results_root / "e"
    with pytest.raises(ArtifactError, match="no reference statistics"):
        evaluate_checkpoint(
            "t.pt",
            eval_config(),
            out,
            reference_dir=results_root / "nope",
            step=1,
            source=toy_source(),
        )
    assert not out.exists()  # failed before sampling anything
    (reference / "stats.npz").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="corrupt reference statistics"):
        evaluate_checkpoint(
            "t.pt", eval_config(), out, reference_dir=reference, step=1, source=toy_source()
        )
    assert not (out / "result.json").exists()


def test_mismatched_image_sizes(results_root: Path, reference: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"mismatched image sizes: the checkpoint's training data: 64 px, but reference .* holds 32 px",
    ):
        evaluate_checkpoint(
            "t.pt",
            eval_config(),
            results_root / "e",
            reference_dir=reference,
            step=1,
            source=toy_source(resolution=64),
        )
    big = toy_source(DATA.model_copy(update={"resolution": 48}), resolution=None)
    with pytest.raises(DataError, match="mismatched image sizes: the generated samples: 48 px"):
        evaluate_checkpoint(
            "t.pt", eval_config(), results_root / "e2", reference_dir=reference, step=1, source=big
        )


def test_fewer_samples_than_feature_dimensions_fail_before_sampling(
    results_root: Path, reference: Path
) -> None:
    def never(labels: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        raise AssertionError("sampled although the Fréchet distance cannot use the samples")

    source = SampleSource(never, 4, "toy-run", {"model": "toy-v1"}, resolution=32)
    for option in ("eval.num_samples", "--num-samples"):
        with pytest.raises(ConfigError) as info:
            evaluate_checkpoint(
                "t.pt",
                eval_config(num_samples=12, metrics={"kid": False, "prc": False}),
                results_root / "e",
                reference_dir=reference,
                step=1,
                source=source,
                num_samples_option=option,
            )
        assert info.value.exit_code == 2
        assert f"{option} 12: too few samples for FID" in info.value.message
        assert "16 dimensions" in info.value.message and "the minimum is 17" in info.value.message
    assert not (results_root / "e").exists()


def test_samples_of_another_model_are_never_mixed_in(results_root: Path, reference: Path) -> None:
    out = results_root / "e"
    evaluate_checkpoint(
        "t.pt", eval_config(), out, reference_dir=reference, step=1, source=toy_source()
    )
    other = SampleSource(toy_source().generate, 4, "toy-run", {"model": "toy-v2"}, resolution=32)
    with pytest.raises(StageError, match="samples of another model or protocol"):
        evaluate_checkpoint(
            "t.pt", eval_config(), out, reference_dir=reference, step=1, source=other
        )


def test_extractor_must_match_the_reference(results_root: Path, reference: Path) -> None:
    cfg = eval_config(extractor="inception-v3-compat", random_weights_extractor=True)
    with pytest.raises(StageError, match="extractor mismatch"):
        evaluate_checkpoint(
            "t.pt", cfg, results_root / "e", reference_dir=reference, step=1, source=toy_source()
        )


def test_flat_images_from_a_diverged_model_are_rejected(
    results_root: Path, reference: Path
) -> None:
    flat = SampleSource(
        lambda labels, seeds: torch.zeros(len(labels), 3, 32, 32, dtype=torch.uint8),
        4,
        "nan-run",
        {},
        resolution=32,
    )
    with pytest.raises(StageError, match="single flat colour"):
        evaluate_checkpoint(
            "t.pt", eval_config(), results_root / "e", reference_dir=reference, step=1, source=flat
        )


# ---------------------------------------------------------------------------------------------
# a real checkpoint of the training loop (tiny pixel-space SiT)
# ---------------------------------------------------------------------------------------------
def train_tiny_sit(data: DataConfig, out: Path, *, class_dropout: float = 0.1):
    """Two steps of a pixel-space SiT-T/4 through the real training loop; returns its RunConfig."""
    from harness.config.run import RunConfig
    from harness.train.loop import train

    train_cfg = {
        "steps": 2,
        "global_batch": 8,
        "ckpt_every": 2,
        "num_workers": 0,
        "precision": "fp32",
    }
    model = {"name": "SiT-T/4", "space": "pixel", "class_dropout": class_dropout}
    run = RunConfig.model_validate(
        {"method": "none", "data": data.to_dict(), "model": model, "train": train_cfg}
    )
    train(run, out, device="cpu")
    return run


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("run")
    run = train_tiny_sit(DATA, out)
    return out / "checkpoints" / "step_0000002.pt", run


def test_eval_of_a_training_checkpoint(
    results_root: Path, reference: Path, tiny_checkpoint
) -> None:
    from harness.config.run import run_id

    ckpt, run = tiny_checkpoint
    cfg = eval_config(sampler={"num_steps": 2, "batch_size": 40})
    payload = evaluate_checkpoint(
        ckpt, cfg, results_root / "e", reference_dir=reference, step=2, expect_model=run.model
    )
    assert payload["run_id"] == run_id(run) and payload["protocol"]["nfe"] == 2
    assert np.isfinite(payload["metrics"]["fid"]) and payload["protocol"]["vae"] is None
    assert len(payload["model_identity"]["checkpoint_sha256"]) == 64


def test_checkpoint_of_another_model_config_or_corrupt(
    results_root: Path, reference: Path, tiny_checkpoint
) -> None:
    ckpt, run = tiny_checkpoint
    other = run.model.model_copy(update={"name": "SiT-T/2"})
    out = results_root / "e"
    with pytest.raises(ArtifactError, match="was trained with model"):
        evaluate_checkpoint(
            ckpt, eval_config(), out, reference_dir=reference, step=2, expect_model=other
        )
    broken = results_root / "broken.pt"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ArtifactError):
        evaluate_checkpoint(broken, eval_config(), out, reference_dir=reference, step=2)
    assert not (out / "result.json").exists() and not list(out.glob("samples/*.npz"))


# ---------------------------------------------------------------------------------------------
# commands: harness fid-ref / harness eval
# ---------------------------------------------------------------------------------------------
STUDY_YAML = """
data: {resolution: 32, num_classes: 4, train_images: 240, val_images: 40, seed: 0}
eval:
  num_samples: 120
  shard_size: 60
  batch_size: 16
  extractor: harness-cnn
  sampler: {num_steps: 2, batch_size: 60}
  substitute: {widths: [8, 16, 32], feature_dim: 16, epochs: 2, batch_size: 64}
  metrics: {kid_subsets: 10, kid_subset_size: 50}
"""


def test_cli_fid_ref_and_eval_write_results(
    results_root: Path, tmp_path: Path, tiny_checkpoint, capsys
) -> None:
    from harness.artifacts import read_result
    from harness.cli import main

    study = tmp_path / "study.yaml"
    study.write_text(STUDY_YAML)
    assert main(["fid-ref", str(study)]) == 0
    (ref_dir,) = (results_root / "stages" / "fid_ref").iterdir()
    ref = read_result(ref_dir)
    assert ref["status"] == "done" and ref["payload"]["extractor"].startswith("harness-cnn-")
    assert 0 <= ref["payload"]["class_accuracy_real"] <= 1
    run_dir = tiny_checkpoint[0].parent.parent
    assert main(["eval", str(run_dir), "--config", str(study)]) == 0
    (eval_dir,) = (results_root / "stages" / "eval").iterdir()
    result = read_result(eval_dir)
    assert result["status"] == "done" and result["payload"]["step"] == 2
    assert result["payload"]["protocol"]["reference_key"] == ref["payload"]["reference_key"]
    metrics = result["payload"]["metrics"]  # the class accuracy of the samples and its ceiling
    assert 0 <= metrics["class_accuracy"] <= 1
    assert metrics["class_accuracy_real"] == ref["payload"]["class_accuracy_real"]
    assert "substitute extractor" in capsys.readouterr().out
    # bad input: exit code 2, nothing new recorded
    assert main(["eval", str(run_dir), "--config", str(study), "--set", "eval.bogus=1"]) == 2
    assert (
        main(["eval", str(run_dir), "--config", str(study), "--reference", str(tmp_path / "none")])
        == 2
    )
    assert main(["eval", str(tmp_path / "no-run")]) == 2
    assert len(list((results_root / "stages" / "eval").iterdir())) == 1
    assert "unknown key" in capsys.readouterr().err
