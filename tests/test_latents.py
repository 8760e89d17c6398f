"""SD-VAE latents: the embedded architecture, scaling, the resumable latent cache, training from
the cache, and ``harness prepare``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main as cli_main
from harness.config.data import DataConfig
from harness.config.run import RunConfig
from harness.config.train import TrainConfig
from harness.data import build_dataset
from harness.errors import ArtifactError, StageError, WeightsError
from harness.paths import cache_dir
from harness.train.data import sample_posterior
from harness.train.latents import (
    LatentCache,
    LatentScaling,
    cache_key,
    decode_latents,
    encode_moments,
    load_vae,
)
from harness.train.loop import train

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


def test_scaling_scalar_and_per_channel(tmp_path: Path) -> None:
    scalar = LatentScaling.from_config(TrainConfig())
    assert torch.equal(scalar.scale, torch.full((4,), 0.18215)) and torch.equal(
        scalar.bias, torch.zeros(4)
    )
    stats = tmp_path / "stats.npz"
    np.savez(stats, scale=np.array([1.0, 2.0, 0.5, 4.0]), bias=np.array([0.1, -0.2, 0.0, 1.0]))
    per_channel = LatentScaling.from_config(TrainConfig(latent_stats=str(stats)))
    moments = torch.cat([torch.randn(3, 4, 2, 2), torch.zeros(3, 4, 2, 2)], dim=1)  # std 0
    z = sample_posterior(moments, torch.randn(3, 4, 2, 2), per_channel.scale, per_channel.bias)
    torch.testing.assert_close(per_channel.decode_input(z), moments[:, :4])  # exact inverse
    torch.testing.assert_close(z[:, 1], (moments[:, 1] + 0.2) * 2.0)
    np.savez(stats, scale=np.ones(3), bias=np.zeros(3))
    with pytest.raises(ArtifactError, match="expected 4 channels"):
        LatentScaling.from_config(TrainConfig(latent_stats=str(stats)))


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
    key = cache_key(build_dataset(DATA, "train").fingerprint(), "train", TrainConfig().vae, True)
    cache = LatentCache(cache_dir(results_root, "latents") / key)
    assert cache.complete and cache.moments().shape == (12, 8, 4, 4)
    assert cli_main(["prepare", str(config)]) == 0
    assert "complete" in capsys.readouterr().out
    outcome = train(_latent_run("cache"), tmp_path / "b", device="cpu")
    assert outcome["status"] == "done" and outcome["payload"]["final"]["loss"] > 0
