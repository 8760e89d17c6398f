"""Generation metrics from extracted features, through torch-fidelity's metric functions.

* FID / FD-DINOv2: float64 statistics (:mod:`harness.eval.fd`) against the reference's.
* IS: ``isc_features_to_metric`` on the extractor's logits.
* KID: ``kid_features_to_metric`` (generated, reference subset).
* precision / recall: ``prc_features_to_metric(generated, real)``. torch-fidelity's convention is
  input 1 = generated, input 2 = real (precision: fraction of generated samples inside the real
  manifold); a swapped call swaps the two numbers (toshas/torch-fidelity#58), which
  :func:`precision_recall` pins by naming its arguments.
* class accuracy: the fraction of class-conditional samples whose classifier argmax is their
  conditioning label (:func:`class_accuracy`), next to its ceiling ``class_accuracy_real`` (the
  same classifier on the real val split, computed with the reference statistics). Only the
  substitute extractor (``harness-cnn``) classifies into the dataset's classes; with another
  extractor both are skipped, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.config.eval import EvalConfig
from harness.errors import StageError
from harness.eval.fd import GaussianStats, StatsAccumulator, frechet_distance

if TYPE_CHECKING:
    import torch

    from harness.eval.features import ExtractorInfo
    from harness.eval.reference import Reference

METRIC_KEYS = (
    "fid",
    "isc_mean",
    "isc_std",
    "kid_mean",
    "kid_std",
    "precision",
    "recall",
    "fd_dinov2",
    "class_accuracy",  # samples assigned to their conditioning class by the substitute classifier
    "class_accuracy_real",  # its ceiling: the same classifier on the real val images
)
RNG_SEED = 2020  # torch-fidelity's default rng_seed (IS shuffling, KID subsets)
_PART_MODE_PAIRS = 10**8  # above this many generated x real pairs, PR runs block-wise


@dataclass
class GeneratedFeatures:
    """What the metrics need from the generated set."""

    n: int
    fid: GaussianStats | None  # FID-layer statistics (float64)
    features: torch.Tensor | None  # (N, D) FID-layer features, for KID / PR
    logits: torch.Tensor | None  # (N, C), for IS and class accuracy
    dinov2: GaussianStats | None  # DINOv2 statistics
    labels: np.ndarray | None = None  # (N,) int64 conditioning labels, in sample order
    num_classes: int | None = None  # classes the model is conditioned on


def inception_score(
    logits: torch.Tensor, *, splits: int = 10, seed: int = RNG_SEED
) -> tuple[float, float]:
    """IS mean and std over ``splits`` (torch-fidelity ``isc_features_to_metric``)."""
    from torch_fidelity.metric_isc import (
        KEY_METRIC_ISC_MEAN,
        KEY_METRIC_ISC_STD,
        isc_features_to_metric,
    )

    if len(logits) < splits:
        raise StageError(f"inception score: {len(logits)} samples cannot form {splits} splits")
    out = isc_features_to_metric(logits.cpu(), splits=splits, shuffle=True, rng_seed=seed)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def class_accuracy(logits: torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Fraction of samples whose classifier argmax is their label (on ties the first maximal
    class is the prediction): ``correct / N``.

    Args:
        logits: (N, C) classifier outputs.
        labels: (N,) int class labels the samples were generated with.

    Raises:
        StageError: shapes that do not pair one label with each row, or no samples.
    """
    import torch

    target = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if logits.ndim != 2 or target.ndim != 1 or len(logits) != len(target) or not len(target):
        raise StageError(
            f"class accuracy: need (N, C) logits and (N,) labels with N > 0, got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    correct = int((logits.argmax(dim=1).cpu() == target).sum())
    return correct / len(target)


def kernel_inception_distance(
    generated: torch.Tensor,
    real: torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = RNG_SEED,
) -> tuple[float, float, int]:
    """KID mean and std (torch-fidelity, polynomial kernel); the subset size is capped at the
    smaller set and returned so the protocol records the value actually used."""
    from torch_fidelity.metric_kid import (
        KEY_METRIC_KID_MEAN,
        KEY_METRIC_KID_STD,
        kid_features_to_metric,
    )

    size = min(subset_size, len(generated), len(real))
    out = kid_features_to_metric(
        generated.cpu(),
        real.cpu(),
        kid_subsets=subsets,
        kid_subset_size=size,
        rng_seed=seed,
        verbose=False,
    )
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD], size


def precision_recall(
    *, generated: torch.Tensor, real: torch.Tensor, neighborhood: int = 3, batch_size: int = 10_000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    precision = fraction of ``generated`` inside some real sample's k-NN ball;
    recall = fraction of ``real`` inside some generated sample's k-NN ball.
    """
    from torch_fidelity.metric_prc import (
        KEY_METRIC_PRECISION,
        KEY_METRIC_RECALL,
        prc_features_to_metric,
    )

    for what, feats in (("generated", generated), ("real", real)):
        if len(feats) <= neighborhood:
            raise StageError(
                f"precision/recall: {len(feats)} {what} samples, need > k = {neighborhood}"
            )
    out = prc_features_to_metric(
        generated,  # torch-fidelity input 1 = generated
        real,  # torch-fidelity input 2 = real
        prc_neighborhood=neighborhood,
        prc_batch_size=batch_size,
        save_cpu_ram=len(generated) * len(real) > _PART_MODE_PAIRS,
        verbose=False,
    )
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def collect_generated(
    feature_batches: Iterable[list[dict[str, torch.Tensor]]],
    primary: ExtractorInfo,
    dino: ExtractorInfo | None,
    cfg: EvalConfig,
    *,
    labels: np.ndarray | None = None,
    num_classes: int | None = None,
) -> GeneratedFeatures:
    """Accumulate what the metrics need from ``iter_features`` output (primary extractor first,
    then DINOv2 when ``dino`` is given); ``labels`` (N,) are the samples' conditioning labels in
    sample order and ``num_classes`` the model's class count (both for class accuracy)."""
    import torch

    m = cfg.metrics
    fid_acc = StatsAccumulator("generated samples")
    dino_acc = StatsAccumulator("generated samples (DINOv2)")
    keep_features = m.kid or m.prc
    keep_logits = (m.isc or m.class_accuracy) and primary.isc_layer is not None
    features: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    n = 0
    for outputs in feature_batches:
        feats = outputs[0][primary.fid_layer]  # (B, D)
        n += len(feats)
        if m.fid:
            fid_acc.update(feats)
        if keep_features:
            features.append(feats)
        if keep_logits:
            logits.append(outputs[0][str(primary.isc_layer)].cpu())
        if dino is not None:
            dino_acc.update(outputs[1][dino.fid_layer])
    return GeneratedFeatures(
        n=n,
        fid=fid_acc.result() if m.fid else None,
        features=torch.cat(features) if features else None,
        logits=torch.cat(logits) if logits else None,
        dinov2=dino_acc.result() if dino is not None else None,
        labels=None if labels is None else np.asarray(labels, dtype=np.int64),
        num_classes=num_classes,
    )


def generation_metrics(
    generated: GeneratedFeatures, reference: Reference, cfg: EvalConfig, primary: ExtractorInfo
) -> tuple[dict[str, float], dict[str, str], dict[str, Any]]:
    """Compute every enabled metric.

    Returns:
        ``(metrics, skipped, settings)``: values keyed by :data:`METRIC_KEYS`; metrics not
        computed with the reason; the metric settings actually used (for the protocol).
    """
    import torch

    m = cfg.metrics
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    settings: dict[str, Any] = {
        "isc_splits": m.isc_splits,
        "kid_subsets": m.kid_subsets,
        "kid_subset_size": None,
        "prc_neighborhood": m.prc_neighborhood,
        "rng_seed": RNG_SEED,
    }
    available = reference.meta.get("available", {})
    if m.fid and generated.fid is not None:
        metrics["fid"] = frechet_distance(generated.fid, reference.fid)
    if m.isc:
        if generated.logits is None:
            skipped["isc"] = f"extractor {primary.name} has no classifier logits"
        else:
            metrics["isc_mean"], metrics["isc_std"] = inception_score(
                generated.logits, splits=m.isc_splits
            )
    real = None
    if reference.features is not None and generated.features is not None:
        real = torch.as_tensor(reference.features).to(generated.features.device)
    for name, wanted in (("kid", m.kid), ("prc", m.prc)):
        if wanted and (real is None or not available.get(name, False)):
            skipped[name] = f"reference {reference.key} keeps no features (ADM npz without arr_0?)"
    if m.kid and "kid" not in skipped and generated.features is not None and real is not None:
        metrics["kid_mean"], metrics["kid_std"], settings["kid_subset_size"] = (
            kernel_inception_distance(
                generated.features, real, subsets=m.kid_subsets, subset_size=m.kid_subset_size
            )
        )
    if m.prc and "prc" not in skipped and generated.features is not None and real is not None:
        metrics["precision"], metrics["recall"] = precision_recall(
            generated=generated.features,
            real=real,
            neighborhood=m.prc_neighborhood,
            batch_size=m.prc_batch_size,
        )
    if m.fd_dinov2:
        if reference.dinov2 is None or generated.dinov2 is None:
            skipped["fd_dinov2"] = f"reference {reference.key} has no DINOv2 statistics"
        else:
            metrics["fd_dinov2"] = frechet_distance(generated.dinov2, reference.dinov2)
    if m.class_accuracy:
        reason = _no_class_accuracy(generated, primary)
        if reason is not None:
            skipped["class_accuracy"] = reason
        else:
            assert generated.logits is not None and generated.labels is not None
            metrics["class_accuracy"] = class_accuracy(generated.logits, generated.labels)
            ceiling = reference.meta.get("class_accuracy_real")
            if ceiling is None:
                skipped["class_accuracy_real"] = (
                    f"reference {reference.key} records no accuracy of its classifier on real "
                    "val images (computed before class accuracy existed, or with "
                    "metrics.class_accuracy off): recompute it with harness fid-ref"
                )
            else:
                metrics["class_accuracy_real"] = float(ceiling)
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
        raise StageError(f"non-finite metric values {bad}; the features or statistics are broken")
    return metrics, skipped, settings


def _no_class_accuracy(generated: GeneratedFeatures, primary: ExtractorInfo) -> str | None:
    """Why the class accuracy of these samples is undefined (None: it is defined)."""
    from harness.eval.substitute import PREFIX

    if not primary.name.startswith(PREFIX):
        return (
            f"extractor {primary.name} has no classifier over the dataset's classes (only the "
            "substitute extractor harness-cnn has one)"
        )
    if generated.logits is None:
        return f"extractor {primary.name} has no classifier logits"
    if generated.labels is None or not generated.num_classes:
        return "the samples carry no conditioning labels (unconditional model)"
    if generated.logits.shape[1] != generated.num_classes:
        return (
            f"the model is conditioned on {generated.num_classes} classes, the classifier of "
            f"{primary.name} predicts {generated.logits.shape[1]}"
        )
    return None
