"""Generated samples for the report's grids, read (read-only) from the eval stage artifacts.

An eval stage writes its samples as shards ``<results>/<eval path>/samples/*.npz`` (uint8
``images`` (n, 3, H, W) and ``labels``; :mod:`harness.eval.generation`); the store records each
evaluation's artifact directory (``evaluations.stage_key`` → ``stages.path``), which
``Study.evals.eval_path`` carries. Missing or unreadable shards give a reason, never an error.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PER_CLASS = 4  # samples per class in a grid
MAX_CLASSES = 10  # classes per grid (the smallest class ids)
GAP = 1  # pixels between tiles


@dataclass(frozen=True)
class Grid:
    """A mosaic of samples (rows: samples of a class, columns: classes) or why there is none."""

    image: np.ndarray | None  # uint8 (H, W, 3)
    classes: list[int]
    n_images: int
    reason: str = ""  # why ``image`` is None ("" when it is there)


def samples_dir(root: Path, eval_path: str | None) -> Path | None:
    return None if not eval_path else root / str(eval_path) / "samples"


def load_grid(
    directory: Path | None, *, per_class: int = PER_CLASS, max_classes: int = MAX_CLASSES
) -> Grid:
    """Up to ``per_class`` samples of each of the first ``max_classes`` classes, as a mosaic."""
    if directory is None or not directory.is_dir():
        return Grid(None, [], 0, f"samples not found ({directory or 'no eval artifact recorded'})")
    shards = sorted(directory.glob("*.npz"))
    if not shards:
        return Grid(None, [], 0, f"samples not found (no *.npz in {directory})")
    picked: dict[int, list[np.ndarray]] = {}
    bad = 0
    for shard in shards:
        try:
            with np.load(shard, allow_pickle=False) as npz:
                images, labels = np.asarray(npz["images"]), np.asarray(npz["labels"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            bad += 1
            continue
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            bad += 1
            continue
        for image, label in zip(images, labels.reshape(-1)):
            picked.setdefault(int(label), [])
            if len(picked[int(label)]) < per_class:
                picked[int(label)].append(image)
        classes = sorted(picked)[:max_classes]
        if len(classes) >= max_classes and all(len(picked[c]) >= per_class for c in classes):
            break
    classes = sorted(picked)[:max_classes]
    if not classes:
        return Grid(None, [], 0, f"samples not found (unreadable shards in {directory})")
    sizes = {tuple(picked[c][0].shape) for c in classes}
    if len(sizes) != 1:
        return Grid(None, [], 0, f"samples of mixed sizes in {directory}")
    _, h, w = sizes.pop()
    rows = max(len(picked[c]) for c in classes)
    mosaic = np.full(
        (rows * (h + GAP) - GAP, len(classes) * (w + GAP) - GAP, 3), 255, dtype=np.uint8
    )
    n = 0
    for col, c in enumerate(classes):
        for row, image in enumerate(picked[c]):
            y, x = row * (h + GAP), col * (w + GAP)
            mosaic[y : y + h, x : x + w] = np.transpose(image, (1, 2, 0))
            n += 1
    return Grid(mosaic, classes, n, f"{bad} unreadable shard(s) skipped" if bad else "")
