"""The dataset interface every image source implements.

``ds[i] -> {"image": uint8 (3,H,W), "label": int64 (), "mask": bool (H,W), "index": int64 ()}``

Subclasses produce whole batches (``_load_batch``); single items, ``get_batch`` and the
``__getitems__`` hook that ``torch.utils.data.DataLoader`` calls with a batch of indices all go
through it, so a source that renders in bulk (the generated dataset) is fast in every access path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.errors import DataError

SPLITS = ("train", "val")


def check_split(split: str) -> str:
    """Return ``split`` if it is a known split name, else raise a DataError."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return split


class ImageDataset(Dataset, ABC):
    """Class-labelled square uint8 images with a boolean foreground mask each.

    Attributes:
        split: ``"train"`` or ``"val"``.
        resolution: side of every image in pixels.
        class_names: one name per class; a label is an index into it.
        has_masks: whether masks are real (False: every mask is all-False).
    """

    split: str
    resolution: int
    class_names: list[str]
    has_masks: bool

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def labels(self) -> np.ndarray:
        """Every item's label, (N,) int64, without loading any image."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Content hash identifying exactly these items (for cache keys and provenance)."""

    @abstractmethod
    def _load_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images ``(B, H, W, 3) uint8`` and masks ``(B, H, W) bool`` for valid ``indices``."""

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Stacked items: image (B,3,H,W) uint8, label (B,) int64, mask (B,H,W) bool, index (B,)."""
        idx = self._check_indices(indices)
        images, masks = self._load_batch(idx)  # (B, H, W, 3), (B, H, W)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
            "label": torch.from_numpy(self.labels()[idx].astype(np.int64)),
            "mask": torch.from_numpy(np.ascontiguousarray(masks, dtype=bool)),
            "index": torch.from_numpy(idx.astype(np.int64)),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.get_batch([index])
        return {key: value[0] for key, value in batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Batched fetch used by ``DataLoader`` (one bulk load instead of one per item)."""
        batch = self.get_batch(indices)
        return [{key: value[i] for key, value in batch.items()} for i in range(len(indices))]

    def _check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise IndexError(f"index {bad} out of range for a {self.split} split of {n} images")
        return np.where(idx < 0, idx + n, idx)

    def describe(self) -> dict[str, Any]:
        """Summary numbers: sizes, classes, per-class counts."""
        counts = np.bincount(self.labels(), minlength=self.num_classes)
        return {
            "split": self.split,
            "n_images": len(self),
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "has_masks": self.has_masks,
            "fingerprint": self.fingerprint(),
            "images_per_class": {"min": int(counts.min()), "max": int(counts.max())},
        }
