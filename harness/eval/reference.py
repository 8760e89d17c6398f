"""Reference statistics: computed once per (dataset content, extractor, weights, preprocessing),
or loaded from an ADM reference batch ``.npz``.

A reference directory holds ``stats.npz`` and ``reference.json`` (written last)::

    stats.npz        mu, sigma (float64)         FID-layer statistics of the reference set
                     features (M, D) float32     a seeded subset of reference features (KID, PR)
                     dinov2_mu, dinov2_sigma     DINOv2 statistics (when metrics.fd_dinov2)
    reference.json   reference_key, extractor, weights hash, dataset, n_images, ...,
                     class_accuracy_real (substitute extractor: its classifier's accuracy on
                     the real val split, the ceiling of the samples' class accuracy)

The statistics are cached under ``results/cache/fid_refs/<reference_key>/`` so every stage and
command that needs the same reference reuses one computation. ADM's ``VIRTUAL_imagenet256_
labeled.npz`` provides ``mu``/``sigma`` of Inception pool features (and 10k images ``arr_0``,
used for KID / PR / FD-DINOv2 when present), which makes FID comparable with the papers'
ADM-suite numbers (only ``mu``/``sigma`` enter FID there, too).

``class_accuracy_real`` is not part of the reference key (it does not change the statistics):
it is a function of the classifier (the extractor, in the key) and the val split, computed once
per (classifier, val split content) by :func:`harness.eval.substitute.real_class_accuracy` and
written into each output directory's ``reference.json`` for the data config of that call.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.config.data import DataConfig
from harness.config.eval import EvalConfig
from harness.errors import ArtifactError, ConfigError, DataError, StageError
from harness.eval.fd import GaussianStats, StatsAccumulator, stats_from_arrays
from harness.eval.features import ExtractorInfo
from harness.io import atomic_write, file_hash, write_json
from harness.keys import KeyFields
from harness.logs import event, get_logger
from harness.paths import cache_dir, results_root

log = get_logger(__name__)
STATS_FILE = "stats.npz"
META_FILE = "reference.json"
REFERENCE_VERSION = 1  # bump when the statistics' meaning changes (invalidates cached refs)
FEATURE_SUBSET_SEED = 0  # which reference images keep their features for KID / PR
ADM_FEATURE_DIM = 2048
REFERENCE_KEY = KeyFields(  # the fields of reference.json that change the statistics
    "reference",
    REFERENCE_VERSION,
    fields=(
        "source",
        "dataset",
        "n_images",
        "n_features",
        "resolution",
        "extractor",
        "extractor_weights",
        "feature_layer",
        "fd_dinov2_extractor",
        "fd_dinov2_weights",
        "batch_size",
        "torch_fidelity",
    ),
)


@dataclass
class _Source:
    """Reference images (or precomputed ADM statistics) before feature extraction."""

    description: dict[str, Any]  # recorded as the payload's "dataset"
    n_images: int | None  # images behind mu/sigma (None: unknown, ADM file)
    resolution: int | None  # image side (None: unknown)
    chunks: Callable[[Sequence[int] | None], Iterator[np.ndarray]] | None  # images at indices
    n_available: int = 0  # images that ``chunks`` can serve
    adm_stats: GaussianStats | None = None


@dataclass
class Reference:
    """A loaded reference directory."""

    meta: dict[str, Any]
    fid: GaussianStats
    features: np.ndarray | None = None  # (M, D) float32
    dinov2: GaussianStats | None = None
    directory: Path = field(default_factory=Path)

    @property
    def key(self) -> str:
        return str(self.meta["reference_key"])


# ---------------------------------------------------------------------------------------------
# Extractors for a config
# ---------------------------------------------------------------------------------------------
def primary_extractor(
    cfg: EvalConfig, *, data: DataConfig | None, root: Path, device: str = "cpu"
) -> ExtractorInfo:
    """The extractor serving FID / IS / KID / PR for ``cfg`` (trains the substitute if needed)."""
    from harness.eval.features import resolve_extractor
    from harness.eval.substitute import ensure_substitute, substitute_info

    if cfg.extractor == "harness-cnn":
        if data is None:
            raise ConfigError("extractor harness-cnn is trained on a dataset; give the data config")
        path = ensure_substitute(data, cfg.substitute, root=root, device=device)
        return substitute_info(path, fid_layer=cfg.feature_layer)
    return resolve_extractor(
        cfg.extractor,
        weights_path=cfg.feature_extractor_weights_path,
        random_weights=cfg.random_weights_extractor,
        feature_layer=cfg.feature_layer,
    )


def dinov2_extractor(cfg: EvalConfig) -> ExtractorInfo | None:
    """The FD-DINOv2 extractor, or None when ``metrics.fd_dinov2`` is off."""
    from harness.eval.features import resolve_extractor

    if not cfg.metrics.fd_dinov2:
        return None
    return resolve_extractor(
        cfg.metrics.fd_dinov2_extractor, random_weights=cfg.random_weights_extractor
    )


# ---------------------------------------------------------------------------------------------
# Compute (or reuse) reference statistics
# ---------------------------------------------------------------------------------------------
def compute_reference(
    data: DataConfig,
    cfg: EvalConfig,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    root: str | Path | None = None,
) -> dict[str, Any]:
    """Reference statistics for ``cfg.reference`` into ``out_dir`` (the ``fid_ref`` stage).

    Computed once per reference key and cached under ``results/cache/fid_refs``; later calls
    copy the cached files.

    Args:
        data: the dataset (``reference.source: dataset``; also trains the substitute extractor).
        cfg: eval config (extractor, reference, batch size, metrics).
        out_dir: the stage directory (receives ``stats.npz`` and ``reference.json``).
        device: extraction device.
        root: results root (default ``$HARNESS_RESULTS`` or ``./results``).

    Returns:
        The ``fid_ref`` payload: reference_key, extractor, n_images, dataset, and the rest of
        ``reference.json``.

    Raises:
        ArtifactError: missing or corrupt ADM npz. DataError: empty dataset (or, for the
            class-accuracy ceiling of the substitute, an empty val split).
        WeightsError: extractor weights missing. StageError: too few images (N <= D).
    """
    import torch_fidelity

    started = time.time()
    root = results_root(root)
    out_dir = Path(out_dir)
    if cfg.reference.source == "npz":
        _check_adm_extractor(cfg)
    source = _npz_source(cfg) if cfg.reference.source == "npz" else _dataset_source(data, cfg)
    primary = primary_extractor(cfg, data=data, root=root, device=device)
    dino = dinov2_extractor(cfg)
    keep_features = cfg.metrics.kid or cfg.metrics.prc
    n_features = min(cfg.reference.num_features, source.n_available) if keep_features else 0
    meta: dict[str, Any] = {
        "version": REFERENCE_VERSION,
        "source": cfg.reference.source,
        "dataset": source.description,
        "n_images": source.n_images,
        "n_features": n_features,
        "resolution": source.resolution,
        "extractor": primary.name,
        "extractor_weights": primary.weights,
        "extractor_weights_path": primary.weights_path,
        "extractor_substitute": primary.substitute,
        "feature_layer": primary.fid_layer,
        "fd_dinov2_extractor": dino.name if dino else None,
        "fd_dinov2_weights": dino.weights if dino else None,
        "batch_size": cfg.batch_size,
        "torch_fidelity": torch_fidelity.__version__,
    }
    meta["reference_key"] = REFERENCE_KEY.key(meta)
    meta.update(_class_accuracy_real(cfg, data, primary, device))  # not part of the key
    meta["available"] = {
        "fid": True,
        "kid": n_features > 1,
        "prc": n_features > cfg.metrics.prc_neighborhood,
        "fd_dinov2": dino is not None and source.n_available > 0,
    }
    if _reuse(out_dir, meta["reference_key"], root):
        event(log, "eval.reference.cached", key=meta["reference_key"], out=str(out_dir))
        return _payload(_update_class_accuracy(out_dir, meta))
    arrays = _extract(source, primary, dino, n_features, cfg, device)
    cached = cache_dir(root, "fid_refs") / meta["reference_key"]
    _write(cached, arrays, meta)
    if cached.resolve() != out_dir.resolve():
        _copy(cached, out_dir)
    event(
        log,
        "eval.reference.done",
        key=meta["reference_key"],
        n_images=meta["n_images"],
        seconds=round(time.time() - started, 1),
    )
    return _payload(meta)


CLASS_ACCURACY_FIELDS = ("class_accuracy_real", "class_accuracy_set")


def _class_accuracy_real(
    cfg: EvalConfig, data: DataConfig | None, primary: ExtractorInfo, device: str
) -> dict[str, Any]:
    """The ceiling of the samples' class accuracy: the substitute classifier's accuracy on the
    real val split (``class_accuracy_real``) and which images it was measured on
    (``class_accuracy_set``); both None without a substitute or with the metric off."""
    from harness.eval.substitute import PREFIX, real_class_accuracy

    if not cfg.metrics.class_accuracy or not primary.name.startswith(PREFIX) or data is None:
        return dict.fromkeys(CLASS_ACCURACY_FIELDS)
    result = real_class_accuracy(
        Path(str(primary.weights_path)), data, batch_size=cfg.batch_size, device=device
    )
    described = {k: result[k] for k in ("split", "fingerprint", "n_images", "correct")}
    return {"class_accuracy_real": result["accuracy"], "class_accuracy_set": described}


def _update_class_accuracy(out_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The reused ``reference.json`` of ``out_dir`` with this call's class-accuracy ceiling
    (rewritten when it differs: a cache entry made for another val split, or before the
    ceiling existed)."""
    current = load_reference(out_dir).meta
    wanted = {k: meta.get(k) for k in CLASS_ACCURACY_FIELDS}
    if {k: current.get(k) for k in CLASS_ACCURACY_FIELDS} != wanted:
        current = {**current, **wanted}
        write_json(out_dir / META_FILE, current)
    return current


def _payload(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "extractor_weights_path"}


def _dataset_source(data: DataConfig, cfg: EvalConfig) -> _Source:
    from harness.data import build_dataset
    from harness.eval.images import dataset_chunks

    dataset = build_dataset(data, cfg.reference.split)
    total = len(dataset)
    if total == 0:
        raise DataError(f"reference: the {cfg.reference.split} split is empty")
    n = total if cfg.reference.num_images is None else min(total, cfg.reference.num_images)

    workers = min(8, os.cpu_count() or 1) if data.source == "folder" else 0  # JPEG decoding

    def chunks(indices: Sequence[int] | None) -> Iterator[np.ndarray]:
        return dataset_chunks(
            dataset, np.arange(n) if indices is None else indices, workers=workers
        )

    description = {
        "source": data.source,
        "split": cfg.reference.split,
        "fingerprint": dataset.fingerprint(),
        "resolution": data.resolution,
        "preprocessing": "adm-center-crop" if data.source == "folder" else "generated",
    }
    return _Source(description, n, data.resolution, chunks, n_available=n)


def load_adm_npz(path: str | Path) -> tuple[GaussianStats, np.ndarray | None]:
    """Load an ADM reference batch: (mu, sigma) as float64 statistics, and ``arr_0`` if present.

    Returns:
        The statistics and the (N, H, W, 3) uint8 images (memory-mapped when uncompressed) or None.

    Raises:
        ArtifactError: the file is missing, not an npz, truncated, or lacks mu/sigma.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(
            f"reference npz {path}: no such file",
            hint="download ADM's VIRTUAL_imagenet256_labeled.npz (openai/guided-diffusion "
            "evaluations) and set eval.reference.path to it",
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            if not {"mu", "sigma"} <= names:
                raise ArtifactError(
                    f"reference npz {path}: needs arrays 'mu' and 'sigma', found {sorted(names)}"
                )
            mu, sigma = npz["mu"], npz["sigma"]
            images = npz["arr_0"] if "arr_0" in names else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"reference npz {path}: corrupt or truncated file: {exc}") from exc
    stats = stats_from_arrays(mu, sigma, where=f"reference npz {path}")
    if images is not None and (
        images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3
    ):
        raise ArtifactError(
            f"reference npz {path}: arr_0 must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
        )
    return stats, images


def _npz_source(cfg: EvalConfig) -> _Source:
    from harness.eval.images import nhwc_chunks

    path = Path(str(cfg.reference.path))
    stats, images = load_adm_npz(path)
    description = {"source": "npz", "path": str(path), "sha256": file_hash(path, 64)}
    if images is None:
        return _Source(description, None, None, None, adm_stats=stats)

    def chunks(indices: Sequence[int] | None) -> Iterator[np.ndarray]:
        return nhwc_chunks(images, indices)

    return _Source(description, None, int(images.shape[1]), chunks, len(images), stats)


def _check_adm_extractor(cfg: EvalConfig) -> None:
    """ADM statistics are Inception pool3 statistics: only the real inception-v3-compat at its
    2048-d layer is comparable with them."""
    layer = cfg.feature_layer or "default"
    if (
        cfg.extractor != "inception-v3-compat"
        or cfg.random_weights_extractor
        or layer not in ("default", "2048")
    ):
        used = f"{cfg.extractor}{'(random-weights)' if cfg.random_weights_extractor else ''} layer {layer}"
        raise ConfigError(
            "reference.source npz holds Inception pool statistics; the extractor must be "
            f"inception-v3-compat (real weights, layer 2048), got {used}",
            hint="set eval.extractor: inception-v3-compat, random_weights_extractor: false, "
            "feature_layer: null, or use reference.source: dataset",
        )


def _extract(
    source: _Source,
    primary: ExtractorInfo,
    dino: ExtractorInfo | None,
    n_features: int,
    cfg: EvalConfig,
    device: str,
) -> dict[str, np.ndarray]:
    """One pass over the reference images: FID stats, a feature subset, DINOv2 stats."""
    from harness.eval.features import build_extractor, iter_features, rebatch

    need_stats = source.adm_stats is None
    arrays: dict[str, np.ndarray] = {}
    if source.adm_stats is not None:
        arrays["mu"], arrays["sigma"] = source.adm_stats.mu, source.adm_stats.sigma
    if source.chunks is None:
        return arrays
    # dataset: every image for the stats; npz: every image of arr_0 (dinov2, feature subset)
    rng = np.random.default_rng(FEATURE_SUBSET_SEED)
    keep = np.sort(rng.choice(source.n_available, size=n_features, replace=False))
    extractors = [build_extractor(primary, [primary.fid_layer], device)]
    if dino is not None:
        extractors.append(build_extractor(dino, [dino.fid_layer], device))
    if not need_stats and dino is None and n_features == 0:
        return arrays
    if not need_stats and dino is None:  # npz: only the kept subset needs features
        batches, total, positions = source.chunks(keep), n_features, np.arange(n_features)
    else:
        batches, total, positions = source.chunks(None), source.n_available, keep
    fid_acc = StatsAccumulator("reference images")
    dino_acc = StatsAccumulator("reference images (DINOv2)")
    kept: list[np.ndarray] = []
    offset = 0
    for outputs in iter_features(
        extractors, rebatch(batches, cfg.batch_size), total=total, device=device, desc="reference"
    ):
        feats = outputs[0][primary.fid_layer]  # (B, D)
        if need_stats:
            fid_acc.update(feats)
        lo, hi = np.searchsorted(positions, [offset, offset + len(feats)])
        kept.append(feats[positions[lo:hi] - offset].cpu().numpy())
        if dino is not None:
            dino_acc.update(outputs[1][dino.fid_layer])
        offset += len(feats)
    if need_stats:
        stats = fid_acc.result()
        arrays["mu"], arrays["sigma"] = stats.mu, stats.sigma
    if n_features:
        arrays["features"] = np.concatenate(kept).astype(np.float32)
    if dino is not None:
        dino_stats = dino_acc.result()
        arrays["dinov2_mu"], arrays["dinov2_sigma"] = dino_stats.mu, dino_stats.sigma
    return arrays


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _write(directory: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / STATS_FILE) as handle:
        np.savez(handle, **arrays)
    write_json(directory / META_FILE, meta)  # last: its presence means complete


def _copy(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    with atomic_write(dst / STATS_FILE) as handle, open(src / STATS_FILE, "rb") as stats:
        shutil.copyfileobj(stats, handle)
    write_json(dst / META_FILE, json.loads((src / META_FILE).read_text(encoding="utf-8")))


def _reuse(out_dir: Path, key: str, root: Path) -> bool:
    """True when ``out_dir`` holds (or could be filled from the cache with) reference ``key``."""
    for candidate in (out_dir, cache_dir(root, "fid_refs") / key):
        try:
            reference = load_reference(candidate)
        except ArtifactError:
            continue
        if reference.key != key:
            continue
        if candidate != out_dir:
            _copy(candidate, out_dir)
        return True
    return False


def load_reference(directory: str | Path) -> Reference:
    """Load and validate a reference directory.

    Raises:
        ArtifactError: missing directory or files, unreadable JSON, corrupt or inconsistent
            ``stats.npz``.
    """
    directory = Path(directory)
    meta_path, stats_path = directory / META_FILE, directory / STATS_FILE
    hint = "compute it with `harness fid-ref CONFIG` (or the sweep's fid_ref stage)"
    if not meta_path.is_file() or not stats_path.is_file():
        raise ArtifactError(
            f"{directory}: no reference statistics ({META_FILE} + {STATS_FILE})", hint=hint
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        with np.load(stats_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{directory}: corrupt reference statistics: {exc}", hint=hint) from exc
    if not isinstance(meta, dict) or "reference_key" not in meta or "mu" not in arrays:
        raise ArtifactError(f"{directory}: incomplete reference statistics", hint=hint)
    try:
        fid = stats_from_arrays(
            arrays["mu"], arrays.get("sigma"), where=str(stats_path), n=meta.get("n_images")
        )
        dinov2 = None
        if "dinov2_mu" in arrays:
            dinov2 = stats_from_arrays(
                arrays["dinov2_mu"], arrays.get("dinov2_sigma"), where=str(stats_path)
            )
    except StageError as exc:
        raise ArtifactError(exc.message, hint=hint) from exc
    features = arrays.get("features")
    if features is not None and (features.ndim != 2 or features.shape[1] != fid.dim):
        raise ArtifactError(
            f"{stats_path}: features {features.shape} do not match mu ({fid.dim},)", hint=hint
        )
    return Reference(meta=meta, fid=fid, features=features, dinov2=dinov2, directory=directory)
