"""Datasets: the generated procedural dataset and ImageNet-style folders, behind one interface.

::

    ds = build_dataset(DataConfig(resolution=32, num_classes=10), "train")
    ds[i] -> {"image": uint8 (3,H,W), "label": int64 (), "mask": bool (H,W), "index": int64 ()}
    ds.get_batch([0, 1, 2])            # the same, stacked (fast path: one bulk render / load)
    ds.num_classes, ds.class_names, ds.has_masks, ds.fingerprint()

``torch.utils.data.DataLoader(ds, batch_size=...)`` uses the bulk path through ``__getitems__``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.config.data import DATA_SOURCES, DataConfig
from harness.data.base import SPLITS, ImageDataset

__all__ = [
    "DATA_SOURCES",
    "SPLITS",
    "FolderDataset",
    "GeneratedDataset",
    "ImageDataset",
    "build_dataset",
    "center_crop_arr",
]


def __getattr__(name: str) -> Any:  # the sources import on first use (folder: torchvision)
    if name == "GeneratedDataset":
        from harness.data.generated import GeneratedDataset

        return GeneratedDataset
    if name in ("FolderDataset", "center_crop_arr"):
        from harness.data import folder

        return getattr(folder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_dataset(
    cfg: DataConfig, split: str, *, cache_dir: str | Path | None = None
) -> ImageDataset:
    """The dataset of ``cfg`` for one split.

    Args:
        cfg: data config; ``cfg.source`` picks the implementation.
        split: ``"train"`` or ``"val"``.
        cache_dir: generated source only: keep the rendered split in ``cache_dir`` as an .npz
            keyed by the dataset fingerprint (e.g. ``paths.cache_dir(root, "datasets")``).

    Raises:
        DataError: unknown split, missing or empty folder, too many classes.
    """
    return DATA_SOURCES.get(cfg.source)(cfg, split, None if cache_dir is None else Path(cache_dir))
