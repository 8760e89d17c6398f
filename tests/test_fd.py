"""Fréchet distance from float64 statistics, checked against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from harness.errors import StageError
from harness.eval.fd import (
    GaussianStats,
    StatsAccumulator,
    frechet_distance,
    gaussian_stats,
    stats_from_arrays,
)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_identity_covariances_give_squared_mean_distance() -> None:
    dim = 64
    mu = np.random.default_rng(0).normal(size=dim)
    a = GaussianStats(np.zeros(dim), np.eye(dim))
    b = GaussianStats(mu, np.eye(dim))
    assert _rel(frechet_distance(a, b), float(mu @ mu)) < 1e-6


def test_diagonal_covariances_match_closed_form() -> None:
    # FD = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2 for commuting (diagonal) covariances
    rng = np.random.default_rng(1)
    dim = 32
    va, vb = rng.uniform(0.1, 4.0, dim), rng.uniform(0.1, 4.0, dim)
    mu_a, mu_b = rng.normal(size=dim), rng.normal(size=dim)
    expected = float(((mu_a - mu_b) ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum())
    got = frechet_distance(GaussianStats(mu_a, np.diag(va)), GaussianStats(mu_b, np.diag(vb)))
    assert _rel(got, expected) < 1e-6


def test_general_covariances_match_matrix_square_root() -> None:
    # non-commuting SPD covariances: compare with the defining formula via scipy's sqrtm
    rng = np.random.default_rng(2)
    dim = 24
    m1, m2 = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(dim), m2 @ m2.T + 0.1 * np.eye(dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    root1 = scipy.linalg.sqrtm(s1).real
    cross = scipy.linalg.sqrtm(root1 @ s2 @ root1).real  # symmetric form of tr sqrt(S1 S2)
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))
    assert _rel(frechet_distance(GaussianStats(mu1, s1), GaussianStats(mu2, s2)), expected) < 1e-6


def test_set_against_itself_is_zero() -> None:
    features = np.random.default_rng(3).normal(size=(500, 48)) * 3.0 + 1.5
    stats = gaussian_stats(features)
    assert abs(frechet_distance(stats, stats)) < 1e-6


def test_statistics_are_float64_and_batching_invariant() -> None:
    rng = np.random.default_rng(4)
    features = (rng.normal(size=(1000, 16)) * rng.uniform(0.5, 2, 16) + 5).astype(np.float32)
    whole = gaussian_stats(features)
    assert whole.mu.dtype == np.float64 and whole.sigma.dtype == np.float64
    acc = StatsAccumulator()
    for start in range(0, 1000, 37):  # uneven batches
        acc.update(features[start : start + 37])
    pieces = acc.result()
    reference = features.astype(np.float64)
    np.testing.assert_allclose(whole.mu, reference.mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.sigma, np.cov(reference, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pieces.mu, whole.mu, rtol=1e-12)
    np.testing.assert_allclose(pieces.sigma, whole.sigma, rtol=1e-10, atol=1e-12)
    assert pieces.n == 1000


def test_sample_estimate_converges_to_closed_form() -> None:
    rng = np.random.default_rng(5)
    dim, shift = 8, np.full(8, 0.5)
    a = gaussian_stats(rng.normal(size=(200_000, dim)))
    b = gaussian_stats(rng.normal(size=(200_000, dim)) + shift)
    assert frechet_distance(a, b) == pytest.approx(float(shift @ shift), abs=0.05)


def test_fewer_samples_than_dimensions_is_a_clear_error() -> None:
    with pytest.raises(StageError, match=r"100 feature vectors of dimension 128 .* singular"):
        gaussian_stats(np.random.default_rng(6).normal(size=(100, 128)), what="generated samples")


def test_non_finite_features_and_bad_statistics_are_rejected() -> None:
    bad = np.ones((10, 2))
    bad[3, 1] = np.nan
    with pytest.raises(StageError, match="NaN"):
        gaussian_stats(bad)
    with pytest.raises(StageError, match="sigma"):
        stats_from_arrays(np.zeros(3), np.zeros((3, 2)), where="ref.npz")
    with pytest.raises(StageError, match="symmetric"):
        stats_from_arrays(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), where="ref.npz")
    with pytest.raises(StageError, match="different extractors"):
        frechet_distance(
            GaussianStats(np.zeros(2), np.eye(2)), GaussianStats(np.zeros(3), np.eye(3))
        )


def test_float32_inputs_are_promoted_before_the_distance() -> None:
    # torch-fidelity's helper asserts equal dtypes; an ADM float64 file vs float32 stats must work
    a = GaussianStats(np.zeros(4, dtype=np.float32), np.eye(4, dtype=np.float32))
    b = stats_from_arrays(np.ones(4), np.eye(4), where="adm.npz")
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=1e-12)
