"""An ImageNet-style image folder (``DataConfig(source="folder")``).

Layout (the one ``torchvision.datasets.ImageFolder`` reads)::

    root/train/<wnid>/*.JPEG          class index = position of <wnid> in sorted order
    root/val/<wnid>/*.JPEG            same classes as train
    root/val/*.JPEG + a labels file   flat val: ``root/val_labels.txt`` or ``root/val/labels.txt``
                                      ("<file> <wnid>" per line) or ``root/LOC_val_solution.csv``
    mask_root/<split>/<wnid>/<stem>.png   optional foreground masks (> 0 = foreground)

Images are ADM centre-cropped to the resolution (:func:`center_crop_arr`). Items are ordered
class-round-robin (first image of every class, then the second, ...), so a capped split
(``train_images`` / ``val_images``) keeps the classes balanced.
"""

from __future__ import annotations

import csv
import os
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from harness.config.data import DataConfig
from harness.data.base import ImageDataset, check_split
from harness.errors import DataError
from harness.io import content_hash

FLAT_LABEL_FILES = ("val_labels.txt", "val/labels.txt", "LOC_val_solution.csv")


def center_crop_arr(
    image: Image.Image, image_size: int, resample: int = Image.BICUBIC
) -> np.ndarray:
    """ADM's centre crop: halve with a box filter while the short side is >= 2x the target,
    resize so the short side equals ``image_size`` (bicubic), then crop the centre square.

    Returns:
        (image_size, image_size[, C]) uint8 array.
    """
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=resample)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _class_dirs(split_dir: Path) -> list[str]:
    try:
        classes, _ = find_classes(str(split_dir))
    except FileNotFoundError:
        return []
    return classes


def _list_class_folders(split_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path relative to split_dir, label) for every image in split_dir/<class>/ (sorted)."""
    items = []
    for wnid in sorted(class_to_idx):
        if not (split_dir / wnid).is_dir():
            continue
        for dirpath, _, files in sorted(os.walk(split_dir / wnid, followlinks=True)):
            rel_dir = Path(dirpath).relative_to(split_dir)
            items += [(str(rel_dir / f), class_to_idx[wnid]) for f in sorted(files) if _is_image(f)]
    return items


def _read_flat_labels(root: Path) -> tuple[Path, dict[str, str]] | None:
    """The flat-val labels file and its mapping file name -> wnid, or None when there is none."""
    for name in FLAT_LABEL_FILES:
        path = root / name
        if not path.is_file():
            continue
        mapping: dict[str, str] = {}
        with open(path, encoding="utf-8", newline="") as handle:
            if path.suffix == ".csv":  # ImageNet LOC_val_solution.csv: ImageId,PredictionString
                for row in csv.DictReader(handle):
                    if row.get("ImageId") and row.get("PredictionString"):
                        mapping[row["ImageId"]] = row["PredictionString"].split()[0]
            else:
                for number, line in enumerate(handle, 1):
                    parts = line.replace(",", " ").split()
                    if not parts:
                        continue
                    if len(parts) != 2:
                        raise DataError(
                            f"{path}:{number}: expected '<file> <wnid>', got {line.strip()!r}"
                        )
                    mapping[parts[0]] = parts[1]
        return path, mapping
    return None


class FolderDataset(ImageDataset):
    """One split of an ImageNet-style folder, centre-cropped to ``cfg.resolution``.

    Args:
        cfg: the data config (``root``, optional ``mask_root``, ``resolution``, caps).
        split: ``"train"`` or ``"val"``.
        cache_dir: unused (the folder is read as it is; the signature of every data source).
    """

    def __init__(self, cfg: DataConfig, split: str, cache_dir: Path | None = None) -> None:
        self.split = check_split(split)
        self.resolution = cfg.resolution
        if not cfg.root:
            raise DataError("data.source is 'folder' but data.root is not set")
        self.root = Path(cfg.root).expanduser()
        self.mask_root = Path(cfg.mask_root).expanduser() if cfg.mask_root else None
        self.has_masks = self.mask_root is not None
        if not self.root.is_dir():
            raise DataError(
                f"data.root {str(self.root)!r} is not a directory",
                hint="point data.root at a folder holding train/<wnid>/*.JPEG and val/",
            )
        if self.mask_root is not None and not self.mask_root.is_dir():
            raise DataError(f"data.mask_root {str(self.mask_root)!r} is not a directory")
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            raise DataError(f"{self.split_dir}: no {split}/ folder under data.root")
        # classes come from train/ when it exists, so val labels match train labels
        self.class_names = _class_dirs(self.root / "train") or _class_dirs(self.split_dir)
        if not self.class_names:
            raise DataError(
                f"{self.root}: no class folders (expected train/<wnid>/ or {split}/<wnid>/)"
            )
        class_to_idx = {name: i for i, name in enumerate(self.class_names)}
        items = self._discover(class_to_idx)
        if not items:
            raise DataError(
                f"{self.split_dir}: no images (extensions: {', '.join(IMG_EXTENSIONS)})"
            )
        cap = cfg.train_images if split == "train" else cfg.val_images
        items = _round_robin(items)[:cap]
        self.files = [rel for rel, _ in items]
        self._labels = np.array([label for _, label in items], dtype=np.int64)

    def _discover(self, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        if _class_dirs(self.split_dir):
            return _list_class_folders(self.split_dir, class_to_idx)
        flat = [f for f in sorted(os.listdir(self.split_dir)) if _is_image(f)]
        if not flat:
            return []
        found = _read_flat_labels(self.root)
        if found is None:
            raise DataError(
                f"{self.split_dir}: images without class folders and no labels file",
                hint=f"add one of {', '.join(str(self.root / n) for n in FLAT_LABEL_FILES)}",
            )
        path, mapping = found
        items = []
        for name in flat:
            wnid = mapping.get(name, mapping.get(Path(name).stem))
            if wnid is None:
                raise DataError(f"{path}: no label for {self.split_dir / name}")
            if wnid not in class_to_idx:
                raise DataError(
                    f"{path}: label {wnid!r} of {name} is not a class of {self.root / 'train'}"
                )
            items.append((name, class_to_idx[wnid]))
        return items

    def __len__(self) -> int:
        return len(self.files)

    def labels(self) -> np.ndarray:
        return self._labels

    @cached_property
    def _fingerprint(self) -> str:
        listing = [(rel, (self.split_dir / rel).stat().st_size) for rel in self.files]
        return content_hash(
            {
                "source": "folder",
                "split": self.split,
                "resolution": self.resolution,
                "classes": self.class_names,
                "files": listing,
                "labels": self._labels.tolist(),
                "masks": self.has_masks,
            }
        )

    def fingerprint(self) -> str:
        return self._fingerprint

    def _load_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        res = self.resolution
        images = np.empty((len(indices), res, res, 3), dtype=np.uint8)
        masks = np.zeros((len(indices), res, res), dtype=bool)
        for row, index in enumerate(indices.tolist()):
            images[row], size = self._load_image(self.split_dir / self.files[index])
            if self.mask_root is not None:
                masks[row] = self._load_mask(index, size)
        return images, masks

    def _load_image(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        """The centre-cropped (R, R, 3) image and the original (width, height)."""
        try:
            with Image.open(path) as image:
                return center_crop_arr(image.convert("RGB"), self.resolution), image.size
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: cannot read image ({exc})") from None

    def _load_mask(self, index: int, image_size: tuple[int, int]) -> np.ndarray:
        """The (R, R) bool mask of item ``index``, cropped exactly like its image."""
        rel = Path(self.files[index]).with_suffix(".png")
        path = Path(self.mask_root or "") / self.split / rel
        if not path.is_file():
            raise DataError(
                f"{path}: mask missing for {self.split_dir / self.files[index]}",
                hint="data.mask_root must mirror data.root with one .png mask per image",
            )
        try:
            with Image.open(path) as mask:
                binary = mask.convert("L").point(lambda p: 255 if p > 0 else 0)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: cannot read mask ({exc})") from None
        if binary.size != image_size:
            raise DataError(f"{path}: mask is {binary.size}, its image is {image_size} (w, h)")
        # same geometry as the image; bilinear, then >= half keeps the edges where they are
        return center_crop_arr(binary, self.resolution, resample=Image.BILINEAR) >= 128


def _round_robin(items: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Reorder so that class labels cycle: any prefix is as class-balanced as possible."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    queues = [by_class[label] for label in sorted(by_class)]
    out = []
    for depth in range(max(len(q) for q in queues)):
        out += [q[depth] for q in queues if depth < len(q)]
    return out
