"""Linear probing of frozen features (encoders, or a trained SiT's hidden states).

Protocol (REPA / DAE): parameter-free BatchNorm (``affine=False``) + one linear layer, Adam,
cosine decay. One head per learning rate of ``ProbeConfig.lrs``; all heads train together in a
single pass over the cached features as one batched linear layer (weights (H, D, C)). The head
with the best top-1 on a seeded held-out slice of train is reported on val (top-1 / top-5),
with the whole grid. Seeded and deterministic: a rerun gives identical accuracy.

Pooled features (mean of patch tokens, as iREPA's analysis; or the encoder's CLS) of both splits
are extracted once per (encoder, dataset, pooling, grid) and cached as float16 under
``results/cache/features/<features_key>.npz``.
"""

from __future__ import annotations

import math
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.config.data import DataConfig
from harness.config.encoders import UNKEYED_SPEC_FIELDS
from harness.config.eval import ProbeConfig
from harness.encoders.weights import weights_provenance
from harness.errors import DataError
from harness.io import atomic_write
from harness.keys import KeyFields
from harness.logs import event, get_logger
from harness.paths import cache_dir, results_root
from harness.progress import progress

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)
FEATURES_VERSION = 1  # bump when feature extraction semantics change (invalidates the cache)
FEATURES_KEY = KeyFields(  # pooled features: who pools (encoder or SiT block), how, on what
    "features",
    FEATURES_VERSION,
    fields=("source", "pooling", "dtype", "datasets"),
    exclude=tuple(f"source.encoder.{name}" for name in UNKEYED_SPEC_FIELDS),
)
_EVAL_CHUNK = 65_536  # rows per forward pass when scoring heads


# ---------------------------------------------------------------------------------------------
# The probe on given features (pure)
# ---------------------------------------------------------------------------------------------
def probe_features(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    cfg: ProbeConfig,
    *,
    num_classes: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train the lr grid of linear heads on ``train_x`` and report the selected head on val.

    Args:
        train_x: (N, D) features (numpy or torch, any float dtype).
        train_y: (N,) integer labels.
        val_x: (M, D) features.
        val_y: (M,) labels.
        cfg: probe protocol (grid, epochs, batch, holdout, subset, seed).
        num_classes: number of classes (default: max label + 1).
        device: training device.

    Returns:
        ``top1``, ``top5`` (val, fractions), ``best_lr``, ``grid`` ([{lr, holdout_top1}]),
        ``n_train`` (rows the heads trained on), ``n_holdout``, ``n_val``, ``subset_per_class``,
        ``num_classes``, ``chance``.

    Raises:
        DataError: shapes or labels inconsistent, non-finite features, too few images.
    """
    import torch

    x_train, y_train = _as_tensors(train_x, train_y, "train")
    x_val, y_val = _as_tensors(val_x, val_y, "val")
    if x_train.shape[1] != x_val.shape[1]:
        raise DataError(
            f"probe: train features are {x_train.shape[1]}-d but val features {x_val.shape[1]}-d"
        )
    classes = int(num_classes or int(max(y_train.max(), y_val.max())) + 1)
    if int(max(y_train.max(), y_val.max())) >= classes or int(min(y_train.min(), y_val.min())) < 0:
        raise DataError(f"probe: labels must lie in 0..{classes - 1}")
    rng = np.random.default_rng(cfg.seed)
    rows = _subset(y_train.numpy(), cfg.subset_per_class, rng)
    order = rows[rng.permutation(len(rows))]
    n_hold = max(1, round(cfg.holdout_fraction * len(order)))
    if len(order) - n_hold < 2:
        raise DataError(
            f"probe: {len(order)} train images leave too few after holding out {n_hold}"
        )
    hold, fit = torch.from_numpy(np.sort(order[:n_hold])), torch.from_numpy(np.sort(order[n_hold:]))
    dev = torch.device(device)
    heads = train_heads(
        x_train[fit].to(dev), y_train[fit].to(dev), classes, cfg, generator_seed=cfg.seed
    )
    holdout_top1 = heads.accuracy(x_train[hold].to(dev), y_train[hold].to(dev), k=1)  # (H,)
    best = int(torch.argmax(holdout_top1))  # first maximum: ties go to the earlier grid point
    val_top1 = heads.accuracy(x_val.to(dev), y_val.to(dev), k=1)[best]
    val_top5 = heads.accuracy(x_val.to(dev), y_val.to(dev), k=min(5, classes))[best]
    return {
        "top1": float(val_top1),
        "top5": float(val_top5),
        "best_lr": float(cfg.lrs[best]),
        "grid": [
            {"lr": float(lr), "holdout_top1": float(a)} for lr, a in zip(cfg.lrs, holdout_top1)
        ],
        "n_train": len(fit),
        "n_holdout": n_hold,
        "n_val": len(x_val),
        "subset_per_class": cfg.subset_per_class,
        "num_classes": classes,
        "chance": 1.0 / classes,
    }


class LinearHeads:
    """Trained heads: shared parameter-free BatchNorm + H linear layers (weight (H, D, C))."""

    def __init__(
        self, norm: torch.nn.BatchNorm1d, weight: torch.Tensor, bias: torch.Tensor
    ) -> None:
        self.norm = norm.eval()
        self.weight = weight  # (H, D, C)
        self.bias = bias  # (H, C)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (H, N, C) logits (BatchNorm with its running statistics)."""
        import torch

        z = self.norm(x.float())  # (N, D)
        return torch.einsum("nd,hdc->hnc", z, self.weight) + self.bias[:, None, :]

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, *, k: int) -> torch.Tensor:
        """Top-k accuracy of every head, (H,) float64 on the CPU."""
        import torch

        hits = torch.zeros(self.weight.shape[0], dtype=torch.float64)
        with torch.no_grad():
            for start in range(0, len(x), _EVAL_CHUNK):
                logits = self.logits(x[start : start + _EVAL_CHUNK])  # (H, n, C)
                top = logits.topk(k, dim=-1).indices  # (H, n, k)
                target = y[start : start + _EVAL_CHUNK].view(1, -1, 1)
                hits += (top == target).any(dim=-1).sum(dim=1).double().cpu()
        return hits / max(len(x), 1)


def train_heads(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: ProbeConfig, *, generator_seed: int
) -> LinearHeads:
    """Train one head per ``cfg.lrs`` entry together on (N, D) features ``x`` (on their device).

    The loss is the sum over heads of each head's mean cross-entropy, so every head gets
    exactly its own gradient; per-head learning rates are Adam parameter groups.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    n, dim = x.shape
    heads = len(cfg.lrs)
    device = x.device
    # every head starts from the same init and sees the same batches, so a head's result does
    # not depend on which other learning rates share the grid
    init = (
        torch.randn(dim, num_classes, generator=torch.Generator().manual_seed(generator_seed))
        * 0.01
    )
    generator = torch.Generator().manual_seed(generator_seed + 1)  # batch order
    weights = [nn.Parameter(init.clone().to(device)) for _ in range(heads)]  # H x (D, C)
    biases = [nn.Parameter(torch.zeros(num_classes, device=device)) for _ in range(heads)]
    groups = [{"params": [w, b], "lr": lr} for w, b, lr in zip(weights, biases, cfg.lrs)]
    optimizer = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))
    )
    norm = nn.BatchNorm1d(dim, affine=False, momentum=None).to(device)  # cumulative running stats
    norm.train()
    for _ in progress(range(cfg.epochs), desc="probe", unit="epoch"):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            if len(idx) < 2:  # BatchNorm needs two rows; a 1-row tail is dropped
                continue
            z = norm(x[idx].float())  # (B, D)
            logits = (
                torch.einsum("bd,hdc->hbc", z, torch.stack(weights)) + torch.stack(biases)[:, None]
            )
            target = y[idx].repeat(heads)  # (H*B,)
            loss = F.cross_entropy(logits.reshape(-1, num_classes), target) * heads
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return LinearHeads(norm, torch.stack(weights).detach(), torch.stack(biases).detach())


def _as_tensors(x: Any, y: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    features = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    labels = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long()
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise DataError(
            f"probe {split}: need features (N, D) and labels (N,), got {tuple(features.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if len(features) == 0:
        raise DataError(f"probe {split}: no images")
    if not bool(torch.isfinite(features.float()).all()):
        raise DataError(f"probe {split}: features contain NaN or inf")
    return features, labels


def _subset(labels: np.ndarray, per_class: int | None, rng: np.random.Generator) -> np.ndarray:
    """Train rows to use: all, or a seeded choice of ``per_class`` rows of every class."""
    if per_class is None:
        return np.arange(len(labels))
    chosen = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        chosen.append(rng.choice(rows, size=min(per_class, len(rows)), replace=False))
    return np.sort(np.concatenate(chosen))


# ---------------------------------------------------------------------------------------------
# Cached pooled features + the probe (shared by encoders and SiT hidden states)
# ---------------------------------------------------------------------------------------------
# (uint8 images (B, 3, H, W), dataset indices (B,)) -> pooled features (B, D)
PoolFn = Callable[[Any, np.ndarray], Any]


def cached_probe(
    identity: dict[str, Any],
    make_pool_fn: Callable[[], tuple[PoolFn, str]],
    data: DataConfig,
    cfg: ProbeConfig,
    *,
    device: str,
    root: str | Path | None,
) -> dict[str, Any]:
    """Pooled train/val features (cached under ``features_key``) -> :func:`probe_features`.

    Args:
        identity: what produces the features (encoder spec, or checkpoint + block + t); part
            of the cache key together with the datasets, image counts, pooling and dtype.
        make_pool_fn: builds the feature function (only on a cache miss) and returns it with
            the weights identity to record.
        data: dataset (train: probe training; val: reported accuracy).
        cfg: probe protocol.
        device: extraction and training device.
        root: results root of the cache.

    Returns:
        The probe result plus ``features_key``, ``feature_dim``, ``weights_id``, ``dataset``.
    """
    from harness.data import build_dataset

    splits = {s: build_dataset(data, s) for s in ("train", "val")}
    counts = {
        "train": _count(len(splits["train"]), cfg.train_images),
        "val": _count(len(splits["val"]), cfg.val_images),
    }
    features_key = FEATURES_KEY.key(
        {
            "source": identity,
            "pooling": cfg.pooling,
            "dtype": cfg.feature_dtype,
            "datasets": {s: [ds.fingerprint(), counts[s]] for s, ds in splits.items()},
        }
    )
    cached = cache_dir(results_root(root), "features") / f"{features_key}.npz"
    arrays = _load_cache(cached)
    if arrays is None:
        pool, weights_id = make_pool_fn()
        arrays = {"weights_id": np.array(weights_id)}
        for split, dataset in splits.items():
            arrays[f"{split}_x"] = _pooled(
                dataset, counts[split], pool, cfg, desc=f"{split} features"
            )
            arrays[f"{split}_y"] = np.asarray(dataset.labels()[: counts[split]], dtype=np.int64)
        with atomic_write(cached) as handle:
            np.savez(handle, **arrays)
    result = probe_features(
        arrays["train_x"],
        arrays["train_y"],
        arrays["val_x"],
        arrays["val_y"],
        cfg,
        num_classes=splits["train"].num_classes,
        device=device,
    )
    return {
        **result,
        "pooling": cfg.pooling,
        "features_key": features_key,
        "feature_dim": int(arrays["train_x"].shape[1]),
        "weights_id": str(arrays["weights_id"]),
        "dataset": {s: ds.fingerprint() for s, ds in splits.items()},
        "protocol": {k: v for k, v in cfg.to_dict().items() if k != "extract_batch_size"},
    }


def run_probe(
    spec: Any,
    data: DataConfig,
    cfg: ProbeConfig,
    *,
    grid: tuple[int, int] | list[int],
    device: str = "cpu",
    random_weights: bool = False,
    root: str | Path | None = None,
) -> dict[str, Any]:
    """Linear-probe one encoder (the ``probe`` stage).

    Args:
        spec: the encoder's :class:`~harness.config.encoders.EncoderSpec`.
        data: dataset (train split: probe training; val split: reported accuracy).
        cfg: probe protocol.
        grid: token grid the encoder is run at (as in training, e.g. (16, 16)).
        device: extraction and training device.
        random_weights: build the encoder with random weights (tests; recorded).
        root: results root for the feature cache (default ``$HARNESS_RESULTS``).

    Returns:
        The ``probe`` payload (docs/architecture.md): encoder, pooling, top1, top5, best_lr,
        grid ([{lr, holdout_top1}]), n_train, n_val, subset_per_class, features_key, ...
    """
    started = time.time()  # writes nothing to the stage folder: the caller writes result.json
    token_grid = (int(grid[0]), int(grid[1]))

    def make_pool_fn() -> tuple[PoolFn, str]:
        import torch

        from harness.encoders import create_encoder

        encoder = create_encoder(
            spec, grid=token_grid, device=device, random_weights=random_weights
        )

        def pool(images: Any, indices: np.ndarray) -> Any:
            with torch.inference_mode():
                out = encoder(images.to(device))
            return out.tokens.mean(dim=1) if cfg.pooling == "mean" else out.pooled  # (B, D)

        return pool, str(getattr(encoder, "weights_id", ""))

    identity = {
        "encoder": spec.to_dict(),
        "random_weights": random_weights,
        "grid": list(token_grid),
    }
    result = cached_probe(identity, make_pool_fn, data, cfg, device=device, root=root)
    event(
        log,
        "probe.done",
        encoder=spec.name,
        top1=result["top1"],
        seconds=round(time.time() - started, 1),
    )
    return {
        "encoder": spec.name,
        **result,
        "token_grid": list(token_grid),
        "random_weights": random_weights,
        **weights_provenance(result["weights_id"], random_weights),
    }


def _count(available: int, cap: int | None) -> int:
    return available if cap is None else min(available, cap)


def _load_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        event(log, "probe.cache.corrupt", path=str(path), error=str(exc))
        return None


def _pooled(dataset: Any, count: int, pool: PoolFn, cfg: ProbeConfig, *, desc: str) -> np.ndarray:
    """(count, D) pooled features of the first ``count`` images, in ``cfg.feature_dtype``."""
    import torch

    from harness.eval.images import dataset_chunks

    parts: list[np.ndarray] = []
    bar = progress(total=count, desc=desc, unit="img")
    for start, images in zip(
        range(0, count, cfg.extract_batch_size),
        dataset_chunks(dataset, np.arange(count), chunk=cfg.extract_batch_size),
    ):
        vectors = pool(torch.from_numpy(images), np.arange(start, start + len(images)))
        parts.append(vectors.float().cpu().numpy().astype(cfg.feature_dtype))
        bar.update(len(images))
    bar.close()
    return np.concatenate(parts)
