"""Evaluation configs: generation metrics (``EvalConfig``) and linear probing (``ProbeConfig``).

Defaults are the papers' protocol (ADM suite as in REPA / iREPA): 50,000 samples from the
250-step SDE sampler without CFG, turned into uint8 by truncation as the official ``generate.py``
does, FID from ``inception-v3-compat`` 2048-d pool features, IS, KID and precision/recall on the
same features. Labels are class-balanced by default; the official code draws them uniformly at
random (``class_balanced: false``, as the paper presets set). Every field below is recorded with
each result, so two FIDs are only comparable when their protocols are identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from harness.config.base import Config
from harness.config.model import check_name
from harness.config.sampler import SamplerConfig
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.eval.features import ExtractorInfo

# Feature extractors the eval stage accepts: name -> resolver(name, weights_path, random_weights)
# -> ExtractorInfo, imported from harness.eval.features on first use (validation only reads the
# names). ``harness-cnn`` is the substitute extractor for the CPU study (a small CNN trained once
# on the dataset); results using it are flagged ``extractor_substitute: true`` and recorded as
# ``harness-cnn-<key>``.
EXTRACTORS: Registry[Callable[[str, str | None, bool], ExtractorInfo]] = Registry(
    "feature extractor",
    lazy={
        "inception-v3-compat": "harness.eval.features:resolve_inception",
        "dinov2-vit-s-14": "harness.eval.features:resolve_dinov2",
        "dinov2-vit-b-14": "harness.eval.features:resolve_dinov2",
        "dinov2-vit-l-14": "harness.eval.features:resolve_dinov2",
        "dinov2-vit-g-14": "harness.eval.features:resolve_dinov2",
        "harness-cnn": "harness.eval.features:resolve_substitute",
    },
)
DINOV2_EXTRACTORS = "dinov2-*"  # the EXTRACTORS names that can serve fd_dinov2


class MetricsConfig(Config):
    """Which generation metrics to compute, and their torch-fidelity settings."""

    fid: bool = True  # Fréchet distance on the extractor's FID layer (float64 statistics)
    isc: bool = True  # Inception Score on the extractor's logits
    kid: bool = True  # Kernel Inception Distance (needs reference features)
    prc: bool = True  # precision / recall, Kynkäänniemi et al. 2019 (needs reference features)
    fd_dinov2: bool = False  # FD with DINOv2 CLS features (secondary; needs the DINOv2 hub cache)
    fd_dinov2_extractor: str = "dinov2-vit-b-14"  # which DINOv2 (EXTRACTORS) serves fd_dinov2
    # fraction of samples the classifier assigns to their conditioning class, with its ceiling
    # (the same classifier on the real val split); needs classifier logits over the dataset's
    # classes, i.e. the substitute extractor harness-cnn (other extractors: recorded as skipped)
    class_accuracy: bool = True
    isc_splits: int = Field(10, ge=1)  # IS splits (torch-fidelity default)
    kid_subsets: int = Field(100, ge=1)  # KID subsets (torch-fidelity default)
    kid_subset_size: int = Field(1000, ge=2)  # KID subset size; capped at the smaller set, recorded
    prc_neighborhood: int = Field(3, ge=1)  # k of the k-NN balls in precision / recall
    prc_batch_size: int = Field(10_000, ge=1)  # rows per distance block in precision / recall

    @field_validator("fd_dinov2_extractor")
    @classmethod
    def _known_dinov2(cls, value: str) -> str:
        return check_name(value, EXTRACTORS.names(DINOV2_EXTRACTORS), "DINOv2 extractor") or value


class ReferenceConfig(Config):
    """The reference set the generated samples are compared against."""

    source: Literal["dataset", "npz"] = "dataset"  # the run's dataset, or an ADM reference .npz
    path: str | None = None  # npz: ADM reference batch (mu, sigma; arr_0 images optional)
    split: Literal["train", "val"] = "train"  # dataset: which split (ADM: ImageNet train)
    num_images: int | None = Field(None, ge=2)  # dataset: images for mu/sigma (None = whole split)
    num_features: int = Field(10_000, ge=2)  # reference features kept for KID / PR (ADM: 10k)

    @model_validator(mode="after")
    def _npz_needs_path(self) -> ReferenceConfig:
        if self.source == "npz" and not self.path:
            raise ValueError("source 'npz' needs 'path' (an ADM reference batch .npz)")
        return self


class SubstituteConfig(Config):
    """The substitute extractor (``extractor: harness-cnn``): a small CNN trained on the dataset."""

    widths: list[int] = Field(default_factory=lambda: [32, 64, 128])  # conv channels per stage
    feature_dim: int = Field(128, ge=8)  # penultimate feature size (the FID layer)
    input_size: int = Field(32, ge=16, le=256)  # images are resized to this side first
    epochs: int = Field(6, ge=1)  # classification epochs on the train split
    batch_size: int = Field(128, ge=2)  # training batch size
    lr: float = Field(3e-3, gt=0)  # AdamW learning rate (cosine decay)
    train_images: int | None = Field(None, ge=2)  # cap on training images (None = whole split)
    seed: int = Field(0, ge=0)  # init + shuffling seed (part of the cache key)


class EvalConfig(Config):
    """How a checkpoint is evaluated (``eval`` stage, ``harness eval``, ``harness fid-ref``)."""

    at_steps: list[int] = Field(default_factory=list)  # training steps to evaluate ([] = final)
    num_samples: int = Field(50_000, ge=2)  # generated samples (papers: 50,000)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)  # sampler protocol (recorded)
    vae: str | None = None  # latent models: decoder id (None = the VAE the run trained with)
    seed: int = Field(0, ge=0)  # sample i uses seed + i (independent of GPU count / batch size)
    class_balanced: bool = True  # labels i % num_classes; False = seeded uniform (official code)
    shard_size: int = Field(1000, ge=1)  # samples per shard file (resume granularity)
    extractor: str = "inception-v3-compat"  # feature extractor (EXTRACTORS) for fid/isc/kid/prc
    feature_layer: str | None = None  # FID/KID/PR layer (None = extractor default, e.g. "2048")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)  # metric toggles + settings
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)  # reference statistics
    feature_extractor_weights_path: str | None = None  # Inception .pth (None = torch hub cache)
    batch_size: int = Field(64, ge=1)  # fixed extractor batch size (features depend on it)
    random_weights_extractor: bool = False  # tests only: random-init extractor, recorded as such
    substitute: SubstituteConfig = Field(default_factory=SubstituteConfig)  # harness-cnn recipe

    @field_validator("extractor")
    @classmethod
    def _known_extractor(cls, value: str) -> str:
        return check_name(value, EXTRACTORS, "feature extractor") or value

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if any(step < 0 for step in self.at_steps):
            raise ValueError(f"at_steps must be >= 0, got {self.at_steps}")
        m = self.metrics
        if not (m.fid or m.isc or m.kid or m.prc or m.fd_dinov2 or m.class_accuracy):
            raise ValueError("metrics: every metric is switched off; enable at least one")
        if self.feature_extractor_weights_path and self.extractor != "inception-v3-compat":
            raise ValueError(
                "feature_extractor_weights_path applies to extractor 'inception-v3-compat' only "
                f"(got extractor {self.extractor!r}); DINOv2 loads from the torch.hub cache"
            )
        return self


class ProbeConfig(Config):
    """Linear probe on frozen pooled features (REPA / DAE protocol, many heads over an lr grid).

    Parameter-free BatchNorm + one linear layer per learning rate, trained together with Adam
    and cosine decay; the head with the best top-1 on a held-out slice of train is reported on
    val.
    """

    pooling: Literal["mean", "cls"] = "mean"  # mean of patch tokens (iREPA) or the encoder's CLS
    lrs: list[float] = Field(  # learning-rate grid, one head each, all trained in one pass
        default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    )
    epochs: int = Field(90, ge=1)  # passes over the cached train features (REPA: 90)
    batch_size: int = Field(16_384, ge=1)  # probe batch size (REPA: 16,384)
    weight_decay: float = Field(0.0, ge=0.0)  # Adam L2 weight decay on the heads
    holdout_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # train fraction held out to pick lr
    subset_per_class: int | None = Field(None, ge=1)  # K train images per class (None = all)
    train_images: int | None = Field(None, ge=2)  # cap on train images (None = whole split)
    val_images: int | None = Field(None, ge=1)  # cap on val images (None = whole split)
    extract_batch_size: int = Field(64, ge=1)  # encoder batch size during feature extraction
    feature_dtype: Literal["float16", "float32"] = "float16"  # dtype of the feature cache
    seed: int = Field(0, ge=0)  # holdout split, subset, init and shuffling

    @model_validator(mode="after")
    def _check(self) -> ProbeConfig:
        if not self.lrs:
            raise ValueError("lrs: the learning-rate grid is empty; give at least one value")
        if any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"lrs: learning rates must be > 0, got {self.lrs}")
        if len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"lrs: duplicate learning rates in {self.lrs}")
        return self
