"""SD-VAE latents: the embedded architecture, scaling, the resumable latent cache, training from
the cache, and ``harness prepare``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from harness.cli import main as cli_main
from harness.config.data import DataConfig
from harness.config.run import RunConfig
from harness.config.train import TrainConfig
from harness.data import build_dataset
from harness.errors import ArtifactError, DataError, StageError, WeightsError
from harness.train.data import sample_posterior
from harness.train.latents import (
    LatentCache,
    LatentScaling,
    decode_latents,
    encode_moments,
    latent_cache,
    load_vae,
)
from harness.train.loop import train

REPO = Path(__file__).resolve().parents[1]
DATA = DataConfig(resolution=32, num_classes=4, train_images=12)


@pytest.fixture(scope="module")
def vae() -> torch.nn.Module:
    return load_vae("stabilityai/sd-vae-ft-mse", random_weights=True)


def test_random_vae_has_sd_vae_shape_and_is_seeded(vae: torch.nn.Module) -> None:
    params = sum(p.numel() for p in vae.parameters())
    assert abs(params / 83.65e6 - 1) < 0.01  # sd-vae-ft-mse: 83.65M parameters
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    moments = encode_moments(vae, images)
    assert moments.shape == (2, 8, 4, 4) and torch.all(moments[:, 4:] > 0)  # (mean, std)
    again = load_vae("stabilityai/sd-vae-ft-mse", random_weights=True)
    torch.testing.assert_close(encode_moments(again, images), moments)
    decoded = decode_latents(vae, moments[:, :4], LatentScaling.from_config(TrainConfig()))
    assert decoded.dtype == torch.uint8 and decoded.shape == (2, 3, 32, 32)


def test_missing_weights_raise_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="could not be loaded"):
        load_vae(str(tmp_path / "no-such-vae"))


def test_default_scaling_is_the_scalar_0_18215_bit_for_bit() -> None:
    scalar = LatentScaling.from_config(TrainConfig())
    assert TrainConfig().latent_stats is None
    assert torch.equal(scalar.scale, torch.full((4,), 0.18215)) and torch.equal(
        scalar.bias, torch.zeros(4)
    )
    gen = torch.Generator().manual_seed(0)
    moments = torch.cat([torch.randn(3, 4, 2, 2, generator=gen), torch.rand(3, 4, 2, 2)], dim=1)
    eps = torch.randn(3, 4, 2, 2, generator=gen)
    z = sample_posterior(moments, eps, scalar.scale, scalar.bias)
    assert torch.equal(z, (moments[:, :4] + moments[:, 4:] * eps) * 0.18215)  # REPA's formula
    assert torch.equal(scalar.decode_input(z), z / 0.18215)


def _moments(c: int = 4) -> torch.Tensor:
    """Moments (3, 2C, 2, 2) with std 0: the posterior sample is the mean itself."""
    gen = torch.Generator().manual_seed(1)
    return torch.cat([torch.randn(3, c, 2, 2, generator=gen) * 5, torch.zeros(3, c, 2, 2)], dim=1)


MEAN = np.array([0.5, -1.0, 2.0, 0.25])
STD = np.array([4.0, 0.5, 2.0, 8.0])


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_per_channel_mean_std_normalises_and_inverts(tmp_path: Path, suffix: str) -> None:
    stats = tmp_path / f"stats{suffix}"
    if suffix == ".npz":
        np.savez(stats, mean=MEAN, std=STD)
    else:
        stats.write_text(json.dumps({"mean": MEAN.tolist(), "std": STD.tolist()}))
    scaling = LatentScaling.from_config(TrainConfig(latent_stats=str(stats)))
    moments = _moments()
    z = sample_posterior(moments, torch.randn(3, 4, 2, 2), scaling.scale, scaling.bias)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 4, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 4, 1, 1)
    torch.testing.assert_close(z, (moments[:, :4] - mean) / std)  # z_norm = (z - mean_c) / std_c
    torch.testing.assert_close(z[:, 1], (moments[:, 1] + 1.0) / 0.5)  # one channel by hand
    torch.testing.assert_close(scaling.decode_input(z), moments[:, :4])  # z = z_norm std_c + mean_c
    torch.testing.assert_close(scaling.decode_input(z), z * std + mean)


def test_per_channel_scale_bias_is_the_released_form(tmp_path: Path) -> None:
    stats = tmp_path / "stats.npz"
    np.savez(stats, scale=np.array([1.0, 2.0, 0.5, 4.0]), bias=np.array([0.1, -0.2, 0.0, 1.0]))
    per_channel = LatentScaling.from_config(TrainConfig(latent_stats=str(stats)))
    moments = _moments()
    z = sample_posterior(moments, torch.randn(3, 4, 2, 2), per_channel.scale, per_channel.bias)
    torch.testing.assert_close(per_channel.decode_input(z), moments[:, :4])  # exact inverse
    torch.testing.assert_close(z[:, 1], (moments[:, 1] + 0.2) * 2.0)  # (z - bias) * scale
    # (1, C, 1, 1) arrays (the released tensors' shape) are read as (C,)
    np.savez(stats, scale=np.ones((1, 4, 1, 1)), bias=np.zeros((1, 4, 1, 1)))
    assert LatentScaling.from_config(TrainConfig(latent_stats=str(stats))).scale.shape == (4,)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"mean": np.zeros(3), "std": np.ones(3)}, r"key 'mean' has shape \(3,\), expected \(4,\)"),
        ({"mean": np.zeros(4), "std": np.ones(5)}, r"key 'std' has shape \(5,\), expected \(4,\)"),
        ({"mean": np.zeros(4)}, r"neither of the key pairs .*keys found: mean"),
        (
            {"mean": np.zeros(4), "std": np.ones(4), "scale": np.ones(4), "bias": np.ones(4)},
            "both of the key pairs",
        ),
        ({"mean": np.zeros(4), "std": np.array([1.0, 0.0, 1.0, 1.0])}, "'std' must be positive"),
        ({"mean": np.array([0, np.nan, 0, 0]), "std": np.ones(4)}, "'mean' has non-finite"),
        ({"mean": np.array([None] * 4), "std": np.ones(4)}, "unreadable"),  # a pickled array
    ],
)
def test_bad_stats_file_is_a_user_error_naming_file_and_key(
    tmp_path: Path, arrays: dict, match: str
) -> None:
    stats = tmp_path / "stats.npz"
    np.savez(stats, **arrays)
    with pytest.raises(DataError, match=match) as info:
        LatentScaling.from_config(TrainConfig(latent_stats=str(stats)))
    assert str(stats) in info.value.message and info.value.exit_code == 2


def test_missing_or_pickled_stats_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no-such\.npz does not exist"):
        LatentScaling.from_config(TrainConfig(latent_stats=str(tmp_path / "no-such.npz")))
    with pytest.raises(ValidationError, match="never a pickle"):
        TrainConfig(latent_stats=str(tmp_path / "latents_stats.pt"))


def test_sweep_with_a_bad_stats_file_exits_2_before_submitting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stats = tmp_path / "stats.npz"
    np.savez(stats, mean=np.zeros(3), std=np.ones(3))
    code = cli_main(
        [
            "--results",
            str(tmp_path / "results"),
            "sweep",
            str(REPO / "encoders.yaml"),
            "--sweep",
            str(REPO / "sweeps" / "tiny.yaml"),
            "--set",
            "model.space=latent",
            "--set",
            "data.resolution=64",
            "--set",
            "models=[SiT-T/2]",
            "--set",
            f"train.latent_stats={stats}",
            "--executor",
            "debug",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert (
        f"train.latent_stats {stats}" in err and "key 'mean' has shape (3,), expected (4,)" in err
    )
    assert not (tmp_path / "results" / "jobs").exists()


class FailAfter:
    """Wraps a dataset; get_batch raises after ``n`` calls (a prepare killed midway)."""

    def __init__(self, base, n: int) -> None:
        self.base, self.n = base, n

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, indices):
        self.n -= 1
        if self.n < 0:
            raise KeyboardInterrupt
        return self.base.get_batch(indices)


def test_latent_cache_resumes_after_interruption(vae: torch.nn.Module, tmp_path: Path) -> None:
    dataset = build_dataset(DATA, "train")
    full = LatentCache(tmp_path / "full")
    assert full.prepare(dataset, vae, meta={}, batch_size=4) == 12
    resumed = LatentCache(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        resumed.prepare(FailAfter(dataset, 3), vae, meta={}, batch_size=4)  # probe + 2 batches
    assert resumed.done() == 8 and not resumed.complete
    with pytest.raises(ArtifactError, match="incomplete"):
        resumed.moments()
    assert resumed.prepare(dataset, vae, meta={}, batch_size=4) == 4
    np.testing.assert_array_equal(resumed.moments(), full.moments())
    assert full.moments().dtype == np.float16 and full.moments().shape == (12, 8, 4, 4)
    expected = encode_moments(vae, dataset.get_batch([5])["image"]).numpy().astype(np.float16)
    np.testing.assert_array_equal(full.moments()[5:6], expected)


def _latent_run(latents: str) -> RunConfig:
    return RunConfig(
        method="none",
        data=DATA,
        model={"name": "SiT-T/2", "space": "latent"},
        train={
            "steps": 2,
            "global_batch": 4,
            "precision": "fp32",
            "num_workers": 0,
            "latents": latents,
        },
        random_weights=True,
    )


def test_prepare_then_train_from_the_cache(
    results_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(StageError, match="no complete latent cache"):
        train(_latent_run("cache"), tmp_path / "a", device="cpu")
    online = train(_latent_run("online"), tmp_path / "online", device="cpu")  # VAE in the loop
    assert online["status"] == "done" and online["payload"]["final"]["loss"] > 0
    config = tmp_path / "run.yaml"
    config.write_text(
        "method: none\nrandom_weights: true\n"
        "data: {resolution: 32, num_classes: 4, train_images: 12}\n"
        "model: {name: SiT-T/2, space: latent}\n"
    )
    assert cli_main(["prepare", str(config), "--batch-size", "6", "--device", "cpu"]) == 0
    cache, _ = latent_cache(
        build_dataset(DATA, "train"), "train", TrainConfig().vae, True, results_root
    )
    assert cache.complete and cache.moments().shape == (12, 8, 4, 4)
    assert cli_main(["prepare", str(config)]) == 0
    assert "complete" in capsys.readouterr().out
    outcome = train(_latent_run("cache"), tmp_path / "b", device="cpu")
    assert outcome["status"] == "done" and outcome["payload"]["final"]["loss"] > 0
