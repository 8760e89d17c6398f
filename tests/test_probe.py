"""Linear probe: oracle / noise features on the generated dataset's labels, determinism, the
vectorised lr grid, subsets, bad input, and the encoder stage with its feature cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config.data import DataConfig
from harness.config.eval import ProbeConfig
from harness.data import build_dataset
from harness.errors import DataError
from harness.eval.probe import probe_features, train_heads

DATA = DataConfig(resolution=32, num_classes=10, train_images=1000, val_images=500, seed=0)
FAST = ProbeConfig(lrs=[1e-3, 1e-2, 1e-1], epochs=15, batch_size=256)


@pytest.fixture(scope="module")
def labels() -> tuple[np.ndarray, np.ndarray]:
    return build_dataset(DATA, "train").labels(), build_dataset(DATA, "val").labels()


def oracle(y: np.ndarray, seed: int, dim: int = 32, scale: float = 5.0) -> np.ndarray:
    """One-hot class code times ``scale`` plus unit Gaussian noise (Bayes accuracy 99.8% at 5)."""
    x = np.random.default_rng(seed).normal(size=(len(y), dim))
    x[np.arange(len(y)), y] += scale
    return x.astype(np.float16)


def test_oracle_features_reach_nearly_100_percent(labels) -> None:
    train_y, val_y = labels
    result = probe_features(
        oracle(train_y, 0), train_y, oracle(val_y, 1), val_y, FAST, num_classes=10
    )
    assert result["top1"] > 0.97 and result["top5"] == 1.0
    assert result["n_train"] + result["n_holdout"] == len(train_y) and result["n_val"] == len(val_y)
    best = max(result["grid"], key=lambda g: g["holdout_top1"])
    assert result["best_lr"] == best["lr"]


def test_pure_noise_is_at_chance(labels) -> None:
    train_y, val_y = labels
    rng = np.random.default_rng(2)
    result = probe_features(
        rng.normal(size=(1000, 32)),
        train_y,
        rng.normal(size=(500, 32)),
        val_y,
        FAST,
        num_classes=10,
    )
    assert result["chance"] == 0.1
    assert 0.04 < result["top1"] < 0.17  # chance 0.10, binomial sd 0.013 on 500 images
    assert 0.35 < result["top5"] < 0.65


def test_reruns_give_identical_accuracy(labels) -> None:
    train_y, val_y = labels
    x_train, x_val = oracle(train_y, 3, scale=1.5), oracle(val_y, 4, scale=1.5)  # a hard problem
    first = probe_features(x_train, train_y, x_val, val_y, FAST, num_classes=10)
    second = probe_features(x_train, train_y, x_val, val_y, FAST, num_classes=10)
    assert first == second
    assert 0.2 < first["top1"] < 0.95  # neither trivial nor chance: the equality means something


def test_heads_trained_together_equal_heads_trained_alone() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 12, generator=gen), torch.randint(0, 5, (300,), generator=gen)
    joint = train_heads(
        x, y, 5, ProbeConfig(lrs=[1e-3, 3e-2], epochs=3, batch_size=64), generator_seed=5
    )
    alone = train_heads(x, y, 5, ProbeConfig(lrs=[3e-2], epochs=3, batch_size=64), generator_seed=5)
    torch.testing.assert_close(joint.weight[1], alone.weight[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(joint.bias[1], alone.bias[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(joint.weight[0], joint.weight[1])  # different lrs, different heads


def test_subset_protocol_uses_k_images_per_class(labels) -> None:
    train_y, val_y = labels
    cfg = FAST.model_copy(update={"subset_per_class": 20, "epochs": 60})
    result = probe_features(
        oracle(train_y, 0), train_y, oracle(val_y, 1), val_y, cfg, num_classes=10
    )
    assert result["n_train"] + result["n_holdout"] == 200 and result["subset_per_class"] == 20
    assert result["top1"] > 0.7  # rows keep their labels (misaligned rows would give ~0.1)


def test_bad_input_is_a_clear_error() -> None:
    y = np.arange(20) % 4
    x = np.zeros((20, 8))
    with pytest.raises(DataError, match="8-d but val features 6-d"):
        probe_features(x, y, np.zeros((5, 6)), y[:5], FAST)
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.3"):
        probe_features(x, y, x[:5], np.array([0, 1, 2, 3, 7]), FAST, num_classes=4)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        probe_features(bad, y, x, y, FAST)
    with pytest.raises(DataError, match=r"features \(N, D\) and labels \(N,\)"):
        probe_features(x, y[:10], x, y, FAST)


# ---------------------------------------------------------------------------------------------
# the probe stage on encoders (builtin controls) and on SiT hidden states
# ---------------------------------------------------------------------------------------------
SMALL = DataConfig(resolution=32, num_classes=4, train_images=400, val_images=200, seed=0)
STAGE = ProbeConfig(lrs=[1e-2, 1e-1], epochs=30, batch_size=128)


def control(name: str, dim: int):
    from harness.config.encoders import EncoderSpec

    return EncoderSpec(
        name=name, family="control", source="builtin", model_id=name, resolution=32, patch_size=4,
        mean=[0.5] * 3, std=[0.5] * 3, embed_dim=dim, params={"dim": dim},
    )  # fmt: skip


def test_encoder_probe_stage_caches_features_and_ranks_controls(results_root) -> None:
    from harness.eval.probe import run_probe

    cnn = run_probe(control("random-cnn", 64), SMALL, STAGE, grid=(8, 8))
    noise = run_probe(control("noise", 32), SMALL, STAGE, grid=(8, 8))
    keys = {"encoder", "pooling", "top1", "top5", "best_lr", "grid", "n_train", "n_val"}
    for payload in (cnn, noise):
        assert keys | {"subset_per_class", "features_key"} <= set(payload)
        assert payload["n_val"] == 200 and payload["feature_dim"] in (64, 32)
    # 4 classes (chance 0.25): i.i.d. noise tokens stay at chance, a random conv net is above
    assert noise["top1"] < 0.35 < cnn["top1"]
    cache = results_root / "cache" / "features" / f"{cnn['features_key']}.npz"
    with np.load(cache) as npz:
        assert npz["train_x"].dtype == np.float16 and npz["train_x"].shape == (400, 64)
    mtime = cache.stat().st_mtime_ns
    again = run_probe(control("random-cnn", 64), SMALL, STAGE, grid=(8, 8))
    assert cache.stat().st_mtime_ns == mtime and again["top1"] == cnn["top1"]
    cls_cfg = STAGE.model_copy(update={"pooling": "cls"})
    cls = run_probe(control("random-cnn", 64), SMALL, cls_cfg, grid=(8, 8))
    assert cls["features_key"] != cnn["features_key"]


@pytest.fixture(scope="module")
def sit_checkpoints(tmp_path_factory: pytest.TempPathFactory):
    from test_eval_stage import train_tiny_sit

    out = {}
    for dropout in (0.1, 0.0):
        out[dropout] = tmp_path_factory.mktemp(f"sit{dropout}")
        train_tiny_sit(SMALL, out[dropout], class_dropout=dropout)
    return out


def test_sit_hidden_state_probe(results_root, sit_checkpoints) -> None:
    from harness.errors import StageError
    from harness.eval.sit_probe import run_sit_probe

    ckpt = sit_checkpoints[0.1] / "checkpoints" / "step_0000002.pt"
    payload = run_sit_probe(ckpt, STAGE, block=2, noise_t=0.25)
    assert (payload["step"], payload["block"], payload["noise_t"]) == (2, 2, 0.25)
    assert payload["feature_dim"] == 64 and payload["run_id"].startswith("none__none__sit-t4")
    assert 0.0 <= payload["top1"] <= 1.0 and payload["n_val"] == 200
    assert run_sit_probe(ckpt, STAGE, block=2, noise_t=0.25) == payload
    other_block = run_sit_probe(ckpt, STAGE, block=1, noise_t=0.25)
    assert other_block["features_key"] != payload["features_key"]
    with pytest.raises(StageError, match=r"block 5 is outside SiT-T/4's blocks 1\.\.4"):
        run_sit_probe(ckpt, STAGE, block=5)
    with pytest.raises(StageError, match="no CLS token"):
        run_sit_probe(ckpt, STAGE.model_copy(update={"pooling": "cls"}), block=2)
    no_null = sit_checkpoints[0.0] / "checkpoints" / "step_0000002.pt"
    with pytest.raises(StageError, match="no null label"):
        run_sit_probe(no_null, STAGE, block=2)


def test_probe_cli_on_sit_hidden_states(results_root, sit_checkpoints, capsys) -> None:
    from harness.artifacts import read_result
    from harness.cli import main

    assert (
        main(
            ["probe", "--sit", str(sit_checkpoints[0.1]), "--block", "2", "--set", "probe.epochs=5"]
        )
        == 0
    )
    (out,) = (results_root / "stages" / "probe").iterdir()
    result = read_result(out)
    assert result["status"] == "done" and result["payload"]["block"] == 2
    assert main(["probe", "--sit", str(sit_checkpoints[0.1])]) == 2  # no --block
    assert "--block" in capsys.readouterr().err


def test_interrupted_probe_leaves_no_stage_folder(results_root, monkeypatch, capsys) -> None:
    """A probe stopped before its result (Ctrl-C, a kill) leaves no empty stage folder behind."""
    import harness.eval.probe as probe_module
    from harness.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(probe_module, "cached_probe", interrupted)
    catalogue = str(Path(__file__).parents[1] / "encoders.yaml")
    args = ["probe", catalogue, "--encoders", "noise", "--random-weights", "--grid", "4"]
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (results_root / "stages").exists()
