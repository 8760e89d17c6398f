"""The generated dataset and the ImageNet-style folder dataset (harness.data)."""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.config.data import DataConfig
from harness.data import FolderDataset, GeneratedDataset, build_dataset, center_crop_arr
from harness.data import generated as gen
from harness.errors import DataError


def _digest(batch: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in ("image", "label", "mask", "index"):
        h.update(batch[key].numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Generated dataset: contract, determinism
# ---------------------------------------------------------------------------------------------
def test_item_contract(tiny_data_config: DataConfig) -> None:
    ds = build_dataset(tiny_data_config, "train")
    item = ds[5]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
    assert item["label"].dtype == torch.int64 and item["label"].shape == ()
    assert item["mask"].dtype == torch.bool and item["mask"].shape == (32, 32)
    assert item["index"].item() == 5
    assert len(ds) == 64 and len(build_dataset(tiny_data_config, "val")) == 32
    assert ds.num_classes == 4 and len(set(ds.class_names)) == 4
    assert ds.has_masks


def test_same_seed_is_byte_identical_and_random_access(tiny_data_config: DataConfig) -> None:
    first = GeneratedDataset(tiny_data_config, "train").get_batch(range(64))
    again = GeneratedDataset(tiny_data_config, "train").get_batch(range(64))
    assert _digest(first) == _digest(again)
    # any order, any batch composition, single items: the same bytes
    ds = GeneratedDataset(tiny_data_config, "train")
    shuffled = ds.get_batch([40, 3, 17])
    for row, index in enumerate([40, 3, 17]):
        assert torch.equal(shuffled["image"][row], first["image"][index])
        assert torch.equal(shuffled["mask"][row], first["mask"][index])
        assert torch.equal(ds[index]["image"], first["image"][index])


def test_byte_identical_across_processes(tiny_data_config: DataConfig) -> None:
    here = _digest(GeneratedDataset(tiny_data_config, "val").get_batch(range(32)))
    code = (
        "import hashlib; from harness.config.data import DataConfig;"
        "from harness.data import GeneratedDataset;"
        f"b = GeneratedDataset(DataConfig(**{tiny_data_config.to_dict()!r}), 'val')"
        ".get_batch(range(32)); h = hashlib.sha256()\n"
        "for k in ('image', 'label', 'mask', 'index'): h.update(b[k].numpy().tobytes())\n"
        "print(h.hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == here


def test_different_across_seeds_and_splits(tiny_data_config: DataConfig) -> None:
    base = GeneratedDataset(tiny_data_config, "train").get_batch(range(32))["image"]
    reseeded = tiny_data_config.model_copy(update={"seed": 1})
    for other in (
        GeneratedDataset(reseeded, "train").get_batch(range(32))["image"],
        GeneratedDataset(tiny_data_config, "val").get_batch(range(32))["image"],
    ):
        same = (base == other).flatten(1).all(dim=1)  # (32,) image identical?
        assert not same.any()
        assert (base.float() - other.float()).abs().mean() > 10  # not a near copy either


def test_fingerprint(tiny_data_config: DataConfig) -> None:
    fp = GeneratedDataset(tiny_data_config, "train").fingerprint()
    assert fp == GeneratedDataset(tiny_data_config, "train").fingerprint()
    changed = [
        GeneratedDataset(tiny_data_config, "val").fingerprint(),
        GeneratedDataset(tiny_data_config.model_copy(update={"seed": 3}), "train").fingerprint(),
        GeneratedDataset(
            tiny_data_config.model_copy(update={"resolution": 64}), "train"
        ).fingerprint(),
        GeneratedDataset(
            tiny_data_config.model_copy(update={"num_classes": 5}), "train"
        ).fingerprint(),
    ]
    assert fp not in changed and len(set(changed)) == len(changed)


def test_npz_cache_matches_rendering(tiny_data_config: DataConfig, tmp_path: Path) -> None:
    plain = GeneratedDataset(tiny_data_config, "val").get_batch(range(32))
    cached = GeneratedDataset(tiny_data_config, "val", cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert [f.stem for f in files] == [cached.fingerprint()]
    assert _digest(cached.get_batch(range(32))) == _digest(plain)
    reloaded = build_dataset(tiny_data_config, "val", cache_dir=tmp_path)  # reads the file
    assert _digest(reloaded.get_batch(range(32))) == _digest(plain)


def test_small_split_is_rendered_once_and_equals_per_batch_rendering(
    tiny_data_config: DataConfig,
) -> None:
    """A small split is kept in memory after its first batch; its images are the ones a
    per-batch render of the same indices draws, in any order."""
    dataset = GeneratedDataset(tiny_data_config, "train")
    indices = np.array([7, 0, 31, 3, 3, len(dataset) - 1])
    batch = dataset.get_batch(indices)
    assert dataset._cache is not None and len(dataset._cache[0]) == len(dataset)
    images, _ = gen.render_indices(
        tiny_data_config.seed,
        "train",
        indices,
        tiny_data_config.num_classes,
        tiny_data_config.resolution,
        dataset.variety,
    )
    expected = torch.from_numpy(images).permute(0, 3, 1, 2)
    assert torch.equal(batch["image"], expected)


def test_large_split_is_rendered_per_batch(tiny_data_config: DataConfig, monkeypatch) -> None:
    monkeypatch.setattr(gen, "IN_MEMORY_BYTES", 1)
    dataset = GeneratedDataset(tiny_data_config, "train")
    dataset.get_batch(range(4))
    assert dataset._cache is None


# ---------------------------------------------------------------------------------------------
# Generated dataset: content
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_resolutions_render_the_same_scene(resolution: int) -> None:
    cfg = DataConfig(resolution=resolution, num_classes=4, train_images=8, val_images=8)
    batch = build_dataset(cfg, "train").get_batch(range(8))
    assert batch["image"].shape == (8, 3, resolution, resolution)
    assert batch["mask"].shape == (8, resolution, resolution)
    small = build_dataset(cfg.model_copy(update={"resolution": 32}), "train").get_batch(range(8))
    # box-downsampled to 32 px, the image is the 32-px rendering up to edge antialiasing
    factor = resolution // 32
    down = batch["image"].float().unflatten(2, (32, factor)).unflatten(4, (32, factor)).mean((3, 5))
    assert (down - small["image"].float()).abs().mean() < 3.0
    fg_fraction = batch["mask"].float().mean((1, 2))
    assert torch.allclose(fg_fraction, small["mask"].float().mean((1, 2)), atol=0.02)


def test_class_balance_and_loader(tiny_data_config: DataConfig) -> None:
    ds = build_dataset(tiny_data_config, "train")
    counts = np.bincount(ds.labels(), minlength=4)
    assert counts.tolist() == [16, 16, 16, 16]
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False)
    labels = torch.cat([b["label"] for b in loader])
    assert torch.equal(labels, torch.from_numpy(ds.labels()))
    # every batch of 16 consecutive items holds every class
    assert all(torch.bincount(b["label"], minlength=4).min() > 0 for b in loader)


def test_masks_mark_the_objects() -> None:
    cfg = DataConfig(resolution=32, num_classes=8, train_images=200, val_images=8)
    batch = build_dataset(cfg, "train").get_batch(range(200))
    masks = batch["mask"]
    fraction = masks.float().mean((1, 2))
    assert ((fraction > 0.01) & (fraction < 0.6)).float().mean() >= 0.95  # non-empty, not full
    # objects are saturated, backgrounds are not: saturation separates fg from bg in the masks
    rgb = batch["image"].float().permute(0, 2, 3, 1) / 255  # (B, H, W, 3)
    saturation = (rgb.amax(-1) - rgb.amin(-1)) / rgb.amax(-1).clamp_min(1e-3)
    interior = masks & _eroded(masks)
    exterior = ~masks & ~_dilated(masks)
    assert saturation[interior].mean() > saturation[exterior].mean() + 0.25
    colour_gap = [
        (rgb[i][interior[i]].mean(0) - rgb[i][exterior[i]].mean(0)).abs().sum()
        for i in range(200)
        if interior[i].any()
    ]
    assert float(torch.stack(colour_gap).median()) > 0.15


def _eroded(m: torch.Tensor) -> torch.Tensor:
    return ~_dilated(~m)


def _dilated(m: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(m[:, None].float(), 3, 1, 1)[:, 0] > 0


def _one_object(shape: str, center=(0.0, 0.0), radius=0.5, angle=0.0) -> gen.Scenes:
    """A scene with exactly one solid object of known geometry."""
    scenes = gen.sample_scenes(0, "train", np.array([0]), 4)
    return dataclasses.replace(
        scenes,
        shape=np.array([gen.SHAPES.index(shape)]),
        texture=np.array([gen.TEXTURES.index("solid")]),
        texture_scale=np.array([0]),
        n_objects=np.array([1]),
        centers=np.array([[center, (0.0, 0.0), (0.0, 0.0)]]),
        radii=np.array([[radius, 0.3, 0.3]]),
        angles=np.array([[angle, 0.0, 0.0]]),
    )


def test_mask_of_a_pixel_aligned_square_is_exact() -> None:
    # square half-side = 0.8 * radius = 0.5 units = 8 px at 32 px: edges on pixel boundaries
    scenes = _one_object("square", center=(0.0, 0.0), radius=0.625)
    image, mask = gen.render(scenes, 32, supersample=3)
    expected = np.zeros((32, 32), dtype=bool)
    expected[8:24, 8:24] = True
    assert np.array_equal(mask[0], expected)
    background = np.clip(np.rint(gen.render_backgrounds(scenes, 32)[0] * 255), 0, 255)
    assert np.array_equal(image[0][~expected], background[~expected].astype(np.uint8))
    sub_y = (np.arange(24, 72) + 0.5) / 96 * 2 - 1  # subpixel rows of the square (3x supersampled)
    shade = np.clip(0.9 - 0.12 * sub_y / 0.625, 0, 1).reshape(16, 3).mean(1)  # per pixel row
    inside = scenes.primary[0] * shade[:, None, None] * 255  # (16, 1, 3)
    assert np.abs(image[0][8:24, 8:24].astype(float) - inside).max() <= 1.0


def test_mask_of_a_disc_follows_its_radius() -> None:
    scenes = _one_object("disc", center=(0.25, -0.25), radius=0.4)
    _, mask = gen.render(scenes, 64, supersample=2)
    centers = (np.arange(64) + 0.5) / 64 * 2 - 1
    dist = np.hypot(centers[None, :] - 0.25, centers[:, None] + 0.25)
    pixel = 2 / 64
    assert mask[0][dist < 0.4 - pixel / 2].all()
    assert not mask[0][dist > 0.4 + pixel / 2].any()
    assert abs(mask[0].sum() * pixel**2 - np.pi * 0.4**2) / (np.pi * 0.4**2) < 0.03


def test_rotation_turns_the_shape() -> None:
    tri = _one_object("triangle", radius=0.7)
    _, up = gen.render(tri, 32)
    _, turned = gen.render(dataclasses.replace(tri, angles=np.array([[np.pi, 0, 0]])), 32)
    assert np.array_equal(turned[0], up[0][::-1, ::-1])  # 180 degrees about the centre
    assert not np.array_equal(up[0], up[0][::-1])  # the triangle is not symmetric up-down


def test_class_recipes_are_distinct() -> None:
    names = [gen.class_recipe(c).name for c in range(gen.MAX_CLASSES)]
    assert len(set(names)) == gen.MAX_CLASSES
    # the first classes already differ in shape, texture and palette
    recipes = [gen.class_recipe(c) for c in range(8)]
    assert len({r.shape for r in recipes}) == 8 and len({r.palette for r in recipes}) == 8
    assert len({r.texture for r in recipes}) == 4


def _features(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean colour of the image, shape + texture + object colour descriptors)."""
    mean = images.reshape(len(images), -1, 3).mean(1) / 255
    lum = images.astype(np.float32).mean(-1) / 255
    fg_mean = (lum * masks).sum((1, 2), keepdims=True) / np.maximum(
        masks.sum((1, 2), keepdims=True), 1
    )
    texture = np.abs(np.fft.fft2(np.where(masks, lum - fg_mean, 0)))[:, :16, :16]
    shape = np.abs(np.fft.fft2(masks.astype(np.float32)))[:, :8, :8]  # translation invariant
    shape = shape / (shape[:, :1, :1] + 1e-6)
    fg_colour = np.stack(
        [im[m].mean(0) if m.any() else np.zeros(3) for im, m in zip(images, masks)]
    )
    good = np.concatenate(
        [shape.reshape(len(images), -1), texture.reshape(len(images), -1), fg_colour / 255], 1
    )
    return mean, good


def test_classes_need_shape_and_texture_not_mean_colour() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = gen.render_indices(0, "train", np.arange(1200), 4, 32)
    val = gen.render_indices(0, "val", np.arange(400), 4, 32)
    y_train, y_val = np.arange(1200) % 4, np.arange(400) % 4
    (mean_tr, good_tr), (mean_va, good_va) = _features(*train), _features(*val)

    def probe(x_tr: np.ndarray, x_va: np.ndarray) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
        return clf.fit(x_tr, y_train).score(x_va, y_val)

    mean_colour_acc, good_acc = probe(mean_tr, mean_va), probe(good_tr, good_va)
    assert mean_colour_acc < 0.45  # chance is 0.25
    assert good_acc > 0.8


# ---------------------------------------------------------------------------------------------
# ADM centre crop
# ---------------------------------------------------------------------------------------------
def _gradient_image(width: int, height: int, slope: float) -> Image.Image:
    """Red = slope * column, green = slope * row: the source position is readable from a pixel."""
    cols = np.broadcast_to(np.arange(width) * slope, (height, width))
    rows = np.broadcast_to((np.arange(height) * slope)[:, None], (height, width))
    rgb = np.stack([cols, rows, np.zeros((height, width))], axis=-1)
    return Image.fromarray(np.rint(rgb).astype(np.uint8))


@pytest.mark.parametrize(
    ("width", "height", "final_size", "offset"),
    [
        (100, 60, (53, 32), (10, 0)),  # landscape: bicubic to short side 32, crop the middle
        (60, 100, (32, 53), (0, 10)),  # portrait: crop rows
        (300, 200, (48, 32), (8, 0)),  # box-halved twice (200 -> 100 -> 50) before the resize
    ],
)
def test_center_crop_geometry(width, height, final_size, offset) -> None:
    slope = 200 / max(width, height)
    out = center_crop_arr(_gradient_image(width, height, slope), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    # output pixel j comes from source coordinate (j + offset + 0.5) * source/final - 0.5
    j = np.arange(32)
    src_x = (j + offset[0] + 0.5) * width / final_size[0] - 0.5
    src_y = (j + offset[1] + 0.5) * height / final_size[1] - 0.5
    inner = slice(2, 30)  # bicubic overshoots at the image border
    assert np.abs(out[16, inner, 0] - slope * src_x[inner]).max() <= 2.0
    assert np.abs(out[inner, 16, 1] - slope * src_y[inner]).max() <= 2.0


# ---------------------------------------------------------------------------------------------
# Folder dataset
# ---------------------------------------------------------------------------------------------
WNIDS = ("n01440764", "n01443537", "n01484850")


def _write_split(root: Path, masks: Path | None, split: str, per_class: dict[str, int]) -> None:
    """Images 100x60: left half red, right half blue; masks: the left half."""
    for wnid, count in per_class.items():
        for i in range(count):
            rgb = np.zeros((60, 100, 3), dtype=np.uint8)
            rgb[:, :50, 0] = 200 + i  # red foreground (differs per image)
            rgb[:, 50:, 2] = 200
            path = root / split / wnid / f"{wnid}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(path, format="PNG")  # ImageNet names, PNG bytes
            if masks is not None:
                mask = np.zeros((60, 100), dtype=np.uint8)
                mask[:, :50] = 1
                mask_path = masks / split / wnid / f"{wnid}_{i}.png"
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(mask_path)


@pytest.fixture
def imagenet_folder(tmp_path: Path) -> tuple[Path, Path]:
    root, masks = tmp_path / "imagenet", tmp_path / "masks"
    _write_split(root, masks, "train", {WNIDS[2]: 2, WNIDS[0]: 3, WNIDS[1]: 2})
    _write_split(root, masks, "val", {WNIDS[1]: 1, WNIDS[2]: 2})  # val lacks a class
    return root, masks


def _folder_cfg(root: Path, masks: Path | None = None, **kw) -> DataConfig:
    return DataConfig(
        source="folder", root=str(root), mask_root=str(masks) if masks else None, **kw
    )


def test_folder_dataset_classes_labels_and_masks(imagenet_folder) -> None:
    root, masks = imagenet_folder
    train = build_dataset(_folder_cfg(root, masks), "train")
    assert isinstance(train, FolderDataset)
    assert train.class_names == sorted(WNIDS) and train.has_masks
    # class-round-robin order: every prefix is balanced
    assert train.labels().tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert train.files[:3] == [f"{w}/{w}_0.JPEG" for w in sorted(WNIDS)]
    val = build_dataset(_folder_cfg(root, masks), "val")
    assert val.class_names == train.class_names  # labels index train's classes
    assert val.labels().tolist() == [1, 2, 2]

    batch = train.get_batch(range(len(train)))
    assert batch["image"].shape == (7, 3, 32, 32)
    red = batch["image"][:, 0] > batch["image"][:, 2]  # (B, H, W): the image's foreground
    # the mask went through the image's crop: it matches the red half up to the edge column
    assert (batch["mask"] != red).sum(dim=(1, 2)).max() <= 32
    assert batch["mask"][:, :, :16].all() and not batch["mask"][:, :, 18:].any()


def test_folder_without_masks_has_all_false_masks(imagenet_folder) -> None:
    root, _ = imagenet_folder
    ds = build_dataset(_folder_cfg(root), "val")
    assert not ds.has_masks
    assert not ds.get_batch(range(len(ds)))["mask"].any()


def test_folder_caps_keep_classes_balanced(imagenet_folder) -> None:
    root, _ = imagenet_folder
    ds = build_dataset(_folder_cfg(root, train_images=4), "train")
    assert ds.labels().tolist() == [0, 1, 2, 0]


def test_flat_val_with_labels_file(tmp_path: Path) -> None:
    root = tmp_path / "inet"
    _write_split(root, None, "train", {WNIDS[0]: 1, WNIDS[1]: 1})
    (root / "val").mkdir()
    for name in ("ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"):
        Image.new("RGB", (40, 40), "red").save(root / "val" / name, format="PNG")
    (root / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{WNIDS[1]} 1 2 3 4\n"
        f"ILSVRC2012_val_00000002,{WNIDS[0]} 5 6 7 8\n"
    )
    ds = build_dataset(_folder_cfg(root), "val")
    assert dict(zip(ds.files, ds.labels().tolist())) == {
        "ILSVRC2012_val_00000001.JPEG": 1,
        "ILSVRC2012_val_00000002.JPEG": 0,
    }
    assert ds[0]["image"].shape == (3, 32, 32)


def test_folder_fingerprint_follows_the_listing(imagenet_folder) -> None:
    root, _ = imagenet_folder
    before = build_dataset(_folder_cfg(root), "train").fingerprint()
    assert before == build_dataset(_folder_cfg(root), "train").fingerprint()
    _write_split(root, None, "train", {WNIDS[0]: 4})  # one more image in the first class
    assert build_dataset(_folder_cfg(root), "train").fingerprint() != before


@pytest.mark.parametrize(
    ("layout", "split", "message"),
    [
        ("missing", "train", "is not a directory"),
        ("no_classes", "train", "no class folders"),
        ("no_images", "train", "no images"),
        ("flat_unlabelled", "val", "no labels file"),
        ("ok", "test", "unknown split 'test'; allowed: train, val"),
    ],
)
def test_folder_errors(tmp_path: Path, layout: str, split: str, message: str) -> None:
    root = tmp_path / "data"
    if layout != "missing":
        (root / "train").mkdir(parents=True)
    if layout == "no_images":
        (root / "train" / WNIDS[0]).mkdir()
        (root / "train" / WNIDS[0] / "notes.txt").write_text("not an image")
    if layout in ("flat_unlabelled", "ok"):
        _write_split(root, None, "train", {WNIDS[0]: 1})
        (root / "val").mkdir()
        Image.new("RGB", (40, 40)).save(root / "val" / "x.png")
    with pytest.raises(DataError, match=message):
        build_dataset(_folder_cfg(root), split)


def test_corrupt_image_and_missing_mask_name_the_file(imagenet_folder) -> None:
    root, masks = imagenet_folder
    bad = root / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    bad.write_bytes(b"\xff\xd8 this is not a JPEG")
    ds = build_dataset(_folder_cfg(root, masks), "train")
    with pytest.raises(DataError, match=f"{bad}: cannot read image"):
        ds[0]
    mask = masks / "train" / WNIDS[1] / f"{WNIDS[1]}_0.png"
    mask.unlink()
    with pytest.raises(DataError, match=f"{mask}: mask missing"):
        ds[1]


def test_variety_knobs_change_what_is_drawn_and_the_fingerprint():
    from harness.data import build_dataset

    full = DataConfig(resolution=32, num_classes=8, train_images=48, val_images=8)
    simple = full.model_copy(
        update={"max_objects": 1, "home_palette_prob": 1.0, "backgrounds": "flat"}
    )
    idx = np.arange(48)
    scenes = gen.sample_scenes(0, "train", idx, 8, gen.Variety.of(simple))
    assert (scenes.n_objects == 1).all() and (scenes.bg_style == 4).all()
    _, _, _, home = gen.recipe_arrays(scenes.labels)
    expected_hue = home / gen.NUM_PALETTES  # home palette always (hue jitter is +-0.025)
    hue = np.array([colorsys.rgb_to_hsv(*rgb)[0] for rgb in scenes.primary])
    assert np.abs((hue - expected_hue + 0.5) % 1.0 - 0.5).max() < 0.03
    images, masks = gen.render_indices(0, "train", idx, 8, 32, gen.Variety.of(simple))
    for image, mask in zip(images, masks):  # flat: the background is one colour
        pixels = image[~mask]  # (n, 3): images are (R, R, 3)
        far = pixels[np.abs(pixels.astype(int) - pixels[0]).max(1) > 2]
        assert len(far) < 0.1 * len(pixels)  # antialiased edges only
    big = gen.sample_scenes(0, "train", idx, 8, gen.Variety(max_objects=1, object_scale=1.6))
    small = gen.sample_scenes(0, "train", idx, 8, gen.Variety(max_objects=1))
    np.testing.assert_allclose(big.radii, 1.6 * small.radii)  # same draws, scaled objects
    np.testing.assert_allclose(big.centers, small.centers / 1.6)  # kept in the frame
    gradient = gen.sample_scenes(0, "train", idx, 8, gen.Variety(backgrounds="gradient"))
    assert set(gradient.bg_style.tolist()) <= {0, 1}
    default = gen.sample_scenes(0, "train", idx, 8)  # defaults: the full dataset, unchanged
    assert (default.n_objects > 1).any() and len(set(default.bg_style.tolist())) == 4
    fingerprints = {build_dataset(c, "train").fingerprint() for c in (full, simple)}
    assert len(fingerprints) == 2
    assert full.variety == {} and simple.variety["max_objects"] == 1
