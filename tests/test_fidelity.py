"""Generation metrics through torch-fidelity: known answers, parity with ``calculate_metrics``,
offline weights and random-weights extractors recorded as such."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image

from harness.config.eval import SubstituteConfig
from harness.errors import StageError, WeightsError
from harness.eval.fd import StatsAccumulator, frechet_distance
from harness.eval.features import build_extractor, iter_features, rebatch, resolve_extractor
from harness.eval.fidelity import inception_score, kernel_inception_distance, precision_recall
from harness.eval.images import load_image_folder
from harness.eval.substitute import save_checkpoint, substitute_info, train_substitute


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def blob_images(
    n: int, *, seed: int, shift: float = 0.0, size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 3, size, size) images: a class-coloured square (4 classes) on smooth noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    low = rng.normal(size=(n, 3, 4, 4))
    noise = torch.nn.functional.interpolate(
        torch.from_numpy(low), size=(size, size), mode="bilinear"
    )
    images = 110 + 40 * noise.numpy() + shift
    colours = np.array([[90, -60, -60], [-60, 90, -60], [-60, -60, 90], [80, 80, -80]])
    for i, label in enumerate(labels):
        y, x = rng.integers(2, size // 2, size=2)
        images[i, :, y : y + size // 3, x : x + size // 3] += colours[label][:, None, None]
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_folder(images: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    return folder


def features_of(
    images: np.ndarray, info, layers: list[str], batch_size: int
) -> dict[str, torch.Tensor]:
    extractor = build_extractor(info, layers)
    parts: dict[str, list[torch.Tensor]] = {}
    for outputs in iter_features([extractor], rebatch([images], batch_size), total=len(images)):
        for key, value in outputs[0].items():
            parts.setdefault(key, []).append(value)
    return {k: torch.cat(v) for k, v in parts.items()}


def fid_of(a: torch.Tensor, b: torch.Tensor) -> float:
    stats = []
    for feats in (a, b):
        acc = StatsAccumulator()
        acc.update(feats)
        stats.append(acc.result())
    return frechet_distance(*stats)


# ---------------------------------------------------------------------------------------------
# known answers
# ---------------------------------------------------------------------------------------------
def test_inception_score_of_uniform_logits_is_one() -> None:
    mean, std = inception_score(torch.zeros(500, 1008))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_the_class_count() -> None:
    logits = torch.full((1000, 10), -50.0)
    logits[torch.arange(1000), torch.arange(1000) % 10] = 50.0
    mean, _ = inception_score(logits, splits=1)  # one split: exactly balanced marginal
    assert mean == pytest.approx(10.0, rel=1e-9)


def test_precision_recall_identical_and_far_apart_sets() -> None:
    real = torch.randn(600, 16, generator=torch.Generator().manual_seed(0))
    assert precision_recall(generated=real.clone(), real=real) == (1.0, 1.0)
    far = real + 1000.0
    assert precision_recall(generated=far, real=real) == (0.0, 0.0)


def test_precision_recall_pins_which_input_is_real() -> None:
    # a mode-collapsed generator: every sample near the centre of the real distribution.
    # precision (generated inside the real manifold) must be high, recall (real covered) low;
    # a swapped call would report the opposite.
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(1000, 8, generator=gen)
    collapsed = 0.05 * torch.randn(1000, 8, generator=gen)
    precision, recall = precision_recall(generated=collapsed, real=real)
    assert precision > 0.95
    assert recall < 0.1
    swapped_precision, swapped_recall = precision_recall(generated=real, real=collapsed)
    assert (swapped_precision, swapped_recall) == (recall, precision)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(400, 32, generator=gen), torch.randn(400, 32, generator=gen)
    same_mean, _, size = kernel_inception_distance(a, b, subsets=20, subset_size=1000)
    far_mean, _, _ = kernel_inception_distance(a, b + 2.0, subsets=20, subset_size=1000)
    assert size == 400  # capped at the smaller set and reported
    assert abs(same_mean) < 0.01 < far_mean


# ---------------------------------------------------------------------------------------------
# extractors: offline weights, random weights recorded as such
# ---------------------------------------------------------------------------------------------
def test_random_weight_extractors_are_recorded_as_substitutes() -> None:
    inception = resolve_extractor("inception-v3-compat", random_weights=True)
    assert inception.name == "inception-v3-compat(random-weights)"
    assert inception.substitute and inception.weights == "random-init"
    assert (inception.fid_layer, inception.isc_layer) == ("2048", "logits_unbiased")
    dino = resolve_extractor("dinov2-vit-s-14", random_weights=True)
    assert dino.name == "dinov2-vit-s-14(random-weights)" and dino.substitute
    images = torch.from_numpy(blob_images(2, seed=0)[0])
    out = build_extractor(dino, ["dinov2"])(images)[0]  # torch-fidelity's DINOv2 forward
    assert out.shape == (2, 384) and torch.isfinite(out).all()


def test_random_inception_is_deterministic_across_builds() -> None:
    info = resolve_extractor("inception-v3-compat", random_weights=True)
    a, b = build_extractor(info, ["64"]), build_extractor(info, ["64"])
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_missing_inception_weights_say_where_to_put_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError) as info:
        resolve_extractor("inception-v3-compat")
    text = str(info.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in text
    assert "https://github.com/toshas/torch-fidelity/releases" in text
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in text
    with pytest.raises(WeightsError, match="no such file"):
        resolve_extractor("inception-v3-compat", weights_path=str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match=r"torch\.hub cache"):
        resolve_extractor("dinov2-vit-b-14")


def test_corrupt_weights_file_is_a_weights_error(tmp_path) -> None:
    path = tmp_path / "inception.pth"
    path.write_bytes(b"not a checkpoint")
    info = resolve_extractor("inception-v3-compat", weights_path=str(path))
    assert not info.substitute and info.name == "inception-v3-compat"
    with pytest.raises(WeightsError, match="cannot load weights"):
        build_extractor(info, ["2048"])


def test_unknown_feature_layer_lists_the_allowed_ones() -> None:
    with pytest.raises(StageError, match="allowed: 64, 192, 768, 2048"):
        resolve_extractor("inception-v3-compat", random_weights=True, feature_layer="pool9")


def test_image_folder_with_mismatched_sizes_is_rejected(tmp_path) -> None:
    folder = write_folder(blob_images(3, seed=0)[0], tmp_path / "imgs")
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(folder / "zzz.png")
    with pytest.raises(Exception, match="mismatched image sizes"):
        load_image_folder(folder)


# ---------------------------------------------------------------------------------------------
# parity with torch-fidelity's own calculate_metrics on two image folders, same weights
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fid_matches_calculate_metrics_with_inception(tmp_path) -> None:
    # real torch-fidelity Inception code path; the same (random) weights file for both sides;
    # layer "64" keeps N > D with few images (the 2048 layer needs > 2048 images per side)
    random_info = resolve_extractor("inception-v3-compat", random_weights=True)
    weights = tmp_path / "inception-random.pth"
    torch.save(build_extractor(random_info, ["64"]).state_dict(), weights)
    info = resolve_extractor("inception-v3-compat", weights_path=str(weights), feature_layer="64")
    a, _ = blob_images(72, seed=1)
    b, _ = blob_images(72, seed=2, shift=25.0)
    dir_a, dir_b = write_folder(a, tmp_path / "a"), write_folder(b, tmp_path / "b")
    ours = fid_of(
        features_of(load_image_folder(dir_a), info, ["64"], 24)["64"],
        features_of(load_image_folder(dir_b), info, ["64"], 24)["64"],
    )
    theirs = torch_fidelity.calculate_metrics(
        input1=str(dir_a),
        input2=str(dir_b),
        fid=True,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights),
        feature_layer_fid="64",
        batch_size=24,
        cuda=False,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )["frechet_inception_distance"]
    assert ours > 0
    assert abs(ours - theirs) / theirs < 1e-4


def test_all_metrics_match_calculate_metrics_with_the_substitute(tmp_path) -> None:
    train, labels = blob_images(256, seed=3)
    recipe = SubstituteConfig(widths=[8, 16, 32], feature_dim=24, epochs=2, batch_size=64)
    path = tmp_path / "cnntest.pt"
    save_checkpoint(train_substitute(train, labels, 4, recipe), path)
    info = substitute_info(path)
    assert info.name == "harness-cnn-cnntest" and info.substitute
    a, _ = blob_images(120, seed=4)
    b, _ = blob_images(120, seed=5, shift=30.0)
    dir_a, dir_b = write_folder(a, tmp_path / "a"), write_folder(b, tmp_path / "b")
    fa = features_of(load_image_folder(dir_a), info, ["feat", "logits"], 32)
    fb = features_of(load_image_folder(dir_b), info, ["feat", "logits"], 32)
    ours = {"frechet_inception_distance": fid_of(fa["feat"], fb["feat"])}
    ours["inception_score_mean"], _ = inception_score(fa["logits"])
    ours["kernel_inception_distance_mean"], _, _ = kernel_inception_distance(
        fa["feat"], fb["feat"], subset_size=100
    )
    ours["precision"], ours["recall"] = precision_recall(generated=fa["feat"], real=fb["feat"])
    theirs = torch_fidelity.calculate_metrics(
        input1=str(dir_a),
        input2=str(dir_b),
        fid=True,
        isc=True,
        kid=True,
        prc=True,
        kid_subset_size=100,
        feature_extractor=info.fidelity_name,
        feature_extractor_weights_path=str(path),
        batch_size=32,
        cuda=False,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )
    for key, value in ours.items():
        assert value == pytest.approx(theirs[key], rel=1e-4, abs=1e-9), key
    assert ours["frechet_inception_distance"] > 0
