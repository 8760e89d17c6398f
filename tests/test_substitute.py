"""The substitute extractor (CPU study): trained once, cached by content, deterministic, a real
torch-fidelity extractor, and always recorded as a substitute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from harness.config.data import DataConfig
from harness.config.eval import SubstituteConfig
from harness.data import build_dataset
from harness.errors import WeightsError
from harness.eval.features import build_extractor
from harness.eval.substitute import (
    ensure_substitute,
    substitute_info,
    substitute_key,
    train_substitute,
)

DATA = DataConfig(resolution=32, num_classes=4, train_images=400, val_images=200, seed=0)
RECIPE = SubstituteConfig(widths=[16, 32, 64], feature_dim=32, epochs=4, batch_size=64)


def test_training_is_deterministic() -> None:
    batch = build_dataset(DATA, "train").get_batch(np.arange(128))
    images, labels = batch["image"].numpy(), batch["label"].numpy()
    small = SubstituteConfig(widths=[8, 16], feature_dim=8, epochs=2, batch_size=32)
    first = train_substitute(images, labels, 4, small)
    second = train_substitute(images, labels, 4, small)
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for name, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][name]), name


def test_trained_once_cached_by_content_and_learns_the_classes(results_root: Path) -> None:
    path = ensure_substitute(DATA, RECIPE, root=results_root)
    assert path.parent == results_root / "cache" / "extractors"
    assert path.stem == substitute_key(build_dataset(DATA, "train").fingerprint(), RECIPE)
    mtime = path.stat().st_mtime_ns
    assert ensure_substitute(DATA, RECIPE, root=results_root) == path
    assert path.stat().st_mtime_ns == mtime  # cached, not retrained
    other_seed = substitute_key(
        build_dataset(DATA.model_copy(update={"seed": 1}), "train").fingerprint(), RECIPE
    )
    other_recipe = substitute_key(
        build_dataset(DATA, "train").fingerprint(), RECIPE.model_copy(update={"seed": 1})
    )
    assert len({path.stem, other_seed, other_recipe}) == 3

    info = substitute_info(path)
    assert info.name == f"harness-cnn-{path.stem}" and info.substitute
    assert (info.fid_layer, info.isc_layer) == ("feat", "logits")
    assert info.fidelity_name in FEATURE_EXTRACTORS_REGISTRY
    val = build_dataset(DATA, "val").get_batch(np.arange(200))
    feat, logits = build_extractor(info, ["feat", "logits"])(val["image"])
    assert feat.shape == (200, 32) and logits.shape == (200, 4)
    accuracy = (logits.argmax(1) == val["label"]).float().mean().item()
    assert accuracy > 0.45  # chance is 0.25: the features carry class information


def test_missing_checkpoint_is_a_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"substitute extractor checkpoint .* is missing"):
        substitute_info(tmp_path / "gone.pt")
