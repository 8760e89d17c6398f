"""Fréchet distance between Gaussians fitted to feature sets, always in float64.

``FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``; FID is FD on Inception pool
features. The distance itself is torch-fidelity's ``fid_statistics_to_metric`` (which needs both
sides in one dtype, hence the float64 cast). The statistics are accumulated batch by batch in
float64 (Chan et al.'s pairwise update of mean and scatter), so 1.28M reference images never sit
in memory at once, and the result does not depend on how the images were batched or sharded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.errors import StageError


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set, float64."""

    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    n: int | None = None  # number of feature vectors (None when loaded from a file without it)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


class StatsAccumulator:
    """Streaming float64 mean and unbiased covariance of (N, D) features.

    Example:
        >>> acc = StatsAccumulator("generated samples")
        >>> for batch in batches:  # (B, D) tensors
        ...     acc.update(batch)
        >>> stats = acc.result()  # GaussianStats, float64
    """

    def __init__(self, what: str = "features") -> None:
        self.what = what
        self.n = 0
        self._mean: Any = None  # (D,) float64 tensor
        self._scatter: Any = None  # (D, D) float64 tensor: sum of centred outer products

    def update(self, features: Any) -> None:
        """Add a (B, D) batch (torch tensor or numpy array; any float dtype, any device)."""
        import torch

        x = torch.as_tensor(features).detach().to(dtype=torch.float64)  # (B, D)
        if x.dim() != 2:
            raise StageError(f"{self.what}: expected (N, D) features, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise StageError(f"{self.what}: features contain NaN or inf (are the images valid?)")
        count = x.shape[0]
        if count == 0:
            return
        batch_mean = x.mean(dim=0)  # (D,)
        centred = x - batch_mean  # (B, D)
        batch_scatter = centred.T @ centred  # (D, D)
        if self._mean is None:
            self.n, self._mean, self._scatter = count, batch_mean, batch_scatter
            return
        if x.shape[1] != self._mean.shape[0]:
            raise StageError(
                f"{self.what}: feature size changed from {self._mean.shape[0]} to {x.shape[1]}"
            )
        delta = batch_mean.to(self._mean.device) - self._mean  # (D,)
        total = self.n + count
        self._mean = self._mean + delta * (count / total)
        self._scatter = (
            self._scatter
            + batch_scatter.to(self._scatter.device)
            + torch.outer(delta, delta) * (self.n * count / total)
        )
        self.n = total

    def result(self) -> GaussianStats:
        """The float64 statistics.

        Raises:
            StageError: N <= D (a singular covariance makes the Fréchet distance meaningless).
        """
        dim = 0 if self._mean is None else int(self._mean.shape[0])
        if self.n <= dim or self._mean is None:
            raise StageError(
                f"{self.what}: {self.n} feature vectors of dimension {dim} give a singular "
                "covariance; the Fréchet distance needs N > D",
                hint=f"use more than {dim} images (the papers use 50,000 samples and a 10k+ "
                "reference), or an extractor / feature_layer with fewer dimensions",
            )
        sigma = (self._scatter / (self.n - 1)).cpu().numpy()
        sigma = (sigma + sigma.T) / 2  # exact symmetry
        return GaussianStats(mu=self._mean.cpu().numpy(), sigma=sigma, n=self.n)


def gaussian_stats(features: Any, *, what: str = "features") -> GaussianStats:
    """Float64 statistics of one (N, D) feature array (see :class:`StatsAccumulator`)."""
    acc = StatsAccumulator(what)
    acc.update(features)
    return acc.result()


def stats_from_arrays(mu: Any, sigma: Any, *, where: str, n: int | None = None) -> GaussianStats:
    """Validate loaded statistics (e.g. an ADM reference ``.npz``) and cast them to float64.

    Raises:
        StageError: inconsistent shapes, non-finite values, or a non-symmetric covariance.
    """
    mu_arr = np.asarray(mu, dtype=np.float64)
    sigma_arr = np.asarray(sigma, dtype=np.float64)
    if mu_arr.ndim != 1 or sigma_arr.shape != (mu_arr.shape[0], mu_arr.shape[0]):
        raise StageError(
            f"{where}: mu must be (D,) and sigma (D, D); got mu {mu_arr.shape}, sigma {sigma_arr.shape}"
        )
    if not (np.isfinite(mu_arr).all() and np.isfinite(sigma_arr).all()):
        raise StageError(f"{where}: mu/sigma contain NaN or inf")
    scale = max(float(np.abs(sigma_arr).max()), 1e-300)
    if float(np.abs(sigma_arr - sigma_arr.T).max()) > 1e-6 * scale:
        raise StageError(f"{where}: sigma is not symmetric, so it is not a covariance matrix")
    return GaussianStats(mu=mu_arr, sigma=sigma_arr, n=n)


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """Fréchet distance between two Gaussians (float64 throughout).

    Raises:
        StageError: the feature dimensions differ (different extractors or layers).
    """
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    if a.dim != b.dim:
        raise StageError(
            f"cannot compare statistics of {a.dim}-d and {b.dim}-d features: the two sides "
            "were computed with different extractors or feature layers"
        )
    first, second = (
        {"mu": s.mu.astype(np.float64), "sigma": s.sigma.astype(np.float64)} for s in (a, b)
    )
    return float(fid_statistics_to_metric(first, second, verbose=False)[KEY_METRIC_FID])
