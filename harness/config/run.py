"""One training run: data, target encoder(s), alignment method, SiT, alignment and training
settings, seed.

Validation resolves every "default" (``None``) field — the model's input size, channels and
classes from the data config, the alignment settings from the method registry and the SiT
preset — so a ``RunConfig`` always carries the values that were actually used, and two configs
that resolve the same hash the same (:func:`run_id`).

Example run config (``harness train run.yaml``)::

    method: irepa
    encoder: dinov2-vit-b
    data: {source: folder, root: /datasets/imagenet, resolution: 256}
    model: {name: SiT-XL/2}
    train: {steps: 100000}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from harness.config.base import Config
from harness.config.data import DataConfig
from harness.config.loader import YamlDoc, load_yaml, validate
from harness.config.model import ModelConfig, check_name
from harness.config.train import METHODS, AlignConfig, TrainConfig
from harness.errors import ConfigError
from harness.io import content_hash

EXAMPLE_RUN = "sweeps/examples/run-tiny.yaml"  # an example run config (README, train --help)

VAE_DOWNSAMPLE = 8  # SD-VAE: 256 px -> 32x32x4 latents
LATENT_CHANNELS = 4


class RunConfig(Config):
    """Everything that determines one training run (and nothing that does not)."""

    data: DataConfig = Field(default_factory=DataConfig)  # training images
    encoder: str | None = None  # catalogue name of the target encoder (None for method none)
    encoders: list[str] | None = None  # several target encoders (loss averaged over them)
    method: str = "none"  # alignment method: none | repa | irepa (harness.config.train.METHODS)
    model: ModelConfig = Field(default_factory=ModelConfig)  # the SiT
    align: AlignConfig = Field(default_factory=AlignConfig)  # alignment knobs (None = default)
    train: TrainConfig = Field(default_factory=TrainConfig)  # optimisation and checkpoints
    random_weights: bool = False  # build encoders with random weights (tests/CPU; recorded)
    seed: int = Field(0, ge=0)  # run seed: init, data order, noise (per-rank seeds derived)

    @field_validator("method")
    @classmethod
    def _method_and_targets(cls, value: str, info: ValidationInfo) -> str:
        """A known method, with exactly the encoders it needs (reported at ``method``)."""
        check_name(value, METHODS, "method")
        encoder, encoders = info.data.get("encoder"), info.data.get("encoders")
        if encoder is not None and encoders is not None:
            raise ValueError("give either 'encoder' or 'encoders', not both")
        targets = encoders if encoders is not None else [encoder] if encoder is not None else []
        if len(set(targets)) != len(targets):
            raise ValueError(f"encoders contains duplicates: {targets}")
        uses_encoder = METHODS.get(value).uses_encoder
        if uses_encoder and not targets:
            raise ValueError(
                f"method {value!r} aligns to an encoder: set 'encoder' (a catalogue name) "
                "or 'encoders' (a list)"
            )
        if not uses_encoder and targets:
            raise ValueError(
                f"method {value!r} uses no encoder, but encoder(s) {targets} were given; "
                "remove them or choose method repa/irepa"
            )
        return value

    @field_validator("model")
    @classmethod
    def _resolve_model(cls, model: ModelConfig, info: ValidationInfo) -> ModelConfig:
        """Fill input_size / in_channels / num_classes from the data config, then check that
        the input fits the VAE and the patch size."""
        data = info.data.get("data")
        if not isinstance(data, DataConfig):
            return model  # the data section is invalid; its own error is reported
        latent = model.space == "latent"
        if latent and data.resolution % VAE_DOWNSAMPLE:
            raise ValueError(
                f"latent space needs data.resolution divisible by {VAE_DOWNSAMPLE}, "
                f"got {data.resolution}"
            )
        updates: dict[str, Any] = {}
        if model.input_size is None:
            updates["input_size"] = data.resolution // VAE_DOWNSAMPLE if latent else data.resolution
        if model.in_channels is None:
            updates["in_channels"] = LATENT_CHANNELS if latent else 3
        if model.num_classes is None:
            updates["num_classes"] = data.num_classes
        model = model.model_copy(update=updates) if updates else model
        patch = model.arch.patch
        if (model.input_size or 0) % patch:
            raise ValueError(
                f"input size {model.input_size} is not divisible by the patch size {patch} of "
                f"{model.name}; choose another patch (/2, /4, /8) or resolution"
            )
        if data.source == "generated" and (model.num_classes or 0) < data.num_classes:
            raise ValueError(
                f"num_classes ({model.num_classes}) < data.num_classes ({data.num_classes})"
            )
        return model

    @field_validator("align")
    @classmethod
    def _resolve_align(cls, align: AlignConfig, info: ValidationInfo) -> AlignConfig:
        """Fill ``None`` alignment fields from the method registry and the SiT preset; the
        alignment depth must lie inside the SiT."""
        method, model = info.data.get("method"), info.data.get("model")
        if not isinstance(method, str) or not isinstance(model, ModelConfig):
            return align  # reported by the method / model validators
        align = align.resolved(method, model.arch.align_depth)
        depth, blocks = align.encoder_depth, model.arch.depth
        if METHODS.get(method).uses_encoder and depth >= blocks:
            raise ValueError(  # "@key: " names the key for the loader's file:line report
                f"@encoder_depth: {depth} is beyond {model.name} ({blocks} blocks); "
                f"allowed: 1..{blocks - 1}"
            )
        return align

    @property
    def targets(self) -> list[str]:
        """The target encoder names (empty for method none)."""
        if self.encoders is not None:
            return list(self.encoders)
        return [self.encoder] if self.encoder is not None else []

    @property
    def uses_encoder(self) -> bool:
        return METHODS.get(self.method).uses_encoder


def run_from_doc(doc: YamlDoc, overrides: Sequence[str] = ()) -> RunConfig:
    """Validate a parsed run YAML (plus ``--set`` overrides) into a :class:`RunConfig`.

    Raises:
        ConfigError: file:line problems; a sweep file is named as one, with the command it
            is for, instead of a list of unknown keys.
    """
    check_not_a_sweep(doc)
    return validate(RunConfig, doc, overrides)


def check_not_a_sweep(doc: YamlDoc) -> None:
    """Refuse a sweep file given where a run config is expected: two or more top-level keys
    that only a sweep has (``methods``, ``models``, ``eval``, ``resources`` ...)."""
    from harness.config.sweep import SweepConfig

    sweep_only = [
        k for k in doc.data if k in SweepConfig.model_fields and k not in RunConfig.model_fields
    ]
    if len(sweep_only) < 2:
        return  # one stray key is more likely a typo (seeds for seed): reported as unknown
    raise ConfigError(
        f"{doc.where((sweep_only[0],))}: this is a sweep file (it has "
        f"{', '.join(sweep_only)}), not a run config: use "
        f"`harness sweep encoders.yaml --sweep {doc.path}`",
        hint=f"a run config describes one training run ({', '.join(RunConfig.model_fields)}); "
        f"see {EXAMPLE_RUN}",
    )


def load_run(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Load and validate a run YAML file; raises ConfigError with file:line on problems."""
    return run_from_doc(load_yaml(path), overrides)


def run_slug(run: RunConfig) -> str:
    """Readable part of the run id, e.g. ``dinov2-b__irepa__sit-b2__s0``."""
    encoder = "+".join(run.targets) if run.targets else "none"
    model = run.model.name.lower().replace("/", "")
    return f"{encoder}__{run.method}__{model}__s{run.seed}"


# Train fields that change how a run is executed or logged, never what it computes.
OPERATIONAL_TRAIN_FIELDS = (
    "ckpt_every",
    "keep_last",
    "keep_steps",
    "log_every",
    "sync_every",
    "num_workers",
)


def identity(run: RunConfig) -> dict[str, Any]:
    """The resolved config minus operational fields: what :func:`run_id` hashes."""
    doc = run.to_dict()
    for key in OPERATIONAL_TRAIN_FIELDS:
        doc["train"].pop(key)
    return doc


def run_id(run: RunConfig) -> str:
    """Stable id: readable slug + hash of the resolved config (operational fields excluded),
    e.g. ``dinov2-b__irepa__sit-b2__s0__3f2a9c0d``."""
    safe = "".join(c if c.isalnum() or c in "-_.+" else "-" for c in run_slug(run))
    return f"{safe}__{content_hash(identity(run), 8)}"
