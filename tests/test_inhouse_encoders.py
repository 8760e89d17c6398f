"""In-house encoders (``source: inhouse``): trained once on the generated data, cached by content.

Every training here is a tiny recipe (one or two blocks, a few epochs, a few hundred 32-px
images) so the file runs in well under a minute on one core; the full-size recipes of
``encoders.yaml`` are measured in the report, not here.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.config.encoders import EncoderSpec, load_catalogue
from harness.encoders import EncoderError, create_encoder, inhouse
from harness.encoders.pretrain import augment
from harness.encoders.pretrain_objectives import OBJECTIVES
from harness.errors import RegistryError

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = {"num_classes": 4, "train_images": 64, "val_images": 32}
TINY = {"width": 32, "depth": 1, "epochs": 2, "batch_size": 32}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_PROGRESS", "0")
    torch.set_num_threads(1)


def spec(objective: str = "supervised", data: dict | None = None, **params: Any) -> EncoderSpec:
    params = {**TINY, **params}
    return EncoderSpec(
        name=f"test-{objective}",
        family="inhouse",
        source="inhouse",
        model_id=objective,
        resolution=64,
        interpolation="bilinear",
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        patch_size=4,
        embed_dim=params["width"],
        params={**params, "data": {**TINY_DATA, **(data or {})}},
    )


def images(n: int = 3, side: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen)


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("inhouse.train was called")

    monkeypatch.setattr(inhouse, "train", boom)


def train_direct(objective: str, data: dict, **params: Any) -> dict[str, Any]:
    """Train without the cache and return the checkpoint dict."""
    setup = inhouse.resolve(spec(objective, data, **params))
    return inhouse.train(setup, "direct")


# ---------------------------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------------------------
def test_trained_once_then_loaded_from_the_cache(
    results_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = spec("supervised")
    first = create_encoder(s, grid=(8, 8))
    path, key = inhouse.cache_path(inhouse.resolve(s))
    assert path.parent == results_root / "cache" / "encoders" and path.is_file()
    assert first.weights_id == f"inhouse:supervised:{key}" and path.stem == key
    mtime = path.stat().st_mtime_ns
    no_training(monkeypatch)  # a second build that trained would fail here
    second = create_encoder(s, grid=(8, 8))
    assert inhouse.ensure_trained(inhouse.resolve(s)) == (path, False)
    assert path.stat().st_mtime_ns == mtime
    assert second.weights_id == first.weights_id
    x = images()
    assert torch.equal(first(x).tokens, second(x).tokens)
    assert not torch.equal(first(x).tokens, create_encoder(s, random_weights=True)(x).tokens)


def test_concurrent_first_builds_train_once(
    results_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_train = inhouse.train

    def slow_train(setup: inhouse.InhouseSetup, key: str) -> dict[str, Any]:
        calls.append(key)
        time.sleep(0.5)  # the other thread arrives while this one holds the lock
        return real_train(setup, key)

    monkeypatch.setattr(inhouse, "train", slow_train)
    setup = inhouse.resolve(spec("supervised", epochs=1))
    results: list[tuple[Path, bool]] = []
    threads = [
        threading.Thread(target=lambda: results.append(inhouse.ensure_trained(setup)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(trained for _, trained in results) == [False, True]
    assert len({path for path, _ in results}) == 1


def test_key_follows_recipe_data_and_preprocessing_not_names() -> None:
    def key(s: EncoderSpec) -> str:
        return inhouse.cache_path(inhouse.resolve(s), Path("/nowhere"))[1]

    base = key(spec())
    assert key(spec().model_copy(update={"name": "other", "notes": "x", "tags": ["y"]})) == base
    assert key(spec(epochs=3)) != base
    assert key(spec(seed=1)) != base
    assert key(spec("mae")) != base
    assert key(spec(data={"seed": 1})) != base
    assert key(spec(data={"train_images": 65})) != base
    assert key(spec().model_copy(update={"std": [0.5, 0.5, 0.5]})) != base


def test_random_weights_trains_nothing_and_writes_nothing(
    results_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_training(monkeypatch)
    s = spec("mae")
    enc = create_encoder(s, grid=(8, 8), random_weights=True)
    assert enc.weights_id == "random-init:seed0"
    assert not (results_root / "cache").exists()
    x = images()
    assert torch.equal(enc(x).tokens, create_encoder(s, random_weights=True, grid=8)(x).tokens)
    other = create_encoder(spec("mae", seed=1), grid=(8, 8), random_weights=True)
    assert other.weights_id == "random-init:seed1"
    assert not torch.equal(enc(x).tokens, other(x).tokens)


def test_other_grids_resize_the_input_not_the_tokens() -> None:
    s = spec(width=32)
    for grid in [(8, 8), (16, 16), (4, 6)]:
        enc = create_encoder(s, grid=grid, random_weights=True)
        assert enc.input_size == (4 * grid[0], 4 * grid[1])
        out = enc(images(2, side=32))
        assert out.grid == grid and out.tokens.shape == (2, grid[0] * grid[1], 32)


def test_checkpoint_loads_with_weights_only_and_records_its_recipe(results_root: Path) -> None:
    s = spec("simclr")
    path, trained = inhouse.ensure_trained(inhouse.resolve(s))
    assert trained
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["objective"] == "simclr" and ckpt["key"] == path.stem
    assert ckpt["recipe"] == inhouse.resolve(s).recipe.to_dict()
    assert ckpt["recipe"]["temperature"] == 0.2  # the objective's own defaults are recorded
    assert ckpt["data"]["config"]["train_images"] == 64
    assert set(ckpt["data"]["fingerprints"]) == {"train", "val"}
    stats = ckpt["stats"]
    assert stats["train_cpu_s"] > 0 and stats["steps"] == 2 * 2  # 64 images / 32, 2 epochs
    assert len(stats["epoch_losses"]) == 2 and stats["train_loss"] == stats["epoch_losses"][-1]
    assert all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())


# ---------------------------------------------------------------------------------------------
# the objectives learn
# ---------------------------------------------------------------------------------------------
LEARN_DATA = {"num_classes": 4, "train_images": 400, "val_images": 200, "max_objects": 1}


def test_supervised_beats_chance_on_val() -> None:
    stats = train_direct("supervised", LEARN_DATA, epochs=8, batch_size=32, lr=3e-3)["stats"]
    assert stats["chance_accuracy"] == 0.25
    assert stats["val_accuracy"] >= 0.5, stats  # chance 0.25
    assert stats["train_loss"] < stats["first_epoch_loss"]


@pytest.mark.parametrize("objective", ["supervised", "mae", "simclr"])
def test_training_is_deterministic_given_the_seed(objective: str) -> None:
    first, again = (train_direct(objective, {})["state_dict"] for _ in range(2))
    assert first.keys() == again.keys()
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    other = train_direct(objective, {}, seed=1)["state_dict"]
    assert not all(torch.equal(v, other[k]) for k, v in first.items())


def test_mae_reconstructs_better_than_the_mean() -> None:
    stats = train_direct("mae", LEARN_DATA, epochs=6, batch_size=32, lr=3e-3)["stats"]
    assert stats["val_loss"] < 0.5 * stats["val_loss_mean_baseline"], stats
    assert 0 < stats["val_loss_zero_baseline"] <= 1  # per-patch normalised targets


def test_simclr_loss_drops_below_chance() -> None:
    stats = train_direct("simclr", LEARN_DATA, epochs=6, batch_size=32, lr=3e-3)["stats"]
    assert stats["train_loss"] < stats["first_epoch_loss"] - 0.3, stats
    assert stats["val_loss"] < stats["chance_loss"] - 0.3, stats


def test_augment_is_seeded_and_keeps_range() -> None:
    x = images(8).float() / 255
    recipe = OBJECTIVES.get("simclr").recipe()
    a = augment(x, recipe, torch.Generator().manual_seed(0))
    b = augment(x, recipe, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x)
    plain = OBJECTIVES.get("supervised").recipe(flip=False)
    assert torch.equal(augment(x, plain, torch.Generator()), x)  # nothing asked, nothing done


# ---------------------------------------------------------------------------------------------
# errors and the catalogue
# ---------------------------------------------------------------------------------------------
def test_unknown_objective_and_params_are_clear_errors() -> None:
    with pytest.raises(RegistryError, match=r"supervized.*did you mean 'supervised'") as err:
        inhouse.resolve(spec("supervized"))
    assert "mae" in str(err.value.hint) and "simclr" in str(err.value.hint)
    with pytest.raises(EncoderError, match=r"params\.epoch: Extra inputs.*did you mean 'epochs'"):
        inhouse.resolve(spec(epoch=3))
    with pytest.raises(EncoderError, match=r"params\.mask_ratio"):  # an MAE key on supervised
        inhouse.resolve(spec("supervised", mask_ratio=0.5))
    with pytest.raises(EncoderError, match=r"params\.data\.train_image\b"):
        inhouse.resolve(spec(data={"train_image": 10}))
    with pytest.raises(EncoderError, match=r"params\.lr"):
        inhouse.resolve(spec(lr="fast"))
    with pytest.raises(EncoderError, match="embed_dim"):
        inhouse.resolve(spec().model_copy(update={"embed_dim": 99}))


def test_catalogue_entries_resolve_to_the_study_data() -> None:
    catalogue = load_catalogue(ROOT / "encoders.yaml")
    entries = [s for s in catalogue.encoders if s.source == "inhouse"]
    assert {s.model_id for s in entries} == set(OBJECTIVES)
    for s in entries:
        setup = inhouse.resolve(s)
        assert setup.native == (8, 8), s.name
        assert s.native_grid == 16 and "inhouse" in s.tags
        enc = create_encoder(s, grid=(8, 8), random_weights=True)
        assert enc.input_size == (32, 32)
        assert enc(images(1)).tokens.shape == (1, 64, s.embed_dim)
