"""Image sources for the metrics: harness datasets, image folders and ADM ``.npz`` batches.

Every source yields uint8 ``(n, 3, H, W)`` chunks in a fixed order; :func:`harness.eval.
features.rebatch` cuts them into the fixed extractor batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # torch-fidelity's samples_find_ext default


def dataset_chunks(
    dataset: Any, indices: Sequence[int], chunk: int = 256, *, workers: int = 0
) -> Iterator[np.ndarray]:
    """Images of a harness :class:`~harness.data.base.ImageDataset` at ``indices``, in order.

    Args:
        dataset: the dataset (bulk ``get_batch`` / ``__getitems__`` access).
        indices: which items, in the order wanted.
        chunk: images per yielded array.
        workers: DataLoader worker processes (decoding folders of JPEGs); 0 = in-process.

    Yields:
        uint8 (n, 3, H, W) arrays of at most ``chunk`` images.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if workers == 0:
        for start in range(0, len(indices), chunk):
            yield dataset.get_batch(indices[start : start + chunk])["image"].numpy()
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=chunk, sampler=indices.tolist(), num_workers=workers)
    for batch in loader:
        yield batch["image"].numpy()


def load_image_folder(path: str | Path) -> np.ndarray:
    """All images of a folder (non-recursive, sorted by name) as one uint8 array.

    Returns:
        uint8 (N, 3, H, W).

    Raises:
        DataError: missing folder, no images, an unreadable image (named), or images of
            different sizes (FID compares sets of one resolution).
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such image folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                arrays.append(np.asarray(image.convert("RGB")))  # (H, W, 3)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{file}: cannot read image: {exc}") from exc
        if arrays[-1].shape != arrays[0].shape:
            raise DataError(
                f"{folder}: mismatched image sizes: {files[0].name} is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}, {file.name} is "
                f"{arrays[-1].shape[1]}x{arrays[-1].shape[0]}",
                hint="resize/crop every image to one resolution before computing metrics",
            )
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()  # (N, 3, H, W)


def nhwc_chunks(
    images: np.ndarray, indices: Sequence[int] | None = None, chunk: int = 256
) -> Iterator[np.ndarray]:
    """Chunks of an (N, H, W, 3) uint8 array (ADM's ``arr_0`` layout) as (n, 3, H, W)."""
    order = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    for start in range(0, len(order), chunk):
        yield np.ascontiguousarray(images[order[start : start + chunk]].transpose(0, 3, 1, 2))
