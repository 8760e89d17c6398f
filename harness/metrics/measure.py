"""Measure one encoder's spatial structure on a dataset (the sweep's ``spatial`` stage).

Streams N evaluation images through the encoder in batches, downsamples each foreground mask
to the token grid (max-pool, as the iREPA code does), computes LDS / CDS / SRSS / RMSC per image
and writes, in ``out_dir``:

* ``per_image.csv``: ``index, lds, cds, srss, rmsc`` (one row per image; an undefined SRSS is an
  empty field, i.e. NULL after ingest);
* ``features.npz`` (``SpatialConfig.save_features``): ``index``, ``label``, ``token_mean`` (the
  mean patch token, what iREPA's linear probe uses) and ``pooled`` (CLS, or the token mean),
  float16, ready for a linear probe.

It returns the stage payload; the stage runner writes ``result.json``. Memory stays bounded:
only per-image numbers and pooled vectors are kept.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.config.data import DataConfig
from harness.config.encoders import EncoderSpec
from harness.config.metrics import SpatialConfig
from harness.encoders.weights import weights_provenance
from harness.errors import DataError
from harness.io import atomic_write, write_text
from harness.logs import event, get_logger
from harness.metrics import SPATIAL_METRICS
from harness.metrics.spatial import spatial_metrics
from harness.progress import progress

log = get_logger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PER_IMAGE = "per_image.csv"
FEATURES = "features.npz"


def measure_encoder(
    spec: EncoderSpec,
    data: DataConfig,
    cfg: SpatialConfig,
    out_dir: str | Path,
    *,
    grid: int | tuple[int, int],
    device: str | torch.device = "cpu",
    random_weights: bool = False,
    dataset: Any = None,
) -> dict[str, Any]:
    """Spatial metrics of ``spec`` on ``cfg.images`` images of ``data`` (split ``cfg.split``).

    Args:
        spec: the encoder's catalogue entry.
        data: the dataset config (``harness.data.build_dataset``).
        cfg: metric settings (images, batch size, radii, SRSS mask thresholds, dtype).
        out_dir: where per_image.csv and features.npz go.
        grid: token grid (h, w) or side; the encoder is built for it.
        device: where the encoder runs.
        random_weights: build the encoder with random init (offline smoke runs).
        dataset: an already built dataset to use instead of ``build_dataset(data, cfg.split)``.

    Returns:
        The ``spatial`` payload: encoder, dataset (fingerprint), n_images, grid, metrics
        ({lds, cds, srss, rmsc}: {mean, std, n}), params, weights_id, and a few extras.
    """
    from harness.data import build_dataset
    from harness.encoders import create_encoder

    started = time.perf_counter()
    hw = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    ds = dataset if dataset is not None else build_dataset(data, cfg.split)
    n = min(cfg.images, len(ds))
    if n == 0:
        raise DataError(f"spatial metrics of {spec.name!r}: the {cfg.split} split is empty")
    encoder = create_encoder(
        spec, grid=hw, device=device, dtype=DTYPES[cfg.dtype], random_weights=random_weights
    )
    params = cfg.metric_params(hw[0] * hw[1])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, range(n)),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=cfg.num_workers,
    )
    columns: dict[str, list[np.ndarray]] = {key: [] for key in ("index", "label", *SPATIAL_METRICS)}
    token_means: list[np.ndarray] = []
    pooled: list[np.ndarray] = []
    bar = progress(total=n, desc=f"spatial {spec.name}", unit="img", transient=True)
    for batch in loader:
        out = encoder(batch["image"])
        masks = grid_masks(batch["mask"], hw).to(out.tokens.device) if ds.has_masks else None
        values = spatial_metrics(out.tokens, hw, masks, name=spec.name, **params)
        columns["index"].append(batch["index"].numpy())
        columns["label"].append(batch["label"].numpy())
        for key in SPATIAL_METRICS:
            default = torch.full((len(out.tokens),), math.nan)
            columns[key].append(values.get(key, default).cpu().double().numpy())
        if cfg.save_features:
            token_means.append(out.tokens.mean(1).cpu().half().numpy())
            pooled.append(out.pooled.cpu().half().numpy())
        bar.update(len(out.tokens))
    bar.close()
    table = {key: np.concatenate(parts) for key, parts in columns.items()}
    seconds = time.perf_counter() - started

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / PER_IMAGE, per_image_csv(table))
    if cfg.save_features:
        with atomic_write(out_dir / FEATURES) as handle:
            np.savez(
                handle,
                index=table["index"],
                label=table["label"],
                token_mean=np.concatenate(token_means),
                pooled=np.concatenate(pooled),
            )
    summary = {key: summarize(table[key]) for key in SPATIAL_METRICS}
    payload = {
        "encoder": spec.name,
        "dataset": ds.fingerprint(),
        "split": cfg.split,
        "n_images": int(n),
        "grid": list(hw),
        "metrics": summary,
        "params": params,
        "weights_id": encoder.weights_id,
        "random_weights": bool(random_weights),
        **weights_provenance(encoder.weights_id, random_weights),
        "has_masks": bool(ds.has_masks),
        "embed_dim": encoder.embed_dim,
        "num_params": encoder.num_params,
        "dtype": cfg.dtype,
        "images_per_s": round(n / seconds, 2),
        "files": {"per_image": PER_IMAGE, "features": FEATURES if cfg.save_features else None},
    }
    event(
        log,
        "spatial.measured",
        encoder=spec.name,
        n_images=n,
        images_per_s=payload["images_per_s"],
        **{key: summary[key]["mean"] for key in SPATIAL_METRICS},
    )
    return payload


def grid_masks(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool pixel masks -> (B, h*w) bool token masks: a token is foreground when any
    of its pixels is (max-pool over each token's block)."""
    pooled = F.adaptive_max_pool2d(masks[:, None].float(), grid)[:, 0]  # (B, h, w)
    return pooled.flatten(1) > 0


def summarize(values: np.ndarray) -> dict[str, float | int | None]:
    """mean, std (ddof 1) and count of the finite values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return {"mean": float(finite.mean()), "std": std, "n": int(finite.size)}


def per_image_csv(table: dict[str, np.ndarray]) -> str:
    """``index, lds, cds, srss, rmsc`` rows; NaN is written as an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", *SPATIAL_METRICS])
    for i in range(len(table["index"])):
        row = [int(table["index"][i])]
        for key in SPATIAL_METRICS:
            value = float(table[key][i])
            row.append("" if math.isnan(value) else f"{value:.9g}")
        writer.writerow(row)
    return buffer.getvalue()
