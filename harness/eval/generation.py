"""Sample generation for the eval stage: labels, per-index seeds, resumable shards.

Sample ``i`` has label ``i % num_classes`` (class-balanced; or a seeded uniform draw) and seed
``seed + i``, so the samples do not depend on the batch size, the number of GPUs, or where a
killed eval resumed. Samples are written as shards ``samples/000000-000999.npz`` (uint8
``images`` (n, 3, H, W), ``labels``, ``seeds``) with atomic writes; rank ``r`` of ``w`` generates
shards ``r, r + w, ...``; a rerun skips every complete shard. ``samples/manifest.json`` records
what the samples are (model identity + protocol) so samples of another checkpoint or protocol
are never mixed in.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import ArtifactError, StageError
from harness.io import atomic_write, write_json
from harness.logs import event, get_logger
from harness.progress import progress

log = get_logger(__name__)
MANIFEST = "manifest.json"
# (labels (B,) int64, seeds (B,) int64) -> uint8 images (B, 3, H, W)
GenerateFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class SamplePlan:
    """Which samples to draw: sample ``i`` gets ``labels()[i]`` and seed ``seed + i``."""

    num_samples: int
    num_classes: int
    seed: int
    class_balanced: bool
    shard_size: int

    def labels(self, start: int, stop: int) -> np.ndarray:
        """Labels of samples ``start..stop-1``, (n,) int64."""
        if self.class_balanced:
            return np.arange(start, stop, dtype=np.int64) % self.num_classes
        rng = np.random.default_rng(self.seed)
        return rng.integers(0, self.num_classes, size=self.num_samples, dtype=np.int64)[start:stop]

    def seeds(self, start: int, stop: int) -> np.ndarray:
        """Per-sample seeds ``seed + i``, (n,) int64."""
        return np.arange(start, stop, dtype=np.int64) + self.seed

    def shards(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of every shard, in order."""
        return [
            (start, min(start + self.shard_size, self.num_samples))
            for start in range(0, self.num_samples, self.shard_size)
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shard_path(samples_dir: Path, start: int, stop: int) -> Path:
    return samples_dir / f"{start:06d}-{stop - 1:06d}.npz"


def generate_samples(
    plan: SamplePlan,
    generate: GenerateFn,
    samples_dir: str | Path,
    *,
    identity: dict[str, Any],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> int:
    """Generate this rank's missing shards; return how many were written.

    Args:
        plan: labels / seeds / shards.
        generate: ``(labels, seeds) -> uint8 (B, 3, H, W)`` (torch tensors in and out).
        samples_dir: shard directory (created).
        identity: what produced the samples (model identity, sampler, ...); must match the
            manifest of existing samples.
        batch_size: samples per ``generate`` call.
        rank: this process's rank.
        world_size: number of processes sharing the work.

    Raises:
        StageError: existing samples come from another model or protocol, or the generator
            returned malformed images.
    """
    import torch

    samples_dir = Path(samples_dir)
    samples_dir.mkdir(parents=True, exist_ok=True)
    # shard_size is left out: shards of another size are simply not found and are regenerated
    drawn = {k: v for k, v in plan.to_dict().items() if k != "shard_size"}
    _check_manifest(samples_dir, {"plan": drawn, "identity": identity}, write=rank == 0)
    mine = plan.shards()[rank::world_size]
    sizes = {a: _complete_shard_size(samples_dir, plan, a, b) for a, b in mine}
    todo = [(a, b) for a, b in mine if sizes[a] is None]
    known = {size for size in sizes.values() if size is not None}
    done_count = sum(b - a for a, b in mine) - sum(b - a for a, b in todo)
    bar = progress(
        total=sum(b - a for a, b in mine), initial=done_count, desc="sampling", unit="img"
    )
    for start, stop in todo:
        chunks = []
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            labels = torch.from_numpy(plan.labels(lo, hi))
            seeds = torch.from_numpy(plan.seeds(lo, hi))
            images = generate(labels, seeds)
            chunks.append(_validated(images, hi - lo, where=f"samples {lo}..{hi - 1}"))
            bar.update(hi - lo)
        images = np.concatenate(chunks)
        known.add(tuple(images.shape[2:]))
        if len(known) > 1:
            raise StageError(
                f"{samples_dir}: mismatched image sizes {sorted(known)}: the existing shards "
                f"were generated at another resolution than samples {start}..{stop - 1}",
                hint="delete the samples/ directory (it belongs to another model)",
            )
        with atomic_write(shard_path(samples_dir, start, stop)) as handle:
            np.savez_compressed(
                handle,
                images=images,
                labels=plan.labels(start, stop),
                seeds=plan.seeds(start, stop),
            )
    bar.close()
    event(log, "eval.samples", rank=rank, written=len(todo), skipped=len(mine) - len(todo))
    return len(todo)


def read_shards(samples_dir: str | Path, plan: SamplePlan) -> Iterator[np.ndarray]:
    """Every shard's images in sample order, validated against the plan.

    Yields:
        uint8 (n, 3, H, W) arrays.

    Raises:
        ArtifactError: a shard is missing, unreadable, or does not match the plan.
    """
    samples_dir = Path(samples_dir)
    size: tuple[int, ...] | None = None
    for start, stop in plan.shards():
        images = _load_shard(samples_dir, plan, start, stop)
        if size is not None and images.shape[2:] != size:
            raise ArtifactError(
                f"{samples_dir}: mismatched image sizes {size} and {images.shape[2:]}"
            )
        size = images.shape[2:]
        yield images


def sample_resolution(samples_dir: str | Path, plan: SamplePlan) -> tuple[int, int]:
    """(H, W) of the samples (from the first shard)."""
    start, stop = plan.shards()[0]
    images = _load_shard(Path(samples_dir), plan, start, stop)
    return int(images.shape[2]), int(images.shape[3])


def _load_shard(samples_dir: Path, plan: SamplePlan, start: int, stop: int) -> np.ndarray:
    path = shard_path(samples_dir, start, stop)
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels, seeds = npz["images"], npz["labels"], npz["seeds"]
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: sample shard missing (has every rank finished?)") from exc
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path}: corrupt sample shard: {exc}") from exc
    n = stop - start
    if (
        images.dtype != np.uint8
        or images.shape[:2] != (n, 3)
        or not np.array_equal(labels, plan.labels(start, stop))
        or not np.array_equal(seeds, plan.seeds(start, stop))
    ):
        raise ArtifactError(f"{path}: shard does not match the sample plan (shape {images.shape})")
    return images


def _complete_shard_size(
    samples_dir: Path, plan: SamplePlan, start: int, stop: int
) -> tuple[int, ...] | None:
    """(H, W) of a complete, valid shard; None when it must be (re)generated."""
    if not shard_path(samples_dir, start, stop).exists():
        return None
    try:
        return tuple(_load_shard(samples_dir, plan, start, stop).shape[2:])
    except ArtifactError as exc:
        event(log, "eval.samples.regenerate", shard=f"{start}-{stop - 1}", reason=exc.message)
        return None


def _validated(images: Any, expected: int, *, where: str) -> np.ndarray:
    """uint8 (n, 3, H, W) numpy array of the generator's output, or a StageError."""
    import torch

    array = (
        images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    )
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[:2] != (expected, 3):
        raise StageError(
            f"{where}: the sampler must return uint8 images ({expected}, 3, H, W), got "
            f"{array.dtype} {array.shape}"
        )
    flat = array.reshape(expected, -1)
    if (flat.max(axis=1) == flat.min(axis=1)).all():
        raise StageError(
            f"{where}: every generated image is a single flat colour (non-finite model outputs?)",
            hint="check the checkpoint: a diverged model decodes NaN to constant images",
        )
    return array


def _check_manifest(samples_dir: Path, manifest: dict[str, Any], *, write: bool) -> None:
    path = samples_dir / MANIFEST
    canonical = json.loads(json.dumps(manifest, default=str))
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: unreadable samples manifest: {exc}") from exc
        if existing != canonical:
            raise StageError(
                f"{samples_dir} holds samples of another model or protocol",
                hint="delete that samples/ directory or evaluate into another --out",
            )
        return
    if write:
        write_json(path, canonical)
