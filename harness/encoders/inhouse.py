"""``source: inhouse``: encoders pretrained here, on the study's own (generated) dataset.

``model_id`` names the objective (:data:`~harness.encoders.pretrain_objectives.OBJECTIVES`:
``supervised``, ``mae``, ``simclr``); ``params`` holds its recipe (typed, unknown keys are
errors) and ``data`` (a :class:`~harness.config.data.DataConfig`; default: the CPU study's
32-px, 10-class, 2000 + 500 image dataset)::

    - name: inhouse-sup
      source: inhouse
      model_id: supervised
      patch_size: 4
      resolution: 64            # 16x16 tokens for 256-px images; 8x8 on the 32-px data
      embed_dim: 64             # = params.width
      params: {epochs: 8, data: {train_images: 2000}}

The first build trains the encoder on the train split (seconds on one CPU core; always on CPU,
so the weights do not depend on the job's device) and caches it as
``<results>/cache/encoders/<key>.pt``, key = content hash of (version, objective, recipe, patch
size, normalisation, dataset fingerprints). Later builds, in any process, load that file; a
file lock (``fcntl``) makes concurrent first builds train once. The checkpoint holds only tensors, numbers,
strings, lists and dicts (``torch.load(weights_only=True)``): the weights, the recipe, the data
config and fingerprints, training CPU / wall time, the final loss and the objective's read-out
(accuracies, losses next to their baselines). ``random_weights=True`` builds the same
architecture with its seeded init and touches no file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ValidationError

from harness.config.data import DataConfig
from harness.config.encoders import EncoderSpec
from harness.encoders.base import Backbone, BuildRequest, EncoderError
from harness.encoders.pretrain import Recipe, TinyViT, build_vit
from harness.encoders.pretrain_objectives import OBJECTIVES, Objective, TrainData
from harness.errors import WeightsError, did_you_mean, format_allowed
from harness.eval.substitute import save_checkpoint
from harness.io import make_dirs, share
from harness.keys import KeyFields
from harness.logs import event, get_logger
from harness.paths import cache_dir, results_root

log = get_logger(__name__)
M = TypeVar("M", bound=BaseModel)
VERSION = 1  # bump when training, architecture or checkpoint semantics change
INHOUSE_KEY = KeyFields(  # everything the trained weights depend on (InhouseSetup.key_payload)
    "inhouse-encoder",
    VERSION,
    fields=("objective", "recipe", "patch_size", "mean", "std", "dataset"),
)
# the CPU study's data (sweeps/cpu-study.yaml); an entry's params.data overrides fields of it
DEFAULT_DATA = DataConfig(resolution=32, num_classes=10, train_images=2000, val_images=500, seed=0)


@dataclass(frozen=True)
class InhouseSetup:
    """An entry's resolved objective, recipe and dataset."""

    spec: EncoderSpec
    objective: str
    recipe: Recipe
    data: DataConfig

    @property
    def native(self) -> tuple[int, int]:
        """Token grid of the training images."""
        side = self.data.resolution // self.spec.patch_size
        return (side, side)

    def key_payload(self, fingerprints: dict[str, str]) -> dict[str, Any]:
        """Everything the trained weights depend on."""
        return {
            "objective": self.objective,
            "recipe": self.recipe.to_dict(),
            "patch_size": self.spec.patch_size,
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
            "dataset": fingerprints,
        }


def resolve(spec: EncoderSpec) -> InhouseSetup:
    """Validate an entry's objective, recipe and data.

    Raises:
        RegistryError: unknown objective (with the allowed names and a suggestion).
        EncoderError: bad params (each error named ``params.<field>``), or an entry that
            contradicts the recipe (embed_dim, patch size, pretrained tag).
    """
    objective: Objective = OBJECTIVES.get(spec.model_id)
    where = f"encoder {spec.name!r} (inhouse {spec.model_id})"
    params = dict(spec.params)
    data = params.pop("data", {})
    if not isinstance(data, dict):
        raise EncoderError(f"{where}: params.data must be a mapping of DataConfig fields")
    data_cfg = _validated(DataConfig, {**DEFAULT_DATA.to_dict(), **data}, "params.data", where)
    recipe = _validated(objective.recipe, params, "params", where)
    if spec.pretrained is not None:
        raise EncoderError(f"{where}: 'pretrained' is a timm/open_clip tag; inhouse takes none")
    if recipe.width != spec.embed_dim:
        raise EncoderError(
            f"{where}: params.width {recipe.width} != embed_dim {spec.embed_dim}",
            hint="set embed_dim to the recipe's width in encoders.yaml",
        )
    if data_cfg.resolution % spec.patch_size:
        raise EncoderError(
            f"{where}: data resolution {data_cfg.resolution} is not divisible by patch_size "
            f"{spec.patch_size}"
        )
    return InhouseSetup(spec, spec.model_id, recipe, data_cfg)


def _validated(model: type[M], values: dict[str, Any], prefix: str, where: str) -> M:
    """``model(**values)``; a ValidationError becomes an EncoderError naming each field."""
    try:
        return model(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            extra = (
                did_you_mean(loc[-1], model.model_fields)
                if err["type"] == "extra_forbidden"
                else ""
            )
            problems.append(f"{'.'.join([prefix, *loc])}: {err['msg']}{extra}")
        raise EncoderError(
            f"{where}: {'; '.join(problems)}",
            hint=f"allowed {prefix} keys: {format_allowed(model.model_fields)}",
        ) from None


class InhouseBackbone(Backbone):
    """A :class:`TinyViT` behind the common interface: tokens of block ``layer``, no CLS."""

    def __init__(self, vit: TinyViT, spec: EncoderSpec, weights_id: str) -> None:
        super().__init__()
        self.vit = vit
        self.layer, self.final_norm = spec.layer, spec.final_norm
        self.weights_id = weights_id
        if spec.layer >= len(vit.blocks):
            raise EncoderError(
                f"encoder {spec.name!r}: layer {spec.layer} but the model has "
                f"{len(vit.blocks)} blocks"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.vit(x, self.layer, self.final_norm), None  # (B, h, w, D)


def build(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    setup = resolve(spec)
    vit = build_vit(setup.recipe, spec.patch_size, setup.native)
    if request.random_weights:
        return InhouseBackbone(vit, spec, f"random-init:seed{setup.recipe.seed}")
    path, _ = ensure_trained(setup)
    checkpoint = load_checkpoint(path)
    vit.load_state_dict(checkpoint["state_dict"])
    return InhouseBackbone(vit, spec, checkpoint["weights_id"])


def locate(spec: EncoderSpec) -> str:
    """The cached checkpoint, or where the first job that needs it trains it (no download)."""
    path, _ = cache_path(resolve(spec))
    return str(path) if path.is_file() else f"{path} (trained on first use; nothing to download)"


def fetch(spec: EncoderSpec) -> str:
    """Train the entry now if it is not cached (no download involved)."""
    path, trained = ensure_trained(resolve(spec))
    stats = load_checkpoint(path)["stats"]
    how = "trained now" if trained else "cached"
    return f"{path} ({how}; {stats['train_cpu_s']:.1f} CPU-s, loss {stats['train_loss']:.4g})"


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------
def cache_path(setup: InhouseSetup, root: Path | None = None) -> tuple[Path, str]:
    """``(<root>/cache/encoders/<key>.pt, key)`` of an entry (builds no image)."""
    from harness.data import build_dataset

    fingerprints = {s: build_dataset(setup.data, s).fingerprint() for s in ("train", "val")}
    key = INHOUSE_KEY.key(setup.key_payload(fingerprints))
    return cache_dir(results_root() if root is None else root, "encoders") / f"{key}.pt", key


def ensure_trained(setup: InhouseSetup, root: Path | None = None) -> tuple[Path, bool]:
    """Train the entry's encoder unless it is cached; concurrent callers train it once.

    Returns:
        (checkpoint path, whether this call trained it).
    """
    path, key = cache_path(setup, root)
    if path.is_file():
        return path, False
    with training_lock(path.with_name(path.name + ".lock"), key):
        if path.is_file():  # another process trained it while we waited
            return path, False
        checkpoint = train(setup, key)
        save_checkpoint(checkpoint, path)
    stats = checkpoint["stats"]
    event(
        log,
        "encoder.inhouse.trained",
        encoder=setup.spec.name,
        objective=setup.objective,
        key=key,
        cpu_s=stats["train_cpu_s"],
        loss=stats["train_loss"],
        knn=stats["knn_val_accuracy"],
        **({"val_accuracy": stats["val_accuracy"]} if "val_accuracy" in stats else {}),
    )
    return path, True


@contextlib.contextmanager
def training_lock(path: Path, key: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``path`` (as the ingest and submission locks do):
    the first caller trains, the others block here, then find its checkpoint."""
    make_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)  # 0o664 & ~umask: lab members can lock
    try:
        share(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            event(log, "encoder.inhouse.waiting", key=key, lock=str(path))
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def train(setup: InhouseSetup, key: str) -> dict[str, Any]:
    """Train on the train split (CPU, seeded) and return the checkpoint dict."""
    from harness.data import build_dataset
    from harness.eval.images import dataset_chunks

    started = time.perf_counter()
    splits = {s: build_dataset(setup.data, s) for s in ("train", "val")}

    def images(split: str) -> torch.Tensor:
        ds = splits[split]
        return torch.cat([torch.from_numpy(c) for c in dataset_chunks(ds, range(len(ds)))])

    data = TrainData(
        train_images=images("train"),  # (N, 3, H, W) uint8
        train_labels=torch.from_numpy(splits["train"].labels().astype("int64")),
        val_images=images("val"),
        val_labels=torch.from_numpy(splits["val"].labels().astype("int64")),
        num_classes=splits["train"].num_classes,
        patch=setup.spec.patch_size,
        mean=torch.tensor(setup.spec.mean, dtype=torch.float32),
        std=torch.tensor(setup.spec.std, dtype=torch.float32),
    )
    with torch.random.fork_rng(devices=[]):
        vit, stats = OBJECTIVES.get(setup.objective).train(setup.recipe, data)
    stats["total_wall_s"] = round(time.perf_counter() - started, 3)  # incl. rendering, read-out
    return {
        "format": "harness-inhouse-encoder",
        "version": VERSION,
        "key": key,
        "weights_id": f"inhouse:{setup.objective}:{key}",
        "objective": setup.objective,
        "recipe": setup.recipe.to_dict(),
        "architecture": {"patch_size": setup.spec.patch_size, "native_grid": list(setup.native)},
        "normalisation": {"mean": list(setup.spec.mean), "std": list(setup.spec.std)},
        "data": {
            "config": setup.data.to_dict(),
            "fingerprints": {s: ds.fingerprint() for s, ds in splits.items()},
        },
        "stats": stats,
        "torch_version": str(torch.__version__),
        "state_dict": {k: v.detach().cpu().clone() for k, v in vit.state_dict().items()},
    }


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a cached checkpoint (``weights_only=True``).

    Raises:
        WeightsError: unreadable or not an in-house encoder checkpoint.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"in-house encoder checkpoint {path} is unreadable: {exc}",
            hint="delete it; the next build retrains it",
        ) from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != "harness-inhouse-encoder":
        raise WeightsError(
            f"{path} is not an in-house encoder checkpoint",
            hint="delete it; the next build retrains it",
        )
    return checkpoint
