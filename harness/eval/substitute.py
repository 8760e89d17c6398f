"""The substitute feature extractor for the CPU study: a small CNN trained on the dataset.

Offline CPU machines have no Inception weights, and a random-init Inception gives features with
no semantic content. The substitute is a small classifier CNN trained once on the dataset's
train split (seconds on CPU at 32 px), cached under ``results/cache/extractors/<key>.pt``
(key = dataset fingerprint + recipe), and registered with torch-fidelity as
``harness-cnn-<key>``. Its penultimate layer (``feat``) serves FID / KID / PR and its logits
serve IS. Every result computed with it says ``extractor_substitute: true``: an FD on these
features is *not* an FID and is never comparable with published numbers.

Its classifier also scores the samples' class accuracy (:mod:`harness.eval.fidelity`); the
ceiling of that metric, the classifier's accuracy on the dataset's real val split
(:func:`real_class_accuracy`), is computed once per (checkpoint, val split content) and cached
next to the checkpoint as ``<key>.val-<hash>.json``.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config.data import DataConfig
from harness.config.eval import SubstituteConfig
from harness.errors import DataError, WeightsError
from harness.io import atomic_write, write_json
from harness.keys import KeyFields
from harness.logs import event, get_logger
from harness.paths import cache_dir
from harness.progress import progress

if TYPE_CHECKING:
    import numpy as np
    import torch

    from harness.eval.features import ExtractorInfo

log = get_logger(__name__)
PREFIX = "harness-cnn-"
RECIPE_VERSION = 1  # bump when training or architecture semantics change (invalidates caches)
ACCURACY_VERSION = 1  # bump when the real-image accuracy's meaning changes (invalidates caches)
ACCURACY_SPLIT = "val"  # the real images the ceiling of the sample class accuracy is measured on


SUBSTITUTE_KEY = KeyFields("substitute", RECIPE_VERSION, fields=("dataset", "recipe"), length=12)
ACCURACY_KEY = KeyFields("substitute-accuracy", ACCURACY_VERSION, fields=("dataset",), length=12)


def substitute_key(dataset_fingerprint: str, cfg: SubstituteConfig) -> str:
    """Content key of a substitute extractor: dataset content + recipe (arch, training, seed)."""
    return SUBSTITUTE_KEY.key({"dataset": dataset_fingerprint, "recipe": cfg.to_dict()})


def substitute_info(path: Path, *, fid_layer: str | None = None) -> ExtractorInfo:
    """Register a trained substitute checkpoint with torch-fidelity and describe it.

    Raises:
        WeightsError: the checkpoint is missing or unreadable.
    """
    from harness.eval.features import ExtractorInfo, with_feature_layer

    if not path.is_file():
        raise WeightsError(
            f"substitute extractor checkpoint {path} is missing",
            hint="recompute the reference statistics (harness fid-ref), which trains it",
        )
    name = PREFIX + path.stem
    register_substitute(name)
    info = ExtractorInfo.from_file(
        name, path, substitute=True, fid_layer="feat", isc_layer="logits"
    )
    return with_feature_layer(info, fid_layer)


def ensure_substitute(
    data: DataConfig, cfg: SubstituteConfig, *, root: Path, device: str = "cpu"
) -> Path:
    """Train the substitute for ``data`` once; later calls return the cached checkpoint.

    Args:
        data: the dataset (its train split is the training set).
        cfg: the recipe.
        root: results root (cache under ``root/cache/extractors``).
        device: training device.

    Returns:
        Path of ``<key>.pt``.
    """
    import numpy as np

    from harness.data import build_dataset
    from harness.eval.images import dataset_chunks

    dataset = build_dataset(data, "train")
    key = substitute_key(dataset.fingerprint(), cfg)
    path = cache_dir(root, "extractors") / f"{key}.pt"
    if path.is_file():
        return path
    count = len(dataset) if cfg.train_images is None else min(len(dataset), cfg.train_images)
    images = np.concatenate(list(dataset_chunks(dataset, np.arange(count))))  # (N, 3, H, W)
    labels = np.asarray(dataset.labels()[:count], dtype=np.int64)
    checkpoint = train_substitute(images, labels, dataset.num_classes, cfg, device=device)
    checkpoint["dataset"] = {"fingerprint": dataset.fingerprint(), "config": data.to_dict()}
    save_checkpoint(checkpoint, path)
    event(log, "eval.substitute.trained", key=key, accuracy=checkpoint["train_accuracy"])
    return path


def real_class_accuracy(
    path: Path, data: DataConfig, *, batch_size: int = 64, device: str = "cpu"
) -> dict[str, Any]:
    """Top-1 accuracy of the substitute at ``path`` on every image of the val split of ``data``
    (argmax of its logits vs the true labels): the ceiling of the sample class accuracy.

    Computed once per (checkpoint, val split content) and cached next to the checkpoint; later
    calls read the cache. The images go through the torch-fidelity extractor the eval uses.

    Args:
        path: a substitute checkpoint (``ensure_substitute``).
        data: the dataset whose val split is classified (the one the substitute was trained on).
        batch_size: extractor batch size.
        device: extraction device.

    Returns:
        ``{"accuracy", "correct", "n_images", "split", "fingerprint"}`` (fingerprint of the val
        split).

    Raises:
        DataError: the val split is empty. WeightsError: the checkpoint is missing or corrupt.
    """
    import json

    import numpy as np

    from harness.data import build_dataset
    from harness.eval.features import build_extractor, iter_features, rebatch
    from harness.eval.images import dataset_chunks

    dataset = build_dataset(data, ACCURACY_SPLIT)
    fingerprint = dataset.fingerprint()
    cache = path.with_name(
        f"{path.stem}.{ACCURACY_SPLIT}-{ACCURACY_KEY.key({'dataset': fingerprint})}.json"
    )
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = None
    if isinstance(cached, dict) and cached.get("checkpoint") == path.stem:
        return {k: v for k, v in cached.items() if k != "checkpoint"}
    n = len(dataset)
    if n == 0:
        raise DataError(
            f"class accuracy: the {ACCURACY_SPLIT} split of the dataset is empty",
            hint="give the dataset a val split, or set eval.metrics.class_accuracy: false",
        )
    info = substitute_info(path)
    extractor = build_extractor(info, [str(info.isc_layer)], device)
    labels = np.asarray(dataset.labels(), dtype=np.int64)
    correct, offset = 0, 0
    workers = min(8, os.cpu_count() or 1) if data.source == "folder" else 0  # JPEG decoding
    batches = rebatch(dataset_chunks(dataset, np.arange(n), workers=workers), batch_size)
    for outputs in iter_features(
        [extractor], batches, total=n, device=device, desc="substitute: val accuracy"
    ):
        predicted = outputs[0][str(info.isc_layer)].argmax(dim=1).cpu().numpy()  # (B,)
        correct += int((predicted == labels[offset : offset + len(predicted)]).sum())
        offset += len(predicted)
    result = {
        "accuracy": correct / n,
        "correct": correct,
        "n_images": n,
        "split": ACCURACY_SPLIT,
        "fingerprint": fingerprint,
    }
    write_json(cache, {**result, "checkpoint": path.stem})
    event(log, "eval.substitute.val_accuracy", key=path.stem, accuracy=result["accuracy"], n=n)
    return result


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    import torch

    with atomic_write(path) as handle:
        torch.save(checkpoint, handle)


# ---------------------------------------------------------------------------------------------
# The network and its training
# ---------------------------------------------------------------------------------------------
def build_cnn(widths: list[int], feature_dim: int, num_classes: int) -> torch.nn.Module:
    """conv3x3-BN-ReLU stages (max-pool between) -> global average -> ``feat`` -> logits."""
    from torch import nn

    class SubstituteCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            channels = 3
            for i, width in enumerate(widths):
                if i:
                    layers.append(nn.MaxPool2d(2))
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.embed = nn.Linear(channels, feature_dim)
            self.head = nn.Linear(feature_dim, num_classes)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feat = self.embed(self.body(x))  # (B, feature_dim)
            return feat, self.head(feat)  # (B, feature_dim), (B, num_classes)

    return SubstituteCNN()


def preprocess(
    images: torch.Tensor, input_size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float32 (B, 3, input_size, input_size)."""
    import torch.nn.functional as F

    x = images.float() / 255.0
    if x.shape[-2:] != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def train_substitute(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    cfg: SubstituteConfig,
    *,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train the CNN as a classifier (AdamW, cosine decay, horizontal flips); deterministic.

    Args:
        images: uint8 (N, 3, H, W).
        labels: int64 (N,).
        num_classes: number of classes.
        cfg: recipe.
        device: training device.

    Returns:
        The checkpoint dict (recipe, normalisation, state dict, train accuracy).
    """
    import torch
    import torch.nn.functional as F

    if images.shape[0] < 2:
        raise DataError(
            f"substitute extractor: need at least 2 training images, got {images.shape[0]}"
        )
    generator = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.as_tensor(images)  # (N, 3, H, W) uint8
    y_all = torch.as_tensor(labels)  # (N,)
    floats = x_all.float() / 255.0
    mean, std = floats.mean(dim=(0, 2, 3)), floats.std(dim=(0, 2, 3)).clamp_min(1e-3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_cnn(cfg.widths, cfg.feature_dim, num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(x_all) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    model.train()
    correct = seen = 0
    for _ in progress(range(cfg.epochs), desc="substitute: train", unit="epoch"):
        order = torch.randperm(len(x_all), generator=generator)
        flips = torch.rand(len(x_all), generator=generator) < 0.5
        correct = seen = 0
        for start in range(0, len(x_all), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            batch = x_all[idx]
            batch = torch.where(flips[idx].view(-1, 1, 1, 1), batch.flip(-1), batch)
            x = preprocess(batch, cfg.input_size, mean, std).to(device)
            y = y_all[idx].to(device)
            _, logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
    model.eval()
    return {
        "recipe_version": RECIPE_VERSION,
        "recipe": cfg.to_dict(),
        "num_classes": num_classes,
        "mean": mean,
        "std": std,
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "train_accuracy": correct / max(seen, 1),  # last epoch, augmented, train mode
    }


# ---------------------------------------------------------------------------------------------
# torch-fidelity extractor
# ---------------------------------------------------------------------------------------------
def register_substitute(name: str) -> None:
    """Register ``name`` (``harness-cnn-<key>``) with torch-fidelity (idempotent)."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, _extractor_class())


@functools.cache
def _extractor_class() -> type:
    """The torch-fidelity extractor class (built once, lazily, so importing needs no torch)."""
    import torch
    from torch_fidelity import FeatureExtractorBase

    class SubstituteExtractor(FeatureExtractorBase):
        """torch-fidelity view of a trained substitute CNN: features ``feat`` and ``logits``."""

        def __init__(
            self,
            name: str,
            features_list: list[str],
            feature_extractor_weights_path: str | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise WeightsError(f"{name}: pass feature_extractor_weights_path (the .pt file)")
            ckpt = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
            recipe = SubstituteConfig(**ckpt["recipe"])
            self.input_size = recipe.input_size
            self.model = build_cnn(recipe.widths, recipe.feature_dim, ckpt["num_classes"])
            self.model.load_state_dict(ckpt["state_dict"])
            self.register_buffer("mean", ckpt["mean"].float())
            self.register_buffer("std", ckpt["std"].float())
            self.requires_grad_(False)
            self.eval()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(
                    f"expected uint8 (B, 3, H, W) images, got {x.dtype} {tuple(x.shape)}"
                )
            feat, logits = self.model(preprocess(x, self.input_size, self.mean, self.std))
            features = {"feat": feat.float(), "logits": logits.float()}
            return tuple(features[name] for name in self.features_list)

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("feat", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return {"isc": "logits", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    return SubstituteExtractor
